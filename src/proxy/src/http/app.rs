//! Connections to the app: HTTP/1.1 over TCP, kept for reuse in one stack per listener, and
//! driven in the task of the client connection whose request they carry.
//!
//! Our own client rather than hyper's, because of what hyper's cost on every request of this
//! path (callgrind, one http-mode keep-alive request): each app connection is a task of its
//! own, so a request crossed tasks twice (request in, response head out) and its body crossed
//! a channel, chunk by chunk; with the dispatch around them, about a quarter of the user-space
//! instructions of a request. Here the request's own future writes the request and reads the
//! response head, and the response body reads the app's socket when hyper's server asks it for
//! data. A listener has one destination, so its pool is a stack: the most recently used
//! connection (warm in every cache) goes out first, and a connection comes back when its
//! response has been read to the end.
//!
//! The app is the less trusted of our two peers only in that it may be buggy: its response
//! framing is checked as hyper's client checks it (the same rules, noted where they apply), and
//! a connection whose framing is in any doubt is closed, never lent again.

use super::headers::trailer_names;
use super::prefixed::Prefixed;
use super::trailers::RequestBody;
use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::{Body, Frame, SizeHint};
use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tls_sidecar_config::HostPort;
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How long an idle connection to the app is kept: between this and 1.5 times this. Apps close
/// idle keep-alive connections on their own timers (Node 5 s, Puma 20 s, Tomcat 60 s); a
/// connection the app closed is seen as readable and is not lent again.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest response head (and trailer section) we read: hyper's client default (8 KiB plus
/// 4 KiB for each of its 100 headers), so no app answer that worked before is refused now.
const MAX_RESPONSE_HEAD: usize = 8 * 1024 + 4 * 1024 * 100;
/// Most header fields in a response head or trailer section (hyper's client default).
const MAX_HEADERS: usize = 100;
/// A read into less room than this grows the buffer first.
const READ_MIN: usize = 4 * 1024;
/// Read buffer sizes: small for the usual response, large once a read has filled one.
const READ_SMALL: usize = 8 * 1024;
const READ_LARGE: usize = 64 * 1024;
/// Request body bytes gathered before they are written: one write for a head and a small
/// body, and a bound on what one slow app makes us hold.
const UPLOAD_BATCH: usize = 64 * 1024;

/// The idle connections to one app port.
pub(crate) struct AppPool {
    upstream: HostPort,
    connect_timeout: Duration,
    /// At most this many are kept idle; more are closed when their response ends.
    max_idle: usize,
    idle: Mutex<Idle>,
}

struct Idle {
    /// Each with the moment it came back, oldest first.
    conns: Vec<(TcpStream, Instant)>,
    /// A [`reap`] task is running.
    reaping: bool,
}

/// Why the app gave no response head.
#[derive(Debug)]
pub(crate) enum AppError {
    /// No connection: the I/O error, or `None` when `connect_timeout` passed first.
    Connect(Option<io::Error>),
    /// The connection broke, or the app's answer was not HTTP/1.1 we can relay.
    Exchange(String),
}

impl AppPool {
    pub(crate) fn new(upstream: HostPort, connect_timeout: Duration, max_idle: usize) -> Self {
        AppPool {
            upstream,
            connect_timeout,
            max_idle,
            idle: Mutex::new(Idle {
                conns: Vec::new(),
                reaping: false,
            }),
        }
    }

    /// Sends `request` (origin-form target, headers already rewritten for the app) on an idle
    /// connection, or a new one, and returns the response head. The body reads the rest of the
    /// answer from the connection and gives the connection back once the answer has ended.
    pub(crate) async fn send<B>(
        self: &Arc<Self>,
        request: Request<B>,
    ) -> Result<Response<AppBody<B>>, AppError>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        let (mut parts, body) = request.into_parts();
        let framing = request_framing(&parts.method, &mut parts.headers, &body);
        let head = encode_head(&parts);
        let upload = Upload::new(head, Some(body), framing).with_trailers(&parts.headers);
        self.exchange(upload, &parts.method).await
    }

    /// [`AppPool::send`] for a request without a body whose head is written for the app
    /// already (see `super::h1`). Not an `async fn`: that would be one more future around
    /// the exchange's, copied with it on every request.
    pub(crate) fn send_head<'a, B>(
        self: &'a Arc<Self>,
        head: Bytes,
        method: &'a Method,
    ) -> impl Future<Output = Result<Response<AppBody<B>>, AppError>> + 'a
    where
        B: Body<Data = Bytes> + Unpin + 'a,
        B::Error: std::fmt::Display,
    {
        self.exchange(Upload::new(head, None, Framing::Empty), method)
    }

    async fn exchange<B>(
        self: &Arc<Self>,
        mut upload: Upload<B>,
        method: &Method,
    ) -> Result<Response<AppBody<B>>, AppError>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        let (head, framing) = (upload.head.clone(), upload.framing);
        loop {
            let (tcp, reused) = match self.take() {
                Some(tcp) => (tcp, true),
                // Boxed: a new connection is the rare case, and unboxed its futures (connect,
                // timer) would be carried by every request's future.
                None => (Box::pin(self.connect()).await?, false),
            };
            let mut exchange = Exchange::new(tcp, upload);
            match poll_fn(|cx| exchange.poll_head(cx, method)).await {
                Ok(head) => return Ok(AppBody::start(exchange, head, self.clone())),
                Err(failure) => {
                    // A kept connection the app closed (its idle timer) as the request went
                    // out: nothing came back, so it goes again on a new connection, if only
                    // a head was sent and the method may be repeated (RFC 9110 §9.2.2): a
                    // retry cannot then do anything twice.
                    let retry = reused
                        && !exchange.received
                        && framing == Framing::Empty
                        && idempotent(method);
                    if !retry {
                        return Err(AppError::Exchange(failure));
                    }
                    upload = Upload::new(head.clone(), None, framing);
                }
            }
        }
    }

    /// The most recently returned connection that can still take a request.
    fn take(&self) -> Option<TcpStream> {
        let mut idle = self.idle.lock().ok()?;
        let now = Instant::now();
        while let Some((tcp, since)) = idle.conns.pop() {
            if now.duration_since(since) < IDLE_TIMEOUT && still_open(&tcp) {
                return Some(tcp);
            }
        }
        None
    }

    async fn connect(&self) -> Result<TcpStream, AppError> {
        let connect = TcpStream::connect((self.upstream.host.as_str(), self.upstream.port));
        let tcp = match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => return Err(AppError::Connect(Some(e))),
            Err(_) => return Err(AppError::Connect(None)),
        };
        // Request and response heads are small writes: Nagle would only add latency.
        let _ = tcp.set_nodelay(true);
        Ok(tcp)
    }

    fn put(self: &Arc<Self>, tcp: TcpStream) {
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        if idle.conns.len() >= self.max_idle {
            return; // dropped: closed
        }
        idle.conns.push((tcp, Instant::now()));
        if !idle.reaping {
            idle.reaping = true;
            tokio::spawn(reap(Arc::downgrade(self)));
        }
    }

    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.idle.lock().map_or(0, |idle| idle.conns.len())
    }
}

