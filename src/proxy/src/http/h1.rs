//! The HTTP/1.1 server side for the plain request, without hyper: a `GET` with no body and
//! nothing hop-by-hop but `Connection: keep-alive` or `close`, its head whole in what one read
//! brought, on a listener that neither denies the caller nor has request rules. Its head is
//! parsed as hyper parses it (httparse, the same limits), written for the app straight from
//! the parsed fields ([`headers::write_to_app`]), and the app's answer is framed for the
//! client as hyper frames it ([`encode_head`]). The first request that is anything else (a
//! body, `Expect`, an upgrade, a head split over reads or pipelined past the end of a read, a
//! head that does not parse) hands the connection to hyper, which serves it from that request
//! on, starting with the bytes read so far ([`Prefixed`]).
//!
//! Why: hyper's server builds a `Request` (a `HeaderMap`, a `Uri`, extensions) that the proxy
//! then rewrites and encodes again for the app, and dispatches it through a service and its
//! body through a channel-like state machine. In callgrind, one keep-alive `GET /1k` with a
//! client certificate cost 32,600 user-space instructions inside the connection's task, of
//! which hyper's dispatch, the `http` types, their allocations and the moves between them were
//! about 40 %. The request here keeps its fields as slices of the read buffer.
//!
//! What stays shared with the hyper path, so that the two cannot drift: the connection's
//! state and counters ([`Conn`]), the request's log line and response body ([`super::body::ResponseBody`]),
//! the listener's slots toward the app, the app client ([`super::app`]), and the answer the app
//! gave or the one given for it ([`request::handle_plain`]).

use super::body::{self, Saturated};
use super::conn::{Conn, Ended};
use super::listener::Shared;
pub(super) use super::prefixed::Prefixed;
use super::settings::{
    Caller, Forwarding, HttpLimits, HttpSettings, IDLE_CLOSE_GRACE, MAX_REQUEST_HEAD,
};
use super::wait::{app_slot, later, turned_true};
use super::{headers, request};
use crate::stop::Watched;
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Response, StatusCode, Uri};
use hyper::body::Body;
use std::cell::RefCell;
use std::future::{Future, poll_fn};
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::Poll;
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep, sleep_until};

/// What one read of the client stream may bring: a request head that does not fit goes to
/// hyper, whose buffer grows to the head limit.
const READ_BUF: usize = 8 * 1024;
/// hyper's limit on a request's header fields: a head with more goes to hyper (`431`).
const MAX_FIELDS: usize = 100;
/// Response data up to this size is copied behind the head (one write for both); a larger
/// frame goes beside it in a vectored write, so the buffer stays small.
const COPY_MAX: usize = 4 * 1024;
/// Response bytes gathered before they are written even though the body has more at once:
/// hyper's bound on its write buffer (its `max_buf_size`, which is our request head limit).
const OUT_MAX: usize = MAX_REQUEST_HEAD;

/// How [`serve`] left the connection.
pub(super) enum Served<IO> {
    Ended(Ended),
    /// hyper serves the rest of the connection, from the bytes read but not served (the client
    /// stream with them in front; they were counted when they were read).
    HandOff(Prefixed<IO>),
}

