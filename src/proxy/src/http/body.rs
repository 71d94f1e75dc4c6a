//! Response bodies, and the per-request log line written when one ends.

use super::app::ListenerBody;
use super::conn::Conn;
use crate::logging::millis;
use bytes::Bytes;
use http::{Method, Uri};
use hyper::body::{Body, Frame, SizeHint};
use std::borrow::Cow;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tracing::{info, warn};

/// What a response carries: the app's body (read from the app connection it arrives on, which
/// goes back to the pool when the body has ended), or a short one of ours.
pub(crate) enum Payload {
    App(ListenerBody),
    Local(Option<Bytes>),
}

impl Payload {
    pub(crate) fn text(text: impl Into<Bytes>) -> Self {
        Payload::Local(Some(text.into()))
    }

    pub(crate) fn empty() -> Self {
        Payload::Local(None)
    }
}

/// A response body that counts its bytes and writes the request's log line when it ends
/// (or is dropped: the client went away, or the drain closed the connection).
pub(crate) struct ResponseBody {
    payload: Payload,
    log: Option<RequestLog>,
    /// An app body counted in `Conn::bodies_owed` until it ends.
    owed: Option<Arc<Conn>>,
    /// The request's slot of the listener's requests in flight to the app, held until the
    /// response has been handed on in full (or cut off), because the app connection is busy
    /// until then.
    _app_slot: Option<OwnedSemaphorePermit>,
    /// HTTP/2: the request's slot among its connection's `limits.streams_per_connection`.
    _stream_slot: Option<OwnedSemaphorePermit>,
}

impl ResponseBody {
    pub(crate) fn new(payload: Payload, log: RequestLog) -> Self {
        let owed = match &payload {
            Payload::App(body) if !body.is_end_stream() => {
                log.conn.bodies_owed.fetch_add(1, Relaxed);
                Some(log.conn.clone())
            }
            _ => None,
        };
        ResponseBody {
            payload,
            log: Some(log),
            owed,
            _app_slot: None,
            _stream_slot: None,
        }
    }

    /// Holds `slot` (and the HTTP/2 connection's `stream` slot) until the body ends.
    pub(crate) fn holding(
        mut self,
        slot: OwnedSemaphorePermit,
        stream: Option<OwnedSemaphorePermit>,
    ) -> Self {
        self._app_slot = Some(slot);
        self._stream_slot = stream;
        self
    }

    fn settle(&mut self) {
        if let Some(conn) = self.owed.take() {
            conn.bodies_owed.fetch_sub(1, Relaxed);
        }
        self._app_slot = None;
        self._stream_slot = None;
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // An app body dropped before its end closes its connection (`app::AppBody`).
        self.settle();
        if !self.is_end_stream()
            && let Some(log) = &mut self.log
        {
            log.note("the response was cut off (client gone or connection closed)");
        }
    }
}

/// The `503` for a request that found the listener's requests in flight to the app at their
/// cap for [`super::settings::APP_SLOT_WAIT`].
/// Which bound toward the app a request found full.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Saturated {
    /// The listener's `limits.app_connections`.
    App,
    /// The HTTP/2 connection's `limits.streams_per_connection`.
    Streams,
}

pub(crate) fn saturated(
    conn: &Arc<Conn>,
    method: &Method,
    uri: &Uri,
    why: Saturated,
) -> http::Response<ResponseBody> {
    // Keep the request index in step with hyper's (it ties ambiguous heads to requests).
    conn.requests.fetch_add(1, Relaxed);
    conn.shared.metrics.app_saturated.fetch_add(1, Relaxed);
    let reason = match why {
        Saturated::App => format!(
            "{} requests already in flight to the app (limits.app_connections)",
            conn.shared.limits.app_connections
        ),
        Saturated::Streams => format!(
            "{} requests already in flight to the app on this connection (limits.streams_per_connection)",
            conn.shared.limits.streams_per_connection
        ),
    };
    let mut log = RequestLog::start(conn.clone(), method, uri);
    log.fail(reason.clone());
    log.status = 503;
    let text = format!("tls-sidecar: the app is busy: {reason}\n");
    let mut response = http::Response::new(ResponseBody::new(Payload::text(text), log));
    *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    // Tell the client it may come back soon.
    response.headers_mut().insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from_static("1"),
    );
    response
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        let polled = match &mut this.payload {
            Payload::App(body) => Pin::new(body).poll_frame(cx),
            Payload::Local(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(log), Some(data)) = (&mut this.log, frame.data_ref()) {
                    log.bytes += data.len() as u64;
                    log.conn.body_progress.fetch_add(data.len() as u64, Relaxed);
                }
            }
            Poll::Ready(Some(Err(e))) => {
                this.settle();
                if let Some(mut log) = this.log.take() {
                    log.fail(format!("the app's response broke off: {e}"));
                }
            }
            Poll::Ready(None) => {
                this.settle();
                drop(this.log.take());
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.payload {
            Payload::App(body) => body.is_end_stream(),
            Payload::Local(data) => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.payload {
            Payload::App(body) => body.size_hint(),
            Payload::Local(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

/// One request, from arrival to the end of its response; dropping it records the metrics and
/// writes the `msg="request"` line.
pub(crate) struct RequestLog {
    pub(crate) conn: Arc<Conn>,
    method: Method,
    /// Only the path is logged: the query string may carry secrets.
    uri: Uri,
    started: Instant,
    /// 0 until a response exists (a request dropped before that was cancelled).
    pub(crate) status: u16,
    bytes: u64,
    /// Why the request was refused (`403`), for the log line.
    pub(crate) denied: Option<Box<str>>,
    warn: bool,
    error: Option<Cow<'static, str>>,
}

impl RequestLog {
    pub(crate) fn start(conn: Arc<Conn>, method: &Method, uri: &Uri) -> Self {
        let started = Instant::now();
        conn.request_started(started);
        RequestLog {
            conn,
            method: method.clone(),
            uri: uri.clone(),
            started,
            status: 0,
            bytes: 0,
            denied: None,
            warn: false,
            error: None,
        }
    }

    /// Something went wrong on our side or the app's: the line becomes a warning with `error`.
    pub(crate) fn fail(&mut self, error: impl Into<Cow<'static, str>>) {
        self.warn = true;
        self.error = Some(error.into());
    }

    /// Something the client did: `error` on an info line.
    fn note(&mut self, error: &'static str) {
        if self.error.is_none() {
            self.error = Some(error.into());
        }
    }
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.started);
        let conn = &self.conn;
        conn.request_ended(now);
        let metrics = &conn.shared.metrics;
        metrics.requests.fetch_add(1, Relaxed);
        metrics.latency.observe(elapsed);

        let listener = metrics.port;
        let (peer, proto, method) = (conn.peer, conn.proto(), self.method.as_str());
        let (path, status, bytes) = (self.uri.path(), self.status, self.bytes);
        let duration_ms = millis(elapsed);
        let caller = conn.caller.as_deref();
        let error = match (&self.error, status) {
            (Some(e), _) => Some(e.as_ref()),
            (None, 0) => Some("the request ended before a response (client gone or drain)"),
            (None, _) => None,
        };
        let denied = self.denied.as_deref();
        if self.warn || denied.is_some() {
            warn!(
                listener, peer = %peer, proto, method, path, status, duration_ms, bytes, caller,
                denied, error, "request"
            );
        } else {
            info!(
                listener, peer = %peer, proto, method, path, status, duration_ms, bytes, caller,
                error, "request"
            );
        }
    }
}
