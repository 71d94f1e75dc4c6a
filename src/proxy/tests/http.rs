//! http mode below TLS: `HttpService::serve_from_first_bytes` on a plaintext in-memory stream (TLS is the other
//! layer's job), in front of a tiny hyper app on 127.0.0.1:0 that answers every request with
//! its method, target, version and headers as JSON.

// Tests may unwrap (clippy.toml); the lint exempts only #[test] fns, not their helpers.
#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use sha2::Digest as _;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tls_sidecar::http::{Caller, ConnOutcome, Drain, HttpService, HttpSettings};
use tls_sidecar::identity::{AccessPolicy, CfIdentity, Denial, RequestPolicy};
use tls_sidecar::metrics::ListenerMetrics;
use tls_sidecar_config::{HostPort, RequestRule, VcapApplication, Xfcc};
use tls_sidecar_testkit::{Identity, KeyKind, Pki, Validity};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// Everything a test waits for must happen within this; generous for a loaded 2-core box.
const DEADLINE: Duration = Duration::from_secs(60);
const PEER: &str = "203.0.113.7:50123";
const ORG: &str = "0f8a4d6e-6c61-4c39-a6d0-2b0d6c1f8b11";
const SPACE: &str = "5c4d1b0e-2a3f-4e5d-9c8b-7a6f5e4d3c2b";
const APP: &str = "9e8d7c6b-5a4f-4e3d-8c2b-1a0f9e8d7c6b";
const INSTANCE: &str = "4e0a8b9c-1d2e-4f3a-5b6c-7d8e9f0a1b2c";
const SPOOFED: &str = "Hash=0000;Subject=\"CN=admin,OU=app:everything\"";

