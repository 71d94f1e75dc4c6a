//! Hostile input and platform faults against the real `tls-sidecar` binary, one process per
//! test: garbage and slow handshakes, old TLS versions, renegotiation, client certificates of
//! every shape, HTTP framing attacks, a hung app, credentials that vanish or cannot be read,
//! a rotation storm and SIGTERM under load. In CF a sidecar exit kills the whole app instance,
//! so every test also checks that the process is still there and still serves a legitimate
//! client afterwards.
//!
//! Everything is loopback; every load loop is bounded in count and in time; readiness is
//! waited for (log lines, `/ready`, metrics), and sleeps only pace the loads.

// Tests may unwrap (clippy.toml); the lint exempts only #[test] fns, not their helpers.
#![allow(clippy::unwrap_used)]

mod common;

use common::{
    Creds, DEADLINE, Identity, KeyKind, Leaf, NOT_YET_VALID, Pki, Process, Validity, client_config,
    echo_app, eventually, free_port, get, loopback, metric, mtls_client, served_leaf,
    sidecar_command,
};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep, timeout};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// The tests that load the machine (floods, keep-alive load, a 100 MB body) run one at a time:
/// the time bounds they assert are about the sidecar, not about two of them sharing two cores.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const BIN: &str = env!("CARGO_BIN_EXE_tls-sidecar");
/// `vcap` on cflinuxfs4: who runs the sidecar in CF.
const VCAP_UID: u32 = 2000;

// ---------------------------------------------------------------------------------------------
// Certificates and clients: common's Diego-shaped PKI

/// A Diego-shaped server leaf for a random app (P-256: quick to make).
fn server(pki: &Pki) -> Leaf {
    pki.ec_leaf()
}

/// A client trusting only the shared root, offering `alpn`, presenting `cert` if given. A fresh
/// config: no session to resume, every connection is a full handshake.
fn tls_client(alpn: &[&str], cert: Option<&Leaf>) -> Arc<ClientConfig> {
    match cert {
        Some(cert) => mtls_client(cert, alpn),
        None => {
            let mut config = (*client_config(rustls::ALL_VERSIONS)).clone();
            config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
            Arc::new(config)
        }
    }
}

/// `VCAP_APPLICATION` of an app with `identity`, as the binary reads it from its environment.
fn vcap_json(identity: &Identity) -> String {
    format!(
        r#"{{"application_id":"{}","application_name":"backend","space_id":"{}","organization_id":"{}"}}"#,
        identity.app, identity.space, identity.org
    )
}

/// `n` bytes of noise.
fn random_bytes(n: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut bytes)
        .unwrap();
    bytes
}

// ---------------------------------------------------------------------------------------------
// The credential and trust directories, world-readable so that uid 2000 can read them

/// A world-readable temp dir (tempfile makes them 0700).
fn open_dir() -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

// ---------------------------------------------------------------------------------------------
// The sidecar process

/// One listener's YAML entry.
fn listener(port: u16, upstream: SocketAddr, extra: &str) -> String {
    format!("  - port: {port}\n    upstream: {upstream}\n{extra}")
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

struct Sidecar {
    process: Process,
    admin: SocketAddr,
    /// The config file and, unless given, the credentials and the trust directory.
    _dir: TempDir,
}

/// How to run the binary.
struct Options<'a> {
    /// `listeners:` entries (see [`listener`]) and any other top-level YAML.
    yaml: String,
    /// `CF_INSTANCE_CERT` / `CF_INSTANCE_KEY` live here.
    creds: &'a Creds,
    /// `CF_SYSTEM_CERT_PATH`.
    trust: Option<&'a Path>,
    env: Vec<(&'static str, String)>,
    /// Run as uid/gid 2000 (vcap) when the test runs as root.
    as_vcap: bool,
}

impl<'a> Options<'a> {
    fn new(creds: &'a Creds, listeners: &[String], rest: &str) -> Self {
        Options {
            yaml: format!("listeners:\n{}{rest}", listeners.concat()),
            creds,
            trust: None,
            env: Vec::new(),
            as_vcap: false,
        }
    }
}

impl Sidecar {
    fn spawn(opts: Options<'_>) -> Sidecar {
        let dir = open_dir();
        let admin = loopback(free_port());
        let config = dir.path().join("tls-sidecar.yml");
        std::fs::write(&config, format!("{}admin:\n  listen: {admin}\n", opts.yaml)).unwrap();
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut cmd = sidecar_command(Path::new(BIN), &config, opts.creds, 8080);
        if let Some(trust) = opts.trust {
            cmd.env("CF_SYSTEM_CERT_PATH", trust);
        }
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        if opts.as_vcap && is_root() {
            cmd.uid(VCAP_UID).gid(VCAP_UID);
        }
        Sidecar {
            process: Process::spawn(cmd),
            admin,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        self.process.log().join("\n")
    }

    fn lines_with(&self, parts: &[&str]) -> Vec<String> {
        self.process.lines_with(parts)
    }

    /// Waits for a log line containing every one of `parts`.
    async fn line(&self, parts: &[&str]) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(line) = self.lines_with(parts).into_iter().next() {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {parts:?}; log:\n{}",
                self.log()
            );
            sleep(Duration::from_millis(25)).await;
        }
    }

    async fn ready(&self) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if matches!(get(self.admin, "/ready").await, Ok((200, _))) {
                return;
            }
            self.assert_running();
            assert!(
                Instant::now() < deadline,
                "/ready never answered 200; log:\n{}",
                self.log()
            );
            sleep(Duration::from_millis(25)).await;
        }
    }

    fn assert_running(&self) {
        let status = std::fs::read_to_string(format!("/proc/{}/stat", self.process.id()))
            .unwrap_or_default();
        // Field 3 of /proc/<pid>/stat: Z = exited and not reaped yet.
        let state = status
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next());
        assert!(
            matches!(state, Some(s) if s != 'Z' && s != 'X'),
            "the sidecar exited; log:\n{}",
            self.log()
        );
    }

    /// The process's resident memory (VmRSS), in bytes.
    fn rss(&self) -> u64 {
        tls_sidecar_testkit::rss(self.process.id())
    }

    /// The value of one `/metrics` series, 0 when absent.
    async fn metric(&self, series: &str) -> u64 {
        metric(self.admin, series)
            .await
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    async fn until_metric(&self, series: &str, want: u64) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let got = self.metric(series).await;
            if got == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{series} = {got}, expected {want}; log:\n{}",
                self.log()
            );
            sleep(Duration::from_millis(25)).await;
        }
    }

    fn signal(&self, name: &str) {
        self.process.signal(name);
    }

    async fn exit_status(&mut self) -> ExitStatus {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.process.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the sidecar did not exit; log:\n{}",
                self.log()
            );
            sleep(Duration::from_millis(25)).await;
        }
    }
}

fn failures(port: u16, reason: &str) -> String {
    format!("tls_sidecar_handshake_failures_total{{listener=\"{port}\",reason=\"{reason}\"}}")
}

fn series(family: &str, port: u16) -> String {
    format!("tls_sidecar_{family}{{listener=\"{port}\"}}")
}

// ---------------------------------------------------------------------------------------------
// Clients

async fn tls_connect(
    port: u16,
    config: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(loopback(port)).await?;
    let name = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into());
    timeout(DEADLINE, TlsConnector::from(config).connect(name, tcp))
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

/// One echo round trip on a new connection (tcp mode in front of an echo app).
async fn echo_once(port: u16, config: Arc<ClientConfig>) -> Result<(), String> {
    let mut tls = tls_connect(port, config).await.map_err(|e| e.to_string())?;
    echo_on(&mut tls, b"legit").await
}

async fn echo_on(tls: &mut TlsStream<TcpStream>, message: &[u8]) -> Result<(), String> {
    tls.write_all(message).await.map_err(|e| e.to_string())?;
    let mut back = vec![0; message.len()];
    match timeout(DEADLINE, tls.read_exact(&mut back)).await {
        Ok(Ok(_)) if back == message => Ok(()),
        Ok(Ok(_)) => Err(format!("echoed {back:?}")),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no echo".to_owned()),
    }
}

/// Sends `request` on a new TLS connection and reads until the server closes (or the
/// deadline): everything the server sent, as text; `Err` when nothing came back but an error.
async fn http_exchange(
    port: u16,
    config: Arc<ClientConfig>,
    request: &[u8],
) -> Result<String, String> {
    let mut tls = tls_connect(port, config).await.map_err(|e| e.to_string())?;
    tls.write_all(request).await.map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    let read = timeout(DEADLINE, tls.read_to_end(&mut answer)).await;
    match read {
        Ok(Err(e)) if answer.is_empty() => Err(e.to_string()),
        Err(_) if answer.is_empty() => Err("no answer".to_owned()),
        _ => Ok(String::from_utf8_lossy(&answer).into_owned()),
    }
}

