//! The egress proxy: one HTTP proxy on loopback for every internal route the app calls.
//!
//! The app sends `http://backend.apps.internal:8443/...` in absolute form (an HTTP proxy
//! request), or `CONNECT backend.apps.internal:8443` for any TCP protocol. The first
//! `egress_proxy.targets` entry listing the host and port decides: the sidecar resolves the
//! host, tries each address in turn, and connects with TLS, presenting this instance's
//! certificate (what `egress` presents) with the host as the server name, then checks the
//! server against the entry's `expect` exactly as an `egress` entry does. A request whose host
//! no entry lists gets `403`; a target that cannot be reached, or is not who `expect` says,
//! `502`; each with a one-line reason, a log line and a count for the entry. Absolute-form
//! requests go on in origin form with the app's `Host`, over connections pooled per host and
//! port; a CONNECT tunnel carries bytes both ways until either side closes or it idles for
//! `limits.idle_timeout`.
//!
//! The listener binds loopback only (staging refuses anything else): whoever reaches it
//! speaks with this app's identity. It takes its connections from the egress slots.

use crate::accept::Door;
use crate::config::Limits;
use crate::egress::{self, EgressTls, Failure};
use crate::http::{error_chain, headers, splice};
use crate::logging::millis;
use crate::metrics::EgressMetrics;
use crate::shared::Shared;
use crate::stop::stopped;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};
use std::time::Duration;
use tls_sidecar_config::{HostPort, ProxyTarget};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, watch};
use tokio::time::Instant;
use tracing::{info, warn};

/// How long an idle pooled connection to a target is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest request head the proxy reads from the app.
const MAX_HEAD: usize = 64 * 1024;

type Body = Either<Incoming, Full<Bytes>>;

/// One `egress_proxy.targets` entry, as requests see it.
pub(crate) struct Target {
    pub(crate) spec: ProxyTarget,
    pub(crate) tls: Arc<EgressTls>,
    pub(crate) metrics: Arc<EgressMetrics>,
    /// Absolute-form requests: mTLS connections pooled per host and port.
    client: Client<Connector, Incoming>,
    /// Fixed addresses instead of a lookup (tests).
    addrs: Option<Arc<[SocketAddr]>>,
}

impl Target {
    pub(crate) fn new(
        spec: ProxyTarget,
        tls: Arc<EgressTls>,
        metrics: Arc<EgressMetrics>,
        limits: Limits,
        addrs: Option<Arc<[SocketAddr]>>,
    ) -> Self {
        let connector = Connector {
            tls: tls.clone(),
            limits,
            addrs: addrs.clone(),
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            // The app's own Host header goes on (the target's routes and logs name it).
            .set_host(false)
            .build(connector);
        Target {
            spec,
            tls,
            metrics,
            client,
            addrs,
        }
    }
}

/// The proxy's targets, in config order, and the limits its connections keep.
pub(crate) struct EgressProxy {
    pub(crate) targets: Vec<Target>,
    pub(crate) limits: Limits,
}

impl EgressProxy {
    /// The first target listing `host` and `port`.
    fn target(&self, host: &str, port: u16) -> Option<&Target> {
        self.targets.iter().find(|t| t.spec.matches(host, port))
    }
}

/// The proxy listener's [`Door`]: each connection from the app takes an egress slot.
pub(crate) struct ProxyDoor {
    pub(crate) proxy: Arc<EgressProxy>,
    pub(crate) shared: Arc<Shared>,
}

impl Door for ProxyDoor {
    type Slot = OwnedSemaphorePermit;

    fn admit(&mut self, _app: &TcpStream) -> Option<OwnedSemaphorePermit> {
        self.shared.egress_permit()
    }

    fn serve(&self, app: TcpStream, peer: SocketAddr, permit: OwnedSemaphorePermit) {
        let (proxy, shared) = (self.proxy.clone(), self.shared.clone());
        tokio::spawn(serve(app, peer, proxy, shared, permit));
    }

    fn refused(&self, peer: SocketAddr, held_back: Option<u64>) {
        if let Some(held_back) = held_back {
            let max_connections = self.shared.limits.max_connections;
            warn!(
                egress = "egress_proxy", peer = %peer, max_connections, held_back,
                "egress proxy connection refused: max_connections reached"
            );
        }
    }

