//! http mode: HTTP/1.1 and HTTP/2 on a connection the TLS side has accepted, handshaken and
//! identified, forwarded to the app as HTTP/1.1 over pooled connections.
//!
//! One identity header, set only by the sidecar. On the way to the app every request loses
//! `X-Forwarded-Client-Cert`, `X-Forwarded-Proto`, `X-Forwarded-For`, `Forwarded` and
//! `X-Real-IP` under every spelling an app server could read as them (any case, `_` for `-`),
//! as headers, in `Trailer` and as HTTP/1.1 or HTTP/2 trailers; then it gets this caller's
//! `X-Forwarded-Client-Cert` (whatever the `xfcc` mode, none without a client certificate),
//! `X-Forwarded-Proto: https` and `X-Forwarded-For: <TCP peer address>`. X-Forwarded-For is
//! replaced, never appended to: on c2c the peer is the calling app instance and nothing before
//! it is vouched for, so a caller's claim (in XFF, `Forwarded` or `X-Real-IP`) never reaches the
//! app. Several `Host` fields, or an HTTP/2 `Host` other than `:authority`, get `400`.
//! Hop-by-hop headers are removed both ways. Upgrades (websockets) are spliced through. A
//! denied caller gets `403` with the body `not allowed` on every request (the reason is in the
//! log line only: it names who would have been let in) and nothing reaches the app. On the
//! route port ([`Forwarding::Route`]) every spelling of `X-Forwarded-Client-Cert` is removed
//! and none is set; the `X-Forwarded-*` headers Gorouter wrote are left as they are.
//!
//! The interface is fixed in `docs/DESIGN.md` ("Ingress internals"): [`HttpService::new`] once
//! per listener, [`HttpService::serve`] once per connection. The module is public (hidden) only
//! so that `tests/http.rs` can drive it without TLS.

#![doc(hidden)]

mod app;
mod body;
mod conn;
mod corked;
mod framing;
mod h1;
pub(crate) mod headers;
mod listener;
mod observed;
mod prefixed;
mod request;
mod settings;
pub(crate) mod splice;
mod trailers;
mod wait;

use crate::logging::millis;
use crate::metrics::ListenerMetrics;
use crate::stop::Watched;
use conn::{Conn, Counter, Ended};
use corked::Flushing;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use listener::Shared;
use observed::Observed;
use settings::IDLE_CLOSE_GRACE;
pub use settings::{Caller, Forwarding, HttpLimits, HttpSettings};
use std::convert::Infallible;
use std::future::Future;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::Poll;
use std::time::Duration;
use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Semaphore, watch};
use tokio::time::{Instant, sleep_until};
use wait::{app_slot, later, turned_true};

/// How often a connection that owes response data checks that it is moving, at most (a
/// quarter of the idle limit when that is shorter): a stalled response is cut at most this
/// long after its deadline. Movement counts from the check that saw it, so a client's kernel
/// reopening its window a little once, a few hundred ms after its reader stopped (seen on
/// loopback: ~80 KiB at ~0.55 s), costs up to one period more.
const PROGRESS_CHECK: Duration = Duration::from_millis(250);
/// How long a new HTTP/1 connection gets to send its first request once the drain has
/// started; it is answered with `Connection: close`.
const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);

/// The listener's drain, as two switches that only ever turn true. A sender that goes away
/// without turning its switch counts as never turning it.
#[derive(Debug, Clone)]
pub struct Drain {
    /// True: the drain started. In-flight requests finish, idle connections close, HTTP/1
    /// answers carry `Connection: close`, HTTP/2 gets GOAWAY.
    pub graceful: watch::Receiver<bool>,
    /// True: the drain timeout is over; the connection closes now.
    pub close_all: watch::Receiver<bool>,
}

/// How the wait for a new connection's first bytes ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FirstBytes {
    /// Bytes are there: serve the connection.
    Arrived,
    /// The client closed, or sent nothing within the idle limit (or the first-request grace
    /// of a drain): close it cleanly, as an idle HTTP/1 connection is closed.
    Closed,
    /// The drain timeout is over.
    Drained,
}

