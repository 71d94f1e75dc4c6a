//! The route port: plaintext HTTP on CF's `$PORT`, in front of the app.
//!
//! Gorouter delivers route traffic to `$PORT` through Diego's per-container Envoy (a plain TCP
//! proxy), and any app with a network policy for that port connects to it directly. By default
//! Gorouter passes an incoming `X-Forwarded-Client-Cert` through untouched, so an app listening
//! there itself would receive whatever identity a caller claims. While the buildpack's profile
//! script has moved the app to `route.app_port`, this listener serves `$PORT` instead and
//! forwards to the app through the http module with [`Forwarding::Route`]: every spelling of
//! the identity header is removed and none is set; `X-Forwarded-For`/`-Proto` written by
//! Gorouter are left alone.
//!
//! The port is bound only once the app accepts connections on its own port, so CF's port
//! health check on `$PORT` still means "the app is up" (and an app that never starts still
//! fails its health check). HTTP/1.1 (websocket upgrades included) and HTTP/2 with prior
//! knowledge (`h2c`, what Gorouter sends to a route with `--protocol http2`) are served.
//!
//! [`Forwarding::Route`]: crate::http::Forwarding::Route

use crate::accept::{self, Door};
use crate::config::RouteConfig;
use crate::gate::{Admission, Admitted, Gate};
use crate::http::{Caller, Drain, HttpService};
use crate::metrics::ListenerMetrics;
use crate::retry::Backoff;
use crate::shared::Shared;
use crate::stop::stopped;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tls_sidecar_config::HostPort;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{sleep, timeout};
use tracing::{debug, info, warn};

/// Pauses between connection attempts while waiting for the app: short at first, because the
/// app usually starts within seconds and CF's health check is waiting too.
const APP_POLL_MIN: Duration = Duration::from_millis(20);
const APP_POLL_MAX: Duration = Duration::from_millis(500);
/// After this long without the app on its port, say loudly what may be wrong: an app that
/// ignores `$PORT` and listens on 8080 itself passes CF's health check, and the route port is
/// then not fronted at all.
const APP_SLOW_WARNING: Duration = Duration::from_secs(60);
/// How long to wait for more bytes when what arrived so far is the start of the HTTP/2
/// preface: `peek` returns at once while any data is buffered, so it cannot wait by itself.
const PREFACE_POLL: Duration = Duration::from_millis(5);
/// The connection preface a prior-knowledge HTTP/2 client starts with (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The route listener as its connection tasks see it.
pub(crate) struct Route {
    pub(crate) http: HttpService,
    pub(crate) metrics: Arc<ListenerMetrics>,
    /// The route port's own connection slots. There is no handshake here, so every connection
    /// is established from its accept: none is shed, and with every slot held new ones are
    /// refused.
    pub(crate) gate: Arc<Gate>,
}

/// Waits for the app, binds the route port (retrying while it is busy), then accepts until
/// `stop`. `slot` is set to the bound address.
pub(crate) async fn run(
    config: RouteConfig,
    route: Arc<Route>,
    shared: Arc<Shared>,
    slot: Arc<OnceLock<SocketAddr>>,
    mut stop: watch::Receiver<bool>,
) {
    if !app_accepts(&config, shared.limits.connect_timeout, &mut stop).await {
        return;
    }
    let mut door = RouteDoor { route, shared };
    accept::listen(None, config.bind, "route", &slot, &mut door, &mut stop).await;
}

/// Polls the app's port until a connection succeeds; false if `stop` came first.
async fn app_accepts(
    config: &RouteConfig,
    connect_timeout: Duration,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let upstream = &config.upstream;
    let mut backoff = Backoff::new(APP_POLL_MIN, APP_POLL_MAX);
    let mut said = false;
    let mut warned = false;
    let started = tokio::time::Instant::now();
    loop {
        match timeout(connect_timeout, connect(upstream)).await {
            Ok(Ok(_probe)) => {
                info!(
                    listener = "route",
                    upstream = %upstream,
                    "the app accepts on {upstream}; serving the route port {} in front of it (identity headers stripped)",
                    config.bind.port()
                );
                return true;
            }
            Ok(Err(_)) | Err(_) if !said => {
                said = true;
                info!(
                    listener = "route",
                    upstream = %upstream,
                    "waiting for the app to listen on {upstream} before serving the route port {}",
                    config.bind.port()
                );
            }
            _ if !warned && started.elapsed() >= APP_SLOW_WARNING => {
                warned = true;
                warn!(
                    listener = "route",
                    upstream = %upstream,
                    "the app has not listened on {upstream} ($PORT) for {} s: if it listens on a fixed port instead of $PORT, the route port {} is not fronted and X-Forwarded-Client-Cert sent there reaches it unchecked",
                    APP_SLOW_WARNING.as_secs(),
                    config.bind.port()
                );
            }
            _ => {}
        }
        tokio::select! {
            () = sleep(backoff.next_delay()) => {}
            () = stopped(stop) => return false,
        }
    }
}

