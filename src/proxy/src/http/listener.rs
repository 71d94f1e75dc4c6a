//! The state every connection of one `mode: http` listener shares: its settings, its slots
//! and pool of connections toward the app, its metrics, and hyper's server builders.

use super::app;
use super::settings::{HttpLimits, HttpSettings, MAX_REQUEST_HEAD};
use crate::metrics::ListenerMetrics;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::sync::Arc;
use tls_sidecar_config::HostPort;
use tokio::sync::Semaphore;

/// Everything built once per listener.
pub(crate) struct Shared {
    pub(crate) settings: HttpSettings,
    pub(crate) limits: HttpLimits,
    /// One permit per request in flight to the app.
    pub(super) app_slots: Arc<Semaphore>,
    pub(crate) metrics: Arc<ListenerMetrics>,
    /// Idle connections to the app.
    pub(crate) app: Arc<app::AppPool>,
    /// `127.0.0.1:8080` as a `Host` value, for requests that name no host.
    pub(crate) authority_header: http::HeaderValue,
    pub(super) h1: http1::Builder,
    pub(super) h2: http2::Builder<TokioExecutor>,
}

impl Shared {
    pub(super) fn new(
        settings: HttpSettings,
        limits: HttpLimits,
        metrics: Arc<ListenerMetrics>,
    ) -> Self {
        // As many idle connections as may be busy at once (`limits.app_connections`): a
        // smaller pool closes connections a busy moment needs again a moment later, and under
        // steady keep-alive load from 64 clients a pool of 32 turned every ~16th request into
        // a new connection to the app (connect, accept, close on both sides).
        let app = app::AppPool::new(
            settings.upstream.clone(),
            settings.connect_timeout,
            limits.app_connections,
        );

        let mut h1 = http1::Builder::new();
        // Our own idle timer (see `drive`) bounds the wait for a request head too, and closes
        // cleanly; hyper's header timer would end idle keep-alive connections as errors.
        h1.header_read_timeout(None)
            .max_buf_size(MAX_REQUEST_HEAD)
            .max_header_size(MAX_REQUEST_HEAD);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(MAX_REQUEST_HEAD).unwrap_or(u32::MAX))
            .max_concurrent_streams(limits.streams_per_connection);

        let authority = upstream_authority(&settings.upstream);
        let authority_header = http::HeaderValue::from_str(authority.as_str())
            .unwrap_or_else(|_| http::HeaderValue::from_static("127.0.0.1"));
        Shared {
            settings,
            limits,
            app_slots: Arc::new(Semaphore::new(
                limits.app_connections.clamp(1, Semaphore::MAX_PERMITS),
            )),
            metrics,
            app: Arc::new(app),
            authority_header,
            h1,
            h2,
        }
    }
}

/// `upstream` as a URI authority. A parsed `HostPort` always is one; one built by hand that is
/// not falls back to loopback on its port, loudly.
fn upstream_authority(upstream: &HostPort) -> http::uri::Authority {
    match upstream.to_string().parse() {
        Ok(authority) => authority,
        Err(e) => {
            tracing::error!(
                upstream = %upstream, error = %e,
                "the upstream is not a valid host:port; forwarding to 127.0.0.1:{} instead",
                upstream.port
            );
            http::uri::Authority::from_maybe_shared(format!("127.0.0.1:{}", upstream.port))
                .unwrap_or_else(|_| http::uri::Authority::from_static("127.0.0.1"))
        }
    }
}