/// No byte and no close from the app since the connection came back: the socket is not
/// readable. A readable idle connection was closed by the app, or sent bytes no request asked
/// for; either way it is not lent again. Readiness is what the reactor last saw, so this costs
/// a system call only when the socket did become readable.
fn still_open(tcp: &TcpStream) -> bool {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match tcp.poll_read_ready(&mut cx) {
        Poll::Pending => true,
        Poll::Ready(Err(_)) => false,
        Poll::Ready(Ok(())) => {
            matches!(tcp.try_read(&mut [0; 1]), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
        }
    }
}

/// Closes connections idle for [`IDLE_TIMEOUT`] or closed by the app. Ends when none are left
/// (the next return starts another) or the listener is gone: an idle sidecar has no timer.
async fn reap(pool: Weak<AppPool>) {
    loop {
        tokio::time::sleep(IDLE_TIMEOUT / 2).await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        let Ok(mut idle) = pool.idle.lock() else {
            return;
        };
        let now = Instant::now();
        idle.conns
            .retain(|(tcp, since)| now.duration_since(*since) < IDLE_TIMEOUT && still_open(tcp));
        if idle.conns.is_empty() {
            idle.reaping = false;
            return;
        }
    }
}

/// RFC 9110 §9.2.2.
fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// How a request body goes to the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    Chunked,
}

/// hyper's client rules (`Client::set_length`), so that the app sees what it saw before: no
/// body when the client's has ended; the `Content-Length` the request carries, or the body's
/// exact size as one; else chunked, except that GET and HEAD send none.
/// `Transfer-Encoding` never arrives here (it is hop-by-hop).
fn request_framing<B: Body>(method: &Method, headers: &mut HeaderMap, body: &B) -> Framing {
    if body.is_end_stream() {
        return Framing::Empty;
    }
    if let Some(n) = content_length(headers).ok().flatten() {
        return Framing::Length(n);
    }
    if let Some(n) = body.size_hint().exact() {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        return Framing::Length(n);
    }
    if matches!(*method, Method::GET | Method::HEAD | Method::CONNECT) {
        return Framing::Empty;
    }
    // A Content-Length that did not parse would contradict the chunked framing.
    headers.remove(header::CONTENT_LENGTH);
    headers.insert(
        header::TRANSFER_ENCODING,
        HeaderValue::from_static("chunked"),
    );
    Framing::Chunked
}

/// The request line and headers, as hyper's client writes them (lower-case names, in the
/// header map's order).
fn encode_head(parts: &http::request::Parts) -> Bytes {
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    // Room for typical fields; a larger head grows once or twice.
    let mut head = BytesMut::with_capacity(64 + target.len() + parts.headers.len() * 64);
    head.extend_from_slice(parts.method.as_str().as_bytes());
    head.extend_from_slice(b" ");
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    write_fields(&mut head, &parts.headers);
    head.extend_from_slice(b"\r\n");
    head.freeze()
}

