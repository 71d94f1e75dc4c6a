//! Talking to our sidecar inside an [`Instance`]: readiness, and the clients a user would use
//! (`curl`, `openssl s_client`) run inside the instance's network namespace.

use crate::cell::IssuedCert;
use crate::http::{Response, request};
use crate::launch::{APP_PORT, Instance};
use crate::tls::{TlsStream, client_config, handshake};
use crate::util::{Deadline, poll};
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
    instance.wait_for_port(APP_PORT, deadline)?;
    let sidecar = instance.process(NAME)?;
    sidecar.wait_for_log(&format!("listening on 0.0.0.0:{TLS_PORT}"), deadline)?;
    poll(deadline, "the sidecar's GET /ready to answer 200", || {
        if let Some(status) = sidecar.try_status()? {
            bail!("{NAME} exited ({status})\n{}", sidecar.logs());
        }
        match admin_get(instance, "/ready") {
            Ok(r) if r.status == 200 => Ok(Some(())),
            Ok(r) => bail!("/ready answered {}: {}", r.status, r.text()),
            Err(e) => Err(e),
        }
    })
    .map_err(|e| crate::Error::msg(format!("{e}\n{}", instance.logs())))
}

/// `curl -sS --cacert <appRootCA> --resolve <guid>:8443:127.0.0.1 https://<guid>:8443<path>`
/// plus `extra` arguments, inside the instance.
pub fn curl(instance: &Instance, path: &str, extra: &[&str]) -> Result<Output> {
    let guid = instance.guid().to_owned();
    let root = instance
        .credentials()
        .ca()
        .root_cert()
        .display()
        .to_string();
    let resolve = format!("{guid}:{TLS_PORT}:127.0.0.1");
    let url = format!("https://{guid}:{TLS_PORT}{path}");
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
    argv.extend_from_slice(extra);
    argv.push(&url);
    instance.exec(&argv)
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
    let root = instance.credentials().ca().root_cert().to_path_buf();
    let config = client_config(&root, client.map(|c| (c.cert.as_path(), c.key.as_path())))?;
    let tcp = instance.connect(TLS_PORT)?;
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(20)))?;
    handshake(config, instance.guid(), tcp).context("TLS handshake with the sidecar")
}