/// Serves plain requests until the connection ends or one comes that is not plain.
/// `graceful` and `close_all` are the drain's switches, as in [`super::drive`].
pub(super) async fn serve<IO>(
    conn: &Arc<Conn>,
    mut io: IO,
    idle: Duration,
    graceful: &mut watch::Receiver<bool>,
    close_all: &mut watch::Receiver<bool>,
) -> Served<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let settings = &conn.shared.settings;
    if conn.denial.is_some() || !settings.rules.is_empty() {
        return Served::HandOff(Prefixed::new(Bytes::new(), io));
    }
    // Made once: see `drive`.
    let mut close_all = Watched::new(close_all.clone(), turned_true(close_all));
    let mut graceful = Watched::new(graceful.clone(), turned_true(graceful));
    let timer = sleep_until(conn.idle_deadline(idle));
    tokio::pin!(timer);
    let mut buf = BytesMut::new();
    // The app's request heads and the client's response heads, one at a time: their room is
    // reused once the previous one is gone.
    let mut app_head = BytesMut::new();
    let mut out = BytesMut::new();
    loop {
        if buf.is_empty() {
            timer.as_mut().reset(conn.idle_deadline(idle));
            buf.reserve(READ_BUF);
            let read = tokio::select! {
                biased;
                () = close_all.fired() => return Served::Ended(Ended::Drained),
                read = io.read_buf(&mut buf) => Some(read),
                () = graceful.fired() => None,
                () = timer.as_mut() => None,
            };
            match read {
                Some(Ok(0)) => return Served::Ended(close(io, &mut close_all).await),
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    return Served::Ended(Ended::Failed(format!("connection error: {e}")));
                }
                // A connection that has had a request closes now (idle, or the drain). One
                // that has had none gets hyper's handling, with the first-request grace of
                // a drain (see `drive`).
                None if conn.requests.load(Relaxed) > 0 => {
                    return Served::Ended(close(io, &mut close_all).await);
                }
                None => return Served::HandOff(Prefixed::new(Bytes::new(), io)),
            }
        }
        // A drain lets the answer in progress finish, not requests pipelined behind it.
        if graceful.is_on() && conn.requests.load(Relaxed) > 0 {
            return Served::Ended(close(io, &mut close_all).await);
        }
        let Some(plain) = parse(&mut buf, conn, &mut app_head) else {
            return Served::HandOff(Prefixed::new(buf.freeze(), io));
        };
        let answer = async {
            match app_slot(&conn.shared.app_slots).await {
                Some(slot) => request::handle_plain(conn.clone(), &plain.uri, plain.app_head)
                    .await
                    .map(|body| body.holding(slot, None)),
                None => body::saturated(conn, &Method::GET, &plain.uri, Saturated::App),
            }
        };
        tokio::pin!(answer);
        // While the answer is on its way, a client that goes away ends the request as hyper
        // ends it (it reads mid-message when nothing is buffered): its app connection and slot
        // are not held for an answer nobody will read.
        let mut watch_eof = buf.is_empty();
        let response = loop {
            tokio::select! {
                biased;
                () = close_all.fired() => return Served::Ended(Ended::Drained),
                response = &mut answer => break response,
                read = io.read_buf(&mut buf), if watch_eof => match read {
                    Ok(0) => return Served::Ended(Ended::Failed(INCOMPLETE.to_owned())),
                    Ok(_) => watch_eof = false,
                    Err(e) => return Served::Ended(Ended::Failed(format!("connection error: {e}"))),
                },
            }
        };
        let last = plain.close || graceful.is_on();
        let mut sending = Sending {
            io: &mut io,
            limit: Limit {
                idle,
                close_all: &mut close_all,
                timer: timer.as_mut(),
            },
        };
        if let Err(ended) = sending.respond(response, last, &mut out).await {
            return Served::Ended(ended);
        }
        // An app's large head grew it: an idle connection keeps no more than hyper's would.
        if out.capacity() > READ_BUF {
            out = BytesMut::new();
        }
        if last {
            return Served::Ended(close(io, &mut close_all).await);
        }
    }
}

/// The clean end of a connection: TLS close_notify and FIN, as hyper ends one; cut short by
/// the end of the drain.
async fn close<IO, F>(mut io: IO, close_all: &mut Watched<F>) -> Ended
where
    IO: AsyncWrite + Unpin,
    F: Future<Output = ()>,
{
    tokio::select! {
        biased;
        () = close_all.fired() => Ended::Drained,
        _ = tokio::time::timeout(IDLE_CLOSE_GRACE, io.shutdown()) => Ended::Finished,
    }
}

/// hyper's words for a client that closed with a request in flight.
const INCOMPLETE: &str = "connection closed before message completed";

/// A plain request, its head taken out of the read buffer.
struct Plain {
    /// The origin-form target, a slice of the head.
    uri: Uri,
    /// The head to send the app.
    app_head: Bytes,
    /// The client asked to close after this answer (`Connection: close`).
    close: bool,
}

/// The plain request at the start of `buf`, taken out of it, its head for the app written
/// with `app_head`'s room; `None` (and `buf` untouched) if the start of `buf` is not a whole
/// plain request head.
fn parse(buf: &mut BytesMut, conn: &Conn, app_head: &mut BytesMut) -> Option<Plain> {
    // Uninitialised, as hyper and `app::parse_head` do it: zeroing 100 slots costs more than
    // parsing a typical head.
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
    let mut req = httparse::Request::new(&mut []);
    let config = httparse::ParserConfig::default();
    let httparse::Status::Complete(len) = config
        .parse_request_with_uninit_headers(&mut req, buf, &mut fields)
        .ok()?
    else {
        return None;
    };
    let target = req.path?;
    if req.method != Some("GET") || req.version != Some(1) || !target.starts_with('/') {
        return None;
    }
    let (mut hosts, mut close) = (0, false);
    for field in req.headers.iter() {
        match Field::of(field.name) {
            Field::Host => hosts += 1,
            Field::Connection if field.value.eq_ignore_ascii_case(b"close") => close = true,
            Field::Connection if field.value.eq_ignore_ascii_case(b"keep-alive") => {}
            Field::Connection | Field::NotPlain => return None,
            Field::Other => {}
        }
    }
    // No Host (hyper's path sends the app's authority) or several (`400`): hyper's path.
    if hosts != 1 {
        return None;
    }
    app_head.reserve(len + 256);
    app_head.extend_from_slice(b"GET ");
    app_head.extend_from_slice(target.as_bytes());
    app_head.extend_from_slice(b" HTTP/1.1\r\n");
    headers::write_to_app(app_head, req.headers, &conn.to_app);
    app_head.extend_from_slice(b"\r\n");

    let base = buf.as_ptr() as usize;
    let from = target.as_ptr() as usize - base;
    let to = from + target.len();
    let head = buf.split_to(len).freeze();
    let Ok(uri) = Uri::from_maybe_shared(head.slice(from..to)) else {
        // hyper refuses it (`400`): put the head back for hyper to see.
        let rest = buf.split();
        buf.extend_from_slice(&head);
        buf.extend_from_slice(&rest);
        app_head.clear();
        return None;
    };
    // The app gets the target as hyper's path forwards it, from the `Uri`, which leaves out a
    // fragment (`/a#b` is `/a`): written as received above, it is rewritten in that rare case.
    let forwarded = uri.path_and_query().map_or("/", PathAndQuery::as_str);
    if forwarded.as_bytes() != &head[from..to] {
        let line_end = "GET ".len() + (to - from);
        let fields = app_head.split_off(line_end);
        app_head.truncate("GET ".len());
        app_head.extend_from_slice(forwarded.as_bytes());
        app_head.unsplit(fields);
    }
    Some(Plain {
        uri,
        app_head: app_head.split().freeze(),
        close,
    })
}

