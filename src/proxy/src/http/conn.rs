//! Per-connection state, computed once when the connection starts, and the byte-counting
//! wrapper around the client stream.

use super::framing::Framing;
use super::headers::CallerHeaders;
use super::listener::Shared;
use super::observed::Observer;
use super::settings::{Caller, Forwarding};
use super::splice::Tunnel;
use super::wait::later;
use crate::identity::CfIdentity;
use crate::logging::millis;
use crate::xfcc;
use bytes::Bytes;
use http::HeaderValue;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tls_sidecar_config::Xfcc;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::warn;

/// The whole body of a `403`, whatever the reason.
pub(crate) const DENIED_BODY: &[u8] = b"not allowed\n";

/// No ambiguous request head seen (see [`Conn::ambiguous`]).
const NONE_AMBIGUOUS: u64 = u64::MAX;

pub(crate) struct Conn {
    pub(crate) shared: Arc<Shared>,
    pub(crate) peer: SocketAddr,
    pub(crate) h2: bool,
    /// What the app is told about this caller.
    pub(crate) to_app: CallerHeaders,
    /// The caller's CF identity, for request rules.
    pub(crate) identity: Option<CfIdentity>,
    /// The caller's CF identity, for log lines.
    pub(crate) caller: Option<Box<str>>,
    pub(crate) denial: Option<Denied>,
    pub(crate) close_all: watch::Receiver<bool>,
    /// Requests received so far; the next request's index on this connection.
    pub(crate) requests: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    /// Index of the first HTTP/1 request whose head carried both Content-Length and
    /// Transfer-Encoding (hyper drops the Content-Length before we see the request).
    pub(crate) ambiguous: AtomicU64,
    /// Requests between arrival and the end of their response.
    in_flight: AtomicU32,
    /// App response bodies begun and not finished: data owed to the client.
    pub(crate) bodies_owed: AtomicU32,
    /// Response body bytes handed to the client side so far: stops when the client stops
    /// reading (HTTP/1: the socket; HTTP/2: the stream or connection window).
    pub(crate) body_progress: AtomicU64,
    opened: Instant,
    /// When a request last started or ended, in ms since `opened`.
    last_activity_ms: AtomicU64,
    /// The splice of an upgraded request, run once hyper hands the connection over.
    tunnel: Mutex<Option<Tunnel>>,
}

/// A refused caller: the reason for logs and the body every request gets.
pub(crate) struct Denied {
    pub(crate) reason: Box<str>,
    pub(crate) body: Bytes,
}

impl Conn {
    pub(crate) fn new(
        shared: Arc<Shared>,
        caller: &Caller,
        close_all: watch::Receiver<bool>,
    ) -> Self {
        let xfcc = caller
            .leaf
            .as_deref()
            .and_then(|leaf| xfcc_value(shared.settings.xfcc, leaf, caller.addr));
        let ip = caller.addr.ip().to_canonical();
        let peer_ip = HeaderValue::from_str(&ip.to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        // The reason names the selectors that would have been let in: a map of who may call
        // is for the log line, not for the caller.
        let denial = caller.denial.as_ref().map(|d| Denied {
            reason: d.to_string().into(),
            body: Bytes::from_static(DENIED_BODY),
        });
        let forwarding = shared.settings.forwarding;
        let from_envoy = matches!(forwarding,
            Forwarding::RouteKeepingXfccFrom(envoy) if ip == envoy);
        let to_app = CallerHeaders {
            forwarding,
            xfcc,
            peer_ip,
            from_envoy,
            default_host: shared.authority_header.clone(),
        };
        Conn {
            shared,
            peer: caller.addr,
            h2: caller.h2,
            to_app,
            identity: caller.identity.clone(),
            caller: caller.identity.as_ref().map(|id| id.to_string().into()),
            denial,
            close_all,
            requests: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            ambiguous: AtomicU64::new(NONE_AMBIGUOUS),
            in_flight: AtomicU32::new(0),
            bodies_owed: AtomicU32::new(0),
            body_progress: AtomicU64::new(0),
            opened: Instant::now(),
            last_activity_ms: AtomicU64::new(0),
            tunnel: Mutex::new(None),
        }
    }

    pub(crate) fn proto(&self) -> &'static str {
        if self.h2 { "h2" } else { "h1" }
    }

    /// `now`: the caller's clock reading, which it keeps for the request's duration (one
    /// clock read per event instead of two).
    pub(crate) fn request_started(&self, now: Instant) {
        self.in_flight.fetch_add(1, Relaxed);
        self.touch(now);
    }

    pub(crate) fn request_ended(&self, now: Instant) {
        self.touch(now);
        self.in_flight.fetch_sub(1, Relaxed);
    }