async fn within<F: Future>(what: &str, f: F) -> F::Output {
    timeout(DEADLINE, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {DEADLINE:?}"))
}

// ---------------------------------------------------------------------------------------------
// The app

/// A tiny HTTP/1.1 app. `/slow` waits for [`App::release`]; `/ws` accepts an upgrade, says
/// `app>` and echoes; `/hop` answers with hop-by-hop headers; anything else echoes the request.
struct App {
    addr: SocketAddr,
    accepts: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    arrived: mpsc::UnboundedReceiver<String>,
    release: Arc<Notify>,
    task: JoinHandle<()>,
}

impl App {
    async fn start() -> App {
        App::start_on(TcpListener::bind("127.0.0.1:0").await.unwrap())
    }

    fn start_on(listener: TcpListener) -> App {
        let addr = listener.local_addr().unwrap();
        let accepts = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (arrived_tx, arrived) = mpsc::unbounded_channel();
        let release = Arc::new(Notify::new());
        let (a, r, rel) = (accepts.clone(), requests.clone(), release.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                a.fetch_add(1, Relaxed);
                let (r, rel, arrived_tx) = (r.clone(), rel.clone(), arrived_tx.clone());
                let service = hyper::service::service_fn(move |req| {
                    r.fetch_add(1, Relaxed);
                    app_answer(req, rel.clone(), arrived_tx.clone())
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .with_upgrades(),
                );
            }
        });
        App {
            addr,
            accepts,
            requests,
            arrived,
            release,
            task,
        }
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Waits until a request reached `/slow`.
    async fn slow_request_arrived(&mut self) {
        within("the slow request reaching the app", self.arrived.recv())
            .await
            .unwrap();
    }

    fn release_slow_requests(&self) {
        self.release.notify_waiters();
        self.release.notify_one();
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn app_answer(
    mut req: Request<Incoming>,
    release: Arc<Notify>,
    arrived: mpsc::UnboundedSender<String>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    match path.as_str() {
        "/slow" => {
            let released = release.notified();
            let _ = arrived.send(path);
            released.await;
            Ok(Response::new(Full::from("slow done")))
        }
        "/ws" => {
            let upgraded = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let mut io = TokioIo::new(upgraded.await.unwrap());
                io.write_all(b"app>").await.unwrap();
                let mut buf = [0; 1024];
                loop {
                    let n = io.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    io.write_all(&buf[..n]).await.unwrap();
                }
            });
            Ok(Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("upgrade", "websocket")
                .header("connection", "upgrade")
                .body(Full::default())
                .unwrap())
        }
        "/hop" => Ok(Response::builder()
            .header("connection", "x-drop")
            .header("x-drop", "hop-by-hop")
            .header("keep-alive", "timeout=5")
            .header("x-kept", "end-to-end")
            .body(Full::from("hop"))
            .unwrap()),
        _ => {
            let pairs = |map: &http::HeaderMap| -> Vec<Value> {
                map.iter()
                    .map(|(k, v)| json!([k.as_str(), v.to_str().unwrap_or("<binary>")]))
                    .collect()
            };
            let (parts, body) = req.into_parts();
            // Read to the end: trailers come after the body.
            let body = body.collect().await.map(|c| c.trailers().cloned());
            let trailers = match body {
                Ok(Some(trailers)) => pairs(&trailers),
                Ok(None) | Err(_) => vec![],
            };
            let echo = json!({
                "method": parts.method.as_str(),
                "target": parts.uri.to_string(),
                "version": format!("{:?}", parts.version),
                "headers": pairs(&parts.headers),
                "trailers": trailers,
            });
            Ok(Response::builder()
                .header("content-type", "application/json")
                .body(Full::from(echo.to_string()))
                .unwrap())
        }
    }
}

/// Every `(name, value)` the app saw, as a header or (`in_trailers`) a trailer, whose name an
/// app server reading `HTTP_*` variables would take for `reserved` (case and `_`/`-` ignored).
fn seen_as(echo: &Value, reserved: &str, in_trailers: bool) -> Vec<(String, String)> {
    let norm = |n: &str| n.to_ascii_lowercase().replace('_', "-");
    echo[if in_trailers { "trailers" } else { "headers" }]
        .as_array()
        .unwrap()
        .iter()
        .filter(|pair| norm(pair[0].as_str().unwrap()) == reserved)
        .map(|pair| {
            (
                pair[0].as_str().unwrap().to_owned(),
                pair[1].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Every value of header `name` the app saw, in order.
fn seen(echo: &Value, name: &str) -> Vec<String> {
    echo["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|pair| pair[0] == name)
        .map(|pair| pair[1].as_str().unwrap().to_owned())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The sidecar's HTTP side

struct Sidecar {
    service: HttpService,
    metrics: Arc<ListenerMetrics>,
}

fn settings(port: u16, xfcc: Xfcc) -> HttpSettings {
    HttpSettings {
        upstream: HostPort {
            host: "127.0.0.1".into(),
            port,
        },
        xfcc,
        connect_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(60),
        forwarding: tls_sidecar::http::Forwarding::Tls,
        rules: Default::default(),
    }
}

impl Sidecar {
    fn new(settings: HttpSettings) -> Sidecar {
        let metrics = Arc::new(ListenerMetrics::with_request_rules(
            8443,
            settings.rules.len(),
        ));
        Sidecar {
            service: HttpService::new(settings, metrics.clone()),
            metrics,
        }
    }

    fn to(app: &App) -> Sidecar {
        Sidecar::new(settings(app.port(), Xfcc::Envoy))
    }

    /// Serves one connection; returns the client's end.
    fn connect(&self, caller: Caller) -> Conn {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (graceful, graceful_rx) = watch::channel(false);
        let (close_all, close_all_rx) = watch::channel(false);
        let drain = Drain {
            graceful: graceful_rx,
            close_all: close_all_rx,
        };
        let service = self.service.clone();
        // As the TLS side serves it: nothing HTTP until the client's first bytes are there.
        let server = tokio::io::BufReader::new(server);
        let served =
            tokio::spawn(
                async move { service.serve_from_first_bytes(server, caller, drain).await },
            );
        Conn {
            client: Some(client),
            graceful,
            close_all,
            served,
        }
    }
}

fn caller(h2: bool) -> Caller {
    Caller {
        addr: PEER.parse().unwrap(),
        h2,
        leaf: None,
        identity: None,
        denial: None,
    }
}

struct Conn {
    client: Option<DuplexStream>,
    graceful: watch::Sender<bool>,
    close_all: watch::Sender<bool>,
    served: JoinHandle<ConnOutcome>,
}

type H1 = hyper::client::conn::http1::SendRequest<Full<Bytes>>;
type H2 = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

impl Conn {
    fn io(&mut self) -> DuplexStream {
        self.client.take().unwrap()
    }

    /// An HTTP/1.1 client on this connection; its connection task supports upgrades.
    async fn h1(&mut self) -> (H1, JoinHandle<()>) {
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(self.io()))
            .await
            .unwrap();
        let task = tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        (send, task)
    }

    /// An HTTP/2 client (prior knowledge) on this connection.
    async fn h2(&mut self) -> (H2, JoinHandle<()>) {
        let (send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(self.io()))
                .await
                .unwrap();
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        (send, task)
    }

    async fn outcome(self) -> ConnOutcome {
        within("the connection ending", self.served).await.unwrap()
    }
}

fn get(target: &str) -> http::request::Builder {
    Request::get(target).header("host", "myapp.example.com")
}

async fn text(response: Response<Incoming>) -> String {
    let body = within("the response body", response.into_body().collect())
        .await
        .unwrap();
    String::from_utf8(body.to_bytes().to_vec()).unwrap()
}

async fn app_saw(response: Response<Incoming>) -> Value {
    assert_eq!(response.status(), StatusCode::OK);
    serde_json::from_str(&text(response).await).unwrap()
}

async fn send1(client: &mut H1, req: Request<Full<Bytes>>) -> Response<Incoming> {
    within("an HTTP/1.1 response", client.send_request(req))
        .await
        .unwrap()
}

async fn send2(client: &mut H2, req: Request<Full<Bytes>>) -> Response<Incoming> {
    within("an HTTP/2 response", client.send_request(req))
        .await
        .unwrap()
}

/// Writes `bytes` as a raw HTTP/1 client and reads everything until the sidecar closes.
async fn raw_exchange(conn: &mut Conn, bytes: Vec<u8>) -> String {
    let (mut read, mut write) = tokio::io::split(conn.io());
    // The sidecar may answer and close before taking every byte: write on the side.
    let writer = tokio::spawn(async move {
        let _ = write.write_all(&bytes).await;
        write
    });
    let mut answer = Vec::new();
    within("the raw answer", read.read_to_end(&mut answer))
        .await
        .unwrap();
    drop(writer.await);
    String::from_utf8_lossy(&answer).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Certificates

/// A Diego-shaped client certificate, with what OpenSSL would say about it (the XFCC
/// `Subject` rendering is cross-checked against `openssl x509 -nameopt RFC2253` in xfcc.rs).
struct ClientCert {
    der: Vec<u8>,
    pem_body: String,
    sha256_hex: String,
    subject_rfc2253: String,
}

fn client_cert() -> ClientCert {
    let identity = Identity {
        org: ORG.to_owned(),
        space: SPACE.to_owned(),
        app: APP.to_owned(),
    };
    let leaf = Pki::shared().issue_at(
        &identity,
        INSTANCE,
        "10.255.1.2".parse().unwrap(),
        KeyKind::Ec,
        Validity::OneDay,
    );
    ClientCert {
        der: leaf.leaf_der.to_vec(),
        pem_body: leaf
            .leaf_pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect(),
        // `openssl x509 -fingerprint -sha256`, lower case without colons.
        sha256_hex: hex::encode(sha2::Sha256::digest(&leaf.leaf_der)),
        // Go's encoding sorts the OUs by length (app, space, organization); RFC 2253 prints
        // them in reverse.
        subject_rfc2253: format!(
            "CN={INSTANCE},OU=organization:{ORG}+OU=space:{SPACE}+OU=app:{APP}"
        ),
    }
}

fn caller_with(cert: &ClientCert, h2: bool) -> Caller {
    Caller {
        leaf: Some(cert.der.clone().into()),
        identity: Some(CfIdentity::from_der(&cert.der).unwrap()),
        ..caller(h2)
    }
}

// ---------------------------------------------------------------------------------------------
// Logs

#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    /// Captures this thread's log events (tests run on a current-thread runtime).
    fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || writer.clone())
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Forwarding

#[tokio::test]
async fn a_get_over_http1_reaches_the_app_with_forwarded_headers_set() {
    let app = App::start().await;
    let sidecar = Sidecar::to(&app);
    let mut conn = sidecar.connect(caller(false));
    let (mut client, _task) = conn.h1().await;

    let req = get("/orders/7?page=2")
        .header("x-forwarded-proto", "http")
        .header("x-forwarded-for", "198.51.100.1")
        .body(Full::default())
        .unwrap();
    let response = send1(&mut client, req).await;
    assert_eq!(response.headers()["content-type"], "application/json");
    let echo = app_saw(response).await;
    assert_eq!(echo["method"], "GET");
    assert_eq!(echo["target"], "/orders/7?page=2");
    assert_eq!(echo["version"], "HTTP/1.1");
    assert_eq!(seen(&echo, "host"), ["myapp.example.com"]);
    assert_eq!(seen(&echo, "x-forwarded-proto"), ["https"]);
    // The TCP peer replaces the caller's claim.
    assert_eq!(seen(&echo, "x-forwarded-for"), ["203.0.113.7"]);

    // Without an incoming X-Forwarded-For the peer is the whole list.
    let echo = app_saw(send1(&mut client, get("/").body(Full::default()).unwrap()).await).await;
    assert_eq!(seen(&echo, "x-forwarded-for"), ["203.0.113.7"]);

    drop(client);
    let outcome = conn.outcome().await;
    assert_eq!(outcome.requests, 2);
    assert_eq!(outcome.error, None);
    assert!(
        outcome.bytes_in > 60 && outcome.bytes_out > 200,
        "{outcome:?}"
    );
    assert_eq!(sidecar.metrics.requests.load(Relaxed), 2);
}

#[tokio::test]
async fn a_get_over_http2_reaches_the_app_as_http1_with_host_from_the_authority() {
    let app = App::start().await;
    let sidecar = Sidecar::to(&app);
    let mut conn = sidecar.connect(caller(true));
    let (mut client, _task) = conn.h2().await;

    let req = Request::get("https://myapp.example.com/h2/path?q=1")
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .header("te", "trailers")
        .body(Full::default())
        .unwrap();
    let response = send2(&mut client, req).await;
    assert_eq!(response.version(), http::Version::HTTP_2);
    let echo = app_saw(response).await;
    assert_eq!(echo["target"], "/h2/path?q=1");
    assert_eq!(echo["version"], "HTTP/1.1");
    assert_eq!(seen(&echo, "host"), ["myapp.example.com"]);
    assert_eq!(seen(&echo, "cookie"), ["a=1; b=2"]);
    assert_eq!(seen(&echo, "te"), ["trailers"]);
    assert_eq!(seen(&echo, "x-forwarded-proto"), ["https"]);
    assert_eq!(seen(&echo, "x-forwarded-for"), ["203.0.113.7"]);

    // A body goes through as well.
    let req = Request::post("https://myapp.example.com/upload")
        .body(Full::from("x".repeat(100_000)))
        .unwrap();
    let echo = app_saw(send2(&mut client, req).await).await;
    assert_eq!(seen(&echo, "content-length"), ["100000"]);

    drop(client);
    let outcome = conn.outcome().await;
    assert_eq!(outcome.requests, 2);
    assert!(outcome.bytes_in > 100_000, "{outcome:?}");
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_in_both_directions() {
    let app = App::start().await;
    let sidecar = Sidecar::to(&app);
    let mut conn = sidecar.connect(caller(false));
    let (mut client, _task) = conn.h1().await;

    let req = get("/")
        .header("connection", "x-hop, keep-alive")
        .header("x-hop", "1")
        .header("keep-alive", "timeout=5")
        .header("proxy-connection", "keep-alive")
        .header("upgrade", "h2c")
        .header("te", "gzip")
        .header("x-end-to-end", "1")
        .body(Full::default())
        .unwrap();
    let echo = app_saw(send1(&mut client, req).await).await;
    for hop in [
        "x-hop",
        "keep-alive",
        "proxy-connection",
        "upgrade",
        "te",
        "connection",
    ] {
        assert_eq!(
            seen(&echo, hop),
            Vec::<String>::new(),
            "{hop} reached the app"
        );
    }
    assert_eq!(seen(&echo, "x-end-to-end"), ["1"]);

    let response = send1(&mut client, get("/hop").body(Full::default()).unwrap()).await;
    let headers = response.headers().clone();
    assert_eq!(text(response).await, "hop");
    assert!(!headers.contains_key("x-drop"), "{headers:?}");
    assert!(!headers.contains_key("keep-alive"), "{headers:?}");
    assert_eq!(headers["x-kept"], "end-to-end");
}

#[tokio::test]
async fn upstream_connections_are_reused_across_requests_and_client_connections() {
    let app = App::start().await;
    let sidecar = Sidecar::to(&app);
    for _ in 0..2 {
        let mut conn = sidecar.connect(caller(false));
        let (mut client, _task) = conn.h1().await;
        for _ in 0..3 {
            app_saw(send1(&mut client, get("/").body(Full::default()).unwrap()).await).await;
        }
        drop(client);
        conn.outcome().await;
    }
    let mut conn = sidecar.connect(caller(true));
    let (mut client, _task) = conn.h2().await;
    let req = Request::get("https://a.example/")
        .body(Full::default())
        .unwrap();
    app_saw(send2(&mut client, req).await).await;

    assert_eq!(app.requests.load(Relaxed), 7);
    assert_eq!(
        app.accepts.load(Relaxed),
        1,
        "one pooled connection serves all"
    );
}

#[tokio::test]
async fn each_request_is_logged_once_without_its_query_string() {
    let (logs, _guard) = Logs::capture();
    let app = App::start().await;
    let sidecar = Sidecar::to(&app);
    let cert = client_cert();
    let mut conn = sidecar.connect(caller_with(&cert, false));
    let (mut client, _task) = conn.h1().await;
    let req = get("/login?token=s3cret").body(Full::default()).unwrap();
    app_saw(send1(&mut client, req).await).await;
    drop(client);
    conn.outcome().await;
    let mut conn = sidecar.connect(caller(true));
    let (mut client, _task) = conn.h2().await;
    let req = Request::get("https://a.example/h2?token=s3cret")
        .body(Full::default())
        .unwrap();
    app_saw(send2(&mut client, req).await).await;
    drop(client);
    conn.outcome().await;

    let lines: Vec<String> = logs
        .lines()
        .into_iter()
        .filter(|l| l.contains(" request "))
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    for part in [
        "method=\"GET\"",
        "path=\"/login\"",
        "status=200",
        "proto=\"h1\"",
        "peer=203.0.113.7:50123",
        "duration_ms=",
        "bytes=",
        &format!("app={APP}"),
    ] {
        assert!(lines[0].contains(part), "{part} missing in {}", lines[0]);
    }
    assert!(lines[1].contains("path=\"/h2\"") && lines[1].contains("proto=\"h2\""));
    assert!(!lines[1].contains("caller="), "{}", lines[1]);
    for line in &lines {
        assert!(line.contains(" INFO "), "{line}");
        assert!(
            !line.contains("s3cret") && !line.contains("error="),
            "{line}"
        );
    }
    assert_eq!(sidecar.metrics.requests.load(Relaxed), 2);
}

// ---------------------------------------------------------------------------------------------
// X-Forwarded-Client-Cert

#[tokio::test]
async fn a_spoofed_client_cert_header_never_reaches_the_app_in_any_mode() {
    let app = App::start().await;
    let cert = client_cert();
    for xfcc in [Xfcc::Envoy, Xfcc::Raw, Xfcc::Off] {
        let sidecar = Sidecar::new(settings(app.port(), xfcc));
        for with_cert in [false, true] {
            for h2 in [false, true] {
                let who = if with_cert {
                    caller_with(&cert, h2)
                } else {
                    caller(h2)
                };
                let mut conn = sidecar.connect(who);
                let req = Request::get("https://myapp.example.com/")
                    .header("host", "myapp.example.com")
                    .header("x-forwarded-client-cert", SPOOFED)
                    .header("X-Forwarded-Client-Cert", "By=spiffe://evil")
                    .body(Full::default())
                    .unwrap();
                let echo = if h2 {
                    let (mut client, _task) = conn.h2().await;
                    app_saw(send2(&mut client, req).await).await
                } else {
                    let (mut client, _task) = conn.h1().await;
                    let (mut parts, body) = req.into_parts();
                    parts.uri = "/".parse().unwrap();
                    app_saw(send1(&mut client, Request::from_parts(parts, body)).await).await
                };
                let got = seen(&echo, "x-forwarded-client-cert");
                let want: Vec<String> = match (with_cert, xfcc) {
                    (false, _) | (true, Xfcc::Off) => vec![],
                    (true, Xfcc::Envoy) => vec![envoy_value(&cert)],
                    (true, Xfcc::Raw) => vec![cert.pem_body.clone()],
                };
                assert_eq!(got, want, "xfcc {xfcc:?}, cert {with_cert}, h2 {h2}");
            }
        }
    }
}

fn envoy_value(cert: &ClientCert) -> String {
    format!(
        "Hash={};Subject=\"{}\";DNS={INSTANCE}",
        cert.sha256_hex, cert.subject_rfc2253
    )
}

#[tokio::test]
async fn envoy_xfcc_is_openssls_fingerprint_and_rfc2253_subject() {
    let app = App::start().await;
    let cert = client_cert();
    // Diego's three OUs share one RDN: OpenSSL prints them reversed and joined by '+'.
    assert_eq!(
        cert.subject_rfc2253,
        format!("CN={INSTANCE},OU=organization:{ORG}+OU=space:{SPACE}+OU=app:{APP}")
    );
    let sidecar = Sidecar::new(settings(app.port(), Xfcc::Envoy));
    let mut conn = sidecar.connect(caller_with(&cert, false));
    let (mut client, _task) = conn.h1().await;
    let echo = app_saw(send1(&mut client, get("/").body(Full::default()).unwrap()).await).await;
    assert_eq!(
        seen(&echo, "x-forwarded-client-cert"),
        [format!(
            "Hash={};Subject=\"{}\";DNS={INSTANCE}",
            cert.sha256_hex, cert.subject_rfc2253
        )]
    );
}

#[tokio::test]
async fn raw_xfcc_is_the_certificates_pem_body() {
    let app = App::start().await;
    let cert = client_cert();
    let sidecar = Sidecar::new(settings(app.port(), Xfcc::Raw));
    let mut conn = sidecar.connect(caller_with(&cert, true));
    let (mut client, _task) = conn.h2().await;
    let req = Request::get("https://a.example/")
        .body(Full::default())
        .unwrap();
    let echo = app_saw(send2(&mut client, req).await).await;
    assert_eq!(seen(&echo, "x-forwarded-client-cert"), [cert.pem_body]);
}

// ---------------------------------------------------------------------------------------------
// Refusals and failures

#[tokio::test]
async fn a_denied_caller_gets_403_saying_only_not_allowed_and_the_reason_stays_in_the_log() {
    let (logs, _guard) = Logs::capture();
    let app = App::start().await;
    let sidecar = Sidecar::to(&app);
    let cert = client_cert();
    let reason = format!("caller app={APP} is not allowed (allow: cf:same-space)");
    let denied = |h2| Caller {
        denial: Some(Denial(reason.clone())),
        ..caller_with(&cert, h2)
    };
    let mut answers = Vec::new();
    let mut conn = sidecar.connect(denied(false));
    let (mut client, _task) = conn.h1().await;
    for _ in 0..2 {
        answers.push(send1(&mut client, get("/admin").body(Full::default()).unwrap()).await);
    }
    let mut conn = sidecar.connect(denied(true));
    let (mut client, _task) = conn.h2().await;
    for _ in 0..2 {
        let req = Request::post("https://myapp.example.com/admin")
            .body(Full::from("payload"))
            .unwrap();
        answers.push(send2(&mut client, req).await);
    }
    for response in answers {
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        // The reason names who would have been let in: it is for the log, not the caller.
        assert_eq!(text(response).await, "not allowed\n");
    }
    assert_eq!(app.accepts.load(Relaxed), 0, "nothing may reach the app");
    assert_eq!(sidecar.metrics.denials.load(Relaxed), 4);
    let warned = logs
        .lines()
        .into_iter()
        .filter(|l| l.contains("WARN") && l.contains("denied=") && l.contains(APP))
        .count();
    assert_eq!(warned, 4, "{:?}", logs.lines());
}

#[tokio::test]
async fn content_length_with_transfer_encoding_gets_400_and_nothing_reaches_the_app() {
    let app = App::start().await;
    let sidecar = Sidecar::to(&app);
    let heads = [
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
    ];
    for head in heads {
        let mut conn = sidecar.connect(caller(false));
        // A smuggled second request hides in the body under one reading and not the other.
        let stream = format!("{head}0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n");
        let answer = raw_exchange(&mut conn, stream.into_bytes()).await;
        assert!(
            answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{answer}"
        );
        assert!(
            answer.contains("Content-Length and Transfer-Encoding"),
            "{answer}"
        );
        assert!(!answer.contains("smuggled"), "{answer}");
        conn.outcome().await;
    }
    assert_eq!(app.accepts.load(Relaxed), 0, "nothing may reach the app");
}

#[tokio::test]
async fn an_ambiguous_request_pipelined_behind_plain_gets_is_still_refused_with_400() {
    let app = App::start().await;
    let sidecar = Sidecar::to(&app);
    let mut conn = sidecar.connect(caller(false));
    // Two plain GETs (served without hyper), then, in the same bytes, the ambiguous head that
    // hands the connection to hyper: the smuggling check must still tie it to its request.
    let stream = "GET /one HTTP/1.1\r\nHost: a\r\n\r\nGET /two HTTP/1.1\r\nHost: a\r\n\r\n\
                  POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n\
                  0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
    let answer = raw_exchange(&mut conn, stream.into()).await;
    assert_eq!(answer.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{answer}");
    assert!(answer.contains("\"target\":\"/one\""), "{answer}");
    assert!(answer.contains("\"target\":\"/two\""), "{answer}");
    assert!(
        answer.contains("HTTP/1.1 400 Bad Request\r\n")
            && answer.contains("Content-Length and Transfer-Encoding"),
        "{answer}"
    );
    assert!(!answer.contains("smuggled"), "{answer}");
    conn.outcome().await;
    assert_eq!(
        app.requests.load(Relaxed),
        2,
        "only the two GETs reach the app"
    );
}

#[tokio::test]
async fn a_request_head_split_after_a_plain_one_is_served_whole() {
    let app = App::start().await;
    let sidecar = Sidecar::to(&app);
    let mut conn = sidecar.connect(caller(false));
    let mut io = conn.io();
    // The first read brings a whole GET and the start of the next head, which hyper then
    // serves from the bytes already read plus the rest.
    io.write_all(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\nGET /tw")
        .await
        .unwrap();
    let mut answer = Vec::new();
    while !String::from_utf8_lossy(&answer).contains("\"/one\"") {
        let mut piece = [0; 4096];
        let n = within("the first answer", io.read(&mut piece))
            .await
            .unwrap();
        assert!(n > 0, "{}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&piece[..n]);
    }
    io.write_all(b"o HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    within("the second answer", io.read_to_end(&mut answer))
        .await
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert_eq!(answer.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{answer}");
    assert!(answer.contains("\"target\":\"/two\""), "{answer}");
    assert_eq!(conn.outcome().await.requests, 2);
}

#[tokio::test]
async fn a_client_that_closes_while_its_answer_is_on_the_way_ends_the_request_without_waiting_for_the_app()
 {
    let mut app = App::start().await;
    let sidecar = Sidecar::to(&app);
    let mut conn = sidecar.connect(caller(false));
    let mut io = conn.io();
    io.write_all(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    app.slow_request_arrived().await;
    // Gone before the app answers: neither its app connection nor its slot toward the app may
    // wait for an answer nobody reads (the app never answers in this test).
    io.shutdown().await.unwrap();
    let outcome = conn.outcome().await;
    assert_eq!(
        outcome.error.as_deref(),
        Some("connection closed before message completed")
    );
    assert_eq!(outcome.requests, 1);
}

#[tokio::test]
async fn a_100_kb_request_header_gets_431_and_nothing_reaches_the_app() {
    let app = App::start().await;
    let sidecar = Sidecar::to(&app);
    let mut conn = sidecar.connect(caller(false));
    let head = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "b".repeat(100 * 1024)
    );
    let answer = raw_exchange(&mut conn, head.into_bytes()).await;
    assert!(
        answer.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        "{answer}"
    );
    conn.outcome().await;

    let mut conn = sidecar.connect(caller(true));
    let (mut client, _task) = conn.h2().await;
    let req = Request::get("https://a.example/")
        .header("x-big", "b".repeat(100 * 1024))
        .body(Full::default())
        .unwrap();
    let response = send2(&mut client, req).await;
    assert_eq!(
        response.status(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
    assert_eq!(app.accepts.load(Relaxed), 0, "nothing may reach the app");
}

#[tokio::test]
async fn an_app_that_is_down_gets_502_with_a_reason_and_requests_recover_when_it_is_back() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let sidecar = Sidecar::new(settings(port, Xfcc::Envoy));
    let mut conn = sidecar.connect(caller(false));
    let (mut client, _task) = conn.h1().await;

    let response = send1(&mut client, get("/").body(Full::default()).unwrap()).await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(
        text(response).await,
        format!("tls-sidecar: the app is not reachable on 127.0.0.1:{port} (connection refused)\n")
    );

    let app = App::start_on(TcpListener::bind(("127.0.0.1", port)).await.unwrap());
    app_saw(send1(&mut client, get("/").body(Full::default()).unwrap()).await).await;
    assert_eq!(app.requests.load(Relaxed), 1);
}

// ---------------------------------------------------------------------------------------------
// Upgrades

#[tokio::test]
async fn a_websocket_upgrade_passes_through_and_bytes_flow_both_ways() {
    let app = App::start().await;
    let sidecar = Sidecar::to(&app);
    let mut conn = sidecar.connect(caller(false));
    let (mut client, _task) = conn.h1().await;
    let req = get("/ws")
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .body(Full::default())
        .unwrap();
    let response = send1(&mut client, req).await;
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(response.headers()["upgrade"], "websocket");
    let upgraded = within("the upgrade", hyper::upgrade::on(response))
        .await
        .unwrap();
    let mut io = TokioIo::new(upgraded);
    let mut greeting = [0; 4];
    within("the app's first bytes", io.read_exact(&mut greeting))
        .await
        .unwrap();
    assert_eq!(&greeting, b"app>");
    io.write_all(b"ping").await.unwrap();
    let mut echoed = [0; 4];
    within("the echo", io.read_exact(&mut echoed))
        .await
        .unwrap();
    assert_eq!(&echoed, b"ping");
    io.shutdown().await.unwrap();
    drop(io);

    let outcome = conn.outcome().await;
    assert_eq!(outcome.requests, 1);
    assert_eq!(outcome.error, None);
}

// ---------------------------------------------------------------------------------------------
// Drain and idle

#[tokio::test]
async fn a_graceful_drain_finishes_the_answer_in_progress_but_not_a_request_pipelined_behind_it() {
    let mut app = App::start().await;
    let sidecar = Sidecar::to(&app);
    let mut conn = sidecar.connect(caller(false));
    let mut io = conn.io();
    io.write_all(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\nGET /next HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    app.slow_request_arrived().await;
    conn.graceful.send(true).unwrap();
    app.release_slow_requests();
    let mut answer = Vec::new();
    within("the answer and the close", io.read_to_end(&mut answer))
        .await
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
    assert!(answer.contains("slow done"), "{answer}");
    assert_eq!(app.requests.load(Relaxed), 1, "/next never reaches the app");
    assert_eq!(conn.outcome().await.requests, 1);
}

#[tokio::test]
async fn a_graceful_drain_finishes_a_slow_request_and_closes_idle_connections() {
    let mut app = App::start().await;
    let sidecar = Sidecar::to(&app);

    let mut idle = sidecar.connect(caller(false));
    let (mut idle_client, _idle_task) = idle.h1().await;
    app_saw(send1(&mut idle_client, get("/").body(Full::default()).unwrap()).await).await;

    let mut busy = sidecar.connect(caller(false));
    let (mut busy_client, _busy_task) = busy.h1().await;
    let in_flight = tokio::spawn(async move {
        let response = busy_client
            .send_request(get("/slow").body(Full::default()).unwrap())
            .await
            .unwrap();
        let close = response.headers().get("connection").cloned();
        (close, text(response).await)
    });
    app.slow_request_arrived().await;

    idle.graceful.send(true).unwrap();
    busy.graceful.send(true).unwrap();
    let outcome = idle.outcome().await;
    assert_eq!((outcome.requests, outcome.error), (1, None));
    assert!(
        !busy.served.is_finished(),
        "the in-flight request must finish first"
    );

    app.release_slow_requests();
    let (close, body) = within("the slow response", in_flight).await.unwrap();
    assert_eq!(body, "slow done");
    assert_eq!(close.unwrap(), "close");
    let outcome = busy.outcome().await;
    assert_eq!((outcome.requests, outcome.error), (1, None));
}

#[tokio::test]
async fn a_connection_drained_before_its_first_request_still_gets_an_answer() {
    let app = App::start().await;
    let sidecar = Sidecar::to(&app);
    let mut conn = sidecar.connect(caller(false));
    conn.graceful.send(true).unwrap();
    let (mut client, _task) = conn.h1().await;
    let response = send1(&mut client, get("/").body(Full::default()).unwrap()).await;
    assert_eq!(response.headers()["connection"], "close");
    app_saw(response).await;
    let outcome = conn.outcome().await;
    assert_eq!((outcome.requests, outcome.error), (1, None));
}

#[tokio::test]
async fn a_connection_that_sends_nothing_once_the_drain_started_closes_after_the_first_request_grace()
 {
    let app = App::start().await;
    let sidecar = Sidecar::to(&app); // idle_timeout 60 s
    let mut conn = sidecar.connect(caller(false));
    let _held = conn.io();
    let started = tokio::time::Instant::now();
    conn.graceful.send(true).unwrap();
    let outcome = conn.outcome().await;
    assert_eq!((outcome.requests, outcome.error), (0, None));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "closed after {:?}, not after the 1 s first-request grace",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_connection_that_sent_nothing_when_the_drain_ends_is_closed_as_drained() {
    let app = App::start().await;
    let sidecar = Sidecar::to(&app);
    let mut conn = sidecar.connect(caller(false));
    let _held = conn.io();
    conn.close_all.send(true).unwrap();
    let outcome = conn.outcome().await;
    assert_eq!(outcome.requests, 0);
    assert_eq!(
        outcome.error.as_deref(),
        Some("closed at the end of the drain")
    );
}

#[tokio::test]
async fn a_graceful_drain_on_http2_finishes_the_stream_in_flight() {
    let mut app = App::start().await;
    let sidecar = Sidecar::to(&app);
    let mut conn = sidecar.connect(caller(true));
    let (mut client, client_task) = conn.h2().await;
    // Kept: a hyper client whose last handle is gone closes the connection itself.
    let _kept = client.clone();
    let req = Request::get("https://a.example/slow")
        .body(Full::default())
        .unwrap();
    let in_flight =
        tokio::spawn(async move { text(client.send_request(req).await.unwrap()).await });
    app.slow_request_arrived().await;

    conn.graceful.send(true).unwrap();
    app.release_slow_requests();
    assert_eq!(
        within("the slow response", in_flight).await.unwrap(),
        "slow done"
    );
    within("the client connection closing", client_task)
        .await
        .unwrap();
    let outcome = conn.outcome().await;
    assert_eq!((outcome.requests, outcome.error), (1, None));
}

/// Reads one HTTP/2 frame: (type, flags, stream, payload).
async fn frame(io: &mut DuplexStream) -> (u8, u8, u32, Vec<u8>) {
    let mut head = [0u8; 9];
    within("an HTTP/2 frame", io.read_exact(&mut head))
        .await
        .unwrap();
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0; len];
    io.read_exact(&mut payload).await.unwrap();
    (head[3], head[4], stream, payload)
}

const GOAWAY: u8 = 0x7;
const PING: u8 = 0x6;
const SETTINGS: u8 = 0x4;

#[tokio::test]
async fn a_graceful_drain_on_http2_sends_goaway() {
    let app = App::start().await;
    let sidecar = Sidecar::to(&app);
    let mut conn = sidecar.connect(caller(true));
    let mut io = conn.io();
    io.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    io.write_all(&[0, 0, 0, SETTINGS, 0, 0, 0, 0, 0])
        .await
        .unwrap();
    let (kind, ..) = frame(&mut io).await;
    assert_eq!(kind, SETTINGS, "the server's preface");

    conn.graceful.send(true).unwrap();
    let goaway = loop {
        let (kind, flags, _, payload) = frame(&mut io).await;
        match kind {
            GOAWAY => break payload,
            // Acknowledge the server's PING so that it can finish the shutdown.
            PING if flags & 1 == 0 => {
                let mut ack = vec![0, 0, 8, PING, 1, 0, 0, 0, 0];
                ack.extend_from_slice(&payload);
                io.write_all(&ack).await.unwrap();
            }
            _ => {}
        }
    };
    let error_code = u32::from_be_bytes([goaway[4], goaway[5], goaway[6], goaway[7]]);
    assert_eq!(error_code, 0, "NO_ERROR");
    let outcome = loop {
        match frame_or_eof(&mut io).await {
            Some((PING, flags, _, payload)) if flags & 1 == 0 => {
                let mut ack = vec![0, 0, 8, PING, 1, 0, 0, 0, 0];
                ack.extend_from_slice(&payload);
                io.write_all(&ack).await.unwrap();
            }
            Some(_) => {}
            None => break conn.outcome().await,
        }
    };
    assert_eq!(outcome.requests, 0);
}

async fn frame_or_eof(io: &mut DuplexStream) -> Option<(u8, u8, u32, Vec<u8>)> {
    let mut first = [0u8; 1];
    match within("an HTTP/2 frame or the end", io.read(&mut first)).await {
        Ok(0) | Err(_) => None,
        Ok(_) => {
            let mut rest = [0u8; 8];
            io.read_exact(&mut rest).await.ok()?;
            let len = u32::from_be_bytes([0, first[0], rest[0], rest[1]]) as usize;
            let mut payload = vec![0; len];
            io.read_exact(&mut payload).await.ok()?;
            Some((rest[2], rest[3], 0, payload))
        }
    }
}

#[tokio::test]
async fn close_all_drops_a_connection_with_a_request_in_flight() {
    let mut app = App::start().await;
    let sidecar = Sidecar::to(&app);
    for h2 in [false, true] {
        let mut conn = sidecar.connect(caller(h2));
        let in_flight = if h2 {
            let (mut client, _task) = conn.h2().await;
            let req = Request::get("https://a.example/slow")
                .body(Full::default())
                .unwrap();
            tokio::spawn(async move { client.send_request(req).await.map(|r| r.status()) })
        } else {
            let (mut client, _task) = conn.h1().await;
            let req = get("/slow").body(Full::default()).unwrap();
            tokio::spawn(async move { client.send_request(req).await.map(|r| r.status()) })
        };
        app.slow_request_arrived().await;
        conn.close_all.send(true).unwrap();
        let outcome = conn.outcome().await;
        assert_eq!(
            outcome.error.as_deref(),
            Some("closed at the end of the drain")
        );
        let answer = within("the client seeing the close", in_flight)
            .await
            .unwrap();
        assert!(
            answer.is_err() || answer.is_ok_and(|s| s == StatusCode::SERVICE_UNAVAILABLE),
            "h2 {h2}"
        );
    }
    app.release_slow_requests();
}

#[tokio::test]
async fn idle_keep_alive_connections_close_after_the_idle_timeout() {
    let app = App::start().await;
    let sidecar = Sidecar::new(HttpSettings {
        idle_timeout: Duration::from_millis(300),
        ..settings(app.port(), Xfcc::Envoy)
    });
    for h2 in [false, true] {
        let mut conn = sidecar.connect(caller(h2));
        // The clients stay alive (a dropped hyper client closes its connection itself): the
        // sidecar must be the one that closes.
        let (mut _h1, mut _h2) = (None, None);
        let client_task = if h2 {
            let (mut client, task) = conn.h2().await;
            let req = Request::get("https://a.example/")
                .body(Full::default())
                .unwrap();
            app_saw(send2(&mut client, req).await).await;
            _h2 = Some(client);
            task
        } else {
            let (mut client, task) = conn.h1().await;
            app_saw(send1(&mut client, get("/").body(Full::default()).unwrap()).await).await;
            _h1 = Some(client);
            task
        };
        let outcome = conn.outcome().await;
        assert_eq!((outcome.requests, outcome.error), (1, None), "h2 {h2}");
        within("the client seeing the close", client_task)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_connection_that_never_sends_a_request_closes_after_the_idle_timeout() {
    let app = App::start().await;
    let sidecar = Sidecar::new(HttpSettings {
        idle_timeout: Duration::from_millis(300),
        ..settings(app.port(), Xfcc::Envoy)
    });
    let mut conn = sidecar.connect(caller(false));
    let _held = conn.io();
    let outcome = conn.outcome().await;
    assert_eq!((outcome.requests, outcome.error), (0, None));
}

// ---------------------------------------------------------------------------------------------
// One identity header, set only by the sidecar

/// The names an app server may read as the sidecar's headers (lower case, `-`).
const RESERVED: [&str; 5] = [
    "x-forwarded-client-cert",
    "x-forwarded-proto",
    "x-forwarded-for",
    "forwarded",
    "x-real-ip",
];

/// What the app must see for `reserved`, and nothing else under any spelling.
fn only_the_sidecars(echo: &Value, want_xfcc: &str) {
    for reserved in RESERVED {
        let want: Vec<(String, String)> = match reserved {
            "x-forwarded-client-cert" => vec![(reserved.into(), want_xfcc.into())],
            "x-forwarded-proto" => vec![(reserved.into(), "https".into())],
            "x-forwarded-for" => vec![(reserved.into(), "203.0.113.7".into())],
            _ => vec![],
        };
        assert_eq!(seen_as(echo, reserved, false), want, "headers: {echo}");
        assert_eq!(seen_as(echo, reserved, true), [], "trailers: {echo}");
    }
}

/// The JSON body of a raw HTTP/1.1 answer.
fn raw_body(answer: &str) -> Value {
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    let body = answer.split_once("\r\n\r\n").unwrap().1;
    serde_json::from_str(body).unwrap()
}

#[tokio::test]
async fn no_spelling_of_the_sidecars_headers_reaches_the_app_over_http1() {
    let app = App::start().await;
    let cert = client_cert();
    let sidecar = Sidecar::to(&app);
    let mut conn = sidecar.connect(caller_with(&cert, false));
    // Raw bytes: a client library would normalise the names we need to send as they are.
    let head = "GET / HTTP/1.1\r\nHost: myapp.example.com\r\n\
        X-Forwarded-Client_Cert: Hash=00;Subject=\"CN=admin\"\r\n\
        x_forwarded_client_cert: Hash=01\r\n\
        X-FORWARDED-CLIENT-CERT: Hash=02\r\n\
        X_Forwarded_Proto: http\r\n\
        x-forwarded_for: 10.0.0.1\r\n\
        X-Forwarded-For: 10.0.0.2\r\n\
        Forwarded: for=10.0.0.3;proto=http\r\n\
        X-Real-IP: 10.0.0.4\r\n\
        x_real_ip: 10.0.0.5\r\n\
        X-Forwarded-Client-Certs: unrelated\r\n\
        Connection: close\r\n\r\n";
    let echo = raw_body(&raw_exchange(&mut conn, head.as_bytes().to_vec()).await);
    only_the_sidecars(&echo, &envoy_value(&cert));
    // A name that only looks alike is not the sidecar's business.
    assert_eq!(seen(&echo, "x-forwarded-client-certs"), ["unrelated"]);
    conn.outcome().await;
}

#[tokio::test]
async fn no_spelling_of_the_sidecars_headers_reaches_the_app_over_http2() {
    let app = App::start().await;
    let cert = client_cert();
    let sidecar = Sidecar::to(&app);
    let mut conn = sidecar.connect(caller_with(&cert, true));
    let (mut client, _task) = conn.h2().await;
    let req = Request::get("https://myapp.example.com/")
        .header("x-forwarded-client_cert", SPOOFED)
        .header("x_forwarded_client_cert", SPOOFED)
        .header("x_forwarded_proto", "http")
        .header("x-forwarded-for", "10.0.0.2")
        .header("forwarded", "for=10.0.0.3")
        .header("x-real_ip", "10.0.0.4")
        .body(Full::default())
        .unwrap();
    let echo = app_saw(send2(&mut client, req).await).await;
    only_the_sidecars(&echo, &envoy_value(&cert));
}

#[tokio::test]
async fn a_forged_trailer_never_reaches_the_app_on_a_chunked_http1_request() {
    let app = App::start().await;
    let cert = client_cert();
    let sidecar = Sidecar::to(&app);
    let mut conn = sidecar.connect(caller_with(&cert, false));
    let request = "POST /upload HTTP/1.1\r\nHost: myapp.example.com\r\n\
        Transfer-Encoding: chunked\r\n\
        Trailer: X-Forwarded-Client-Cert, X_Forwarded_For, X-Checksum\r\n\
        Trailer: x-real-ip, forwarded\r\n\
        Connection: close\r\n\r\n\
        5\r\nhello\r\n0\r\n\
        X-Forwarded-Client-Cert: Hash=00;Subject=\"CN=admin\"\r\n\
        X_Forwarded_For: 10.0.0.1\r\n\
        X-Real-IP: 10.0.0.4\r\n\
        Forwarded: for=10.0.0.3\r\n\
        X-Checksum: 5d41402a\r\n\r\n";
    let echo = raw_body(&raw_exchange(&mut conn, request.as_bytes().to_vec()).await);
    only_the_sidecars(&echo, &envoy_value(&cert));
    // Trailers as such still flow: the announced, harmless one arrives.
    assert_eq!(seen(&echo, "trailer"), ["X-Checksum"]);
    assert_eq!(
        echo["trailers"],
        json!([["x-checksum", "5d41402a"]]),
        "{echo}"
    );
    conn.outcome().await;
}

#[tokio::test]
async fn a_proxy_header_never_reaches_the_app_so_a_cgi_app_cannot_be_pointed_at_a_callers_proxy() {
    // httpoxy (CVE-2016-5385): CGI-style servers turn `Proxy` into HTTP_PROXY, the variable
    // HTTP clients take their outbound proxy from, so a caller could route the app's own
    // requests, with their credentials, through a proxy of its choosing.
    let app = App::start().await;
    let cert = client_cert();
    let sidecar = Sidecar::to(&app);
    let mut conn = sidecar.connect(caller_with(&cert, false));
    let request = "POST /upload HTTP/1.1\r\nHost: myapp.example.com\r\n\
        Proxy: http://198.51.100.1:3128\r\n\
        PROXY: http://198.51.100.2:3128\r\n\
        Proxy-Authorization: Basic dTpw\r\n\
        Transfer-Encoding: chunked\r\n\
        Trailer: proxy, X-Checksum\r\n\
        Connection: close\r\n\r\n\
        5\r\nhello\r\n0\r\n\
        Proxy: http://198.51.100.3:3128\r\n\
        X-Checksum: 5d41402a\r\n\r\n";
    let echo = raw_body(&raw_exchange(&mut conn, request.as_bytes().to_vec()).await);
    assert_eq!(seen_as(&echo, "proxy", false), [], "{echo}");
    assert_eq!(seen_as(&echo, "proxy", true), [], "{echo}");
    assert_eq!(seen(&echo, "trailer"), ["X-Checksum"]);
    conn.outcome().await;

    let mut conn = sidecar.connect(caller_with(&cert, true));
    let (mut client, _task) = conn.h2().await;
    let req = Request::get("https://myapp.example.com/")
        .header("proxy", "http://198.51.100.4:3128")
        .body(Full::default())
        .unwrap();
    let echo = app_saw(send2(&mut client, req).await).await;
    assert_eq!(seen_as(&echo, "proxy", false), [], "{echo}");
}

/// A request body of these frames (last first) and no length known ahead, so that the
/// sidecar forwards it chunked, the one HTTP/1.1 framing that carries trailers.
struct Frames(Vec<hyper::body::Frame<Bytes>>);

impl hyper::body::Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        std::task::Poll::Ready(self.get_mut().0.pop().map(Ok))
    }
}

#[tokio::test]
async fn a_forged_trailer_never_reaches_the_app_on_an_http2_request() {
    let app = App::start().await;
    let cert = client_cert();
    let sidecar = Sidecar::to(&app);
    let mut conn = sidecar.connect(caller_with(&cert, true));
    let (mut client, task) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(conn.io()))
            .await
            .unwrap();
    let _task = tokio::spawn(task);
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-forwarded-client-cert", SPOOFED.parse().unwrap());
    trailers.insert("x_forwarded_proto", "http".parse().unwrap());
    trailers.insert("x-forwarded-for", "10.0.0.1".parse().unwrap());
    trailers.insert("x-checksum", "5d41402a".parse().unwrap());
    let body = Frames(vec![
        hyper::body::Frame::trailers(trailers),
        hyper::body::Frame::data(Bytes::from_static(b"hello")),
    ]);
    let req = Request::post("https://myapp.example.com/upload")
        .header("te", "trailers")
        .header("trailer", "x-forwarded-client-cert, x_forwarded_proto")
        .header("trailer", "x-forwarded-for, x-checksum")
        .body(body)
        .unwrap();
    let response = within("an HTTP/2 response", client.send_request(req))
        .await
        .unwrap();
    let echo = app_saw(response).await;
    only_the_sidecars(&echo, &envoy_value(&cert));
    assert_eq!(seen(&echo, "trailer"), ["x-checksum"]);
    assert_eq!(
        echo["trailers"],
        json!([["x-checksum", "5d41402a"]]),
        "{echo}"
    );
}

#[tokio::test]
async fn duplicate_host_headers_get_400_and_nothing_reaches_the_app() {
    let app = App::start().await;
    let sidecar = Sidecar::to(&app);
    let mut conn = sidecar.connect(caller(false));
    let head = "GET /admin HTTP/1.1\r\nHost: myapp.example.com\r\nHost: admin.internal\r\n\
        Connection: close\r\n\r\n";
    let answer = raw_exchange(&mut conn, head.as_bytes().to_vec()).await;
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer}"
    );
    assert!(answer.contains("more than one Host"), "{answer}");
    conn.outcome().await;
    assert_eq!(app.accepts.load(Relaxed), 0, "nothing may reach the app");
}

#[tokio::test]
async fn an_http2_host_other_than_the_authority_gets_400_and_nothing_reaches_the_app() {
    let app = App::start().await;
    let sidecar = Sidecar::to(&app);
    let mut conn = sidecar.connect(caller(true));
    let (mut client, _task) = conn.h2().await;
    let req = Request::get("https://myapp.example.com/admin")
        .header("host", "admin.internal")
        .body(Full::default())
        .unwrap();
    let response = send2(&mut client, req).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(text(response).await.contains(":authority"));
    assert_eq!(app.accepts.load(Relaxed), 0, "nothing may reach the app");
    // The same name in another case is the same authority.
    let req = Request::get("https://myapp.example.com/")
        .header("host", "MyApp.Example.com")
        .body(Full::default())
        .unwrap();
    let echo = app_saw(send2(&mut client, req).await).await;
    assert_eq!(seen(&echo, "host"), ["myapp.example.com"]);
}

#[tokio::test]
async fn a_san_that_spells_more_xfcc_arrives_quoted_as_one_value_of_one_element() {
    let app = App::start().await;
    let sidecar = Sidecar::to(&app);
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationalUnitName, format!("app:{APP}"));
    let forged = "spiffe://cf/x;DNS=admin.internal,Hash=00;Subject=\"CN=admin\"";
    params.subject_alt_names = vec![
        rcgen::SanType::URI(forged.try_into().unwrap()),
        rcgen::SanType::DnsName("a.apps.internal".try_into().unwrap()),
    ];
    let key = rcgen::KeyPair::generate().unwrap();
    let der = params.self_signed(&key).unwrap().der().to_vec();
    let who = Caller {
        leaf: Some(der.clone().into()),
        identity: Some(CfIdentity::from_der(&der).unwrap()),
        ..caller(false)
    };
    let mut conn = sidecar.connect(who);
    let (mut client, _task) = conn.h1().await;
    let echo = app_saw(send1(&mut client, get("/").body(Full::default()).unwrap()).await).await;
    let value = seen(&echo, "x-forwarded-client-cert");
    assert_eq!(value.len(), 1);
    let elements = tls_sidecar::xfcc::parse(&value[0]).unwrap();
    assert_eq!(elements.len(), 1, "{value:?}");
    let element = tls_sidecar::xfcc::Element::from_pairs(&elements[0]).unwrap();
    assert_eq!(element.uris, [forged]);
    assert_eq!(element.dns, ["a.apps.internal"]);
    assert_eq!(element.subject, format!("OU=app:{APP}"));
}

// ---------------------------------------------------------------------------------------------
// Request rules

const ADMIN_APP: &str = "1b2c3d4e-5f60-4a7b-8c9d-0e1f2a3b4c5d";

/// A policy from `(methods, paths, allow)` rows, as tls-sidecar.yml writes them.
fn request_rules(rows: &[(&[&str], &[&str], &[&str])]) -> RequestPolicy {
    fn parse<T: std::str::FromStr<Err = String>>(items: &[&str]) -> Vec<T> {
        items.iter().map(|i| i.parse().unwrap()).collect()
    }
    RequestPolicy::new(
        rows.iter()
            .map(|(methods, paths, allow)| {
                let rule = RequestRule {
                    methods: parse(methods),
                    paths: parse(paths),
                    allow: parse(allow),
                };
                let policy =
                    AccessPolicy::resolve(&rule.allow, &VcapApplication::default()).unwrap();
                (rule, policy)
            })
            .collect(),
    )
}

fn ruled(app: &App, rules: RequestPolicy) -> Sidecar {
    Sidecar::new(HttpSettings {
        rules,
        ..settings(app.port(), Xfcc::Envoy)
    })
}

#[tokio::test]
async fn request_rules_let_a_caller_reach_only_the_paths_and_methods_its_rule_names() {
    let (logs, _guard) = Logs::capture();
    let app = App::start().await;
    let admin = format!("cf:app:{ADMIN_APP}");
    let me = format!("cf:app:{APP}");
    let sidecar = ruled(
        &app,
        request_rules(&[
            (&["POST", "PUT", "DELETE"], &["/admin/*"], &[admin.as_str()]),
            (&[], &["/api/*", "/health"], &[me.as_str()]),
            (&["GET"], &["/admin/*"], &["cf:any"]),
        ]),
    );
    let cert = client_cert();
    for h2 in [false, true] {
        let mut conn = sidecar.connect(caller_with(&cert, h2));
        let send = |method: &'static str, path: &'static str| {
            let req = Request::builder()
                .method(method)
                .uri(format!("https://myapp.example.com{path}"))
                .header("host", "myapp.example.com")
                .body(Full::default())
                .unwrap();
            (method, path, req)
        };
        let requests = [
            (send("GET", "/api/orders?id=7"), StatusCode::OK),
            (send("DELETE", "/api"), StatusCode::OK),
            (send("GET", "/health"), StatusCode::OK),
            (send("GET", "/admin/users"), StatusCode::OK),
            (send("POST", "/admin/users"), StatusCode::FORBIDDEN),
            (send("GET", "/healthz"), StatusCode::FORBIDDEN),
            (send("GET", "/"), StatusCode::FORBIDDEN),
        ];
        if h2 {
            let (mut client, _task) = conn.h2().await;
            for ((method, path, req), want) in requests {
                let response = send2(&mut client, req).await;
                assert_eq!(response.status(), want, "h2 {method} {path}");
                if want == StatusCode::FORBIDDEN {
                    assert_eq!(text(response).await, "not allowed\n");
                }
            }
        } else {
            let (mut client, _task) = conn.h1().await;
            for ((method, path, req), want) in requests {
                let response = send1(&mut client, req).await;
                assert_eq!(response.status(), want, "h1 {method} {path}");
                if want == StatusCode::OK {
                    assert_eq!(app_saw(response).await["target"], path.to_owned());
                } else {
                    assert_eq!(text(response).await, "not allowed\n");
                }
            }
        }
    }
    assert_eq!(app.requests.load(Relaxed), 8);
    let m = &sidecar.metrics;
    assert_eq!(
        [
            m.request_denials(Some(0)),
            m.request_denials(Some(1)),
            m.request_denials(None)
        ],
        [2, 0, 4]
    );
    let denials: Vec<String> = logs
        .lines()
        .into_iter()
        .filter(|l| l.contains("WARN") && l.contains("denied="))
        .collect();
    assert_eq!(denials.len(), 6, "{denials:?}");
    assert!(
        denials
            .iter()
            .any(|l| l.contains("rules[0] (POST,PUT,DELETE /admin/* -> ")),
        "{denials:?}"
    );
    assert!(
        denials
            .iter()
            .any(|l| l.contains("no rule matches GET /healthz")),
        "{denials:?}"
    );
}

#[tokio::test]
async fn a_caller_without_a_certificate_matches_no_rule_not_even_cf_any() {
    let app = App::start().await;
    let sidecar = ruled(&app, request_rules(&[(&[], &["/*"], &["cf:any"])]));
    let mut conn = sidecar.connect(caller(false));
    let (mut client, _task) = conn.h1().await;
    let response = send1(&mut client, get("/").body(Full::default()).unwrap()).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(sidecar.metrics.request_denials(Some(0)), 1);
    assert_eq!(app.requests.load(Relaxed), 0);
}

/// The shapes behind Envoy's and Istio's path-normalisation CVEs: each spells `/admin/...`
/// so that a naive prefix match on the raw path sees another path.
const ADMIN_SPELLINGS: [&str; 12] = [
    "/public/../admin/users",
    "/public/%2e%2e/admin/users",
    "/public/%2E%2e/admin/users",
    "/public/.%2e/admin/users",
    "/public/..;/admin/users",
    "/public/..;x=y/admin/users",
    "//admin/users",
    "/./admin/users",
    "/%61dmin/users",
    "/admin;jsessionid=1/users",
    "/public/../../admin/users",
    "/public//..//admin/users",
];

#[tokio::test]
async fn every_spelling_of_a_protected_path_meets_its_rule_and_the_app_gets_the_normal_form() {
    let app = App::start().await;
    let me = format!("cf:app:{APP}");
    let sidecar = ruled(
        &app,
        request_rules(&[(&[], &["/admin/*"], &[]), (&[], &["/*"], &[me.as_str()])]),
    );
    let cert = client_cert();
    for spelling in ADMIN_SPELLINGS {
        for h2 in [false, true] {
            let mut conn = sidecar.connect(caller_with(&cert, h2));
            let uri = format!("https://myapp.example.com{spelling}");
            let req = Request::get(uri.as_str()).header("host", "myapp.example.com");
            let response = if h2 {
                let (mut client, _task) = conn.h2().await;
                send2(&mut client, req.body(Full::default()).unwrap()).await
            } else {
                let (mut client, _task) = conn.h1().await;
                send1(&mut client, req.body(Full::default()).unwrap()).await
            };
            assert_eq!(
                response.status(),
                StatusCode::FORBIDDEN,
                "{spelling} h2 {h2}"
            );
        }
    }
    // Spellings servers disagree on are refused outright (raw HTTP/1: a client library
    // would refuse to send some of them).
    for spelling in [
        "/public/..%2fadmin/users",
        "/public/..%2Fadmin/users",
        "/admin%2fusers",
        "/public/..%5cadmin/users",
        "/public/..\\admin/users",
        "/admin%00/users",
    ] {
        let mut conn = sidecar.connect(caller_with(&cert, false));
        let head = format!("GET {spelling} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        let answer = raw_exchange(&mut conn, head.into_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 400 "), "{spelling}: {answer}");
    }
    assert_eq!(app.requests.load(Relaxed), 0, "nothing may reach the app");
    assert_eq!(sidecar.metrics.request_denials(Some(0)), 24);

    // What is let through reaches the app in the form the rules matched; the query as sent.
    let mut conn = sidecar.connect(caller_with(&cert, false));
    let (mut client, _task) = conn.h1().await;
    for (sent, forwarded) in [
        (
            "/public/./docs//a;v=1/../b?q=%2e%2e/x",
            "/public/docs/b?q=%2e%2e/x",
        ),
        ("/%7Euser/%41%2D", "/~user/A-"),
        ("/a%20b/", "/a%20b/"),
    ] {
        let echo =
            app_saw(send1(&mut client, get(sent).body(Full::default()).unwrap()).await).await;
        assert_eq!(echo["target"], forwarded, "{sent}");
    }
}

#[tokio::test]
async fn without_request_rules_the_path_reaches_the_app_as_sent() {
    let app = App::start().await;
    let sidecar = Sidecar::to(&app);
    let mut conn = sidecar.connect(caller(false));
    let (mut client, _task) = conn.h1().await;
    let sent = "/public/..;/admin//x%2fy";
    let echo = app_saw(send1(&mut client, get(sent).body(Full::default()).unwrap()).await).await;
    assert_eq!(echo["target"], sent);
}