/// What a request field means to [`parse`].
enum Field {
    Host,
    Connection,
    /// A field that only hyper's path handles: a body's framing, `Expect`, an upgrade, or a
    /// hop-by-hop field with rules of its own.
    NotPlain,
    Other,
}

impl Field {
    fn of(name: &str) -> Field {
        const NOT_PLAIN: [&str; 8] = [
            "content-length",
            "transfer-encoding",
            "expect",
            "upgrade",
            "te",
            "trailer",
            "keep-alive",
            "proxy-connection",
        ];
        if name.eq_ignore_ascii_case("host") {
            Field::Host
        } else if name.eq_ignore_ascii_case("connection") {
            Field::Connection
        } else if NOT_PLAIN.iter().any(|n| name.eq_ignore_ascii_case(n)) {
            Field::NotPlain
        } else {
            Field::Other
        }
    }
}

/// Writing one answer to the client: every step must move within `idle` (a client that stopped
/// reading, or an app that stopped sending mid-body, is cut off as in [`super::drive`]), and the
/// end of the drain cuts it at once.
struct Sending<'a, IO, F> {
    io: &'a mut IO,
    limit: Limit<'a, F>,
}

struct Limit<'a, F> {
    idle: Duration,
    close_all: &'a mut Watched<F>,
    timer: Pin<&'a mut Sleep>,
}

impl<IO, F> Sending<'_, IO, F>
where
    IO: AsyncWrite + Unpin,
    F: Future<Output = ()>,
{
    async fn respond<B>(
        &mut self,
        response: Response<B>,
        close: bool,
        out: &mut BytesMut,
    ) -> Result<(), Ended>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        let (parts, mut body) = response.into_parts();
        let mut framing = encode_head(out, &parts, &body, close)?;
        loop {
            if framing == Framing::Length(0) || framing == Framing::Nothing {
                // All the head announced is out; anything more the body has is dropped, as
                // hyper's length encoder drops it.
                drop(body);
                return self.write_out(out).await;
            }
            // What is there now goes behind the head (or the data before it) in one write;
            // a wait for more sends what is gathered first.
            let polled = poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await;
            let frame = match polled {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    self.write_out(out).await?;
                    let next = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx));
                    self.limit.step(next).await?
                }
            };
            match frame {
                Some(Ok(frame)) => {
                    // Trailers go only to a client that asked for them (`TE: trailers`), and
                    // a plain request did not.
                    let Ok(mut data) = frame.into_data() else {
                        continue;
                    };
                    // An empty chunk would read as the last one.
                    if data.is_empty() {
                        continue;
                    }
                    if let Framing::Length(left) = &mut framing {
                        // Never more than the Content-Length said (an app's answer framed
                        // otherwise, carrying one anyway): the rest would be read as the
                        // next response.
                        let take = usize::try_from(*left).unwrap_or(usize::MAX).min(data.len());
                        data.truncate(take);
                        *left -= take as u64;
                    }
                    framing.data(out, &data);
                    if data.len() > COPY_MAX {
                        self.write_with(out, &data).await?;
                    } else {
                        out.extend_from_slice(&data);
                    }
                    if framing == Framing::Chunked {
                        out.extend_from_slice(b"\r\n");
                    }
                    // What waits in `out` is bounded as hyper bounds its write buffer.
                    if out.len() >= OUT_MAX {
                        self.write_out(out).await?;
                    }
                }
                Some(Err(e)) => {
                    // As hyper does: the client sees the connection end short of the body.
                    return Err(Ended::Failed(format!("error from user's Body stream: {e}")));
                }
                None => {
                    if framing == Framing::Chunked {
                        out.extend_from_slice(b"0\r\n\r\n");
                    }
                    self.write_out(out).await?;
                    return match framing {
                        // A body shorter than its Content-Length: the client must not take
                        // the next response for the rest of it (hyper closes too).
                        Framing::Length(left) if left > 0 => Err(Ended::Failed(format!(
                            "the response body ended {left} bytes short of its Content-Length"
                        ))),
                        _ => Ok(()),
                    };
                }
            }
        }
    }

    /// Writes and empties `out`, then flushes.
    async fn write_out(&mut self, out: &mut BytesMut) -> Result<(), Ended> {
        if !out.is_empty() {
            let (bytes, io) = (&out[..], &mut *self.io);
            let written = async move {
                io.write_all(bytes).await?;
                io.flush().await
            };
            self.limit.step(written).await?.map_err(write_failed)?;
            out.clear();
        }
        Ok(())
    }

    /// Writes `out`, then `data`, as one vectored write where the stream takes it (rustls
    /// makes one record of both, a TCP stream one `writev`), and empties `out`.
    async fn write_with(&mut self, out: &mut BytesMut, data: &[u8]) -> Result<(), Ended> {
        let io = &mut *self.io;
        let (mut first, mut then) = (&out[..], data);
        let written = async move {
            while !then.is_empty() {
                let slices = [io::IoSlice::new(first), io::IoSlice::new(then)];
                let n = io.write_vectored(&slices).await?;
                if n == 0 {
                    return Err(io::Error::from(io::ErrorKind::WriteZero));
                }
                let of_first = n.min(first.len());
                first = &first[of_first..];
                then = &then[n - of_first..];
            }
            // rustls takes the bytes and may hold its records until a flush.
            io.flush().await
        };
        self.limit.step(written).await?.map_err(write_failed)?;
        out.clear();
        Ok(())
    }
}