    fn accept_failed(&self, error: &io::Error, held_back: u64, retry_ms: u64) {
        warn!(egress = "egress_proxy", error = %error, held_back, retry_ms, "accept failed");
    }
}

/// Serves one connection from the app until it closes or the drain ends. `permit` is its
/// egress slot, held until a CONNECT tunnel made on it closes too.
async fn serve(
    app: TcpStream,
    peer: SocketAddr,
    proxy: Arc<EgressProxy>,
    shared: Arc<Shared>,
    permit: OwnedSemaphorePermit,
) {
    // `app` has TCP_NODELAY from the listening socket (`accept::bind`).
    let slot = Arc::new(permit);
    let close_all = shared.close_all.clone();
    let service = service_fn(move |req| {
        let (proxy, close_all, slot) = (proxy.clone(), close_all.clone(), slot.clone());
        async move { Ok::<_, Infallible>(handle(&proxy, peer, req, Held { close_all, slot }).await) }
    });
    let mut builder = http1::Builder::new();
    builder.max_buf_size(MAX_HEAD);
    let conn = builder
        .serve_connection(TokioIo::new(app), service)
        .with_upgrades();
    let mut close_all = shared.close_all.clone();
    tokio::select! {
        _ = conn => {}
        () = stopped(&mut close_all) => {}
    }
}

/// What a CONNECT tunnel keeps while it runs: the drain's last switch, and the egress slot of
/// the app connection it was made on.
struct Held {
    close_all: watch::Receiver<bool>,
    slot: Arc<OwnedSemaphorePermit>,
}

/// Answers one request from the app: a CONNECT tunnel, a forwarded request, or a refusal.
async fn handle(
    proxy: &EgressProxy,
    peer: SocketAddr,
    req: Request<Incoming>,
    held: Held,
) -> Response<Body> {
    let started = Instant::now();
    let connect = req.method() == Method::CONNECT;
    let Some((host, port)) = destination(req.uri(), connect) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "send requests in absolute form (http://host:port/path) or as CONNECT host:port; this proxy adds TLS itself, so use http:// URLs",
        );
    };
    let Some(target) = proxy.target(&host, port) else {
        warn!(
            egress = "egress_proxy", peer = %peer, host, port,
            "egress proxy request refused: no egress_proxy target lists {host}:{port}"
        );
        return refuse(
            StatusCode::FORBIDDEN,
            &format!("{host}:{port} is not an egress_proxy target"),
        );
    };
    target.metrics.accepted.fetch_add(1, Relaxed);
    let name = target.metrics.name.as_str();
    if connect {
        let to = HostPort { host, port };
        return tunnel(proxy, target, peer, req, to, held).await;
    }
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    // A hung target must not hold the app: the response head has to start within
    // limits.idle_timeout, as in http mode.
    let idle = proxy.limits.idle_timeout;
    let result = tokio::time::timeout(idle, target.client.request(to_target(req))).await;
    let duration_ms = millis(started.elapsed());
    let Ok(result) = result else {
        let text = format!(
            "{host}:{port} did not answer within {} ms (limits.idle_timeout)",
            millis(idle)
        );
        warn!(egress = name, peer = %peer, host, port, method = %method, path, duration_ms, "egress proxy request failed: {text}");
        return refuse(StatusCode::GATEWAY_TIMEOUT, &text);
    };
    match result {
        Ok(response) => {
            let status = response.status().as_u16();
            info!(
                egress = name, peer = %peer, host, port, method = %method, path, status,
                duration_ms, "egress proxy request"
            );
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, Either::Left(body))
        }
        Err(e) => {
            let failure = connect_failure(&e);
            let text = match &failure {
                Some(f) => {
                    target.metrics.failed(f.why);
                    f.text.clone()
                }
                None => format!("{host}:{port} did not answer ({})", error_chain(&e)),
            };
            let reason = failure.as_ref().map(|f| f.why.as_str());
            warn!(
                egress = name, peer = %peer, host, port, method = %method, path, duration_ms,
                reason, "egress proxy request failed: {text}"
            );
            refuse(StatusCode::BAD_GATEWAY, &text)
        }
    }
}

/// CONNECT: the TLS connection to the target first, then `200` and the tunnel.
async fn tunnel(
    proxy: &EgressProxy,
    target: &Target,
    peer: SocketAddr,
    req: Request<Incoming>,
    to: HostPort,
    held: Held,
) -> Response<Body> {
    let name = target.metrics.name.clone();
    let mut conn = egress::Conn::default();
    let addrs = target.addrs.as_deref();
    let tls = match egress::connect(&to, addrs, &target.tls, &proxy.limits, &mut conn).await {
        Ok(tls) => tls,
        Err(failure) => {
            target.metrics.failed(failure.why);
            warn!(
                egress = name, peer = %peer, target = %to, reason = failure.why.as_str(),
                "egress proxy tunnel refused: {}", failure.text
            );
            return refuse(StatusCode::BAD_GATEWAY, &failure.text);
        }
    };
    let metrics = target.metrics.clone();
    let idle = proxy.limits.idle_timeout;
    tokio::spawn(async move {
        let Held {
            mut close_all,
            slot: _slot,
        } = held;
        let started = Instant::now();
        let Ok(upgraded) = hyper::upgrade::on(req).await else {
            return;
        };
        metrics.active.fetch_add(1, Relaxed);
        let result = tokio::select! {
            result = splice::splice(TokioIo::new(upgraded), tls, idle) => result,
            () = stopped(&mut close_all) => Err("closed at the end of the drain".to_owned()),
        };
        metrics.active.fetch_sub(1, Relaxed);
        let (error, (sent, received)) = match result {
            Ok(counts) => (None, counts),
            Err(e) => (Some(e), (0, 0)),
        };
        metrics.bytes_sent.fetch_add(sent, Relaxed);
        metrics.bytes_received.fetch_add(received, Relaxed);
        let [app, space, org, instance] =
            crate::identity::CfIdentity::log_fields(conn.identity.as_ref());
        info!(
            egress = name, peer = %peer, target = %to, server = conn.server.map(tracing::field::display),
            app, space, org, instance, duration_ms = millis(started.elapsed()),
            bytes_sent = sent, bytes_received = received, error, "egress proxy tunnel closed"
        );
    });
    Response::new(Either::Right(Full::default()))
}