/// What one connection did, for the TLS side's connection log line and byte counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnOutcome {
    pub requests: u64,
    /// Plaintext bytes read from the client (request heads and bodies, upgraded traffic).
    pub bytes_in: u64,
    /// Plaintext bytes written to the client.
    pub bytes_out: u64,
    /// Why the connection ended, when that was not a clean close.
    pub error: Option<String>,
}

/// The HTTP side of one listener: its settings, its pool of connections to the app and its
/// metrics, shared by every connection of the listener. Cloning is cheap.
#[derive(Clone)]
pub struct HttpService {
    shared: Arc<Shared>,
}

impl HttpService {
    pub fn new(settings: HttpSettings, metrics: Arc<ListenerMetrics>) -> Self {
        Self::with_limits(settings, HttpLimits::default(), metrics)
    }

    /// [`HttpService::new`] with `limits` instead of the defaults.
    pub fn with_limits(
        settings: HttpSettings,
        limits: HttpLimits,
        metrics: Arc<ListenerMetrics>,
    ) -> Self {
        HttpService {
            shared: Arc::new(Shared::new(settings, limits, metrics)),
        }
    }

    /// [`HttpService::serve`], once the client has sent its first bytes: a connection that has
    /// sent nothing holds no HTTP state (hyper makes two 8 KiB buffers per connection when it
    /// starts serving one), only its stream. The bytes are peeked at, not taken. Meanwhile the
    /// rules `serve` applies to a connection without requests hold: closed after the idle
    /// limit, given [`FIRST_REQUEST_GRACE`] once the drain starts, dropped when it ends.
    pub async fn serve_from_first_bytes<IO>(
        &self,
        mut io: IO,
        caller: Caller,
        drain: Drain,
    ) -> ConnOutcome
    where
        IO: AsyncBufRead + AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let arrived = poll_fn(|cx| {
            Pin::new(&mut io)
                .poll_fill_buf(cx)
                .map(|read| read.is_ok_and(|bytes| !bytes.is_empty()))
        });
        match self.before_first_bytes(arrived, &drain).await {
            // Boxed: a connection still waiting here should not carry the size of a whole
            // HTTP connection.
            FirstBytes::Arrived => Box::pin(self.serve(io, caller, drain)).await,
            FirstBytes::Closed => {
                let _ = tokio::time::timeout(IDLE_CLOSE_GRACE, io.shutdown()).await;
                ConnOutcome::default()
            }
            FirstBytes::Drained => ConnOutcome {
                error: Some(DRAINED.to_owned()),
                ..ConnOutcome::default()
            },
        }
    }

    /// Waits until `arrived` is true (bytes to read) or false (the client closed, or the stream
    /// broke): [`FirstBytes::Arrived`] or [`FirstBytes::Closed`]; or the idle limit or the drain
    /// ends the wait first.
    async fn before_first_bytes(
        &self,
        arrived: impl Future<Output = bool>,
        drain: &Drain,
    ) -> FirstBytes {
        let (mut graceful, mut close_all) = (drain.graceful.clone(), drain.close_all.clone());
        let deadline = sleep_until(later(Instant::now(), self.shared.settings.idle_timeout));
        tokio::pin!(arrived, deadline);
        let mut draining = false;
        loop {
            tokio::select! {
                biased;
                () = turned_true(&mut close_all) => return FirstBytes::Drained,
                arrived = arrived.as_mut() => {
                    return if arrived { FirstBytes::Arrived } else { FirstBytes::Closed };
                }
                () = turned_true(&mut graceful), if !draining => {
                    draining = true;
                    let grace = later(Instant::now(), FIRST_REQUEST_GRACE);
                    if grace < deadline.deadline() {
                        deadline.as_mut().reset(grace);
                    }
                }
                () = deadline.as_mut() => return FirstBytes::Closed,
            }
        }
    }

    /// Serves HTTP on one handshaken connection until the client closes it, it idles out, the
    /// drain ends it, or an upgraded tunnel on it closes. Never fails: what went wrong is in
    /// [`ConnOutcome::error`], and each request has had its own log line.
    pub async fn serve<IO>(&self, io: IO, caller: Caller, drain: Drain) -> ConnOutcome
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Drain {
            mut graceful,
            mut close_all,
        } = drain;
        let conn = Arc::new(Conn::new(self.shared.clone(), &caller, close_all.clone()));
        // The client's certificate is in `conn` as its X-Forwarded-Client-Cert now: not kept
        // twice for the life of the connection.
        let h2 = caller.h2;
        drop(caller);
        let for_service = conn.clone();
        // HTTP/2: this connection's own bound on requests toward the app. SETTINGS_MAX_CONCURRENT_STREAMS
        // alone does not hold it: h2 applies our setting only once the client acknowledges it,
        // and a client that never does may open more streams meanwhile.
        let streams = h2.then(|| {
            let n = self.shared.limits.streams_per_connection;
            Arc::new(Semaphore::new(
                usize::try_from(n)
                    .unwrap_or(usize::MAX)
                    .clamp(1, Semaphore::MAX_PERMITS),
            ))
        });
        let call = move |req: http::Request<Incoming>| {
            let conn = for_service.clone();
            let streams = streams.clone();
            async move {
                let stream = match &streams {
                    Some(streams) => match app_slot(streams).await {
                        Some(stream) => Some(stream),
                        None => {
                            return Ok(body::saturated(
                                &conn,
                                req.method(),
                                req.uri(),
                                body::Saturated::Streams,
                            ));
                        }
                    },
                    None => None,
                };
                let Some(slot) = app_slot(&conn.shared.app_slots).await else {
                    let why = body::Saturated::App;
                    return Ok(body::saturated(&conn, req.method(), req.uri(), why));
                };
                let response = request::handle(conn, req).await;
                Ok::<_, Infallible>(response.map(|body| body.holding(slot, stream)))
            }
        };

        let idle = self.shared.settings.idle_timeout;
        let watched = Watch {
            conn: &conn,
            idle,
            graceful: &mut graceful,
            close_all: &mut close_all,
        };
        let ended = if h2 {
            let (io, cork) = corked::corked(io);
            let io = TokioIo::new(Observed::new(io, Counter::new(conn.clone())));
            // Boxed: hyper moves each stream's future several times on its way into a task of
            // its own, and unboxed that is a copy of a few KiB each time.
            let service = service_fn(move |req| Box::pin(call(req)));
            let connection = Flushing::new(self.shared.h2.serve_connection(io, service), cork);
            let graceful_shutdown = |c: Pin<&mut Flushing<_, _>>| {
                http2::Connection::graceful_shutdown(c.connection());
            };
            drive(connection, graceful_shutdown, watched).await
        } else {
            // The framing watch starts when hyper takes over (see `h1`).
            let io = Observed::new(io, Counter::new(conn.clone()));
            let Watch {
                graceful,
                close_all,
                ..
            } = watched;
            match h1::serve(&conn, io, idle, graceful, close_all).await {
                h1::Served::Ended(ended) => ended,
                h1::Served::HandOff(mut io) => {
                    let (observed, read) = io.parts_mut();
                    observed.observer_mut().watch_from_next_request(read);
                    let io = TokioIo::new(io);
                    let service = service_fn(call);
                    let connection = self.shared.h1.serve_connection(io, service).with_upgrades();
                    let graceful_shutdown =
                        |c: Pin<&mut _>| http1::UpgradeableConnection::graceful_shutdown(c);
                    let watched = Watch {
                        conn: &conn,
                        idle,
                        graceful,
                        close_all,
                    };
                    drive(connection, graceful_shutdown, watched).await
                }
            }
        };
        // Always taken out: a tunnel left in `conn` could hold the client stream, which holds
        // `conn`, and neither would ever be dropped.
        let tunnel = conn.take_tunnel();
        let error = match (ended, tunnel) {
            (Ended::Drained, _) => Some(DRAINED.to_owned()),
            (Ended::Stalled, _) => {
                self.shared.metrics.stalled.fetch_add(1, Relaxed);
                Some(format!(
                    "the client took none of the response data owed to it for {} ms (limits.idle_timeout)",
                    millis(idle)
                ))
            }
            (Ended::Failed(e), _) => Some(e),
            // The connection was upgraded: it lives on as a tunnel.
            (Ended::Finished, Some(tunnel)) => tokio::select! {
                result = tunnel => result.err(),
                () = turned_true(&mut close_all) => Some(DRAINED.to_owned()),
            },
            (Ended::Finished, None) => None,
        };
        ConnOutcome {
            requests: conn.requests.load(Relaxed),
            bytes_in: conn.bytes_in.load(Relaxed),
            bytes_out: conn.bytes_out.load(Relaxed),
            error,
        }
    }
}

