//! Talking to our sidecar inside an [`Instance`]: readiness, and the clients a user would use
//! (`curl`, `openssl s_client`) run inside the instance's network namespace.

use crate::cell::IssuedCert;
use crate::http::{Response, request};
use crate::launch::{APP_PORT, Instance};
use crate::tls::{TlsStream, client_config_with_alpn, handshake};
use crate::util::{Deadline, poll_strict};
use crate::{Context, Result, bail};
use std::process::Output;

/// The sidecar's process name (the `type` in launch.yml).
pub const NAME: &str = "tls-sidecar";
/// The default TLS listener.
pub const TLS_PORT: u16 = 8443;
/// The default admin listener (loopback only).
pub const ADMIN_PORT: u16 = 8444;

/// `GET <path>` on the admin listener (plain HTTP, `127.0.0.1:8444`).
pub fn admin_get(instance: &Instance, path: &str) -> Result<Response> {
    let mut conn = instance.connect(ADMIN_PORT)?;
    conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    request(
        &mut conn,
        "GET",
        path,
        "127.0.0.1",
        &[("Connection", "close")],
    )
}

/// Waits until the app accepts on `$PORT`, the sidecar has logged `listening on 0.0.0.0:8443`,
/// and its admin `GET /ready` answers 200.
pub fn wait_ready(instance: &Instance, deadline: Deadline) -> Result<()> {
    wait_ready_on(instance, &[TLS_PORT], deadline)
}

/// [`wait_ready`] for an app whose sidecar listens on every port in `ports`.
pub fn wait_ready_on(instance: &Instance, ports: &[u16], deadline: Deadline) -> Result<()> {
    instance.wait_for_port(APP_PORT, deadline)?;
    wait_sidecar_ready(instance, ports, deadline)
}

/// The sidecar's half of [`wait_ready_on`] (for an instance whose app is not running).
pub fn wait_sidecar_ready(instance: &Instance, ports: &[u16], deadline: Deadline) -> Result<()> {
    let sidecar = instance.process(NAME)?;
    for port in ports {
        sidecar.wait_for_log(&format!("listening on 0.0.0.0:{port}"), deadline)?;
    }
    poll_strict(deadline, "the sidecar's GET /ready to answer 200", || {
        if let Some(status) = sidecar.try_status()? {
            bail!("{NAME} exited ({status})\n{}", sidecar.logs());
        }
        Ok(match admin_get(instance, "/ready") {
            Ok(r) if r.status == 200 => Ok(()),
            Ok(r) => Err(format!("/ready answered {}: {}", r.status, r.text())),
            Err(e) => Err(e.to_string()),
        })
    })
    .map_err(|e| crate::Error::msg(format!("{e}\n{}", instance.logs())))
}

/// `curl -sS --cacert <appRootCA> --resolve <guid>:8443:127.0.0.1 https://<guid>:8443<path>`
/// plus `extra` arguments, inside the instance.
pub fn curl(instance: &Instance, path: &str, extra: &[&str]) -> Result<Output> {
    curl_on(instance, TLS_PORT, path, None, extra)
}

/// [`curl`] to `port`, presenting `client` (`--cert <chain> --key <key>`) if given.
pub fn curl_on(
    instance: &Instance,
    port: u16,
    path: &str,
    client: Option<&IssuedCert>,
    extra: &[&str],
) -> Result<Output> {
    let guid = instance.guid().to_owned();
    let root = instance
        .credentials()
        .ca()
        .root_cert()
        .display()
        .to_string();
    let resolve = format!("{guid}:{port}:127.0.0.1");
    let url = format!("https://{guid}:{port}{path}");
    let (cert, key) = match client {
        Some(c) => (c.cert.display().to_string(), c.key.display().to_string()),
        None => (String::new(), String::new()),
    };
    let mut argv = vec![
        "curl",
        "-sS",
        "--max-time",
        "20",
        "--cacert",
        &root,
        "--resolve",
        &resolve,
    ];
    if client.is_some() {
        argv.extend_from_slice(&["--cert", &cert, "--key", &key]);
    }
    argv.extend_from_slice(extra);
    argv.push(&url);
    instance.exec(&argv)
}