fn write_fields(out: &mut BytesMut, fields: &HeaderMap) {
    for (name, value) in fields {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// The request on its way to the app: its head, then its body as the client sends it.
struct Upload<B> {
    /// The request head, written first (kept whole: a retry sends it again).
    head: Bytes,
    /// How much of `head` is written.
    head_sent: usize,
    /// Body bytes to write after the head, in order.
    out: BytesMut,
    /// `None` once the body has ended (or there is none).
    body: Option<B>,
    framing: Framing,
    /// Body bytes still owed under [`Framing::Length`].
    left: u64,
    /// Chunked: the trailer fields `Trailer` announced (hyper's client sends only those).
    trailers: Vec<HeaderName>,
}

/// Why an upload stopped.
enum UploadError {
    /// The client's body broke off or carried more or less than it announced.
    Client(String),
    /// Writing to the app failed.
    App,
}

impl<B> Upload<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    fn new(head: Bytes, body: Option<B>, framing: Framing) -> Self {
        Upload {
            head,
            head_sent: 0,
            out: BytesMut::new(),
            left: match framing {
                Framing::Length(n) => n,
                _ => 0,
            },
            body: body.filter(|_| framing != Framing::Empty),
            framing,
            trailers: Vec::new(),
        }
    }

    fn with_trailers(mut self, headers: &HeaderMap) -> Self {
        if self.framing == Framing::Chunked {
            self.trailers = trailer_names(headers)
                .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
                .collect();
        }
        self
    }

    /// Writes what there is to write; `Ready(Ok)` once the whole request is out.
    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        tcp: &mut TcpStream,
    ) -> Poll<Result<(), UploadError>> {
        loop {
            // Gather what the client has sent so far, so that a head and a small body go out
            // in one write.
            while self.out.len() < UPLOAD_BATCH
                && let Some(body) = &mut self.body
            {
                match Pin::new(body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => self.encode(frame)?,
                    Poll::Ready(Some(Err(e))) => {
                        return Poll::Ready(Err(UploadError::Client(format!(
                            "the request body broke off: {e}"
                        ))));
                    }
                    Poll::Ready(None) => self.end(None)?,
                    Poll::Pending => break,
                }
            }
            let head = &self.head[self.head_sent..];
            let tcp = Pin::new(&mut *tcp);
            let written = match (head.is_empty(), self.out.is_empty()) {
                (true, true) => {
                    return if self.body.is_none() {
                        Poll::Ready(Ok(()))
                    } else {
                        Poll::Pending
                    };
                }
                (false, true) => tcp.poll_write(cx, head),
                (true, false) => tcp.poll_write(cx, &self.out),
                (false, false) => {
                    let both = [io::IoSlice::new(head), io::IoSlice::new(&self.out)];
                    tcp.poll_write_vectored(cx, &both)
                }
            };
            match written {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                    return Poll::Ready(Err(UploadError::App));
                }
                Poll::Ready(Ok(n)) => {
                    let of_head = n.min(head.len());
                    self.head_sent += of_head;
                    self.out.advance(n - of_head);
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn encode(&mut self, frame: Frame<Bytes>) -> Result<(), UploadError> {
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    self.end(Some(&trailers))?;
                }
                return Ok(());
            }
        };
        if data.is_empty() {
            return Ok(());
        }
        match self.framing {
            Framing::Length(_) => {
                let n = data.len() as u64;
                if n > self.left {
                    return Err(UploadError::Client(
                        "the request body is longer than its Content-Length".to_owned(),
                    ));
                }
                self.left -= n;
                self.out.extend_from_slice(&data);
            }
            Framing::Chunked => {
                self.out
                    .extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                self.out.extend_from_slice(&data);
                self.out.extend_from_slice(b"\r\n");
            }
            Framing::Empty => {}
        }
        Ok(())
    }

    /// The client's body has ended, with `trailers` if it had some.
    fn end(&mut self, trailers: Option<&HeaderMap>) -> Result<(), UploadError> {
        self.body = None;
        match self.framing {
            Framing::Length(_) if self.left > 0 => Err(UploadError::Client(
                "the request body is shorter than its Content-Length".to_owned(),
            )),
            Framing::Chunked => {
                self.out.extend_from_slice(b"0\r\n");
                if let Some(trailers) = trailers {
                    let mut allowed = HeaderMap::new();
                    for (name, value) in trailers {
                        if self.trailers.contains(name) {
                            allowed.append(name.clone(), value.clone());
                        }
                    }
                    write_fields(&mut self.out, &allowed);
                }
                self.out.extend_from_slice(b"\r\n");
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// One request on one app connection, from its first byte to the end of the answer.
struct Exchange<B> {
    tcp: TcpStream,
    /// Bytes read from the app and not yet consumed.
    buf: BytesMut,
    /// `None` once the request is out.
    upload: Option<Upload<B>>,
    /// Writing the request failed: the app has only part of it.
    broken: bool,
    /// Some byte came back.
    received: bool,
    /// A read filled the buffer: the answer is large, read it in large pieces.
    large: bool,
}

/// A parsed response head and what it says about the body.
struct Head {
    response: Response<()>,
    body: Decoder,
    /// The connection may carry another request after this answer.
    keep_alive: bool,
}

impl<B> Exchange<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    fn new(tcp: TcpStream, upload: Upload<B>) -> Self {
        Exchange {
            tcp,
            buf: BytesMut::new(),
            upload: Some(upload),
            broken: false,
            received: false,
            large: false,
        }
    }

    /// Sends the request as far as it goes without waiting: `Ready(Err)` only when the client's
    /// body broke off. A failed write to the app ends the upload (the app may have answered
    /// and closed: what it said is still read) and the connection's reuse.
    fn poll_upload(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), String>> {
        let Some(upload) = &mut self.upload else {
            return Poll::Ready(Ok(()));
        };
        match ready!(upload.poll_send(cx, &mut self.tcp)) {
            Ok(()) => {}
            Err(UploadError::Client(text)) => {
                self.upload = None;
                self.broken = true;
                return Poll::Ready(Err(text));
            }
            Err(UploadError::App) => self.broken = true,
        }
        self.upload = None;
        Poll::Ready(Ok(()))
    }

    /// Reads what the app has sent into `buf`'s spare room (grown first when small).
    fn poll_read_more(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let buf = &mut self.buf;
        if buf.capacity() - buf.len() < READ_MIN {
            buf.reserve(if self.large { READ_LARGE } else { READ_SMALL });
        }
        let room = buf.capacity() - buf.len();
        // Through `poll_read` (not `try_read`): tokio marks the socket not readable after a
        // short read, so an idle pooled connection reads as open without another system call.
        let n = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.tcp),
            cx,
            buf
        ))?;
        self.received |= n > 0;
        self.large |= n == room;
        Poll::Ready(Ok(n))
    }

    /// Sends the request and reads until a final response head has arrived (1xx heads other
    /// than `101` are skipped, as hyper's client skips them). The upload goes on while the
    /// head is awaited: an app may answer before it has read the whole body.
    fn poll_head(&mut self, cx: &mut Context<'_>, method: &Method) -> Poll<Result<Head, String>> {
        loop {
            if let Poll::Ready(Err(text)) = self.poll_upload(cx) {
                return Poll::Ready(Err(text));
            }
            while !self.buf.is_empty() {
                match parse_head(&mut self.buf, method)? {
                    Some(Some(head)) => return Poll::Ready(Ok(head)),
                    // An interim head, gone: the final one may be right behind it.
                    Some(None) => {}
                    None => break,
                }
            }
            match ready!(self.poll_read_more(cx)) {
                Ok(0) => {
                    let text = "the connection closed before a response head".to_owned();
                    return Poll::Ready(Err(text));
                }
                Ok(_) => {}
                Err(e) => return Poll::Ready(Err(format!("reading the response: {e}"))),
            }
        }
    }
}