const DRAINED: &str = "closed at the end of the drain";

/// What [`drive`] watches besides the connection: its state, its idle limit, and the
/// sidecar's two shutdown switches.
struct Watch<'a> {
    conn: &'a Conn,
    idle: Duration,
    graceful: &'a mut watch::Receiver<bool>,
    close_all: &'a mut watch::Receiver<bool>,
}

/// Polls a hyper connection to its end, starting its graceful shutdown once when the drain
/// starts or when it has had no request in flight for `idle` (HTTP/1: keep-alive closes, a
/// request head still arriving is cut off; HTTP/2: GOAWAY), and dropping it when `close_all`
/// turns true, or [`IDLE_CLOSE_GRACE`] after an idle shutdown the client does not complete.
///
/// While an app response body is owed, the connection is also dropped once none of it has
/// moved toward the client for `idle` (a client that stopped reading, an HTTP/2 window held
/// at zero, or an app that stopped sending mid-body): dropping it closes the app connections
/// of its responses. The same per-connection timer samples the progress counter; nothing
/// is added per read or write.
async fn drive<C>(
    connection: C,
    graceful_shutdown: impl Fn(Pin<&mut C>),
    watched: Watch<'_>,
) -> Ended
where
    C: Future<Output = hyper::Result<()>>,
{
    let Watch {
        conn,
        idle,
        graceful,
        close_all,
    } = watched;
    #[derive(PartialEq)]
    enum Phase {
        Serving,
        /// The drain started before this HTTP/1 client's first request: closing now would
        /// lose a request it may be sending (and, on a fresh connection, would not retry).
        AwaitingFirst,
        Draining,
        IdleClosing,
    }
    tokio::pin!(connection);
    let mut phase = Phase::Serving;
    let timer = sleep_until(conn.idle_deadline(idle));
    tokio::pin!(timer);
    let check_every = (idle / 4).clamp(Duration::from_millis(10), PROGRESS_CHECK);
    // The progress counter as last sampled, and since when it has had that value.
    let mut progress = (conn.body_progress.load(Relaxed), Instant::now());
    // Made once and kept across iterations: a future made afresh in every iteration registers
    // with (and leaves) its notifier's waiter list each time the connection is polled, which
    // cost ~4,000 instructions per keep-alive request. Polled only once its switch has moved.
    let mut close_all = Watched::new(close_all.clone(), turned_true(close_all));
    let mut graceful = Watched::new(graceful.clone(), turned_true(graceful));
    // Requests are counted as they start; a new count is an arrival. Looked at, not woken for:
    // an HTTP/1 request starts inside a poll of `connection`, and an HTTP/2 stream's response
    // wakes this task to write it. Ahead of `connection`, so that the next wake-up sees an
    // arrival before the connection goes on (an answer to the first request after the drain
    // started then carries `Connection: close`).
    let mut seen = conn.requests.load(Relaxed);
    loop {
        tokio::select! {
            biased;
            () = close_all.fired() => return Ended::Drained,
            () = arrival(conn, &mut seen), if matches!(phase, Phase::Serving | Phase::AwaitingFirst) => {
                if phase == Phase::AwaitingFirst {
                    // Its answer carries `Connection: close`.
                    phase = Phase::Draining;
                    graceful_shutdown(connection.as_mut());
                } else {
                    // Watch the request's progress from now on, not from the idle deadline
                    // the timer was armed with.
                    let soon = later(Instant::now(), check_every);
                    if timer.deadline() > soon {
                        timer.as_mut().reset(soon);
                    }
                }
            }
            result = connection.as_mut() => {
                return match result {
                    Ok(()) => Ended::Finished,
                    // Once we have said goodbye, a client that hangs up mid-goodbye is fine.
                    Err(e) if phase != Phase::Serving && client_gone(&e) => Ended::Finished,
                    Err(e) => Ended::Failed(error_chain(&e)),
                };
            }
            () = graceful.fired(), if phase == Phase::Serving => {
                if conn.h2 || conn.requests.load(Relaxed) > 0 {
                    phase = Phase::Draining;
                    graceful_shutdown(connection.as_mut());
                } else {
                    phase = Phase::AwaitingFirst;
                    timer.as_mut().reset(later(Instant::now(), FIRST_REQUEST_GRACE));
                }
            }
            () = timer.as_mut(), if phase != Phase::Draining => {
                match phase {
                    Phase::IdleClosing => return Ended::Finished,
                    Phase::AwaitingFirst => {
                        phase = Phase::Draining;
                        graceful_shutdown(connection.as_mut());
                        continue;
                    }
                    _ => {}
                }
                if conn.is_idle(idle) {
                    phase = Phase::IdleClosing;
                    graceful_shutdown(connection.as_mut());
                    timer.as_mut().reset(later(Instant::now(), IDLE_CLOSE_GRACE));
                } else if conn.bodies_owed.load(Relaxed) > 0 {
                    let now = Instant::now();
                    let moved = conn.body_progress.load(Relaxed);
                    if moved != progress.0 {
                        progress = (moved, now);
                    } else if now.duration_since(progress.1) >= idle {
                        return Ended::Stalled;
                    }
                    let deadline = later(progress.1, idle);
                    timer.as_mut().reset(deadline.min(later(now, check_every)));
                } else {
                    // Nothing owed: the progress clock starts when something is.
                    let now = Instant::now();
                    progress = (conn.body_progress.load(Relaxed), now);
                    let next = if conn.has_in_flight() {
                        later(now, check_every)
                    } else {
                        conn.idle_deadline(idle)
                    };
                    timer.as_mut().reset(next);
                }
            }
        }
    }
}

