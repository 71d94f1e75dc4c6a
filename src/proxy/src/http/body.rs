//! Response bodies, and the per-request log line written when one ends.

use super::conn::Conn;
use super::millis;
use bytes::Bytes;
use http::{Method, Uri};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use std::borrow::Cow;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};
use tokio::time::Instant;
use tracing::{info, warn};

/// What a response carries: the app's body, or a short one of ours.
pub(crate) enum Payload {
    App(Incoming),
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
}

impl ResponseBody {
    pub(crate) fn new(payload: Payload, log: RequestLog) -> Self {
        ResponseBody {
            payload,
            log: Some(log),
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if !self.is_end_stream()
            && let Some(log) = &mut self.log
        {
            log.note("the response was cut off (client gone or connection closed)");
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = match &mut this.payload {
            Payload::App(body) => Pin::new(body).poll_frame(cx),
            Payload::Local(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(log), Some(data)) = (&mut this.log, frame.data_ref()) {
                    log.bytes += data.len() as u64;
                }
            }
            Poll::Ready(Some(Err(e))) => {
                if let Some(mut log) = this.log.take() {
                    log.fail(format!("the app's response broke off: {e}"));
                }
            }
            Poll::Ready(None) => drop(this.log.take()),
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
    conn: Arc<Conn>,
    method: Method,
    /// Only the path is logged: the query string may carry secrets.
    uri: Uri,
    started: Instant,
    /// 0 until a response exists (a request dropped before that was cancelled).
    pub(crate) status: u16,
    bytes: u64,
    pub(crate) denied: bool,
    warn: bool,
    error: Option<Cow<'static, str>>,
}

impl RequestLog {
    pub(crate) fn start(conn: Arc<Conn>, method: &Method, uri: &Uri) -> Self {
        conn.request_started();
        RequestLog {
            conn,
            method: method.clone(),
            uri: uri.clone(),
            started: Instant::now(),
            status: 0,
            bytes: 0,
            denied: false,
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
        let elapsed = self.started.elapsed();
        let conn = &self.conn;
        conn.request_ended();
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
        let denied = if self.denied {
            conn.denial.as_ref().map(|d| d.reason.as_ref())
        } else {
            None
        };
        if self.warn || self.denied {
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