/// Host and port of an absolute-form `http://` request, or of a CONNECT authority.
fn destination(uri: &Uri, connect: bool) -> Option<(String, u16)> {
    let authority = uri.authority()?;
    let port = match (connect, uri.scheme_str()) {
        (true, _) => authority.port_u16()?,
        (false, Some("http")) => authority.port_u16().unwrap_or(80),
        (false, _) => return None,
    };
    Some((authority.host().to_owned(), port))
}

/// The app's request as the target gets it: origin form on the wire (hyper's client sends
/// the path), without the headers meant for this proxy or for this hop.
fn to_target(req: Request<Incoming>) -> Request<Incoming> {
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    if !parts.headers.contains_key(header::HOST)
        && let Some(authority) = parts.uri.authority()
        && let Ok(host) = HeaderValue::from_str(authority.as_str())
    {
        parts.headers.insert(header::HOST, host);
    }
    Request::from_parts(parts, body)
}

/// Removes the hop-by-hop headers (as http mode does) and the ones addressed to this proxy.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    headers::strip_hop_by_hop(headers, false);
    headers.remove(header::PROXY_AUTHORIZATION);
    headers.remove(header::PROXY_AUTHENTICATE);
}

/// A local answer: `status` with one line of text.
fn refuse(status: StatusCode, text: &str) -> Response<Body> {
    let mut response = Response::new(Either::Right(Full::from(format!("tls-sidecar: {text}\n"))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The egress failure behind a client error that happened while connecting.
fn connect_failure(e: &hyper_util::client::legacy::Error) -> Option<&Failure> {
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        if let Some(ConnectError(failure)) = c.downcast_ref::<ConnectError>() {
            return Some(failure);
        }
        cause = c.source();
    }
    None
}

/// Connects the pooled client to a target: the same resolution, addresses in turn, TLS and
/// identity check as an `egress` entry.
#[derive(Clone)]
struct Connector {
    tls: Arc<EgressTls>,
    limits: Limits,
    addrs: Option<Arc<[SocketAddr]>>,
}

/// A failed connection to a target, carried through hyper's client error.
#[derive(Debug)]
struct ConnectError(Failure);

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(&self.0.text)
    }
}

impl std::error::Error for ConnectError {}

impl tower_service::Service<Uri> for Connector {
    type Response = TlsIo;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<TlsIo, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let (tls, limits, addrs) = (self.tls.clone(), self.limits, self.addrs.clone());
        Box::pin(async move {
            let to = HostPort {
                host: uri.host().unwrap_or_default().to_owned(),
                port: uri.port_u16().unwrap_or(80),
            };
            let mut conn = egress::Conn::default();
            let stream = egress::connect(&to, addrs.as_deref(), &tls, &limits, &mut conn)
                .await
                .map_err(ConnectError)?;
            Ok(TlsIo(TokioIo::new(stream)))
        })
    }
}

/// A pooled TLS connection to a target, as hyper's client drives it.
struct TlsIo(TokioIo<tokio_rustls::client::TlsStream<TcpStream>>);

impl Connection for TlsIo {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl Read for TlsIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl Write for TlsIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::HeaderName;

    #[test]
    fn an_absolute_http_url_or_a_connect_authority_names_the_destination() {
        let uri = |s: &str| s.parse::<Uri>().unwrap();
        assert_eq!(
            destination(&uri("http://backend.apps.internal:8443/x?y"), false),
            Some(("backend.apps.internal".to_owned(), 8443))
        );
        assert_eq!(
            destination(&uri("http://backend.apps.internal/x"), false),
            Some(("backend.apps.internal".to_owned(), 80))
        );
        assert_eq!(
            destination(&uri("backend.apps.internal:5432"), true),
            Some(("backend.apps.internal".to_owned(), 5432))
        );
        for (u, connect) in [
            ("/x", false),
            ("https://backend.apps.internal/x", false),
            ("backend.apps.internal", true),
        ] {
            assert_eq!(destination(&uri(u), connect), None, "{u}");
        }
    }

    #[test]
    fn hop_by_hop_and_proxy_headers_never_reach_the_target() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "x-secret, keep-alive"),
            ("x-secret", "1"),
            ("proxy-authorization", "Basic Zm9v"),
            ("proxy-connection", "keep-alive"),
            ("keep-alive", "timeout=5"),
            ("x-kept", "yes"),
        ] {
            h.append(
                HeaderName::from_static(k),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x-kept"]);
    }
}