impl<F: Future<Output = ()>> Limit<'_, F> {
    /// `step`, unless the drain ends or it takes longer than `idle`.
    async fn step<T>(&mut self, step: impl Future<Output = T>) -> Result<T, Ended> {
        tokio::pin!(step);
        // Most steps are done at once (a socket with room, data that came with the app's
        // head): those need no clock reading and no timer.
        if let Poll::Ready(done) = poll_fn(|cx| Poll::Ready(step.as_mut().poll(cx))).await {
            return Ok(done);
        }
        self.timer.as_mut().reset(later(Instant::now(), self.idle));
        tokio::select! {
            biased;
            () = self.close_all.fired() => Err(Ended::Drained),
            done = step => Ok(done),
            () = self.timer.as_mut() => Err(Ended::Stalled),
        }
    }
}

fn write_failed(e: io::Error) -> Ended {
    Ended::Failed(format!("connection error: {e}"))
}

/// How the response body goes to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// As it comes, up to this many bytes more: a `Content-Length` says where it ends.
    Length(u64),
    Chunked,
    /// No body may follow this head (`204`, `304`).
    Nothing,
}

impl Framing {
    /// What goes before a data frame of this size.
    fn data(self, out: &mut BytesMut, data: &[u8]) {
        if self == Framing::Chunked {
            use std::fmt::Write;
            // Cannot fail: BytesMut grows.
            let _ = write!(out, "{:X}\r\n", data.len());
        }
    }
}