/// Reads until the peer closes the connection; `true` if it did within the deadline (cleanly,
/// with a reset, or with a TLS alert).
async fn closed_by_peer(stream: &mut TcpStream) -> bool {
    let mut sink = [0u8; 4096];
    let until = Instant::now() + DEADLINE;
    loop {
        match tokio::time::timeout_at(until, stream.read(&mut sink)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

/// The bytes of a real ClientHello (rustls, TLS 1.3 and 1.2 offered).
fn client_hello(config: Arc<ClientConfig>) -> Vec<u8> {
    let name = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into());
    let mut conn = rustls::ClientConnection::new(config, name).unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    hello
}

// ---------------------------------------------------------------------------------------------
// Apps to forward to

/// A raw TCP app that records the exact bytes it receives and answers each HTTP/1.1 request
/// (head, then a Content-Length or chunked body) with `200 ok`, or holds every answer while
/// `hold` is true. It never parses leniently: it is the app behind the sidecar, and a test
/// asserts on what reached it.
struct RawApp {
    addr: SocketAddr,
    /// Every byte every connection sent, in arrival order per connection, joined.
    received: Arc<Mutex<Vec<u8>>>,
    /// Complete request heads seen.
    requests: Arc<AtomicUsize>,
    accepts: Arc<AtomicUsize>,
    /// Connections currently open from the sidecar.
    open: Arc<AtomicUsize>,
    hold: watch::Sender<bool>,
}

impl RawApp {
    async fn start() -> RawApp {
        let listener = TcpListener::bind(loopback(0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = RawApp {
            addr,
            received: Arc::default(),
            requests: Arc::default(),
            accepts: Arc::default(),
            open: Arc::default(),
            hold: watch::channel(false).0,
        };
        let (received, requests, accepts, open, hold) = (
            app.received.clone(),
            app.requests.clone(),
            app.accepts.clone(),
            app.open.clone(),
            app.hold.subscribe(),
        );
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                accepts.fetch_add(1, SeqCst);
                open.fetch_add(1, SeqCst);
                let (received, requests, open, hold) = (
                    received.clone(),
                    requests.clone(),
                    open.clone(),
                    hold.clone(),
                );
                tokio::spawn(async move {
                    raw_app_connection(stream, &received, &requests, hold).await;
                    open.fetch_sub(1, SeqCst);
                });
            }
        });
        app
    }

    fn received(&self) -> String {
        String::from_utf8_lossy(&self.received.lock().unwrap()).into_owned()
    }

    /// From now on requests are read but not answered until [`RawApp::release`].
    fn hold(&self) {
        self.hold.send_replace(true);
    }

    fn release(&self) {
        self.hold.send_replace(false);
    }
}

async fn raw_app_connection(
    mut stream: TcpStream,
    received: &Mutex<Vec<u8>>,
    requests: &AtomicUsize,
    mut hold: watch::Receiver<bool>,
) {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        // One complete message in `buf`?
        while let Some(len) = complete_message(&buf) {
            buf.drain(..len);
            requests.fetch_add(1, SeqCst);
            if hold.wait_for(|held| !*held).await.is_err() {
                return;
            }
            let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n";
            if stream.write_all(answer).await.is_err() {
                return;
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                received.lock().unwrap().extend_from_slice(&chunk[..n]);
                buf.extend_from_slice(&chunk[..n]);
            }
        }
    }
}

/// The length of the first complete HTTP/1.1 request in `buf`, if there is one.
fn complete_message(buf: &[u8]) -> Option<usize> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
    };
    if header("transfer-encoding:").is_some_and(|v| v.contains("chunked")) {
        let end = buf[head_end..].windows(5).position(|w| w == b"0\r\n\r\n")?;
        return Some(head_end + end + 5);
    }
    let body: usize = header("content-length:")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (buf.len() >= head_end + body).then_some(head_end + body)
}

/// An app that accepts, reads everything and never answers (a hung process); counts the
/// connections still open from the sidecar.
async fn hung_app() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind(loopback(0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let open = Arc::new(AtomicUsize::new(0));
    let count = open.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, SeqCst);
            let count = count.clone();
            tokio::spawn(async move {
                let mut sink = [0u8; 4096];
                while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                count.fetch_sub(1, SeqCst);
            });
        }
    });
    (addr, open)
}

/// A sidecar with one tcp listener in front of an echo app, serving a fresh server leaf.
struct TcpSetup {
    sidecar: Sidecar,
    port: u16,
    client: Arc<ClientConfig>,
    _creds: TempDir,
}

async fn tcp_sidecar(rest: &str) -> TcpSetup {
    let pki = Pki::shared();
    let app = echo_app().await;
    let dir = open_dir();
    let creds = Creds::in_dir(dir.path().to_owned());
    creds.rotate_the_diego_way(&server(pki));
    let port = free_port();
    let sidecar = Sidecar::spawn(Options::new(&creds, &[listener(port, app, "")], rest));
    sidecar.ready().await;
    TcpSetup {
        sidecar,
        port,
        client: tls_client(&[], None),
        _creds: dir,
    }
}