/// `openssl s_client -connect 127.0.0.1:<port> -servername <guid> -CAfile <appRootCA> -ign_eof`
/// presenting `client` (`-cert`, `-cert_chain` for the intermediate, `-key`) if given, plus
/// `extra` arguments, with `input` on stdin: it sends `input` and then reads until the server closes (or 30 s pass).
/// Returns the output with stdout and stderr together, and whether it exited 0.
pub fn s_client_send(
    instance: &Instance,
    port: u16,
    client: Option<&IssuedCert>,
    input: &[u8],
    extra: &[&str],
) -> Result<(bool, String)> {
    let guid = instance.guid().to_owned();
    let root = instance
        .credentials()
        .ca()
        .root_cert()
        .display()
        .to_string();
    let connect = format!("127.0.0.1:{port}");
    let (cert, key) = match client {
        Some(c) => (c.cert.display().to_string(), c.key.display().to_string()),
        None => (String::new(), String::new()),
    };
    let mut argv = vec![
        "timeout",
        "30",
        "openssl",
        "s_client",
        "-connect",
        &connect,
        "-servername",
        &guid,
        "-CAfile",
        &root,
        "-verify_return_error",
        "-ign_eof",
    ];
    if client.is_some() {
        argv.extend_from_slice(&["-cert", &cert, "-cert_chain", &cert, "-key", &key]);
    }
    argv.extend_from_slice(extra);
    let out = instance.exec_with_stdin(&argv, input)?;
    Ok((
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

/// The sidecar's `/metrics` (Prometheus text).
pub fn metrics(instance: &Instance) -> Result<Metrics> {
    let r = admin_get(instance, "/metrics")?;
    if r.status != 200 {
        bail!("GET /metrics answered {}: {}", r.status, r.text());
    }
    Ok(Metrics(r.text()))
}

/// A `/metrics` scrape.
#[derive(Debug, Clone)]
pub struct Metrics(pub String);

impl Metrics {
    /// The value of one series, written exactly as exposed, e.g.
    /// `tls_sidecar_connections_total{listener="8443"}`.
    pub fn get(&self, series: &str) -> Option<f64> {
        self.0.lines().find_map(|l| {
            let rest = l.strip_prefix(series)?.strip_prefix(' ')?;
            rest.split_whitespace().next()?.parse().ok()
        })
    }

    /// [`Metrics::get`], failing with the whole scrape when the series is missing.
    pub fn value(&self, series: &str) -> Result<f64> {
        self.get(series)
            .with_context(|| format!("no series {series} in /metrics:\n{}", self.0))
    }
}

/// `openssl s_client -connect 127.0.0.1:8443 -servername <guid> -CAfile <appRootCA> -showcerts`
/// (stdin closed, so it disconnects after the handshake); stdout and stderr together.
pub fn s_client(instance: &Instance, extra: &[&str]) -> Result<String> {
    let guid = instance.guid().to_owned();
    let root = instance
        .credentials()
        .ca()
        .root_cert()
        .display()
        .to_string();
    let connect = format!("127.0.0.1:{TLS_PORT}");
    let mut argv = vec![
        "openssl",
        "s_client",
        "-connect",
        &connect,
        "-servername",
        &guid,
        "-CAfile",
        &root,
        "-showcerts",
    ];
    argv.extend_from_slice(extra);
    let out = instance.exec(&argv)?;
    Ok(format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// A TLS connection from Rust to the sidecar, verifying it against appRootCA for the instance
/// GUID; with `client`, presenting that certificate.
pub fn connect_tls(instance: &Instance, client: Option<&IssuedCert>) -> Result<TlsStream> {
    connect_tls_on(instance, TLS_PORT, client, &[])
}

/// [`connect_tls`] to `port`, offering `alpn` protocols.
pub fn connect_tls_on(
    instance: &Instance,
    port: u16,
    client: Option<&IssuedCert>,
    alpn: &[&str],
) -> Result<TlsStream> {
    let root = instance.credentials().ca().root_cert().to_path_buf();
    let config = client_config_with_alpn(
        &root,
        client.map(|c| (c.cert.as_path(), c.key.as_path())),
        alpn,
    )?;
    let tcp = instance.connect(port)?;
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(20)))?;
    handshake(config, instance.guid(), tcp).context("TLS handshake with the sidecar")
}