/// Parses the response head at the start of `buf` and takes it out once complete: `None`
/// until then; then the head, or `None` for an interim (1xx) head, which is skipped.
fn parse_head(buf: &mut BytesMut, method: &Method) -> Result<Option<Option<Head>>, String> {
    // Uninitialised: zeroing 100 slots for every answer cost ~1,600 instructions (a memset
    // of 3.2 KB), more than parsing a typical head.
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    // The same limit whether the head came in one read or many.
    let too_large = || format!("its response head is larger than {MAX_RESPONSE_HEAD} bytes");
    let config = httparse::ParserConfig::default();
    let len = match config.parse_response_with_uninit_headers(&mut parsed, buf, &mut fields) {
        Ok(httparse::Status::Complete(len)) if len > MAX_RESPONSE_HEAD => return Err(too_large()),
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_RESPONSE_HEAD => return Err(too_large()),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("its response head is not HTTP/1.1: {e}")),
    };
    let version = if parsed.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let status = parsed
        .code
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or_else(|| "its response has no valid status".to_owned())?;
    if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
        buf.advance(len);
        return Ok(Some(None));
    }
    // Where each field is in the head, so that the values can be slices of it rather than
    // copies, each its own allocation (as hyper's client does it).
    let base = buf.as_ptr() as usize;
    let offset = |part: &[u8]| (part.as_ptr() as usize) - base;
    let count = parsed.headers.len();
    let mut at = Vec::with_capacity(count);
    for field in parsed.headers.iter() {
        let name = offset(field.name.as_bytes());
        let value = offset(field.value);
        at.push((
            name,
            name + field.name.len(),
            value,
            value + field.value.len(),
        ));
    }
    let head = buf.split_to(len).freeze();
    // Room for two more: hyper's server adds `date` and `content-length` to an answer that
    // lacks them, and growing the map then costs more than the room (~570 instructions a
    // request in callgrind, HTTP/2).
    let mut headers = HeaderMap::with_capacity(count + 2);
    // What the fields say about framing is noted on the way: looking the names up again in
    // the map costs a hash each.
    let mut framing = FramingFields::default();
    for (name_from, name_to, value_from, value_to) in at {
        let name = HeaderName::from_bytes(&head[name_from..name_to]).map_err(|_| {
            let name = String::from_utf8_lossy(&head[name_from..name_to]);
            format!("its response has an invalid header name {name:?}")
        })?;
        let value = HeaderValue::from_maybe_shared(head.slice(value_from..value_to))
            .map_err(|_| format!("its response header {name} has an invalid value"))?;
        framing.note(&name, &value);
        headers.append(name, value);
    }
    let body = response_body(status, version, method, &framing)?;
    let keep_alive = body != Decoder::UntilClose
        && if version == Version::HTTP_10 {
            framing.keep_alive
        } else {
            !framing.close
        };
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = version;
    *response.headers_mut() = headers;
    Ok(Some(Some(Head {
        response,
        body,
        keep_alive,
    })))
}

/// The answer `stream` carries to a GET, read the way a connection reads it but in pieces of
/// `piece` bytes: its status, body and trailer count, or why it cannot be relayed. See
/// [`crate::fuzzing::app_answer`].
pub(crate) fn read_answer(stream: &[u8], piece: usize) -> Result<(u16, Vec<u8>, usize), String> {
    let mut buf = BytesMut::new();
    let mut pieces = stream.chunks(piece.max(1));
    let head = loop {
        match parse_head(&mut buf, &Method::GET)? {
            Some(Some(head)) => break head,
            Some(None) => {}
            None => match pieces.next() {
                Some(more) => buf.extend_from_slice(more),
                None => return Err("the head is incomplete".to_owned()),
            },
        }
    };
    let (mut decoder, mut body) = (head.body, Vec::new());
    loop {
        match decoder.decode(&mut buf)? {
            Decoded::Data(data) => body.extend_from_slice(&data),
            Decoded::Trailers(trailers) => {
                return Ok((head.response.status().as_u16(), body, trailers.len()));
            }
            Decoded::End => break,
            Decoded::More => match pieces.next() {
                Some(more) => buf.extend_from_slice(more),
                None if decoder == Decoder::UntilClose => break,
                None => return Err("the body is incomplete".to_owned()),
            },
        }
    }
    Ok((head.response.status().as_u16(), body, 0))
}

/// What a response head's fields say about its framing.
#[derive(Debug, Default)]
struct FramingFields {
    /// The Content-Length, when every value agreed.
    length: Option<u64>,
    /// A Content-Length value that is not a number, or values that disagree.
    bad_length: bool,
    /// Transfer-Encoding was there: whether its last coding is chunked.
    chunked: Option<bool>,
    /// `Connection` tokens.
    close: bool,
    keep_alive: bool,
}