async fn connect(upstream: &HostPort) -> io::Result<TcpStream> {
    TcpStream::connect((upstream.host.as_str(), upstream.port)).await
}

/// The route port's [`Door`]: each connection gets a slot of the route port's gate, established
/// at once (there is no handshake to wait for), and is [`serve`]d; with every slot held it is
/// closed.
struct RouteDoor {
    route: Arc<Route>,
    shared: Arc<Shared>,
}

impl Door for RouteDoor {
    type Slot = Admission;

    fn admit(&mut self, _tcp: &TcpStream) -> Option<Admission> {
        self.route.metrics.accepted.fetch_add(1, Relaxed);
        match self.route.gate.admit(true) {
            Admitted::Free(mut slot) | Admitted::Shed(mut slot) => {
                slot.established();
                Some(slot)
            }
            Admitted::Full => None,
        }
    }

    fn serve(&self, tcp: TcpStream, peer: SocketAddr, slot: Admission) {
        tokio::spawn(serve(
            tcp,
            peer,
            self.route.clone(),
            self.shared.clone(),
            slot,
        ));
    }

    fn refused(&self, peer: SocketAddr, held_back: Option<u64>) {
        self.route.metrics.refused.fetch_add(1, Relaxed);
        if let Some(held_back) = held_back {
            let max_connections = self.shared.limits.max_connections;
            warn!(
                listener = "route", peer = %peer, max_connections, held_back,
                "connection refused: max_connections reached"
            );
        }
    }

    fn accept_failed(&self, error: &io::Error, held_back: u64, retry_ms: u64) {
        warn!(listener = "route", error = %error, held_back, retry_ms, "accept failed");
    }
}

/// Serves one connection. `_slot` is its place in the route port's share, held until it ends so that
/// a drain waits for it.
async fn serve(
    tcp: TcpStream,
    peer: SocketAddr,
    route: Arc<Route>,
    shared: Arc<Shared>,
    _slot: Admission,
) {
    let metrics = &route.metrics;
    metrics.active.fetch_add(1, Relaxed);
    // TCP_NODELAY comes from the listening socket (`accept::bind`).
    // A client that sends nothing (or a partial preface) gets what a TLS client that never
    // finishes its handshake gets.
    let h2 = match timeout(shared.limits.handshake_timeout, starts_h2(&tcp)).await {
        Ok(Ok(h2)) => Some(h2),
        Ok(Err(e)) => {
            debug!(listener = "route", peer = %peer, error = %e, "connection closed");
            None
        }
        Err(_) => {
            debug!(listener = "route", peer = %peer, "connection closed: no request");
            None
        }
    };
    if let Some(h2) = h2 {
        let caller = Caller {
            addr: peer,
            h2,
            leaf: None,
            identity: None,
            denial: None,
        };
        let drain = Drain {
            graceful: shared.graceful.clone(),
            close_all: shared.close_all.clone(),
        };
        let outcome = route.http.serve(tcp, caller, drain).await;
        metrics.bytes_in.fetch_add(outcome.bytes_in, Relaxed);
        metrics.bytes_out.fetch_add(outcome.bytes_out, Relaxed);
        // Each request has its own log line already; the connection's is detail.
        debug!(
            listener = "route", peer = %peer, requests = outcome.requests,
            bytes_in = outcome.bytes_in, bytes_out = outcome.bytes_out,
            error = outcome.error.as_deref(), "connection closed"
        );
    }
    metrics.active.fetch_sub(1, Relaxed);
    crate::memory::collect_soon();
}

/// Whether the client opened with the HTTP/2 preface, read without consuming it. Returns at
/// the first byte that differs (any HTTP/1 request) or once the whole preface is there.
async fn starts_h2(tcp: &TcpStream) -> io::Result<bool> {
    let mut buf = [0u8; H2_PREFACE.len()];
    loop {
        let n = tcp.peek(&mut buf).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before a request",
            ));
        }
        if buf[..n] != H2_PREFACE[..n] {
            return Ok(false);
        }
        if n == H2_PREFACE.len() {
            return Ok(true);
        }
        sleep(PREFACE_POLL).await;
    }
}