/// The client closed or reset the connection.
fn client_gone(e: &hyper::Error) -> bool {
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::{
                BrokenPipe, ConnectionAborted, ConnectionReset, NotConnected,
            };
            return matches!(
                io.kind(),
                BrokenPipe | ConnectionReset | ConnectionAborted | NotConnected
            );
        }
        cause = c.source();
    }
    e.is_incomplete_message() || e.is_canceled()
}

/// Resolves when `conn` has counted a request since `seen`, which it updates. Registers no
/// waker: see [`drive`].
fn arrival<'a>(conn: &'a Conn, seen: &'a mut u64) -> impl Future<Output = ()> + 'a {
    poll_fn(move |_| {
        let now = conn.requests.load(Relaxed);
        if now == *seen {
            return Poll::Pending;
        }
        *seen = now;
        Poll::Ready(())
    })
}

/// `e` and its causes on one line.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let c_text = c.to_string();
        // hyper repeats a cause in its own message sometimes; don't print it twice.
        if !text.contains(&c_text) {
            text.push_str(": ");
            text.push_str(&c_text);
        }
        cause = c.source();
    }
    text
}

/// See [`crate::fuzzing::app_answer`].
pub(crate) fn app_answer(stream: &[u8], piece: usize) -> Result<(u16, Vec<u8>, usize), String> {
    app::read_answer(stream, piece)
}

/// See [`crate::fuzzing::plain_head`].
pub(crate) fn plain_head(stream: &[u8]) -> Result<(), String> {
    h1::check_parse(stream)
}

/// See [`crate::fuzzing::framing_verdict`].
pub(crate) fn framing_verdict(buf: &[u8], pieces: &[usize]) -> Option<u64> {
    let mut framing = framing::Framing::default();
    let mut rest = buf;
    for &n in pieces {
        let (piece, tail) = rest.split_at(n.min(rest.len()));
        if let Some(flagged) = framing.feed(piece) {
            return Some(flagged);
        }
        rest = tail;
    }
    framing.feed(rest)
}