impl FramingFields {
    fn note(&mut self, name: &HeaderName, value: &HeaderValue) {
        if *name == header::CONTENT_LENGTH {
            self.bad_length |= add_lengths(value, &mut self.length).is_err();
        } else if *name == header::TRANSFER_ENCODING {
            // The last coding of the last field decides.
            let last = value
                .as_bytes()
                .rsplit(|&b| b == b',')
                .next()
                .unwrap_or_default();
            self.chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if *name == header::CONNECTION {
            for token in value.as_bytes().split(|&b| b == b',') {
                let token = token.trim_ascii();
                self.close |= token.eq_ignore_ascii_case(b"close");
                self.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
    }
}

/// RFC 9112 §6.3, as hyper's client applies it (`Client::decoder`): no body for `101`, `204`,
/// `304` and HEAD; chunked when Transfer-Encoding ends in chunked, else to the close; the
/// Content-Length; else to the close.
fn response_body(
    status: StatusCode,
    version: Version,
    method: &Method,
    fields: &FramingFields,
) -> Result<Decoder, String> {
    if status == StatusCode::SWITCHING_PROTOCOLS
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || *method == Method::HEAD
    {
        return Ok(Decoder::Length(0));
    }
    if let Some(chunked) = fields.chunked {
        if version == Version::HTTP_10 {
            return Err("its HTTP/1.0 response has Transfer-Encoding".to_owned());
        }
        return Ok(if chunked {
            Decoder::Chunked(Chunked::Size { size: 0, digits: 0 })
        } else {
            Decoder::UntilClose
        });
    }
    if fields.bad_length {
        return Err("its response has an invalid Content-Length".to_owned());
    }
    Ok(fields.length.map_or(Decoder::UntilClose, Decoder::Length))
}

/// The Content-Length: `None` without one; an error when one is not a number or several
/// disagree (hyper's `content_length_parse_all`).
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, ()> {
    let mut found = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        add_lengths(value, &mut found)?;
    }
    Ok(found)
}

/// Adds the lengths of one Content-Length field (a list, in some senders' hands) to `found`:
/// each must be digits only and equal to the others.
fn add_lengths(value: &HeaderValue, found: &mut Option<u64>) -> Result<(), ()> {
    for part in value.as_bytes().split(|&b| b == b',') {
        let part = part.trim_ascii();
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return Err(());
        }
        let n = part.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        if found.is_some_and(|f| f != n) {
            return Err(());
        }
        *found = Some(n);
    }
    Ok(())
}

/// Where the response body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decoder {
    /// This many bytes left.
    Length(u64),
    Chunked(Chunked),
    /// Until the app closes the connection.
    UntilClose,
    /// The body has ended (and the trailers, if any, were handed on).
    Done,
}

/// Where a chunked body's reader is (RFC 9112 §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunked {
    /// In a chunk size line: the size so far and its hex digits.
    Size {
        size: u64,
        digits: u8,
    },
    /// Whitespace after the size.
    Lws {
        size: u64,
    },
    /// A chunk extension (dropped), until CR.
    Ext {
        size: u64,
        bytes: usize,
    },
    /// Saw CR after a size line.
    SizeLf {
        size: u64,
    },
    /// Chunk data left.
    Data(u64),
    DataCr,
    DataLf,
    /// After the last chunk: the trailer section.
    Trailers,
}

/// Most hex digits in a chunk size (a `u64`).
const MAX_SIZE_DIGITS: u8 = 16;
/// Most bytes of chunk extensions per chunk: they are dropped, but must not be endless.
const MAX_CHUNK_EXT: usize = 16 * 1024;

/// What a step of the decoder produced.
enum Decoded {
    Data(Bytes),
    Trailers(HeaderMap),
    End,
    /// More bytes are needed.
    More,
}

impl Decoder {
    /// Consumes what it can of `buf`.
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, String> {
        loop {
            match self {
                Decoder::Done => return Ok(Decoded::End),
                Decoder::Length(0) => {
                    *self = Decoder::Done;
                    return Ok(Decoded::End);
                }
                Decoder::Length(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::More);
                    }
                    let n = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
                    *left -= n as u64;
                    return Ok(Decoded::Data(buf.split_to(n).freeze()));
                }
                Decoder::UntilClose => {
                    if buf.is_empty() {
                        return Ok(Decoded::More);
                    }
                    return Ok(Decoded::Data(buf.split().freeze()));
                }
                Decoder::Chunked(state) => {
                    if let Chunked::Data(left) = state {
                        if buf.is_empty() {
                            return Ok(Decoded::More);
                        }
                        let n = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
                        *left -= n as u64;
                        if *left == 0 {
                            *state = Chunked::DataCr;
                        }
                        return Ok(Decoded::Data(buf.split_to(n).freeze()));
                    }
                    if *state == Chunked::Trailers {
                        return match parse_trailers(buf)? {
                            None => Ok(Decoded::More),
                            Some(trailers) => {
                                *self = Decoder::Done;
                                Ok(match trailers {
                                    Some(trailers) => Decoded::Trailers(trailers),
                                    None => Decoded::End,
                                })
                            }
                        };
                    }
                    let Some(&b) = buf.first() else {
                        return Ok(Decoded::More);
                    };
                    buf.advance(1);
                    *state = chunk_step(*state, b)?;
                }
            }
        }
    }
}

/// One byte of a chunk's framing (everything but its data and the trailers).
fn chunk_step(state: Chunked, b: u8) -> Result<Chunked, String> {
    let bad = |what: &str| Err(format!("its chunked response body is malformed ({what})"));
    Ok(match state {
        Chunked::Size { size, digits } => match (b as char).to_digit(16) {
            Some(d) => {
                if digits >= MAX_SIZE_DIGITS {
                    return bad("chunk size too large");
                }
                Chunked::Size {
                    size: size << 4 | u64::from(d),
                    digits: digits + 1,
                }
            }
            None if digits == 0 => return bad("no chunk size"),
            None => match b {
                b'\r' => Chunked::SizeLf { size },
                b' ' | b'\t' => Chunked::Lws { size },
                b';' => Chunked::Ext { size, bytes: 1 },
                _ => return bad("invalid chunk size"),
            },
        },
        Chunked::Lws { size } => match b {
            b'\r' => Chunked::SizeLf { size },
            b' ' | b'\t' => Chunked::Lws { size },
            b';' => Chunked::Ext { size, bytes: 1 },
            _ => return bad("invalid chunk size"),
        },
        Chunked::Ext { size, bytes } => match b {
            b'\r' => Chunked::SizeLf { size },
            b'\n' => return bad("bare LF in a chunk extension"),
            _ if bytes >= MAX_CHUNK_EXT => return bad("chunk extension too long"),
            _ => Chunked::Ext {
                size,
                bytes: bytes + 1,
            },
        },
        Chunked::SizeLf { size } => match b {
            b'\n' if size == 0 => Chunked::Trailers,
            b'\n' => Chunked::Data(size),
            _ => return bad("no LF after the chunk size"),
        },
        Chunked::DataCr => match b {
            b'\r' => Chunked::DataLf,
            _ => return bad("no CRLF after chunk data"),
        },
        Chunked::DataLf => match b {
            b'\n' => Chunked::Size { size: 0, digits: 0 },
            _ => return bad("no CRLF after chunk data"),
        },
        Chunked::Data(_) | Chunked::Trailers => state,
    })
}