// ---------------------------------------------------------------------------------------------
// Hostile handshakes

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_instead_of_a_client_hello_is_cut_off_counted_as_protocol_and_a_legit_client_is_still_served()
 {
    let s = tcp_sidecar("").await;
    let mut random = random_bytes(20 * 1024);
    random[0] = 0x16; // claims to be a handshake record; the rest is noise
    let garbage: Vec<(&str, Vec<u8>)> = vec![
        // 20 KiB: more than any record length the noise can claim, so the parser always
        // reaches a verdict instead of waiting for the rest of a record.
        ("random bytes", random_bytes(20 * 1024)),
        ("random bytes in a handshake record", random),
        (
            "plaintext HTTP",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        ("an SSH banner", b"SSH-2.0-OpenSSH_9.6\r\n".to_vec()),
        (
            "a record longer than TLS allows",
            [&[0x16, 0x03, 0x01, 0xff, 0xff][..], &[0u8; 64]].concat(),
        ),
        (
            "an SSLv2 ClientHello",
            [
                &[
                    0x80, 0x2e, 0x01, 0x00, 0x02, 0x00, 0x15, 0x00, 0x00, 0x00, 0x10,
                ][..],
                &[0u8; 0x15 + 0x10],
            ]
            .concat(),
        ),
    ];
    for (what, bytes) in &garbage {
        let mut tcp = TcpStream::connect(loopback(s.port)).await.unwrap();
        // The sidecar may close while we still write: that is the point.
        let _ = tcp.write_all(bytes).await;
        assert!(
            closed_by_peer(&mut tcp).await,
            "{what}: the sidecar kept the connection open"
        );
        echo_once(s.port, s.client.clone())
            .await
            .unwrap_or_else(|e| panic!("after {what}, a legit client failed: {e}"));
    }
    let n = garbage.len() as u64;
    s.sidecar
        .until_metric(&failures(s.port, "protocol"), n)
        .await;
    assert_eq!(s.sidecar.metric(&failures(s.port, "timeout")).await, 0);
    let listener_field = format!("listener={}", s.port);
    let reasons =
        s.sidecar
            .lines_with(&["connection closed", &listener_field, "TLS handshake failed"]);
    assert_eq!(reasons.len(), garbage.len(), "{}", s.sidecar.log());
    for line in &reasons {
        println!("{line}");
    }
    s.sidecar.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn byte_at_a_time_client_hellos_are_cut_at_the_handshake_timeout_while_others_are_served() {
    let s = tcp_sidecar("limits:\n  handshake_timeout: 2s\n").await;
    let hello = client_hello(s.client.clone());
    const SLOW: usize = 20;
    let started = Instant::now();
    let mut slow = Vec::new();
    for _ in 0..SLOW {
        let hello = hello.clone();
        let port = s.port;
        slow.push(tokio::spawn(async move {
            let mut tcp = TcpStream::connect(loopback(port)).await.unwrap();
            let opened = Instant::now();
            // One byte every 100 ms: the whole hello would take ~50 s. Bounded by its length
            // and by the deadline.
            for b in &hello {
                if tcp.write_all(&[*b]).await.is_err() || opened.elapsed() > DEADLINE {
                    break;
                }
                // A closed connection shows as a readable EOF.
                let mut probe = [0u8; 64];
                match timeout(Duration::from_millis(100), tcp.read(&mut probe)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return opened.elapsed(),
                    Ok(Ok(_)) | Err(_) => {}
                }
            }
            assert!(closed_by_peer(&mut tcp).await);
            opened.elapsed()
        }));
    }
    // Meanwhile a legit client is served, again and again.
    let mut served = 0;
    while slow.iter().any(|t| !t.is_finished()) && started.elapsed() < DEADLINE {
        echo_once(s.port, s.client.clone()).await.unwrap();
        served += 1;
        sleep(Duration::from_millis(100)).await;
    }
    for task in slow {
        let cut_after = task.await.unwrap();
        assert!(
            cut_after >= Duration::from_millis(1900) && cut_after < Duration::from_secs(10),
            "a slow handshake was cut after {cut_after:?} (handshake_timeout 2s)"
        );
    }
    assert!(served > 0);
    s.sidecar
        .until_metric(&failures(s.port, "timeout"), SLOW as u64)
        .await;
    s.sidecar
        .until_metric(&series("connections_active", s.port), 0)
        .await;
    let line = s
        .sidecar
        .line(&[
            "connection closed",
            "TLS handshake did not finish within 2000 ms",
        ])
        .await;
    println!("{line}\nlegit exchanges during the slow handshakes: {served}");
}

/// `openssl s_client` with `args` against `port`, stdin `input` (then closed); stdout and
/// stderr together.
fn s_client(port: u16, args: &[&str], input: &[u8]) -> (bool, String) {
    use std::io::Write;
    let connect = format!("127.0.0.1:{port}");
    let mut child = Command::new("timeout")
        .args(["30", "openssl", "s_client", "-connect", &connect])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _ = child.stdin.take().unwrap().write_all(input);
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_0_and_1_1_clients_are_refused_with_a_handshake_failure_alert() {
    let s = tcp_sidecar("").await;
    for version in ["-tls1", "-tls1_1"] {
        let (ok, out) = s_client(s.port, &[version, "-cipher", "DEFAULT@SECLEVEL=0"], b"");
        assert!(!ok, "{version} was accepted:\n{out}");
        // rustls answers a hello without TLS 1.2 or 1.3 with handshake_failure (40).
        assert!(
            out.contains("alert handshake failure") || out.contains("alert protocol version"),
            "{version}: no alert:\n{out}"
        );
        assert!(out.contains("Cipher is (NONE)"), "{version}:\n{out}");
        assert!(!out.contains("BEGIN CERTIFICATE"), "{out}");
    }
    s.sidecar
        .until_metric(&failures(s.port, "protocol"), 2)
        .await;
    for line in s
        .sidecar
        .lines_with(&["connection closed", "TLS handshake failed"])
    {
        println!("{line}");
    }
    echo_once(s.port, s.client.clone()).await.unwrap();
}

/// `openssl s_client -tls1_2 -msg` to `port`: sends a line, asks to renegotiate (`R` on a
/// line of its own), waits, sends another line, and hangs up after 10 s at most. Everything it
/// printed, with every TLS message it sent (`>>>`) and received (`<<<`).
async fn renegotiate(port: u16) -> String {
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let connect = format!("127.0.0.1:{port}");
        let mut child = Command::new("timeout")
            .args([
                "10", "openssl", "s_client", "-connect", &connect, "-tls1_2", "-msg",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"before\n").unwrap();
        std::thread::sleep(Duration::from_millis(500));
        let _ = stdin.write_all(b"R\n");
        std::thread::sleep(Duration::from_millis(2000));
        let _ = stdin.write_all(b"after\n");
        std::thread::sleep(Duration::from_millis(500));
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_1_2_renegotiation_is_never_carried_out_and_the_sidecar_keeps_serving() {
    let s = tcp_sidecar("").await;
    let out = renegotiate(s.port).await;
    assert!(
        out.contains("before"),
        "no echo before renegotiating:\n{out}"
    );
    assert!(
        out.contains("RENEGOTIATING"),
        "s_client did not try:\n{out}"
    );
    let client_hellos = out.matches("ClientHello").count();
    let server_hellos = out.matches("ServerHello\n").count();
    assert_eq!(
        (client_hellos, server_hellos),
        (2, 1),
        "the second ClientHello must get no ServerHello:\n{out}"
    );
    s.sidecar.assert_running();
    echo_once(s.port, s.client.clone()).await.unwrap();
    s.sidecar
        .until_metric(&series("connections_active", s.port), 0)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_1_2_renegotiation_attempt_is_answered_with_a_no_renegotiation_alert_at_once() {
    let s = tcp_sidecar("").await;
    let out = renegotiate(s.port).await;
    assert!(
        out.contains("RENEGOTIATING"),
        "s_client did not try:\n{out}"
    );
    // rustls answers a renegotiation ClientHello with a no_renegotiation warning alert; OpenSSL
    // then fails the renegotiation at once instead of waiting for a ServerHello.
    assert!(
        out.contains("no_renegotiation") || out.contains("no renegotiation"),
        "the client was not told within 2 s:\n{out}"
    );
}

// ---------------------------------------------------------------------------------------------
// Client certificates: the shapes the existing suites do not cover (not yet valid, no OUs, and
// each key type Diego and apps use), against a tcp and an http listener with `allow`, and a tcp
// listener that only requires a verified chain.

/// What a caller should get on one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Served,
    /// tcp mode: an `access_denied` alert in the handshake.
    DeniedAlert,
    /// http mode: `403` saying only `not allowed`.
    Forbidden,
    /// The chain does not verify: a TLS alert, whatever the mode.
    Invalid,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_of_every_key_type_are_served_and_undated_or_ou_less_ones_refused_with_reasons()
 {
    let pki = Pki::shared();
    let me = Identity::random();
    let trust = open_dir();
    std::fs::write(trust.path().join("trusted-ca-1.crt"), &pki.root_pem).unwrap();
    let dir = open_dir();
    let creds = Creds::in_dir(dir.path().to_owned());
    creds.rotate_the_diego_way(&server(pki));
    let (echo, http_app) = (echo_app().await, RawApp::start().await);
    let [tcp_allow, http_allow, tcp_any] = [free_port(), free_port(), free_port()];
    let mut opts = Options::new(
        &creds,
        &[
            listener(tcp_allow, echo, "    allow: [cf:same-space]\n"),
            listener(
                http_allow,
                http_app.addr,
                "    mode: http\n    allow: [cf:same-space]\n",
            ),
            listener(tcp_any, echo, "    client_auth: required\n"),
        ],
        "",
    );
    opts.trust = Some(trust.path());
    opts.env.push(("VCAP_APPLICATION", vcap_json(&me)));
    let sidecar = Sidecar::spawn(opts);
    sidecar.ready().await;

    let neighbour = || me.same_space();
    let callers: Vec<(&str, Leaf, [Outcome; 3])> = vec![
        (
            "RSA-2048",
            pki.issue(&neighbour(), KeyKind::Rsa(2048), Validity::OneDay),
            [Outcome::Served; 3],
        ),
        (
            "RSA-3072 (Diego's size since 2025)",
            pki.issue(&neighbour(), KeyKind::Rsa(3072), Validity::OneDay),
            [Outcome::Served; 3],
        ),
        (
            "ECDSA P-256",
            pki.issue(&neighbour(), KeyKind::Ec, Validity::OneDay),
            [Outcome::Served; 3],
        ),
        (
            "no OUs (a valid chain, no app/space/org)",
            pki.issue_without_ous(KeyKind::Ec),
            [Outcome::DeniedAlert, Outcome::Forbidden, Outcome::Served],
        ),
        (
            "not yet valid",
            pki.issue(&neighbour(), KeyKind::Ec, NOT_YET_VALID),
            [Outcome::Invalid; 3],
        ),
    ];
    for (what, cert, expected) in &callers {
        for (port, want) in [tcp_allow, http_allow, tcp_any].into_iter().zip(expected) {
            let got = if port == http_allow {
                let request = b"GET /probe HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
                match http_exchange(port, tls_client(&["http/1.1"], Some(cert)), request).await {
                    Ok(a) if a.starts_with("HTTP/1.1 200") => Outcome::Served,
                    Ok(a) if a.starts_with("HTTP/1.1 403") => {
                        if *want == Outcome::Forbidden {
                            // The reason is for the log line; the caller learns nothing.
                            assert!(
                                a.ends_with("\r\n\r\nnot allowed\n"),
                                "{what}: 403 with more than `not allowed`:\n{a}"
                            );
                        }
                        Outcome::Forbidden
                    }
                    Ok(a) => panic!("{what} on {port}: {a}"),
                    Err(e) => {
                        assert!(!e.contains("AccessDenied"), "{what} on {port}: {e}");
                        Outcome::Invalid
                    }
                }
            } else {
                match echo_once(port, tls_client(&[], Some(cert))).await {
                    Ok(()) => Outcome::Served,
                    Err(e) if e.contains("AccessDenied") => Outcome::DeniedAlert,
                    Err(_) => Outcome::Invalid,
                }
            };
            assert_eq!(got, *want, "{what} on listener {port}\n{}", sidecar.log());
        }
    }

    // Reasons in the log, and counted per listener.
    let line = sidecar
        .line(&[
            "access denied",
            &format!("listener={tcp_allow}"),
            "no CF app/space/org identity",
        ])
        .await;
    println!("{line}");
    let line = sidecar
        .line(&[
            "msg=\"request\"",
            &format!("listener={http_allow}"),
            "status=403",
            "no CF app/space/org identity",
        ])
        .await;
    println!("{line}");
    for port in [tcp_allow, http_allow, tcp_any] {
        let line = sidecar
            .line(&[
                "connection closed",
                &format!("listener={port}"),
                "client certificate rejected: not valid yet (valid from 2049-01-01T00:00:00Z)",
            ])
            .await;
        println!("{line}");
        sidecar
            .until_metric(&failures(port, "client_cert_invalid"), 1)
            .await;
    }
    sidecar
        .until_metric(&failures(tcp_allow, "denied"), 1)
        .await;
    for (port, denials) in [(tcp_allow, 1), (http_allow, 1), (tcp_any, 0)] {
        sidecar
            .until_metric(&series("authorization_denials_total", port), denials)
            .await;
    }
    // The three accepted key types reached the app with their identity; nothing else did.
    let received = http_app.received();
    assert_eq!(
        http_app.requests.load(SeqCst),
        3,
        "only the served callers reach the app:\n{received}"
    );
    assert_eq!(
        received
            .to_lowercase()
            .matches("x-forwarded-client-cert:")
            .count(),
        3,
        "{received}"
    );
}

// ---------------------------------------------------------------------------------------------
// HTTP framing attacks through TLS, down to the exact bytes the app receives

/// A sidecar with one http listener in front of a [`RawApp`].
async fn http_sidecar(rest: &str) -> (Sidecar, u16, RawApp, TempDir) {
    let pki = Pki::shared();
    let app = RawApp::start().await;
    let dir = open_dir();
    let creds = Creds::in_dir(dir.path().to_owned());
    creds.rotate_the_diego_way(&server(pki));
    let port = free_port();
    let sidecar = Sidecar::spawn(Options::new(
        &creds,
        &[listener(port, app.addr, "    mode: http\n")],
        rest,
    ));
    sidecar.ready().await;
    (sidecar, port, app, dir)
}

/// The follow-up request a smuggling attempt hides behind an ambiguous one.
const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_or_malformed_request_framing_is_refused_before_a_byte_reaches_the_app() {
    let (sidecar, port, app, _dir) = http_sidecar("").await;
    let client = tls_client(&["http/1.1"], None);
    let many_headers: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "two Content-Length headers with different values",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"
                .to_owned(),
            "HTTP/1.1 400",
        ),
        (
            "one Content-Length header with two values",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\nhello!".to_owned(),
            "HTTP/1.1 400",
        ),
        (
            "Transfer-Encoding: chunked, identity",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                .to_owned(),
            "HTTP/1.1 400",
        ),
        (
            "Transfer-Encoding: identity with a Content-Length",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\nContent-Length: 5\r\n\r\nhello"
                .to_owned(),
            "HTTP/1.1 400",
        ),
        (
            "a folded Transfer-Encoding (obs-fold)",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\nContent-Length: 5\r\n\r\nhello"
                .to_owned(),
            "HTTP/1.1 400",
        ),
        (
            "a folded ordinary header (obs-fold)",
            "GET / HTTP/1.1\r\nHost: a\r\nX-Folded: one\r\n two\r\n\r\n".to_owned(),
            "HTTP/1.1 400",
        ),
        (
            "a space before the colon",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\nhello"
                .to_owned(),
            "HTTP/1.1 400",
        ),
        (
            "a bare CR inside a header value",
            "GET / HTTP/1.1\r\nHost: a\r\nX-Split: a\rTransfer-Encoding: chunked\r\n\r\n"
                .to_owned(),
            "HTTP/1.1 400",
        ),
        (
            "200 header fields",
            format!("GET / HTTP/1.1\r\nHost: a\r\n{many_headers}\r\n"),
            "HTTP/1.1 431",
        ),
    ];
    for (what, request, status) in &cases {
        let before = app.received.lock().unwrap().len();
        let answer = http_exchange(
            port,
            client.clone(),
            format!("{request}{SMUGGLED}").as_bytes(),
        )
        .await
        .unwrap_or_else(|e| format!("(error: {e})"));
        let reached = app.received.lock().unwrap()[before..].to_vec();
        let reached = String::from_utf8_lossy(&reached);
        println!("{what}: {:?} -> app got {reached:?}", answer.lines().next());
        assert!(
            answer.starts_with(status),
            "{what}: expected {status}:\n{answer}"
        );
        assert_eq!(
            answer.matches("HTTP/1.1").count(),
            1,
            "{what}: one answer only:\n{answer}"
        );
        assert!(reached.is_empty(), "{what} reached the app:\n{reached}");
        sidecar.assert_running();
    }
    assert_eq!(
        app.accepts.load(SeqCst),
        0,
        "no connection to the app at all"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_lf_line_endings_are_normalised_to_crlf_before_the_app_sees_them() {
    let (sidecar, port, app, _dir) = http_sidecar("").await;
    let client = tls_client(&["http/1.1"], None);
    let request = "POST /bare-lf HTTP/1.1\nHost: a\nContent-Length: 5\nConnection: close\n\nhello";
    let answer = http_exchange(port, client, request.as_bytes())
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let received = app.received();
    println!("the app received: {received:?}");
    let head_end = received.find("\r\n\r\n").expect("a CRLF-terminated head") + 4;
    let (head, body) = received.split_at(head_end);
    assert!(
        head.starts_with("POST /bare-lf HTTP/1.1\r\n"),
        "{received:?}"
    );
    assert_eq!(
        head.matches('\n').count(),
        head.matches("\r\n").count(),
        "a bare LF reached the app: {received:?}"
    );
    assert!(
        head.to_lowercase().contains("content-length: 5\r\n"),
        "{received:?}"
    );
    assert_eq!(body, "hello");
    assert_eq!(app.requests.load(SeqCst), 1);
    sidecar.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_chunked_body_cuts_the_request_off_and_the_smuggled_one_never_reaches_the_app()
{
    let (sidecar, port, app, _dir) = http_sidecar("").await;
    let client = tls_client(&["http/1.1"], None);
    // The head is fine, so it is forwarded; the chunk size is not hex. The app must see a
    // message that ends early, never a second request.
    let request = format!(
        "POST /chunks HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n{SMUGGLED}"
    );
    let answer = http_exchange(port, client, request.as_bytes())
        .await
        .unwrap_or_else(|e| format!("(error: {e})"));
    println!("client got: {answer:?}");
    assert!(!answer.contains("200 OK"), "{answer}");
    eventually("the app's connection to close", || async {
        app.open.load(SeqCst) == 0
    })
    .await;
    let received = app.received();
    println!("the app received: {received:?}");
    assert!(!received.contains("smuggled"), "{received:?}");
    assert!(!received.contains("zz"), "{received:?}");
    assert_eq!(
        app.requests.load(SeqCst),
        0,
        "no complete request: {received:?}"
    );
    sidecar
        .until_metric(&series("connections_active", port), 0)
        .await;
    sidecar.assert_running();
}

// ---------------------------------------------------------------------------------------------
// Faults: a hung app, credentials that vanish or cannot be read

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_tcp_mode_a_hung_app_costs_a_connection_only_until_the_idle_timeout() {
    let pki = Pki::shared();
    let (app, app_open) = hung_app().await;
    let dir = open_dir();
    let creds = Creds::in_dir(dir.path().to_owned());
    creds.rotate_the_diego_way(&server(pki));
    let port = free_port();
    let sidecar = Sidecar::spawn(Options::new(
        &creds,
        &[listener(port, app, "")],
        "limits:\n  idle_timeout: 2s\n",
    ));
    sidecar.ready().await;
    let mut tls = tls_connect(port, tls_client(&[], None)).await.unwrap();
    tls.write_all(b"anyone there?").await.unwrap();
    let sent = Instant::now();
    let mut sink = Vec::new();
    let read = timeout(DEADLINE, tls.read_to_end(&mut sink)).await;
    let waited = sent.elapsed();
    assert!(read.is_ok(), "the connection was never closed");
    assert!(sink.is_empty());
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_secs(10),
        "closed after {waited:?} (idle_timeout 2s)"
    );
    sidecar
        .line(&[
            "connection closed",
            &format!("listener={port}"),
            "idle for 2000 ms",
        ])
        .await;
    sidecar
        .until_metric(&series("connections_active", port), 0)
        .await;
    eventually("the sidecar to close its connection to the app", || async {
        app_open.load(SeqCst) == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_http_mode_a_client_giving_up_on_a_hung_app_leaves_no_connection_behind() {
    let pki = Pki::shared();
    let (app, app_open) = hung_app().await;
    let dir = open_dir();
    let creds = Creds::in_dir(dir.path().to_owned());
    creds.rotate_the_diego_way(&server(pki));
    let port = free_port();
    let sidecar = Sidecar::spawn(Options::new(
        &creds,
        &[listener(port, app, "    mode: http\n")],
        "limits:\n  idle_timeout: 2s\n",
    ));
    sidecar.ready().await;
    for _ in 0..5 {
        let mut tls = tls_connect(port, tls_client(&["http/1.1"], None))
            .await
            .unwrap();
        tls.write_all(b"GET /hang HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        let waited = timeout(Duration::from_millis(500), tls.read(&mut buf)).await;
        assert!(waited.is_err(), "answered: {waited:?}");
        drop(tls); // the client gives up
    }
    sidecar
        .until_metric(&series("connections_active", port), 0)
        .await;
    eventually(
        "the sidecar to close its connections to the app",
        || async { app_open.load(SeqCst) == 0 },
    )
    .await;
    let line = sidecar
        .line(&["msg=\"request\"", &format!("listener={port}"), "path=/hang"])
        .await;
    println!("{line}");
    sidecar.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_http_mode_a_request_to_a_hung_app_ends_by_the_idle_timeout_with_504_or_a_close() {
    let pki = Pki::shared();
    let (app, app_open) = hung_app().await;
    let dir = open_dir();
    let creds = Creds::in_dir(dir.path().to_owned());
    creds.rotate_the_diego_way(&server(pki));
    let port = free_port();
    let sidecar = Sidecar::spawn(Options::new(
        &creds,
        &[listener(port, app, "    mode: http\n")],
        "limits:\n  idle_timeout: 2s\n",
    ));
    sidecar.ready().await;
    let mut tls = tls_connect(port, tls_client(&["http/1.1"], None))
        .await
        .unwrap();
    tls.write_all(b"GET /hang HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let sent = Instant::now();
    let mut answer = Vec::new();
    // Far beyond the idle timeout, far below the deadline.
    let read = timeout(Duration::from_secs(15), tls.read_to_end(&mut answer)).await;
    let waited = sent.elapsed();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        read.is_ok(),
        "still waiting after {waited:?} (idle_timeout 2s)"
    );
    assert!(
        answer.starts_with("HTTP/1.1 504")
            && answer.contains("did not answer within 2000 ms (limits.idle_timeout)"),
        "got {answer:?}"
    );
    assert!(waited < Duration::from_secs(10), "took {waited:?}");
    drop(tls);
    sidecar
        .until_metric(&series("connections_active", port), 0)
        .await;
    eventually("the sidecar to close its connection to the app", || async {
        app_open.load(SeqCst) == 0
    })
    .await;
}

/// A tcp sidecar whose credentials live in `creds`, already holding `first`.
async fn sidecar_with_creds(creds: &Creds, as_vcap: bool) -> (Sidecar, u16) {
    let app = echo_app().await;
    let port = free_port();
    let mut opts = Options::new(creds, &[listener(port, app, "")], "");
    opts.as_vcap = as_vcap;
    (Sidecar::spawn(opts), port)
}

/// The decision: keep serving the last good pair, warn, stay ready. Diego never removes the
/// credentials of a live instance, so their absence is a transient fault (a remount, an
/// operator's mistake); the pair in memory is still valid until its notAfter (which
/// `/metrics` shows), and dropping it would turn a file problem into an outage of the instance.
/// Going unready would not help either: CF's readiness for the app is its own port, and a
/// `/ready` at 503 only stops traffic that the sidecar can still serve correctly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_certificate_files_leave_the_last_good_pair_serving_with_a_warning_and_ready_200() {
    let pki = Pki::shared();
    let (first, second) = (server(pki), server(pki));
    let dir = open_dir();
    let creds = Creds::in_dir(dir.path().to_owned());
    creds.rotate_the_diego_way(&first);
    let (sidecar, port) = sidecar_with_creds(&creds, false).await;
    sidecar.ready().await;

    std::fs::remove_file(creds.key()).unwrap();
    std::fs::remove_file(creds.cert()).unwrap();
    // The watcher sees the deletions; SIGHUP makes sure a re-read happens now.
    sidecar.signal("HUP");
    let line = sidecar
        .line(&[
            "level=warn",
            "certificate reload failed; still serving the previous certificate",
            "does not exist",
        ])
        .await;
    println!("{line}");
    assert_eq!(get(sidecar.admin, "/ready").await.unwrap().0, 200);
    for _ in 0..3 {
        let mut tls = tls_connect(port, tls_client(&[], None)).await.unwrap();
        assert_eq!(served_leaf(&tls), first.leaf_der, "the last good pair");
        echo_on(&mut tls, b"still here").await.unwrap();
    }
    assert!(
        sidecar
            .metric("tls_sidecar_certificate_reloads_total{result=\"failure\"}")
            .await
            >= 1
    );

    // Files back: picked up without a restart.
    creds.rotate_the_diego_way(&second);
    // A fresh client each time: a resumed TLS 1.3 session would show the chain of the
    // handshake that issued its ticket.
    eventually("the new pair to be served", || async {
        match tls_connect(port, tls_client(&[], None)).await {
            Ok(tls) => served_leaf(&tls) == second.leaf_der,
            Err(_) => false,
        }
    })
    .await;
    sidecar.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_credentials_dir_at_start_keeps_the_sidecar_waiting_at_503_until_it_becomes_readable()
 {
    let pki = Pki::shared();
    let dir = open_dir();
    let creds = Creds::in_dir(dir.path().join("creds"));
    std::fs::create_dir(creds.dir()).unwrap();
    creds.rotate_the_diego_way(&server(pki));
    // Root owns it, mode 000: vcap (or, without root, this very user) cannot enter it.
    std::fs::set_permissions(creds.dir(), std::fs::Permissions::from_mode(0o000)).unwrap();
    let (sidecar, port) = sidecar_with_creds(&creds, true).await;

    let line = sidecar
        .line(&["no certificate loaded yet", "Permission denied"])
        .await;
    println!("{line}");
    let (status, body) = get(sidecar.admin, "/ready").await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("cannot read"), "{body}");
    // It waits instead of exiting: still alive after a few retries.
    let retries = || sidecar.lines_with(&["no certificate loaded yet"]).len();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        sidecar.assert_running();
        sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(get(sidecar.admin, "/live").await.unwrap().0, 200);
    println!("warnings while waiting: {}", retries());

    std::fs::set_permissions(creds.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    sidecar.ready().await;
    echo_once(port, tls_client(&[], None)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credentials_dir_that_does_not_exist_yet_keeps_the_sidecar_waiting_until_it_appears() {
    let pki = Pki::shared();
    let dir = open_dir();
    let creds = Creds::in_dir(dir.path().join("not-mounted-yet"));
    let (sidecar, port) = sidecar_with_creds(&creds, true).await;
    let line = sidecar
        .line(&["no certificate loaded yet", "does not exist"])
        .await;
    println!("{line}");
    let (status, body) = get(sidecar.admin, "/ready").await.unwrap();
    assert_eq!(status, 503, "{body}");
    sleep(Duration::from_secs(1)).await;
    sidecar.assert_running();

    std::fs::create_dir(creds.dir()).unwrap();
    std::fs::set_permissions(creds.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    creds.rotate_the_diego_way(&server(pki));
    sidecar.ready().await;
    echo_once(port, tls_client(&[], None)).await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Rotation storm and SIGTERM under load

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    errors: Mutex<Vec<String>>,
}

impl Tally {
    fn record(&self, result: Result<(), String>) {
        match result {
            Ok(()) => {
                self.ok.fetch_add(1, SeqCst);
            }
            Err(e) => {
                self.failed.fetch_add(1, SeqCst);
                let mut errors = self.errors.lock().unwrap();
                if errors.len() < 10 {
                    errors.push(e);
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_100_rotations_50_ms_apart_fails_no_request_of_a_keep_alive_load() {
    let _heavy = HEAVY.lock().await;
    const ROTATIONS: usize = 100;
    /// Each load task stops after this many exchanges even if the storm never ended.
    const MAX_EXCHANGES: u64 = 100_000;
    let pki = Pki::shared();
    let leaves: Vec<Leaf> = (0..5).map(|_| server(pki)).collect();
    let dir = open_dir();
    let creds = Creds::in_dir(dir.path().to_owned());
    creds.rotate_the_diego_way(&leaves[0]);
    let (sidecar, port) = sidecar_with_creds(&creds, false).await;
    sidecar.ready().await;
    let client = tls_client(&[], None);
    let stop = Arc::new(AtomicBool::new(false));
    let (keep_alive, fresh) = (Arc::new(Tally::default()), Arc::new(Tally::default()));

    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, tally, client) = (stop.clone(), keep_alive.clone(), client.clone());
        load.push(tokio::spawn(async move {
            let mut tls = tls_connect(port, client).await.unwrap();
            let mut n = 0;
            while !stop.load(SeqCst) && n < MAX_EXCHANGES {
                n += 1;
                tally.record(echo_on(&mut tls, format!("keep-alive {n}").as_bytes()).await);
            }
        }));
    }
    {
        let (stop, tally) = (stop.clone(), fresh.clone());
        load.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(SeqCst) && n < MAX_EXCHANGES {
                n += 1;
                // A fresh config: a full handshake each time, meeting every reload.
                tally.record(echo_once(port, tls_client(&[], None)).await);
            }
        }));
    }
    let started = Instant::now();
    for i in 1..=ROTATIONS {
        // Never the pair being served: every rotation is a change.
        creds.rotate_the_diego_way(&leaves[1 + i % 4]);
        sleep(Duration::from_millis(50)).await;
    }
    let last = &leaves[1 + ROTATIONS % 4];
    eventually("the last rotated pair to be served", || async {
        match tls_connect(port, tls_client(&[], None)).await {
            Ok(tls) => served_leaf(&tls) == last.leaf_der,
            Err(_) => false,
        }
    })
    .await;
    stop.store(true, SeqCst);
    for task in load {
        task.await.unwrap();
    }
    let reloads = sidecar
        .metric("tls_sidecar_certificate_reloads_total{result=\"success\"}")
        .await;
    println!(
        "{ROTATIONS} rotations in {:?}: {} keep-alive exchanges ok, {} failed; {} new connections ok, {} failed; {reloads} successful reloads",
        started.elapsed(),
        keep_alive.ok.load(SeqCst),
        keep_alive.failed.load(SeqCst),
        fresh.ok.load(SeqCst),
        fresh.failed.load(SeqCst),
    );
    assert!(
        keep_alive.ok.load(SeqCst) > 0 && fresh.ok.load(SeqCst) > 0,
        "no load ran"
    );
    assert_eq!(
        (keep_alive.failed.load(SeqCst), fresh.failed.load(SeqCst)),
        (0, 0),
        "{:?} {:?}\n{}",
        keep_alive.errors.lock().unwrap(),
        fresh.errors.lock().unwrap(),
        sidecar.log()
    );
    assert!(reloads >= 2, "{reloads}");
    assert_eq!(get(sidecar.admin, "/ready").await.unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_finishes_every_request_already_started_and_refuses_new_connections() {
    let _heavy = HEAVY.lock().await;
    const IN_FLIGHT: usize = 32;
    let (mut sidecar, port, app, _dir) = http_sidecar("").await;
    let client = tls_client(&["http/1.1"], None);
    // Warm keep-alive connections, then one request on each that the app holds.
    let mut conns = Vec::new();
    for _ in 0..IN_FLIGHT {
        conns.push(tls_connect(port, client.clone()).await.unwrap());
    }
    app.hold();
    let mut requests = Vec::new();
    for (i, mut tls) in conns.into_iter().enumerate() {
        requests.push(tokio::spawn(async move {
            let request = format!("GET /in-flight/{i} HTTP/1.1\r\nHost: a\r\n\r\n");
            tls.write_all(request.as_bytes()).await.unwrap();
            let mut answer = Vec::new();
            let _ = timeout(DEADLINE, tls.read_to_end(&mut answer)).await;
            String::from_utf8_lossy(&answer).into_owned()
        }));
    }
    eventually("every request to reach the app", || async {
        app.requests.load(SeqCst) == IN_FLIGHT
    })
    .await;

    sidecar.signal("TERM");
    sidecar
        .line(&["draining: stopped accepting connections"])
        .await;
    let (status, _) = get(sidecar.admin, "/ready").await.unwrap();
    assert_eq!(status, 503);
    // New connections are refused by the kernel: the listening socket is closed.
    let refused = TcpStream::connect(loopback(port)).await;
    assert!(
        refused.is_err(),
        "a new connection was accepted during the drain"
    );

    app.release();
    for request in requests {
        let answer = request.await.unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "an in-flight request failed: {answer:?}"
        );
    }
    let status = sidecar.exit_status().await;
    assert_eq!(status.code(), Some(0), "{}", sidecar.log());
    let line = sidecar.line(&["drain finished"]).await;
    println!("{line}");
    assert!(
        line.contains(&format!("finished={IN_FLIGHT}")) && line.contains("closed=0"),
        "{line}"
    );
}

// ---------------------------------------------------------------------------------------------
// Availability: floods, stalled readers and a saturated app (issue #11)

/// What [`BusyApp`] does once it has read a request head (tcp mode: at once).
#[derive(Clone, Copy)]
enum Answer {
    /// tcp mode: zeros, as fast as the sidecar takes them, forever.
    Firehose,
    /// An HTTP response announcing `n` bytes, sent as fast as the sidecar takes them.
    Big(u64),
    /// An HTTP response of `n` bytes, one every `every`.
    Trickle(u64, Duration),
    /// Nothing, ever (a hung app).
    Nothing,
}

/// An app that answers every connection with `answer` and counts the connections the sidecar
/// holds open to it.
struct BusyApp {
    addr: SocketAddr,
    open: Arc<AtomicUsize>,
    most_open: Arc<AtomicUsize>,
}

impl BusyApp {
    async fn start(answer: Answer) -> BusyApp {
        let listener = TcpListener::bind(loopback(0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicUsize::new(0));
        let most_open = Arc::new(AtomicUsize::new(0));
        let (count, most) = (open.clone(), most_open.clone());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let now = count.fetch_add(1, SeqCst) + 1;
                most.fetch_max(now, SeqCst);
                let count = count.clone();
                tokio::spawn(async move {
                    busy_connection(&mut stream, answer).await;
                    count.fetch_sub(1, SeqCst);
                });
            }
        });
        BusyApp {
            addr,
            open,
            most_open,
        }
    }

    fn open(&self) -> usize {
        self.open.load(SeqCst)
    }
}

/// Serves one connection of a [`BusyApp`] until the sidecar closes it.
async fn busy_connection(stream: &mut TcpStream, answer: Answer) {
    let zeros = vec![0u8; 64 * 1024];
    if !matches!(answer, Answer::Firehose) {
        // The request head (a GET: no body).
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
                _ => return,
            }
        }
    }
    match answer {
        Answer::Firehose => while stream.write_all(&zeros).await.is_ok() {},
        Answer::Big(n) => {
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n");
            if stream.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let mut left = n;
            while left > 0 {
                let chunk = left.min(zeros.len() as u64) as usize;
                if stream.write_all(&zeros[..chunk]).await.is_err() {
                    return;
                }
                left -= chunk as u64;
            }
        }
        Answer::Trickle(n, every) => {
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n");
            if stream.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            for _ in 0..n {
                sleep(every).await;
                if stream.write_all(b"x").await.is_err() {
                    return;
                }
            }
        }
        Answer::Nothing => {}
    }
    // Hold the connection until the sidecar closes it.
    let mut sink = [0u8; 4096];
    while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
}

/// A sidecar with the given listener entries (`extra` per listener) in front of `app`.
async fn sidecar_for(app: SocketAddr, extras: &[&str], rest: &str) -> (Sidecar, Vec<u16>, TempDir) {
    let pki = Pki::shared();
    let dir = open_dir();
    let creds = Creds::in_dir(dir.path().to_owned());
    creds.rotate_the_diego_way(&server(pki));
    let ports: Vec<u16> = extras.iter().map(|_| free_port()).collect();
    let entries: Vec<String> = ports
        .iter()
        .zip(extras)
        .map(|(port, extra)| listener(*port, app, extra))
        .collect();
    let sidecar = Sidecar::spawn(Options::new(&creds, &entries, rest));
    sidecar.ready().await;
    (sidecar, ports, dir)
}

/// One http listener with a 1 s idle_timeout in front of `app`, for the tests of readers and
/// apps that stop: the sidecar, the listener's port, and the directory of its credentials.
async fn http_with_1s_idle(app: SocketAddr) -> (Sidecar, u16, TempDir) {
    let (sidecar, ports, dir) =
        sidecar_for(app, &["    mode: http\n"], "limits:\n  idle_timeout: 1s\n").await;
    (sidecar, ports[0], dir)
}

/// Keeps `held` TCP connections to `port` open that never send a byte, replacing each the
/// sidecar closes (or the oldest, once `held` are open) as fast as it can, until `stop`.
/// Returns how many it opened.
async fn idle_flood(port: u16, held: usize, mut stop: watch::Receiver<bool>) -> u64 {
    let mut open = std::collections::VecDeque::with_capacity(held);
    let mut opened = 0u64;
    while !*stop.borrow() {
        let connect = TcpStream::connect(loopback(port));
        let tcp = tokio::select! {
            tcp = connect => tcp,
            _ = stop.changed() => break,
        };
        match tcp {
            Ok(tcp) => {
                opened += 1;
                open.push_back(tcp);
                if open.len() > held {
                    open.pop_front();
                }
            }
            // Out of ports or file descriptors for a moment: let some go.
            Err(_) => {
                open.pop_front();
                tokio::task::yield_now().await;
            }
        }
    }
    opened
}

/// Fresh callers, one after the other for `period`: each connects, completes a TLS handshake
/// and gets its echo; returns the slowest and the count.
async fn fresh_callers(port: u16, period: Duration) -> (Duration, usize) {
    let until = Instant::now() + period;
    let (mut slowest, mut served) = (Duration::ZERO, 0);
    while Instant::now() < until {
        let started = Instant::now();
        let result = timeout(
            Duration::from_secs(5),
            echo_once(port, tls_client(&[], None)),
        )
        .await;
        let took = started.elapsed();
        assert!(
            matches!(result, Ok(Ok(()))),
            "a fresh caller was not served during the flood ({took:?}): {result:?}"
        );
        slowest = slowest.max(took);
        served += 1;
        sleep(Duration::from_millis(50)).await;
    }
    (slowest, served)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_an_idle_connection_flood_of_five_times_the_slots_every_fresh_caller_is_served_within_a_second()
 {
    let _heavy = HEAVY.lock().await;
    let app = echo_app().await;
    let (sidecar, ports, _dir) = sidecar_for(app, &[""], "limits:\n  max_connections: 100\n").await;
    let port = ports[0];
    // Established before the flood: must never be shed for it.
    let mut established = tls_connect(port, tls_client(&[], None)).await.unwrap();
    echo_on(&mut established, b"before").await.unwrap();

    let (stop, stopped) = watch::channel(false);
    let floods: Vec<_> = (0..2)
        .map(|_| tokio::spawn(idle_flood(port, 250, stopped.clone())))
        .collect();
    // The flood is at the cap once the sidecar starts shedding.
    eventually("the sidecar to shed under the flood", || async {
        sidecar
            .metric(&series("connections_shed_total", port))
            .await
            > 0
    })
    .await;
    // The callers run on a thread and runtime of their own, as a caller elsewhere would: in
    // the flood's runtime, a ClientHello could wait behind the flood's own wake-ups long
    // enough to be shed as silent, which says nothing about the sidecar.
    let callers = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(fresh_callers(port, Duration::from_secs(4)))
    });
    let (slowest, served) = tokio::task::spawn_blocking(move || callers.join())
        .await
        .unwrap()
        .expect("every fresh caller was served");
    stop.send_replace(true);
    let mut opened = 0;
    for flood in floods {
        opened += flood.await.unwrap();
    }

    assert!(
        slowest < Duration::from_secs(1),
        "slowest fresh caller {slowest:?} ({served} served, {opened} flood connections)"
    );
    assert!(opened >= 500, "the flood opened only {opened} connections");
    echo_on(&mut established, b"after").await.unwrap();
    let shed = sidecar
        .metric(&series("connections_shed_total", port))
        .await;
    assert!(shed > 0, "nothing counted as shed");
    eprintln!(
        "flood: {opened} connections opened, {shed} shed; {served} fresh callers, slowest {slowest:?}"
    );
    // Summarised, not one line per shed connection.
    // No line per shed connection either.
    assert!(
        sidecar
            .lines_with(&["shed before the TLS handshake finished"])
            .is_empty()
    );
    let lines = sidecar.lines_with(&["connection(s) that had not finished their TLS handshake"]);
    assert!(
        !lines.is_empty() && (lines.len() as u64) < shed,
        "{} summary lines for {shed} shed connections",
        lines.len()
    );
    sidecar.assert_running();
}

/// Callers in one burst while the sidecar cannot accept (stopped here; busy, in life).
const CONNECT_BURST: usize = 600;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_600_connects_while_the_sidecar_cannot_accept_waits_in_the_kernel_and_none_is_dropped()
 {
    let _heavy = HEAVY.lock().await;
    let app = echo_app().await;
    let (sidecar, ports, _dir) = sidecar_for(
        app,
        &["", "    mode: http\n"],
        "limits:\n  max_connections: 2000\n",
    )
    .await;
    // Every listener of every mode takes the burst: the admin endpoint too.
    let targets = [ports[0], ports[1], sidecar.admin.port()];
    for port in targets {
        sidecar.process.signal("STOP");
        let mut connects = tokio::task::JoinSet::new();
        for _ in 0..CONNECT_BURST {
            // A SYN the kernel drops (listen queue full) is sent again after 1 s: a caller that
            // has no connection after 800 ms was dropped.
            connects.spawn(timeout(
                Duration::from_millis(800),
                TcpStream::connect(loopback(port)),
            ));
        }
        let results = connects.join_all().await;
        sidecar.process.signal("CONT");
        let waited = results.iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
        drop(results);
        assert_eq!(
            waited, CONNECT_BURST,
            "port {port}: only {waited} of {CONNECT_BURST} connects completed while the sidecar \
             could not accept; the rest were dropped by a full listen queue"
        );
    }
    // The queued connections were the sidecar's to close; it serves the next caller.
    echo_once(ports[0], tls_client(&[], None)).await.unwrap();
    sidecar.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn established_connections_are_never_shed_a_listener_full_of_them_refuses_newcomers_instead()
{
    let app = echo_app().await;
    let (sidecar, ports, _dir) = sidecar_for(app, &[""], "limits:\n  max_connections: 4\n").await;
    let port = ports[0];
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut tls = tls_connect(port, tls_client(&[], None)).await.unwrap();
        echo_on(&mut tls, b"mine").await.unwrap();
        held.push(tls);
    }
    for _ in 0..20 {
        let mut tcp = TcpStream::connect(loopback(port)).await.unwrap();
        assert!(closed_by_peer(&mut tcp).await, "a newcomer got a slot");
    }
    for tls in &mut held {
        echo_on(tls, b"still here").await.unwrap();
    }
    assert_eq!(
        sidecar
            .metric(&series("connections_shed_total", port))
            .await,
        0
    );
    assert!(
        sidecar
            .metric(&series("connections_refused_total", port))
            .await
            >= 20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_filled_with_established_connections_leaves_the_other_listener_serving() {
    let _heavy = HEAVY.lock().await;
    let app = echo_app().await;
    let (sidecar, ports, _dir) =
        sidecar_for(app, &["", ""], "limits:\n  max_connections: 20\n").await;
    let (full, other) = (ports[0], ports[1]);
    // Each listener has half of max_connections: fill the first one's half.
    let mut held = Vec::new();
    for _ in 0..10 {
        let mut tls = tls_connect(full, tls_client(&[], None)).await.unwrap();
        echo_on(&mut tls, b"mine").await.unwrap();
        held.push(tls);
    }
    let mut tcp = TcpStream::connect(loopback(full)).await.unwrap();
    assert!(
        closed_by_peer(&mut tcp).await,
        "the full listener took an 11th"
    );
    for _ in 0..10 {
        let started = Instant::now();
        echo_once(other, tls_client(&[], None)).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(1));
    }
    // And an idle flood on the first cannot take the second's slots either.
    let (stop, stopped) = watch::channel(false);
    let flood = tokio::spawn(idle_flood(full, 100, stopped));
    let (slowest, _) = fresh_callers(other, Duration::from_secs(2)).await;
    stop.send_replace(true);
    flood.await.unwrap();
    assert!(slowest < Duration::from_secs(1), "slowest {slowest:?}");
    assert_eq!(
        sidecar
            .metric(&series("connections_refused_total", other))
            .await,
        0
    );
}

/// Reads from `tls` until the response head is complete, then stops reading for good.
async fn read_head_then_stop(tls: &mut TlsStream<TcpStream>) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = timeout(DEADLINE, tls.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed before the head");
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_client_that_stops_reading_a_100_mb_response_is_cut_at_the_idle_timeout_and_the_app_connection_released()
 {
    let _heavy = HEAVY.lock().await;
    let app = BusyApp::start(Answer::Big(100 << 20)).await;
    let (sidecar, port, _dir) = http_with_1s_idle(app.addr).await;
    let mut tls = tls_connect(port, tls_client(&[], None)).await.unwrap();
    tls.write_all(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let head = read_head_then_stop(&mut tls).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let stopped_reading = Instant::now();
    eventually("the sidecar to release the app connection", || async {
        app.open() == 0
    })
    .await;
    let released = stopped_reading.elapsed();
    // The buffers between fill within moments; then 1 s without progress, checked every 250 ms.
    assert!(
        released < Duration::from_millis(2500),
        "app connection released after {released:?} (idle_timeout 1s)"
    );
    sidecar
        .until_metric(&series("connections_stalled_total", port), 1)
        .await;
    sidecar
        .line(&[
            "connection closed",
            "took none of the response data owed to it",
        ])
        .await;
    drop(tls);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_app_trickling_its_body_to_a_reading_client_is_not_cut() {
    let app = BusyApp::start(Answer::Trickle(10, Duration::from_millis(300))).await;
    let (sidecar, port, _dir) = http_with_1s_idle(app.addr).await;
    let answer = http_exchange(
        port,
        tls_client(&[], None),
        b"GET /slow HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("xxxxxxxxxx"),
        "{answer}"
    );
    assert_eq!(
        sidecar
            .metric(&series("connections_stalled_total", port))
            .await,
        0
    );
}

/// One HTTP/2 frame.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut frame = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// `streams` GETs of `path` on streams 1, 3, 5, … (HPACK literals without Huffman coding:
/// nothing to get wrong).
fn h2_gets(path: &str, streams: u32) -> Vec<u8> {
    let mut block = vec![0x82, 0x87]; // :method GET, :scheme https
    block.push(0x04); // :path, literal value without indexing
    block.push(path.len() as u8);
    block.extend_from_slice(path.as_bytes());
    block.push(0x01); // :authority
    block.push(1);
    block.push(b'a');
    let mut out = Vec::new();
    for i in 0..streams {
        // END_STREAM | END_HEADERS
        out.extend(h2_frame(0x1, 0x5, 1 + 2 * i, &block));
    }
    out
}

/// The client preface with SETTINGS_INITIAL_WINDOW_SIZE (0x4) = `stream_window`.
fn h2_preface(stream_window: u32) -> Vec<u8> {
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    let mut setting = vec![0, 4];
    setting.extend(stream_window.to_be_bytes());
    out.extend(h2_frame(0x4, 0, 0, &setting));
    out
}

/// The client preface with stream windows of 0, and `streams` GETs of `path`.
fn h2_zero_window_requests(path: &str, streams: u32) -> Vec<u8> {
    let mut out = h2_preface(0);
    out.extend(h2_gets(path, streams));
    out
}

/// The client preface with the largest windows HTTP/2 allows (stream and connection), and
/// `streams` GETs of `path`: nothing in HTTP/2 holds the sidecar's output back, only the socket.
fn h2_open_window_requests(path: &str, streams: u32) -> Vec<u8> {
    let mut out = h2_preface(0x7fff_ffff);
    // WINDOW_UPDATE (0x8) on the connection up to 2^31 - 1.
    out.extend(h2_frame(
        0x8,
        0,
        0,
        &(0x7fff_ffff_u32 - 65_535).to_be_bytes(),
    ));
    out.extend(h2_gets(path, streams));
    out
}

/// The HTTP/2 output the sidecar gathers per turn (`http/corked.rs`) must stay bounded for a
/// client whose windows let everything through but whose socket takes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_with_open_windows_that_stops_reading_holds_little_memory_and_is_cut_at_the_idle_timeout()
 {
    let _heavy = HEAVY.lock().await;
    let app = BusyApp::start(Answer::Big(100 << 20)).await;
    let (sidecar, port, _dir) = http_with_1s_idle(app.addr).await;
    let idle_rss = sidecar.rss();
    let mut tls = tls_connect(port, tls_client(&["h2"], None)).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    tls.write_all(&h2_open_window_requests("/big", 8))
        .await
        .unwrap();
    let sent = Instant::now();
    eventually("the requests to reach the app", || async {
        app.most_open.load(SeqCst) > 0
    })
    .await;
    let peak_rss = std::sync::atomic::AtomicU64::new(0);
    eventually("the sidecar to release every app connection", || async {
        peak_rss.fetch_max(sidecar.rss(), SeqCst);
        app.open() == 0
    })
    .await;
    let released = sent.elapsed();
    let grew_mb = peak_rss.load(SeqCst).saturating_sub(idle_rss) >> 20;
    // 8 × 100 MB owed: what is held is hyper's per-stream send buffers and the cork's 16 KiB,
    // not what the app sends.
    assert!(
        grew_mb < 64,
        "RSS grew by {grew_mb} MB for a client that reads nothing"
    );
    assert!(
        released < Duration::from_secs(3),
        "app connections released after {released:?} (idle_timeout 1s)"
    );
    sidecar
        .until_metric(&series("connections_stalled_total", port), 1)
        .await;
    drop(tls);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_held_at_a_zero_window_are_bounded_per_connection_and_released_at_the_idle_timeout()
 {
    let app = BusyApp::start(Answer::Big(1 << 20)).await;
    let (sidecar, ports, _dir) = sidecar_for(
        app.addr,
        &["    mode: http\n"],
        "limits:\n  idle_timeout: 1s\n  streams_per_connection: 8\n",
    )
    .await;
    let port = ports[0];
    let mut attackers = Vec::new();
    for _ in 0..4 {
        let mut tls = tls_connect(port, tls_client(&["h2"], None)).await.unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        tls.write_all(&h2_zero_window_requests("/big", 50))
            .await
            .unwrap();
        attackers.push(tls);
    }
    eventually("the zero-window streams to reach the app", || async {
        app.most_open.load(SeqCst) > 0
    })
    .await;
    let started = Instant::now();
    eventually("the sidecar to release every app connection", || async {
        app.open() == 0 && app.most_open.load(SeqCst) > 0
    })
    .await;
    let released = started.elapsed();
    let most = app.most_open.load(SeqCst);
    assert!(
        most <= 4 * 8,
        "{most} app connections for 4 clients at 8 streams each"
    );
    assert!(
        released < Duration::from_millis(2500),
        "released after {released:?}"
    );
    sidecar
        .until_metric(&series("connections_stalled_total", port), 4)
        .await;
    // The sidecar still serves.
    let answer = http_exchange(
        port,
        tls_client(&[], None),
        b"GET /big HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"));
    drop(attackers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_cap_toward_the_app_wait_briefly_then_get_503_with_a_reason() {
    let app = BusyApp::start(Answer::Nothing).await;
    let (sidecar, ports, _dir) = sidecar_for(
        app.addr,
        &["    mode: http\n"],
        "limits:\n  idle_timeout: 10s\n  app_connections: 2\n",
    )
    .await;
    let port = ports[0];
    let mut hung = Vec::new();
    for _ in 0..2 {
        let mut tls = tls_connect(port, tls_client(&[], None)).await.unwrap();
        tls.write_all(b"GET /hang HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        hung.push(tls);
    }
    eventually("two requests in flight at the app", || async {
        app.open() == 2
    })
    .await;
    let started = Instant::now();
    let answer = http_exchange(
        port,
        tls_client(&[], None),
        b"GET /third HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let waited = started.elapsed();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("limits.app_connections"), "{answer}");
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "answered after {waited:?}"
    );
    assert_eq!(app.most_open.load(SeqCst), 2);
    assert_eq!(
        sidecar.metric(&series("app_saturated_total", port)).await,
        1
    );
    drop(hung);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_tcp_mode_a_client_that_keeps_sending_but_never_reads_is_cut_at_the_idle_timeout() {
    let app = BusyApp::start(Answer::Firehose).await;
    let (sidecar, ports, _dir) =
        sidecar_for(app.addr, &[""], "limits:\n  idle_timeout: 1s\n").await;
    let port = ports[0];
    let mut tls = tls_connect(port, tls_client(&[], None)).await.unwrap();
    eventually("the app to be connected", || async { app.open() == 1 }).await;
    // Keeps the connection busy one way (the old idle timer counted this as activity) while
    // taking none of what the app sends.
    let started = Instant::now();
    let mut cut = false;
    while started.elapsed() < Duration::from_secs(8) {
        if tls.write_all(b"ping").await.is_err() || app.open() == 0 {
            cut = true;
            break;
        }
        sleep(Duration::from_millis(100)).await;
    }
    assert!(cut, "still connected after {:?}", started.elapsed());
    eventually("the app connection to be closed", || async {
        app.open() == 0
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    sidecar
        .until_metric(&series("connections_stalled_total", port), 1)
        .await;
    sidecar
        .line(&[
            "connection closed",
            "the client took none of the data owed to it",
        ])
        .await;
}

/// An app that answers every request with `answer`, then, 100 ms later, with `unasked` as
/// well, whatever the request was; each `unasked` written is reported on the receiver.
async fn app_answering_twice(
    answer: &'static [u8],
    unasked: &'static [u8],
) -> (SocketAddr, mpsc::UnboundedReceiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (written, reports) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let written = written.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                    while let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                        head.drain(..end + 4);
                        if socket.write_all(answer).await.is_err() {
                            return;
                        }
                        sleep(Duration::from_millis(100)).await;
                        if socket.write_all(unasked).await.is_err() {
                            return;
                        }
                        let _ = written.send(());
                    }
                }
            });
        }
    });
    (addr, reports)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_the_app_sends_unasked_never_reaches_the_next_caller() {
    // A buggy or hostile app writes a second answer after the first, once the sidecar has put
    // the connection back in its pool. The pool's connections carry many callers' requests in
    // turn: that answer must not become the next caller's, so the connection is not lent again.
    let (app, mut unasked_written) = app_answering_twice(
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nforged",
    )
    .await;
    let (_sidecar, port, _dir) = http_with_1s_idle(app).await;
    for caller in 0..4 {
        let answer = http_exchange(
            port,
            tls_client(&[], None),
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("\r\n\r\nok"),
            "caller {caller} got: {answer}"
        );
        // The unasked answer arrives while the connection sits in the pool.
        unasked_written.recv().await.unwrap();
    }
}
