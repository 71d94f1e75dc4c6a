//! What one `mode: http` listener is set up with (its settings and limits) and who is on the
//! other end of one connection: plain data, below everything that serves a connection.

use crate::identity::{CfIdentity, Denial, RequestPolicy};
use rustls_pki_types::CertificateDer;
use std::net::SocketAddr;
use std::time::Duration;
use tls_sidecar_config::{HostPort, Xfcc};

/// Largest request head (request line and headers; HTTP/2: the decoded header list) we accept;
/// a bigger one gets `431`. Also hyper's HTTP/1 buffer limit, so it bounds what one connection
/// can make us hold.
pub(super) const MAX_REQUEST_HEAD: usize = 64 * 1024;
/// How long a request waits for one of the listener's slots toward the app before it gets
/// `503`: long enough to ride out a burst, short enough that a client is told quickly.
pub(super) const APP_SLOT_WAIT: Duration = Duration::from_secs(1);
/// How long a client gets to finish an idle close (HTTP/2: acknowledge the GOAWAY's PING)
/// before the connection is dropped.
pub(super) const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(5);

/// What the TLS side resolved for one `mode: http` listener.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Resolved (127.0.0.1:$PORT by default).
    pub upstream: HostPort,
    pub xfcc: Xfcc,
    pub connect_timeout: Duration,
    /// Keep-alive idle limit per client connection.
    pub idle_timeout: Duration,
    /// What the app learns about the caller in headers.
    pub forwarding: Forwarding,
    /// Request rules; with any, paths are normalised before matching and forwarding.
    pub rules: RequestPolicy,
}

/// Which headers about the caller the app gets. Identity headers the client sent
/// (`X-Forwarded-Client-Cert` in every spelling) are removed either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forwarding {
    /// A TLS listener: this caller's `X-Forwarded-Client-Cert` (per `xfcc`),
    /// `X-Forwarded-Proto: https`, the peer appended to `X-Forwarded-For`.
    Tls,
    /// The route port (plaintext, behind Gorouter): no identity header is set, and the
    /// `X-Forwarded-*` headers Gorouter wrote are left as they are (the peer here is Envoy).
    Route,
    /// [`Forwarding::Route`], but the canonical `X-Forwarded-Client-Cert` (any case) is kept
    /// when the peer is this address (Diego's per-container Envoy, which carries Gorouter's
    /// traffic): what Gorouter sets on an identity-aware domain (`route.trust_gorouter_xfcc`).
    RouteKeepingXfccFrom(std::net::IpAddr),
}

/// How much one listener and one client connection may ask of the app at once.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Requests in flight to the app (each holds an app connection) across the listener.
    pub app_connections: usize,
    /// HTTP/2 streams one client connection may have open at once.
    pub streams_per_connection: u32,
}

impl Default for HttpLimits {
    /// What the default 32 MB `sidecar.memory` stages to.
    fn default() -> Self {
        HttpLimits {
            app_connections: 192,
            streams_per_connection: 48,
        }
    }
}

/// Who is on the other end of one connection.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The TCP peer.
    pub addr: SocketAddr,
    /// ALPN negotiated "h2".
    pub h2: bool,
    /// The verified client leaf, if any.
    pub leaf: Option<CertificateDer<'static>>,
    pub identity: Option<CfIdentity>,
    /// Some: answer every request `403` with this line.
    pub denial: Option<Denial>,
}
