//! Test helpers: Diego-shaped certificates and the credential directory come from the
//! workspace test kit (`tls-sidecar-testkit`); here the sidecar's configuration for tests, a
//! rustls client, tiny apps to forward to, log capture, and waiting under one generous deadline
//! (never a fixed sleep).

#![allow(dead_code)]
// each test binary uses a different part
// Tests may unwrap (clippy.toml); the lint exempts only #[test] fns, not their helpers.
#![allow(clippy::unwrap_used)]

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore, SupportedProtocolVersion};
use rustls_pki_types::pem::PemObject;
use std::future::Future;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Once, OnceLock};
use std::time::Duration;
use tempfile::TempDir;
use tls_sidecar::{ReloadTiming, SidecarConfig};
use tls_sidecar_config::{Env, HostPort, StagedConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Everything a test waits for must happen within this; generous for a loaded 2-core box.
pub const DEADLINE: Duration = Duration::from_secs(60);

pub const TLS13: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];
pub const TLS12: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];
pub const ALL_VERSIONS: &[&SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

// ---------------------------------------------------------------------------------------------
// Certificates and the credential directory (what Diego mounts at /etc/cf-instance-credentials)

// Each test binary uses a different part.
#[allow(unused_imports)]
pub use tls_sidecar_testkit::{
    CaKey, Creds, EXPIRED, Identity, KeyKind, Leaf, NOT_YET_VALID, Pki, Process, TestCa, Validity,
    free_port, new_guid, sidecar_command, unix_now,
};

/// The environment of an instance of `me` whose `certificate.source: minted` uses `ca`
/// (service `test-ca`), with the route `backend.apps.internal`, instance GUID `guid`, index
/// 0, internal IP 127.0.0.1.
pub fn minted_env(me: &Identity, ca: &TestCa, guid: &str) -> Env {
    let vcap = serde_json::json!({
        "application_id": me.app,
        "application_name": "backend",
        "space_id": me.space,
        "organization_id": me.org,
        "application_uris": ["backend.apps.internal", "backend.example.com"],
        "instance_index": 0,
    });
    [
        ("VCAP_APPLICATION", vcap.to_string()),
        ("VCAP_SERVICES", ca.vcap_services("test-ca")),
        ("CF_INSTANCE_GUID", guid.to_owned()),
        ("CF_INSTANCE_INTERNAL_IP", "127.0.0.1".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// The tls-sidecar.yml of a minted instance.
pub const MINTED_YAML: &str =
    "certificate:\n  source: minted\n  service: test-ca\n  validity: 2h\n";

/// The production shape (RSA-3072, PKCS#1), made once per test binary because it is slow.
pub fn leaf_3072() -> &'static Leaf {
    static LEAF: OnceLock<Leaf> = OnceLock::new();
    LEAF.get_or_init(|| Pki::shared().leaf(3072))
}

// ---------------------------------------------------------------------------------------------
// The sidecar

/// The built-in defaults resolved for `creds`, on 127.0.0.1 port 0, forwarding to `app`, with
/// quick reload retries.
pub fn sidecar_config(creds: &Creds, app: SocketAddr) -> SidecarConfig {
    let env: Env = [
        (
            "CF_INSTANCE_CERT".to_owned(),
            creds.cert().display().to_string(),
        ),
        (
            "CF_INSTANCE_KEY".to_owned(),
            creds.key().display().to_string(),
        ),
    ]
    .into();
    let (config, warnings) = resolved_config("", &env, app);
    assert!(warnings.is_empty(), "{warnings:?}");
    config
}

/// `yaml` resolved against `env` as the sidecar would at start, then moved to 127.0.0.1 port
/// 0 (every listener, and the admin port), the first listener forwarding to `app`, with quick
/// reload retries.
pub fn resolved_config(yaml: &str, env: &Env, app: SocketAddr) -> (SidecarConfig, Vec<String>) {
    let (staged, _, _) = StagedConfig::load_with_env(yaml, "test", env, 8080).unwrap();
    let (mut config, warnings) = SidecarConfig::resolve(&staged, env).unwrap();
    for listener in &mut config.listeners {
        listener.bind = loopback(0);
    }
    config.listeners[0].upstream = HostPort {
        host: "127.0.0.1".to_owned(),
        port: app.port(),
    };
    config.admin = Some(loopback(0));
    config.reload = ReloadTiming {
        debounce: Duration::from_millis(50),
        recheck: Duration::from_secs(30),
        retry_min: Duration::from_millis(50),
        retry_max: Duration::from_millis(500),
    };
    (config, warnings)
}

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
}

pub struct Addrs {
    pub tls: SocketAddr,
    pub admin: SocketAddr,
}

pub fn addrs(running: &tls_sidecar::Running) -> Addrs {
    let tls = running.tls_addrs()[0].expect("port 0 binds at once");
    Addrs {
        tls,
        admin: running.admin_addr().expect("port 0 binds at once"),
    }
}

/// A ready sidecar with a fresh 2048-bit identity in front of `app`, with [`sidecar_config`]'s
/// settings after `adjust` has changed what a test needs. Keep the credentials: their files
/// are deleted when they are dropped.
pub async fn front(
    app: SocketAddr,
    adjust: impl FnOnce(&mut SidecarConfig),
) -> (tls_sidecar::Running, Addrs, Creds) {
    let creds = Creds::with(&Pki::shared().leaf(2048));
    let mut config = sidecar_config(&creds, app);
    adjust(&mut config);
    let running = tls_sidecar::start(config).await.unwrap();
    let addrs = addrs(&running);
    until_ready(addrs.admin).await;
    (running, addrs, creds)
}

/// Waits for `GET /ready` to answer 200.
pub async fn until_ready(admin: SocketAddr) {
    eventually("/ready to answer 200", || async {
        matches!(get(admin, "/ready").await, Ok((200, _)))
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Clients

/// A client that trusts only the root, so a chain without the intermediate fails. A fresh
/// config has an empty session cache: every connection made with it is a full handshake.
pub fn client_config(versions: &[&'static SupportedProtocolVersion]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(Pki::shared().root_der.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Arc::new(
        ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// A client presenting `leaf` with its intermediate (as Diego apps do), trusting the shared
/// root, offering `alpn`. A fresh config: no session to resume.
pub fn mtls_client(leaf: &Leaf, alpn: &[&str]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(Pki::shared().root_der.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let chain = CertificateDer::pem_slice_iter(leaf.chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(ALL_VERSIONS)
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(config)
}

/// Connects with `config`, sends `ping` and reads the echo. `Err` carries the failure text: in
/// TLS 1.3 the client finishes its handshake before the server checks the client certificate,
/// so a refusal (`received fatal alert: AccessDenied`) often shows only on the first read.
pub async fn exchange(addr: SocketAddr, config: Arc<ClientConfig>) -> Result<Vec<u8>, String> {
    let mut tls = connect_with(addr, config)
        .await
        .map_err(|e| e.to_string())?;
    tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
    let mut back = vec![0; 4];
    match tokio::time::timeout(DEADLINE, tls.read_exact(&mut back)).await {
        Ok(Ok(_)) => Ok(back),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer".to_owned()),
    }
}

/// A `$CF_SYSTEM_CERT_PATH` as Diego writes it: `trusted-ca-<n>.crt` files.
pub struct TrustDir {
    pub dir: TempDir,
}

impl TrustDir {
    /// One file per PEM bundle, `trusted-ca-1.crt` and up.
    pub fn with(bundles: &[&str]) -> TrustDir {
        let trust = TrustDir {
            dir: tempfile::tempdir().unwrap(),
        };
        for (i, pem) in bundles.iter().enumerate() {
            trust.write(&format!("trusted-ca-{}.crt", i + 1), pem);
        }
        trust
    }

    /// Writes a file the way certsplitter does: a temp name, then a rename.
    pub fn write(&self, name: &str, pem: &str) {
        let tmp = self.dir.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, pem).unwrap();
        std::fs::rename(tmp, self.dir.path().join(name)).unwrap();
    }

    /// Trust exactly this directory's certificates.
    pub fn config(&self) -> tls_sidecar::TrustConfig {
        tls_sidecar::TrustConfig {
            system_dir: Some(self.dir.path().to_owned()),
            system_certs: true,
            ca_files: Vec::new(),
            extra: Vec::new(),
        }
    }
}

/// The value of one series on `/metrics`, e.g.
/// `tls_sidecar_handshake_failures_total{listener="8443",reason="denied"}`.
pub async fn metric(admin: SocketAddr, series: &str) -> Option<String> {
    let (_, body) = get(admin, "/metrics").await.ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .map(str::to_owned)
}

/// Waits until `series` reads `value`.
pub async fn until_metric(admin: SocketAddr, series: &str, value: &str) {
    eventually(&format!("{series} to read {value}"), || async {
        metric(admin, series).await.as_deref() == Some(value)
    })
    .await;
}

/// Connects and verifies the server as 127.0.0.1 (the IP SAN of every test leaf).
pub async fn connect_with(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into());
    TlsConnector::from(config).connect(name, tcp).await
}

pub async fn connect(addr: SocketAddr) -> std::io::Result<TlsStream<TcpStream>> {
    connect_with(addr, client_config(ALL_VERSIONS)).await
}

pub fn served_leaf(tls: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    tls.get_ref()
        .1
        .peer_certificates()
        .expect("a server certificate")[0]
        .clone()
}

/// Writes `message` and reads the same number of bytes back (through an echo app).
pub async fn echo(tls: &mut TlsStream<TcpStream>, message: &[u8]) -> Vec<u8> {
    tls.write_all(message).await.unwrap();
    let mut back = vec![0; message.len()];
    tls.read_exact(&mut back).await.unwrap();
    back
}

/// Reads until the connection ends; `true` when it ended (cleanly or not) within the deadline.
pub async fn closes(tls: &mut TlsStream<TcpStream>) -> bool {
    let mut sink = Vec::new();
    tokio::time::timeout(DEADLINE, tls.read_to_end(&mut sink))
        .await
        .is_ok()
}

/// `GET path` on the admin port: status and body.
pub async fn get(admin: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    request(
        admin,
        &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n"),
    )
    .await
}

pub async fn request(admin: SocketAddr, raw: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(admin).await?;
    stream.write_all(raw.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let status = response
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

// ---------------------------------------------------------------------------------------------
// Apps to forward to

/// Echoes every byte, and half-closes when the client does.
pub async fn echo_app() -> SocketAddr {
    app(|stream| async move {
        let (mut r, mut w) = stream.into_split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
        let _ = w.shutdown().await;
    })
    .await
}

/// Reads until the client's FIN, then answers `got <n> bytes: <data>` and closes.
pub async fn answer_after_eof_app() -> SocketAddr {
    app(|mut stream| async move {
        let mut data = Vec::new();
        if stream.read_to_end(&mut data).await.is_ok() {
            let answer = format!(
                "got {} bytes: {}",
                data.len(),
                String::from_utf8_lossy(&data)
            );
            let _ = stream.write_all(answer.as_bytes()).await;
        }
    })
    .await
}

/// Sends `hello`, half-closes, then reports everything the client sends until its FIN.
pub async fn greet_then_listen_app() -> (SocketAddr, mpsc::UnboundedReceiver<Vec<u8>>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let addr = app(move |mut stream| {
        let tx = tx.clone();
        async move {
            let _ = stream.write_all(b"hello").await;
            let _ = stream.shutdown().await;
            let mut data = Vec::new();
            let _ = stream.read_to_end(&mut data).await;
            let _ = tx.send(data);
        }
    })
    .await;
    (addr, rx)
}

/// An echo app that counts the connections it accepts (to prove nothing reached it).
pub async fn counting_echo_app() -> (SocketAddr, Arc<AtomicU32>) {
    let count = Arc::new(AtomicU32::new(0));
    let seen = count.clone();
    let addr = app(move |stream| {
        seen.fetch_add(1, Ordering::SeqCst);
        async move {
            let (mut r, mut w) = stream.into_split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
            let _ = w.shutdown().await;
        }
    })
    .await;
    (addr, count)
}

/// An address where nothing listens.
pub async fn dead_app() -> SocketAddr {
    let listener = TcpListener::bind(loopback(0)).await.unwrap();
    listener.local_addr().unwrap()
}

/// An app on port 0 that runs `handle` on each connection it accepts.
pub async fn app<F, Fut>(handle: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind(loopback(0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(handle(stream));
        }
    });
    addr
}

// ---------------------------------------------------------------------------------------------
// Waiting

/// Polls `check` until it is true; fails the test after [`DEADLINE`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sleep(Duration::from_millis(25)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Logs

static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LINES
            .lock()
            .unwrap()
            .push(String::from_utf8_lossy(buf).into_owned());
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Sends the library's log events (of every test in this binary) to memory.
pub fn capture_logs() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(|| Capture)
            .try_init();
    });
}

/// Waits for a captured log line containing every one of `parts` (tests running in parallel
/// share the log: include something unique, such as this test's credential path).
pub async fn log_line(parts: &[&str]) -> String {
    let mut found = None;
    eventually(&format!("a log line with {parts:?}"), || {
        found = LINES
            .lock()
            .unwrap()
            .iter()
            .find(|l| parts.iter().all(|p| l.contains(p)))
            .cloned();
        let done = found.is_some();
        async move { done }
    })
    .await;
    found.unwrap_or_default()
}