/// The trailer section at the start of `buf`, consumed once complete: `None` while it is not;
/// then the trailers, `None` when there were none.
#[allow(clippy::option_option)]
fn parse_trailers(buf: &mut BytesMut) -> Result<Option<Option<HeaderMap>>, String> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let (len, parsed) = match httparse::parse_headers(buf, &mut fields) {
        Ok(httparse::Status::Complete((len, _))) if len > MAX_RESPONSE_HEAD => {
            return Err("its trailer section is too large".to_owned());
        }
        Ok(httparse::Status::Complete(done)) => done,
        Ok(httparse::Status::Partial) if buf.len() < MAX_RESPONSE_HEAD => return Ok(None),
        Ok(httparse::Status::Partial) => return Err("its trailer section is too large".to_owned()),
        Err(e) => return Err(format!("its trailer section is malformed: {e}")),
    };
    let mut trailers = HeaderMap::new();
    for field in parsed {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(field.name.as_bytes()),
            HeaderValue::from_bytes(field.value),
        ) else {
            return Err("its trailer section has an invalid field".to_owned());
        };
        trailers.append(name, value);
    }
    buf.advance(len);
    Ok(Some((!trailers.is_empty()).then_some(trailers)))
}

/// The response body as it arrives on the app connection, read in the client connection's
/// task when hyper's server polls it. Once it has ended, the connection goes back to the pool
/// (unless it cannot carry another request); dropped before that, the connection is closed.
pub(crate) struct AppBody<B> {
    /// `None` once the body has ended. Boxed: the response is moved several times on its way
    /// through hyper, and the connection's state is most of its size.
    live: Option<Box<Live<B>>>,
}

struct Live<B> {
    exchange: Exchange<B>,
    decoder: Decoder,
    keep_alive: bool,
    pool: Arc<AppPool>,
}

/// The app's side of an upgraded connection: what it sent after its `101`, then its socket.
pub(crate) type AppStream = Prefixed<TcpStream>;

impl<B> AppBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    fn start(exchange: Exchange<B>, head: Head, pool: Arc<AppPool>) -> Response<Self> {
        let Head {
            response,
            body: decoder,
            keep_alive,
        } = head;
        let mut live = Live {
            exchange,
            decoder,
            keep_alive,
            pool,
        };
        // A response without a body (204, 304, HEAD, `content-length: 0`) may never be
        // polled: its connection goes back now.
        let upgrade = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        let live = if decoder == Decoder::Length(0) && !upgrade {
            live.decoder = Decoder::Done;
            live.finish();
            None
        } else {
            Some(Box::new(live))
        };
        response.map(|()| AppBody { live })
    }

    /// An upgraded connection's app side, once: after a `101` the bytes are no longer HTTP.
    pub(crate) fn upgraded(&mut self) -> Option<AppStream> {
        let live = self.live.take()?;
        Some(Prefixed::new(live.exchange.buf.freeze(), live.exchange.tcp))
    }
}

impl<B> Live<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    /// The response has ended: the connection goes back if it can carry another request.
    fn finish(self) {
        let Live {
            exchange,
            decoder,
            keep_alive,
            pool,
        } = self;
        // An upload still going, or bytes after the answer, leave the connection in a state
        // no next request should inherit.
        if keep_alive
            && decoder == Decoder::Done
            && exchange.upload.is_none()
            && !exchange.broken
            && exchange.buf.is_empty()
        {
            pool.put(exchange.tcp);
        }
    }
}