/// The response head as hyper's server writes it for a `GET` from an HTTP/1.1 client (hyper
/// 1.x, `proto::h1::role`): the status line with the canonical reason, the fields in the
/// map's order with lower-case names, `Content-Length` from the body when it is known and
/// `Transfer-Encoding: chunked` when not, none of either on `204`/`304`, `Connection: close`
/// when this is the connection's last answer, and `Date` if the app sent none.
fn encode_head<B: Body>(
    out: &mut BytesMut,
    parts: &http::response::Parts,
    body: &B,
    close: bool,
) -> Result<Framing, Ended> {
    let status = parts.status;
    out.reserve(128 + parts.headers.len() * 32);
    if status == StatusCode::OK {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_str().as_bytes());
        out.extend_from_slice(b" ");
        out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let no_body = matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED);
    // `None`: the body has ended already; `Some(None)`: its length is not known.
    let length = (!body.is_end_stream()).then(|| body.size_hint().exact());
    let (mut wrote_len, mut wrote_date, mut wrote_trailer) = (false, false, false);
    // How the body goes, as hyper's encoder frames it: by the body's exact size when it knows
    // it, else by a Content-Length the fields carry, else chunked (set below).
    let mut framing = Framing::Length(length.flatten().unwrap_or(0));
    for (name, value) in &parts.headers {
        match *name {
            header::CONTENT_LENGTH => match length {
                // hyper writes the first value and trusts it to match the body.
                Some(Some(_)) if !wrote_len => {
                    line(out, name.as_str(), value.as_bytes());
                    wrote_len = true;
                }
                Some(Some(_)) => {}
                // hyper parses each value (digits only), refuses differing ones, and writes
                // the first as it came.
                Some(None) => {
                    let Some(n) = digits(value.as_bytes()) else {
                        return Err(invalid_length());
                    };
                    match framing {
                        _ if !wrote_len => {
                            line(out, name.as_str(), value.as_bytes());
                            wrote_len = true;
                            framing = Framing::Length(n);
                        }
                        Framing::Length(first) if first == n => {}
                        _ => return Err(invalid_length()),
                    }
                }
                // No body left: hyper leaves the field out (and adds `0` below).
                None => {}
            },
            // Hop-by-hop: taken out by `headers::to_client` already, and framed here.
            header::TRANSFER_ENCODING | header::CONNECTION => {
                debug_assert!(false, "{name} reached the client side");
            }
            header::TRAILER if no_body => {}
            // hyper joins this name's values on one line.
            header::TRAILER if !wrote_trailer => {
                wrote_trailer = true;
                let all: Vec<&[u8]> = parts
                    .headers
                    .get_all(name)
                    .iter()
                    .map(HeaderValue::as_bytes)
                    .collect();
                line(out, name.as_str(), &all.join(&b", "[..]));
            }
            header::TRAILER => {}
            _ => {
                wrote_date |= *name == header::DATE;
                line(out, name.as_str(), value.as_bytes());
            }
        }
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    if !wrote_len && !no_body {
        match length {
            Some(None) => {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n");
                framing = Framing::Chunked;
            }
            None => out.extend_from_slice(b"content-length: 0\r\n"),
            Some(Some(n)) => {
                out.extend_from_slice(b"content-length: ");
                out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
                out.extend_from_slice(b"\r\n");
            }
        }
    }
    if !wrote_date {
        out.extend_from_slice(b"date: ");
        DATE.with(|date| date.borrow_mut().write(out));
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(if no_body { Framing::Nothing } else { framing })
}

/// A Content-Length value as hyper reads one: ASCII digits only.
fn digits(value: &[u8]) -> Option<u64> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    value.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// hyper refuses such an answer before writing a byte of it, and the connection ends.
fn invalid_length() -> Ended {
    Ended::Failed("the app's answer carries an invalid or conflicting Content-Length".to_owned())
}

fn line(out: &mut BytesMut, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

thread_local! {
    /// The `Date` value, formatted once a second per thread, as hyper caches it.
    static DATE: RefCell<CachedDate> = const { RefCell::new(CachedDate { second: 0, text: [0; 29] }) };
}

struct CachedDate {
    /// Seconds since the epoch `text` is for.
    second: u64,
    text: [u8; 29],
}

impl CachedDate {
    fn write(&mut self, out: &mut BytesMut) {
        let now = SystemTime::now();
        let second = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if second != self.second || self.text[0] == 0 {
            let text = httpdate::fmt_http_date(now);
            if let Some(text) = text.as_bytes().get(..29) {
                self.text.copy_from_slice(text);
            }
            self.second = second;
        }
        out.extend_from_slice(&self.text);
    }
}

/// A connection of a TLS listener (XFCC in Envoy's form) to `127.0.0.1:8080`, from
/// `10.1.2.3` without a client certificate: for the tests and the fuzz target.
fn sample_conn(forwarding: Forwarding) -> Conn {
    let settings = HttpSettings {
        upstream: tls_sidecar_config::HostPort {
            host: "127.0.0.1".into(),
            port: 8080,
        },
        xfcc: tls_sidecar_config::Xfcc::Envoy,
        connect_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(60),
        forwarding,
        rules: Default::default(),
    };
    let metrics = Arc::new(crate::metrics::ListenerMetrics::with_request_rules(8443, 0));
    let shared = Arc::new(Shared::new(settings, HttpLimits::default(), metrics));
    let caller = Caller {
        addr: std::net::SocketAddr::from(([10, 1, 2, 3], 50000)),
        h2: false,
        leaf: None,
        identity: None,
        denial: None,
    };
    Conn::new(shared, &caller, watch::channel(false).1)
}

/// [`parse`] on `stream` (a [`sample_conn`] caller), checked against what hyper's path and the
/// app rely on; `Err` names the broken promise. See `crate::fuzzing::plain_head`.
pub(super) fn check_parse(stream: &[u8]) -> Result<(), String> {
    static CONN: std::sync::OnceLock<Conn> = std::sync::OnceLock::new();
    let conn = CONN.get_or_init(|| sample_conn(Forwarding::Tls));
    let mut buf = BytesMut::from(stream);
    let mut app_head = BytesMut::new();
    let Some(plain) = parse(&mut buf, conn, &mut app_head) else {
        return if buf[..] == *stream {
            Ok(())
        } else {
            Err("a head left for hyper lost bytes".to_owned())
        };
    };
    let used = stream.len() - buf.len();
    if super::framing::Framing::default()
        .feed(&stream[..used])
        .is_some()
    {
        return Err("a plain request carried a body's framing".to_owned());
    }
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS + 3];
    let mut req = httparse::Request::new(&mut fields);
    match req.parse(&plain.app_head) {
        Ok(httparse::Status::Complete(n)) if n == plain.app_head.len() => {}
        other => return Err(format!("the app's head is not one whole head: {other:?}")),
    }
    let target = plain.uri.to_string();
    if req.method != Some("GET") || req.path != Some(target.as_str()) {
        return Err(format!("the app got {:?} {:?}", req.method, req.path));
    }
    let owned: Vec<&str> = req
        .headers
        .iter()
        .map(|f| f.name)
        .filter(|name| headers::is_reserved(name))
        .collect();
    if owned != ["x-forwarded-proto", "x-forwarded-for"] {
        return Err(format!("the app got these owned fields: {owned:?}"));
    }
    if req
        .headers
        .iter()
        .any(|f| f.name.bytes().any(|b| b.is_ascii_uppercase()))
    {
        return Err("a field name reached the app in upper case".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::settings::Forwarding;
    use super::*;
    use http_body_util::{Empty, Full};
    use hyper::body::Frame;
    use hyper_util::rt::TokioIo;
    use std::convert::Infallible;
    use std::sync::Mutex;
    use std::task::Context;

    fn conn(forwarding: Forwarding) -> Conn {
        sample_conn(forwarding)
    }

    fn parsed(conn: &Conn, stream: &str) -> (Option<(String, String, bool)>, String) {
        let mut buf = BytesMut::from(stream);
        let mut app_head = BytesMut::new();
        let plain = parse(&mut buf, conn, &mut app_head).map(|plain| {
            let head = String::from_utf8(plain.app_head.to_vec()).unwrap();
            (plain.uri.to_string(), head, plain.close)
        });
        (plain, String::from_utf8(buf.to_vec()).unwrap())
    }

    #[test]
    fn a_plain_get_goes_to_the_app_with_the_callers_claims_replaced_by_the_sidecars_headers() {
        let conn = conn(Forwarding::Tls);
        let stream = "GET /p?q=1 HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.2.3.4\r\n\
                      x_forwarded_client_cert: forged\r\nX-Real-IP: 5.6.7.8\r\nAccept: */*\r\n\
                      Connection: keep-alive\r\nX-Forwarded-Proto: http\r\n\r\n\
                      GET /next HTTP/1.1\r\n";
        let (plain, rest) = parsed(&conn, stream);
        let (uri, head, close) = plain.expect("a plain request");
        assert_eq!(uri, "/p?q=1");
        assert_eq!(
            head,
            "GET /p?q=1 HTTP/1.1\r\nhost: a\r\naccept: */*\r\n\
             x-forwarded-proto: https\r\nx-forwarded-for: 10.1.2.3\r\n\r\n"
        );
        assert!(!close);
        assert_eq!(rest, "GET /next HTTP/1.1\r\n", "the next request stays");
    }

    #[test]
    fn a_fragment_in_the_target_does_not_reach_the_app_as_on_hypers_path() {
        let conn = conn(Forwarding::Tls);
        let (plain, _) = parsed(&conn, "GET /a?b=1#frag HTTP/1.1\r\nHost: a\r\n\r\n");
        let (uri, head, _) = plain.expect("a plain request");
        assert_eq!(uri, "/a?b=1");
        assert!(
            head.starts_with("GET /a?b=1 HTTP/1.1\r\nhost: a\r\n"),
            "{head}"
        );
    }

    #[test]
    fn connection_close_is_taken_as_the_last_request() {
        let conn = conn(Forwarding::Tls);
        let (plain, rest) = parsed(
            &conn,
            "GET / HTTP/1.1\r\nhost: a\r\nConnection: Close\r\n\r\n",
        );
        let (_, head, close) = plain.expect("a plain request");
        assert!(close);
        assert!(!head.contains("onnection"), "{head}");
        assert_eq!(rest, "");
    }

    #[test]
    fn on_the_route_port_only_the_identity_header_is_removed() {
        let conn = conn(Forwarding::Route);
        let stream = "GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.2.3.4\r\n\
                      X-Forwarded-Client-Cert: forged\r\nX-Forwarded-Proto: https\r\n\r\n";
        let (_, head, _) = parsed(&conn, stream).0.expect("a plain request");
        assert_eq!(
            head,
            "GET / HTTP/1.1\r\nhost: a\r\nx-forwarded-for: 1.2.3.4\r\nx-forwarded-proto: https\r\n\r\n"
        );
        // Diego's Envoy (the peer here) may vouch for it on an identity-aware domain.
        let envoy = conn_from_envoy();
        let (_, head, _) = parsed(&envoy, stream).0.expect("a plain request");
        assert_eq!(
            head,
            "GET / HTTP/1.1\r\nhost: a\r\nx-forwarded-for: 1.2.3.4\r\nx-forwarded-proto: https\r\n\
             x-forwarded-client-cert: forged\r\n\r\n"
        );
    }

    fn conn_from_envoy() -> Conn {
        conn(Forwarding::RouteKeepingXfccFrom(
            "10.1.2.3".parse().unwrap(),
        ))
    }

    #[test]
    fn anything_but_a_whole_plain_get_is_left_for_hyper_untouched() {
        let conn = conn(Forwarding::Tls);
        for stream in [
            "POST / HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
            "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nTrailer: x\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nKeep-Alive: timeout=5\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, x-secret\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET / HTTP/1.1\r\nAccept: */*\r\n\r\n",
            "GET / HTTP/1.0\r\nHost: a\r\n\r\n",
            "GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\n",
            "GET / HTTP/1.1\r\nHost : a\r\n\r\n",
        ] {
            let (plain, rest) = parsed(&conn, stream);
            assert!(plain.is_none(), "{stream:?}");
            assert_eq!(rest, stream, "the bytes stay for hyper");
        }
    }

    /// A response for both writers, made twice.
    type Make = fn() -> Response<TestBody>;
    type TestBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

    fn boxed<B>(body: B) -> TestBody
    where
        B: Body<Data = Bytes, Error = Infallible> + Send + 'static,
    {
        http_body_util::BodyExt::boxed_unsync(body)
    }

    fn with(status: u16, fields: &[(&str, &str)], body: TestBody) -> Response<TestBody> {
        let mut response = Response::new(body);
        *response.status_mut() = StatusCode::from_u16(status).unwrap();
        for (name, value) in fields {
            let name = http::HeaderName::from_bytes(name.as_bytes()).unwrap();
            response.headers_mut().append(name, value.parse().unwrap());
        }
        response
    }

    /// A body of these frames, of no known length.
    fn frames(mut frames: Vec<Frame<Bytes>>) -> TestBody {
        frames.reverse();
        boxed(super::super::trailers::tests::Frames(frames))
    }

    fn cases() -> Vec<(&'static str, Make)> {
        vec![
            ("200, the app's Content-Length", || {
                with(
                    200,
                    &[("content-type", "text/plain"), ("content-length", "5")],
                    boxed(Full::new(Bytes::from("hello"))),
                )
            }),
            ("200, length from the body", || {
                with(
                    200,
                    &[("x-a", "1"), ("x-b", "2"), ("x-a", "3")],
                    boxed(Full::new(Bytes::from("hello"))),
                )
            }),
            ("404, empty body", || {
                with(404, &[], boxed(Full::new(Bytes::new())))
            }),
            ("204", || with(204, &[("x-a", "1")], boxed(Empty::new()))),
            ("304 with a Content-Length", || {
                with(
                    304,
                    &[("content-length", "10"), ("etag", "\"x\"")],
                    boxed(Empty::new()),
                )
            }),
            ("599, no canonical reason", || {
                with(599, &[], boxed(Full::new(Bytes::from("x"))))
            }),
            ("200, the app's Date", || {
                with(
                    200,
                    &[("date", "Tue, 01 Dec 2026 00:00:00 GMT")],
                    boxed(Full::new(Bytes::from("x"))),
                )
            }),
            ("chunked with trailers nobody asked for", || {
                let mut trailers = http::HeaderMap::new();
                trailers.insert("x-sum", "1".parse().unwrap());
                with(
                    200,
                    &[("trailer", "x-sum"), ("trailer", "x-other")],
                    frames(vec![
                        Frame::data(Bytes::from("abc")),
                        Frame::data(Bytes::new()),
                        Frame::data(Bytes::from(vec![b'z'; 40_000])),
                        Frame::trailers(trailers),
                    ]),
                )
            }),
            ("500, chunked, no data", || with(500, &[], frames(vec![]))),
            (
                "a Content-Length over a body of unknown length, which has more",
                || {
                    with(
                        200,
                        &[("content-length", "5")],
                        frames(vec![Frame::data(Bytes::from("hello, and then some"))]),
                    )
                },
            ),
            ("a large frame of a known length", || {
                with(200, &[], boxed(Full::new(Bytes::from(vec![b'k'; 20_000]))))
            }),
        ]
    }

    async fn hyper_writes(make: Make, close: bool) -> Vec<u8> {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        // A first answer, then a last one that closes the connection: the client reads to the
        // end.
        let answers = Mutex::new(vec![
            with(200, &[], boxed(Full::new(Bytes::from("last")))),
            make(),
        ]);
        let service = hyper::service::service_fn(move |_| {
            let answer = answers.lock().unwrap().pop().unwrap();
            async move { Ok::<_, Infallible>(answer) }
        });
        tokio::spawn(
            hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(server), service),
        );
        let first = if close { "Connection: close\r\n" } else { "" };
        let stream = format!(
            "GET / HTTP/1.1\r\nHost: a\r\n{first}\r\nGET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        );
        client.write_all(stream.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        if !close {
            let last = answer
                .windows(17)
                .rposition(|w| w == b"HTTP/1.1 200 OK\r\n")
                .unwrap();
            answer.truncate(last);
        }
        answer
    }

    /// A stream that holds what is written until it is flushed, as rustls holds its records:
    /// what a missing flush would leave unsent never shows in `sent`.
    #[derive(Default)]
    struct HeldUntilFlush {
        held: Vec<u8>,
        sent: Vec<u8>,
        largest_write: usize,
    }

    impl AsyncWrite for HeldUntilFlush {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            this.largest_write = this.largest_write.max(buf.len());
            this.held.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            let held = std::mem::take(&mut this.held);
            this.sent.extend_from_slice(&held);
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    async fn ours(
        response: Response<TestBody>,
        close: bool,
    ) -> (Result<(), Ended>, HeldUntilFlush) {
        let (_on, rx) = watch::channel(false);
        let mut close_all = Watched::new(rx, std::future::pending::<()>());
        let timer = sleep_until(Instant::now());
        tokio::pin!(timer);
        let mut io = HeldUntilFlush::default();
        let mut sending = Sending {
            io: &mut io,
            limit: Limit {
                idle: Duration::from_secs(10),
                close_all: &mut close_all,
                timer: timer.as_mut(),
            },
        };
        let mut out = BytesMut::new();
        let result = sending.respond(response, close, &mut out).await;
        (result, io)
    }

    async fn ours_writes(make: Make, close: bool) -> Vec<u8> {
        let (result, io) = ours(make(), close).await;
        assert!(result.is_ok());
        io.sent
    }

    #[tokio::test]
    async fn a_body_short_of_its_content_length_ends_the_connection_after_what_came() {
        let response = with(
            200,
            &[("content-length", "10")],
            frames(vec![Frame::data(Bytes::from("abc"))]),
        );
        let (result, io) = ours(response, false).await;
        assert!(matches!(result, Err(Ended::Failed(_))));
        let sent = String::from_utf8(io.sent).unwrap();
        assert!(
            sent.contains("content-length: 10\r\n") && sent.ends_with("\r\n\r\nabc"),
            "{sent}"
        );
    }

    #[tokio::test]
    async fn an_invalid_or_conflicting_content_length_is_refused_before_a_byte_is_written() {
        for lengths in [
            &[("content-length", "+5")][..],
            &[("content-length", "5"), ("content-length", "6")],
        ] {
            let response = with(
                200,
                lengths,
                frames(vec![Frame::data(Bytes::from("hello"))]),
            );
            let (result, io) = ours(response, false).await;
            assert!(matches!(result, Err(Ended::Failed(_))), "{lengths:?}");
            assert!(io.sent.is_empty() && io.held.is_empty(), "{lengths:?}");
        }
    }

    #[tokio::test]
    async fn a_body_of_many_small_frames_goes_out_in_bounded_writes() {
        let chunks = (0..200)
            .map(|_| Frame::data(Bytes::from(vec![b'x'; 1024])))
            .collect();
        let (result, io) = ours(with(200, &[], frames(chunks)), false).await;
        assert!(result.is_ok());
        assert!(
            io.largest_write <= OUT_MAX + 2 * 1024,
            "{}",
            io.largest_write
        );
        assert!(io.sent.ends_with(b"\r\n0\r\n\r\n"));
        assert_eq!(io.sent.iter().filter(|&&b| b == b'x').count(), 200 * 1024);
    }

    /// The `date:` value masked: both write the current time.
    fn masked(bytes: &[u8]) -> String {
        let text = String::from_utf8_lossy(bytes).into_owned();
        match text.find("\r\ndate: ") {
            Some(at) if !text[at..].starts_with("\r\ndate: Tue, 01 Dec 2026") => {
                let from = at + "\r\ndate: ".len();
                format!("{}<date>{}", &text[..from], &text[from + 29..])
            }
            _ => text,
        }
    }

    #[tokio::test]
    async fn answers_are_framed_byte_for_byte_as_hypers_server_frames_them() {
        for (case, make) in cases() {
            for close in [false, true] {
                let hyper = masked(&hyper_writes(make, close).await);
                let ours = masked(&ours_writes(make, close).await);
                // Where they part, not the whole of a 40 KB body.
                let at = ours
                    .bytes()
                    .zip(hyper.bytes())
                    .position(|(a, b)| a != b)
                    .unwrap_or(ours.len().min(hyper.len()));
                let around =
                    |text: &str| text[at.saturating_sub(80)..(at + 80).min(text.len())].to_owned();
                assert!(
                    ours == hyper,
                    "{case}, close: {close}: at byte {at}\n ours: {:?}\nhyper: {:?}",
                    around(&ours),
                    around(&hyper)
                );
            }
        }
    }
}