    fn touch(&self, now: Instant) {
        let ms = millis(now.saturating_duration_since(self.opened));
        self.last_activity_ms.fetch_max(ms, Relaxed);
    }

    /// When the connection will have been idle for `limit` if nothing happens before then.
    pub(crate) fn idle_deadline(&self, limit: Duration) -> Instant {
        let last = self.opened + Duration::from_millis(self.last_activity_ms.load(Relaxed));
        let from = if self.in_flight.load(Relaxed) > 0 {
            Instant::now()
        } else {
            last
        };
        later(from, limit)
    }

    /// A request is between arrival and the end of its response.
    pub(crate) fn has_in_flight(&self) -> bool {
        self.in_flight.load(Relaxed) > 0
    }

    /// No request in flight, and none started or ended for `limit`.
    pub(crate) fn is_idle(&self, limit: Duration) -> bool {
        self.in_flight.load(Relaxed) == 0 && Instant::now() >= self.idle_deadline(limit)
    }

    /// `index` is the request hyper resolved from an ambiguous head.
    pub(crate) fn is_ambiguous(&self, index: u64) -> bool {
        self.ambiguous.load(Relaxed) == index
    }

    pub(crate) fn set_tunnel(&self, tunnel: Tunnel) {
        if let Ok(mut slot) = self.tunnel.lock() {
            *slot = Some(tunnel);
        }
    }

    pub(crate) fn take_tunnel(&self) -> Option<Tunnel> {
        self.tunnel.lock().ok().and_then(|mut slot| slot.take())
    }
}

/// The header value for `leaf` in `mode`. A certificate that cannot be described (it passed
/// verification, so this should not happen) sends none, which the app sees as "no verified
/// caller": safer than a wrong identity.
fn xfcc_value(mode: Xfcc, leaf: &[u8], peer: SocketAddr) -> Option<HeaderValue> {
    let text = match mode {
        Xfcc::Off => return None,
        Xfcc::Raw => xfcc::raw(leaf),
        Xfcc::Envoy => match xfcc::envoy(leaf) {
            Ok(text) => text,
            Err(e) => {
                warn!(peer = %peer, error = %e, "no X-Forwarded-Client-Cert for this connection");
                return None;
            }
        },
    };
    match HeaderValue::try_from(text) {
        Ok(value) => Some(value),
        Err(_) => {
            warn!(
                peer = %peer,
                "no X-Forwarded-Client-Cert for this connection: the certificate's subject \
                 has characters a header cannot carry"
            );
            None
        }
    }
}

/// The client stream's observer: counts plaintext bytes both ways and, once hyper serves an
/// HTTP/1 connection, watches its request heads for ambiguous framing.
pub(crate) struct Counter {
    conn: Arc<Conn>,
    framing: Option<Framing>,
}

impl Counter {
    /// Counts bytes; watches framing only once [`Counter::watch_from_next_request`] says so.
    pub(crate) fn new(conn: Arc<Conn>) -> Self {
        Counter {
            conn,
            framing: None,
        }
    }

    /// Starts the framing watch at the start of the connection's next request, whose first
    /// bytes (`read`) were read before: the fast HTTP/1.1 side hands the connection to hyper
    /// at a request boundary, and what it served itself carried no body to follow.
    pub(crate) fn watch_from_next_request(&mut self, read: &[u8]) {
        let mut framing = Framing::from_request(self.conn.requests.load(Relaxed));
        if let Some(index) = framing.feed(read) {
            self.conn.ambiguous.store(index, Relaxed);
        }
        self.framing = (!framing.is_off()).then_some(framing);
    }
}

impl Observer for Counter {
    // Most clients close the TCP connection without a TLS close_notify. HTTP framing tells a
    // cut-off message from a finished one, so this is simply the end.
    const EOF_IS_END: bool = true;

    fn read(&mut self, bytes: &[u8]) {
        self.conn.bytes_in.fetch_add(bytes.len() as u64, Relaxed);
        if let Some(framing) = &mut self.framing {
            if let Some(index) = framing.feed(bytes) {
                self.conn.ambiguous.store(index, Relaxed);
            }
            if framing.is_off() {
                self.framing = None;
            }
        }
    }

    fn wrote(&mut self, n: usize) {
        self.conn.bytes_out.fetch_add(n as u64, Relaxed);
    }
}

/// How serving one connection ended.
pub(super) enum Ended {
    /// A clean end.
    Finished,
    /// The connection failed: why.
    Failed(String),
    Drained,
    /// Response data was owed and none of it moved for the idle limit.
    Stalled,
}