impl<B> Body for AppBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        let Some(live) = &mut this.live else {
            return Poll::Ready(None);
        };
        let broke = |text: String| Poll::Ready(Some(Err(io::Error::other(text))));
        loop {
            // The app answered before it had the whole request body: keep sending it (a body
            // that breaks off now only costs the connection its reuse).
            let _ = live.exchange.poll_upload(cx);
            match live.decoder.decode(&mut live.exchange.buf) {
                Ok(Decoded::Data(data)) => {
                    // The last bytes: the connection goes back before hyper writes them, and
                    // hyper sees the end without polling again.
                    if live.decoder == Decoder::Length(0) {
                        live.decoder = Decoder::Done;
                        if let Some(live) = this.live.take() {
                            live.finish();
                        }
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Decoded::Trailers(trailers)) => {
                    if let Some(live) = this.live.take() {
                        live.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                Ok(Decoded::End) => {
                    if let Some(live) = this.live.take() {
                        live.finish();
                    }
                    return Poll::Ready(None);
                }
                Ok(Decoded::More) => {}
                Err(text) => {
                    this.live = None;
                    return broke(text);
                }
            }
            match live.exchange.poll_read_more(cx) {
                Poll::Ready(Ok(0)) if live.decoder == Decoder::UntilClose => {
                    this.live = None;
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(0)) => {
                    this.live = None;
                    return broke(
                        "the app closed the connection before the end of the body".to_owned(),
                    );
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => {
                    this.live = None;
                    return broke(format!("reading from the app: {e}"));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.live.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        // What a Content-Length still owes is exact: hyper's server then frames the answer to
        // the client with a Content-Length too.
        match self.live.as_deref().map(|live| live.decoder) {
            None => SizeHint::with_exact(0),
            Some(Decoder::Length(left)) => SizeHint::with_exact(left),
            Some(_) => SizeHint::default(),
        }
    }
}

/// A response body from the app to a client's request.
pub(crate) type ListenerBody = AppBody<RequestBody>;

#[cfg(test)]
mod tests {
    use super::super::trailers::tests::Frames;
    use super::*;
    use http_body_util::{BodyExt, Empty, Full};
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// An app on loopback that answers each request head with `answer`, closing the connection
    /// after `requests_per_connection` answers; it counts the connections it accepted and
    /// keeps everything it was sent.
    async fn app(
        answer: &'static [u8],
        requests_per_connection: usize,
    ) -> (HostPort, Arc<AtomicUsize>, Arc<Mutex<Vec<u8>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let received = Arc::new(Mutex::new(Vec::new()));
        let (counter, log) = (accepted.clone(), received.clone());
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, SeqCst);
                let log = log.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0; 4096];
                    for _ in 0..requests_per_connection {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => log.lock().unwrap().extend_from_slice(&buf[..n]),
                        }
                        if socket.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let host = "127.0.0.1".to_owned();
        (HostPort { host, port }, accepted, received)
    }

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

    fn pool(upstream: HostPort, max_idle: usize) -> Arc<AppPool> {
        Arc::new(AppPool::new(upstream, Duration::from_secs(5), max_idle))
    }

    fn request<B>(method: Method, body: B) -> Request<B> {
        Request::builder()
            .method(method)
            .uri("/")
            .header("host", "app")
            .body(body)
            .unwrap()
    }

    /// One `GET /` through the pool, its body read to the end: the body and the trailers.
    async fn get(pool: &Arc<AppPool>) -> (Bytes, Option<HeaderMap>) {
        let response = pool
            .send(request(Method::GET, Empty::<Bytes>::new()))
            .await
            .unwrap();
        let collected = response.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned();
        (collected.to_bytes(), trailers)
    }

    #[tokio::test]
    async fn requests_one_after_another_share_one_app_connection() {
        let (upstream, accepted, _) = app(OK, usize::MAX).await;
        let pool = pool(upstream, 4);
        for _ in 0..5 {
            assert_eq!(get(&pool).await.0, "ok");
        }
        assert_eq!(accepted.load(SeqCst), 1);
        assert_eq!(pool.idle_count(), 1);
    }

    #[tokio::test]
    async fn a_connection_the_app_closed_while_idle_is_not_lent_and_the_request_still_succeeds() {
        let (upstream, accepted, _) = app(OK, 1).await;
        let pool = pool(upstream, 4);
        for _ in 0..3 {
            assert_eq!(get(&pool).await.0, "ok");
            // The kept connection is closed by now or soon: either it is seen as closed when
            // taken, or the request goes again on a new one. It never fails.
            tokio::task::yield_now().await;
        }
        assert_eq!(accepted.load(SeqCst), 3);
    }

    #[tokio::test]
    async fn no_more_than_max_idle_connections_are_kept() {
        let (upstream, accepted, _) = app(OK, usize::MAX).await;
        let pool = pool(upstream, 2);
        // Five at once: five connections, each held until its body is read.
        let mut requests = tokio::task::JoinSet::new();
        for _ in 0..5 {
            let pool = pool.clone();
            requests.spawn(async move {
                let request = request(Method::GET, Empty::<Bytes>::new());
                pool.send(request).await.map_err(|e| format!("{e:?}"))
            });
        }
        for response in requests.join_all().await {
            response.unwrap().into_body().collect().await.unwrap();
        }
        assert_eq!(accepted.load(SeqCst), 5);
        assert_eq!(pool.idle_count(), 2);
    }

    #[tokio::test]
    async fn an_app_that_is_not_listening_is_a_connect_error() {
        let unused = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = unused.local_addr().unwrap().port();
        drop(unused);
        let host = "127.0.0.1".to_owned();
        let pool = pool(HostPort { host, port }, 2);
        match pool.send(request(Method::GET, Empty::<Bytes>::new())).await {
            Err(AppError::Connect(Some(e))) => {
                assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
            }
            other => panic!("expected a refused connection, got {:?}", other.map(|_| ())),
        }
    }

    #[tokio::test]
    async fn a_chunked_answer_arrives_whole_with_its_trailers_and_its_connection_is_reused() {
        let answer = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
            5;name=value\r\nhello\r\n6 \t\r\n world\r\n0\r\nx-checksum: 5d41\r\n\r\n";
        let (upstream, accepted, _) = app(answer, usize::MAX).await;
        let pool = pool(upstream, 4);
        for _ in 0..2 {
            let (body, trailers) = get(&pool).await;
            assert_eq!(body, "hello world");
            assert_eq!(trailers.unwrap()["x-checksum"], "5d41");
        }
        assert_eq!(accepted.load(SeqCst), 1);
    }

    #[test]
    fn the_chunked_decoder_gives_the_same_body_whatever_the_reads() {
        let wire = b"5;a=b\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nx-a: 1\r\n\r\n";
        for piece in [1, 2, 3, 7, wire.len()] {
            let mut decoder = Decoder::Chunked(Chunked::Size { size: 0, digits: 0 });
            let (mut buf, mut body, mut trailers) = (BytesMut::new(), Vec::new(), None);
            let mut pieces = wire.chunks(piece);
            loop {
                match decoder.decode(&mut buf).unwrap() {
                    Decoded::Data(data) => body.extend_from_slice(&data),
                    Decoded::Trailers(t) => trailers = Some(t),
                    Decoded::End => break,
                    Decoded::More => buf.extend_from_slice(pieces.next().expect("ended early")),
                }
            }
            assert_eq!(body, b"hello world", "reads of {piece}");
            assert_eq!(trailers.unwrap()["x-a"], "1");
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn malformed_chunk_framing_is_an_error_not_a_guess() {
        for wire in [
            &b"x\r\n"[..],            // no size
            b"5\nhello\r\n",          // bare LF after the size
            b"5\r\nhelloX\r\n",       // no CRLF after the data
            b"5 x\r\n",               // junk after the size
            b"5;a\nb\r\n",            // bare LF in an extension
            b"10000000000000000\r\n", // more than 64 bits
        ] {
            let mut decoder = Decoder::Chunked(Chunked::Size { size: 0, digits: 0 });
            let mut buf = BytesMut::from(wire);
            let result = loop {
                match decoder.decode(&mut buf) {
                    Ok(Decoded::More) | Ok(Decoded::End) => break Ok(()),
                    Ok(_) => {}
                    Err(e) => break Err(e),
                }
            };
            assert!(
                result.is_err(),
                "{:?} was accepted",
                String::from_utf8_lossy(wire)
            );
        }
    }

    #[tokio::test]
    async fn an_answer_with_conflicting_lengths_is_refused_and_its_connection_closed() {
        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok!";
        let (upstream, _, _) = app(answer, usize::MAX).await;
        let pool = pool(upstream, 4);
        match pool.send(request(Method::GET, Empty::<Bytes>::new())).await {
            Err(AppError::Exchange(text)) => assert!(text.contains("Content-Length"), "{text}"),
            other => panic!("expected a refused answer, got {:?}", other.map(|_| ())),
        }
        assert_eq!(pool.idle_count(), 0);
    }

    #[tokio::test]
    async fn bytes_after_an_answer_keep_its_connection_from_the_next_request() {
        // A second answer nobody asked for would become the next request's answer.
        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok\
            HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nforged";
        let (upstream, accepted, _) = app(answer, usize::MAX).await;
        let pool = pool(upstream, 4);
        for _ in 0..2 {
            assert_eq!(get(&pool).await.0, "ok");
        }
        assert_eq!(accepted.load(SeqCst), 2);
    }

    #[tokio::test]
    async fn an_interim_answer_is_skipped_and_the_final_one_relayed() {
        let answer = b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n\
            HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok";
        let (upstream, _, _) = app(answer, usize::MAX).await;
        let pool = pool(upstream, 4);
        let response = pool
            .send(request(Method::GET, Empty::<Bytes>::new()))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        assert_eq!(
            response.into_body().collect().await.unwrap().to_bytes(),
            "ok"
        );
    }

    #[tokio::test]
    async fn an_answer_that_runs_to_the_close_ends_there_and_its_connection_is_not_kept() {
        for answer in [
            &b"HTTP/1.1 200 OK\r\n\r\nuntil the end"[..],
            b"HTTP/1.0 200 OK\r\ncontent-length: 13\r\n\r\nuntil the end",
        ] {
            let (upstream, _, _) = app(answer, 1).await;
            let pool = pool(upstream, 4);
            assert_eq!(get(&pool).await.0, "until the end");
            assert_eq!(pool.idle_count(), 0);
        }
    }

    #[tokio::test]
    async fn a_body_of_unknown_length_goes_chunked_with_only_the_announced_trailers() {
        let (upstream, _, received) = app(OK, usize::MAX).await;
        let pool = pool(upstream, 4);
        let mut trailers = HeaderMap::new();
        trailers.insert("x-checksum", HeaderValue::from_static("5d41"));
        trailers.insert("x-unannounced", HeaderValue::from_static("1"));
        let body = Frames(vec![
            Frame::trailers(trailers),
            Frame::data(Bytes::from_static(b"world")),
            Frame::data(Bytes::from_static(b"hello ")),
        ]);
        let mut post = request(Method::POST, body);
        post.headers_mut()
            .insert(header::TRAILER, HeaderValue::from_static("X-Checksum"));
        let response = pool.send(post).await.unwrap();
        response.into_body().collect().await.unwrap();
        let received = String::from_utf8(received.lock().unwrap().clone()).unwrap();
        assert!(
            received.contains("transfer-encoding: chunked\r\n"),
            "{received}"
        );
        assert!(
            received
                .ends_with("\r\n\r\n6\r\nhello \r\n5\r\nworld\r\n0\r\nx-checksum: 5d41\r\n\r\n"),
            "{received}"
        );
    }

    #[tokio::test]
    async fn a_body_of_known_length_goes_with_that_content_length() {
        let (upstream, _, received) = app(OK, usize::MAX).await;
        let pool = pool(upstream, 4);
        let response = pool
            .send(request(
                Method::POST,
                Full::new(Bytes::from_static(b"hello")),
            ))
            .await
            .unwrap();
        response.into_body().collect().await.unwrap();
        let received = String::from_utf8(received.lock().unwrap().clone()).unwrap();
        assert!(
            received.starts_with("POST / HTTP/1.1\r\nhost: app\r\ncontent-length: 5\r\n\r\nhello"),
            "{received}"
        );
    }

    #[tokio::test]
    async fn an_app_that_answers_before_reading_the_body_is_relayed_and_its_connection_closed() {
        // The app reads only the first piece of the request, answers at once and then holds
        // the connection without reading on; the body is larger than the socket buffers, so
        // the upload cannot finish.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = vec![0; 4096];
            assert!(socket.read(&mut buf).await.unwrap() > 0);
            let answer = b"HTTP/1.1 413 Content Too Large\r\ncontent-length: 4\r\n\r\nbig!";
            socket.write_all(answer).await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        let pool = pool(
            HostPort {
                host: "127.0.0.1".to_owned(),
                port,
            },
            4,
        );
        let body = Full::new(Bytes::from(vec![b'x'; 16 * 1024 * 1024]));
        let response = pool.send(request(Method::POST, body)).await.unwrap();
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            response.into_body().collect().await.unwrap().to_bytes(),
            "big!"
        );
        assert_eq!(pool.idle_count(), 0);
    }
}
