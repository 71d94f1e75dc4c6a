//! One TLS connection: handshake, identify and authorize the caller, then copy bytes to the app
//! (tcp mode, optionally after a PROXY protocol header) or hand the connection to the HTTP side
//! (http mode); one log line.

use crate::accept::Door;
use crate::gate::{Admission, Admitted, has_sent, has_sent_fd, waiting};
use crate::held_back::HeldBack;
use crate::http::{Caller, Drain};
use crate::identity::{CfIdentity, Denial};
use crate::logging::{millis, tls_version};
use crate::metrics::HandshakeFailure;
use crate::retry::LogThrottle;
use crate::shared::{Listener, Shared};
use crate::stop::{Watched, stopped};
use crate::{proxy_protocol, verifier};
use bytes::BytesMut;
use rustls::{HandshakeKind, ProtocolVersion};
use rustls_pki_types::{CertificateDer, UnixTime};
use std::future::poll_fn;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncBufRead, AsyncWrite, AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep, sleep, timeout};
use tokio_rustls::server::TlsStream;
use tokio_util::io::poll_read_buf;
use tracing::{info, warn};

/// Size of the plaintext-to-TLS buffer for a connection's first reads. The buffer exists only
/// while plaintext is arriving: it is allocated when the app's socket becomes readable and
/// released when it goes quiet, so an idle connection costs little more than its rustls state.
/// The other direction needs none: it writes straight out of rustls's plaintext buffer.
const PLAIN_READ_BUFFER: usize = 8 * 1024;

/// The buffer once a read has filled [`PLAIN_READ_BUFFER`]: the app is streaming, and four
/// full 16 KiB TLS records per read (sent with one `writev`) cost a third of the CPU per byte
/// of 8 KiB reads.
const BULK_READ_BUFFER: usize = 64 * 1024;

/// How long a connection we close gets to take our close_notify.
pub(crate) const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// After the drain timeout, how long the HTTP side gets to close its connection itself (and
/// report what it did) before the task is dropped.
const HTTP_CLOSE_GRACE: Duration = Duration::from_millis(500);

/// At most one line per this about connections shed under a flood (with the count held back).
const SHED_LOG_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnError {
    #[error("no certificate loaded yet")]
    NoCertificate,
    #[error("TLS handshake did not finish within {} ms", .0.as_millis())]
    HandshakeTimeout(Duration),
    #[error("TLS handshake failed: {0}")]
    Handshake(String),
    #[error("refused: {0}")]
    Denied(Denial),
    #[error("upstream unavailable: {upstream}: {cause}")]
    UpstreamUnavailable { upstream: String, cause: String },
    #[error("client: {0}")]
    Client(io::Error),
    #[error("upstream: {0}")]
    Upstream(io::Error),
    #[error("idle for {} ms", .0.as_millis())]
    Idle(Duration),
    #[error("the client took none of the data owed to it for {} ms", .0.as_millis())]
    Stalled(Duration),
    #[error("shed before the TLS handshake finished: the listener was full")]
    Shed,
    #[error("closed at the end of the drain")]
    Drained,
    #[error("{0}")]
    Http(String),
}

impl ConnError {
    /// Problems on our side (or the app's) are warnings; a client going away is not.
    fn is_ours(&self) -> bool {
        matches!(
            self,
            ConnError::NoCertificate
                | ConnError::UpstreamUnavailable { .. }
                | ConnError::Upstream(_)
        )
    }
}

/// Plaintext bytes moved so far; read after the connection ends for any reason.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    /// Out of TLS (decrypted).
    pub(crate) bytes_in: u64,
    /// Into TLS (before encryption).
    pub(crate) bytes_out: u64,
}

/// What the connection's log line says.
#[derive(Debug, Default)]
struct Conn {
    counts: Counts,
    tls: Option<ProtocolVersion>,
    alpn: Option<String>,
    /// The caller's identity when it presented a certificate (also a refused one).
    identity: Option<CfIdentity>,
    /// http mode: requests served.
    requests: Option<u64>,
}

/// A TLS listener's [`Door`]: each connection gets a slot of the listener's gate (when it is
/// full, the slot of the oldest connection still in its handshake) and is [`serve`]d; with
/// every slot held by an established connection it is closed before any TLS work.
pub(crate) struct TlsDoor {
    listener: Arc<Listener>,
    shared: Arc<Shared>,
    sheds: LogThrottle,
}

impl TlsDoor {
    pub(crate) fn new(listener: Arc<Listener>, shared: Arc<Shared>) -> Self {
        let sheds = LogThrottle::new(SHED_LOG_EVERY);
        TlsDoor {
            listener,
            shared,
            sheds,
        }
    }
}

impl Door for TlsDoor {
    type Slot = Admission;

    fn admit(&mut self, tcp: &TcpStream) -> Option<Admission> {
        let listener = &self.listener;
        listener.metrics.accepted.fetch_add(1, Relaxed);
        match listener.gate.admit(has_sent(tcp)) {
            Admitted::Free(admission) => Some(admission),
            Admitted::Shed(admission) => {
                listener.metrics.shed.fetch_add(1, Relaxed);
                if let Some(held_back) = self.sheds.allow("shed") {
                    let shed = held_back + 1;
                    let slots = listener.gate.capacity();
                    warn!(
                        listener = listener.port,
                        shed,
                        slots,
                        "listener full: closed {shed} connection(s) that had not finished their TLS handshake to admit new ones (oldest silent first)"
                    );
                }
                Some(admission)
            }
            Admitted::Full => None,
        }
    }

    fn serve(&self, tcp: TcpStream, peer: SocketAddr, admission: Admission) {
        let (listener, shared) = (self.listener.clone(), self.shared.clone());
        tokio::spawn(serve(tcp, peer, listener, shared, admission));
    }

    fn refused(&self, peer: SocketAddr, held_back: Option<u64>) {
        let listener = &self.listener;
        listener.metrics.refused.fetch_add(1, Relaxed);
        if let Some(held_back) = held_back {
            let slots = listener.gate.capacity();
            warn!(
                listener = listener.port, peer = %peer, slots, held_back,
                "connection refused: max_connections reached (every slot of this listener is held by an established connection)"
            );
        }
    }

    fn accept_failed(&self, error: &io::Error, held_back: u64, retry_ms: u64) {
        let port = self.listener.port;
        warn!(listener = port, error = %error, held_back, retry_ms, "accept failed");
    }
}

/// Serves one accepted connection. `admission` is its slot of the listener, held until the
/// log line is written so that a drain waits for it; until the handshake finishes, a newer
/// connection may take it (the connection then closes).
pub(crate) async fn serve(
    tcp: TcpStream,
    peer: SocketAddr,
    listener: Arc<Listener>,
    shared: Arc<Shared>,
    mut admission: Admission,
) {
    let started = Instant::now();
    let metrics = listener.metrics.clone();
    metrics.active.fetch_add(1, Relaxed);
    let mut conn = Conn::default();
    let mut close_all = shared.close_all.clone();
    // Looked at on every poll of the connection: see `Watched`.
    let mut drained = Watched::new(close_all.clone(), stopped(&mut close_all));
    let http = listener.http.is_some();
    let result = tokio::select! {
        // The connection first: no random pick of a branch on every poll.
        biased;
        result = handle(tcp, peer, &listener, &shared, &mut conn, &mut admission) => result,
        () = async {
            drained.fired().await;
            // The HTTP side watches the same switch and ends its connection on its own.
            if http {
                sleep(HTTP_CLOSE_GRACE).await;
            }
        } => Err(ConnError::Drained),
    };
    metrics.active.fetch_sub(1, Relaxed);
    // Its buffers are freed: give them back once the sidecar is quiet.
    crate::memory::collect_soon();
    if let Err(ConnError::Shed) = result {
        // Under a flood these come by the thousand a second: the accept loop logs one
        // summary line a second instead, and /metrics counts each.
        return;
    }

    let duration_ms = millis(started.elapsed());
    let tls = tls_version(conn.tls);
    let (bytes_in, bytes_out) = (conn.counts.bytes_in, conn.counts.bytes_out);
    let [app, space, org, instance] = CfIdentity::log_fields(conn.identity.as_ref());
    let alpn = conn.alpn.as_deref();
    let requests = conn.requests;
    let error = result.err();
    let ours = error.as_ref().is_some_and(ConnError::is_ours);
    let error = error.as_ref().map(tracing::field::display);
    macro_rules! closed {
        ($level:ident) => {
            $level!(
                listener = listener.port, peer = %peer, tls, alpn, app, space, org, instance,
                duration_ms, bytes_in, bytes_out, requests, error,
                "connection closed"
            )
        };
    }
    if ours {
        closed!(warn);
    } else {
        closed!(info);
    }
}

async fn handle(
    tcp: TcpStream,
    peer: SocketAddr,
    listener: &Listener,
    shared: &Shared,
    conn: &mut Conn,
    admission: &mut Admission,
) -> Result<(), ConnError> {
    let limits = &shared.limits;
    // TCP_NODELAY comes from the listening socket (`accept::bind`).
    let acceptor = listener.tls.acceptor();
    let shed = admission.shed();
    // The socket, for a look at it when the connection is shed: the handshake below owns it.
    let fd = tcp.as_raw_fd();
    let handshake = async {
        // A client that has sent nothing yet is the first to be shed when the listener is
        // full; one byte (its ClientHello, normally) moves it behind every silent one. A
        // connection readable only because it is closed (EOF) stays silent: it is dead. One
        // that had sent bytes when it was admitted is not looked at again.
        // Readiness without bytes (a stale event) waits again: the handshake must not start
        // reading a ClientHello that the gate was never told about, or the connection would
        // be shed as silent halfway through it.
        while !admission.is_talking() && tcp.readable().await.is_ok() {
            match tcp.try_io(Interest::READABLE, || waiting(&tcp)) {
                Ok(0) => break,
                Ok(_) => admission.talking(),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => break,
            }
        }
        // Boxed: the handshake's state (a whole rustls connection) is allocated only once the
        // caller has sent something, so a silent connection costs its task and socket alone.
        // Fallible: a failed handshake gives the stream back, with the alert that says why
        // still held in it (held_back.rs).
        Box::pin(acceptor.accept(HeldBack::new(tcp)).into_fallible()).await
    };
    let handshake = timeout(limits.handshake_timeout, handshake);
    let handshake = async {
        tokio::pin!(handshake);
        let mut shed = shed;
        loop {
            tokio::select! {
                accepted = &mut handshake => return Some(accepted),
                () = &mut shed => {
                    // Shed as silent, though it may have sent bytes: noticed since (the
                    // handshake may have taken its ClientHello already), or come in but not
                    // noticed yet. Then it takes a silent connection's slot instead (`appeal`).
                    // SAFETY: `fd` is the socket `handshake` owns, pinned above and not
                    // finished, so open.
                    #[allow(unsafe_code)]
                    let sent = admission.is_talking() || unsafe { has_sent_fd(fd) };
                    match admission.appeal(sent) {
                        Some(next) => shed = next,
                        None => return None,
                    }
                }
            }
        }
    };
    let (accepted, verdict) = verifier::with_verdict(handshake).await;
    let Some(accepted) = accepted else {
        return Err(ConnError::Shed);
    };
    let mut tls = match accepted {
        Err(_) => {
            listener.metrics.handshake_failed(HandshakeFailure::Timeout);
            return Err(ConnError::HandshakeTimeout(limits.handshake_timeout));
        }
        Ok(Err((e, mut io))) => {
            // The alert, so that the client learns why rather than seeing the connection drop.
            let _ = timeout(CLOSE_GRACE, io.release()).await;
            drop(io);
            let (why, reason) = verifier::classify(&e, shared.store.is_loaded(), verdict.as_ref());
            listener.metrics.handshake_failed(why);
            if let Some(verdict) = verdict {
                listener.metrics.denials.fetch_add(1, Relaxed);
                log_denial(listener, peer, &verdict.identity, &verdict.denial);
                conn.identity = Some(verdict.identity);
            }
            return Err(match why {
                HandshakeFailure::NoCertificate => ConnError::NoCertificate,
                _ => ConnError::Handshake(reason),
            });
        }
        Ok(Ok(tls)) => tls,
    };
    // TLS 1.3: when the client's first bytes came in behind its Finished, the session ticket
    // waits for the first bytes we send (held_back.rs): an answer is on its way. A client that
    // sent nothing yet may stay quiet for long, and a ticket that carries a client certificate
    // is a few KiB: it gets the ticket now. TLS 1.2 ends with our Finished, which the client
    // waits for.
    let (io, session) = tls.get_mut();
    io.handshake_done();
    let answer_coming = !session.wants_read();
    if session.protocol_version() != Some(ProtocolVersion::TLSv1_3) || !answer_coming {
        match timeout(limits.handshake_timeout, io.release()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(ConnError::Client(e)),
            Err(_) => {
                listener.metrics.handshake_failed(HandshakeFailure::Timeout);
                return Err(ConnError::HandshakeTimeout(limits.handshake_timeout));
            }
        }
    }
    // Shed as the handshake finished: its slot is already another connection's. A client that
    // finished a handshake has sent bytes, so it takes a silent connection's slot if one is
    // left (`appeal`), as it would have had its ClientHello been noticed in time.
    let kept =
        admission.established() || (admission.appeal(true).is_some() && admission.established());
    if !kept {
        return Err(ConnError::Shed);
    }

    let state = tls.get_ref().1;
    conn.tls = state.protocol_version();
    conn.alpn = state
        .alpn_protocol()
        .map(|p| String::from_utf8_lossy(p).into_owned());
    let resumed = state.handshake_kind() == Some(HandshakeKind::Resumed);
    // Today's anchors, which may be newer than those this handshake was verified against.
    let anchors = listener.tls.anchors();
    // A resumed session carries the chain verified when it began, against the trust of that
    // moment: rustls does not look at it again. Without this check, a client certificate that
    // has expired since (or whose CA was removed) could keep resuming for the ticket's
    // lifetime. The CF identity comes only from a chain ending at the platform identity CA
    // (trust.rs). A full handshake verified against these anchors is answered from memory.
    // In a block of its own: the copy of the chain is gone before the connection is served
    // (rustls keeps one; the leaf goes on for X-Forwarded-Client-Cert).
    let (leaf, checked) = {
        let chain: Vec<CertificateDer<'static>> = state
            .peer_certificates()
            .map(|c| c.iter().map(|cert| cert.clone().into_owned()).collect())
            .unwrap_or_default();
        let checked = if chain.is_empty() {
            Ok(None)
        } else {
            anchors.check_client(&chain, UnixTime::now()).map(Some)
        };
        (chain.into_iter().next(), checked)
    };
    let identity = match checked {
        Ok(identity) => identity,
        Err(e) => {
            let e = std::io::Error::new(std::io::ErrorKind::InvalidData, e);
            let (why, reason) = verifier::classify(&e, true, None);
            listener.metrics.handshake_failed(why);
            let what = if resumed {
                "resumed session refused"
            } else {
                "refused after a trust change during the handshake"
            };
            warn!(listener = listener.port, peer = %peer, "{what}: {reason}");
            let _ = timeout(CLOSE_GRACE, tls.shutdown()).await;
            return Err(ConnError::Handshake(format!("{what}: {reason}")));
        }
    };
    conn.identity = identity.clone();
    // In tcp mode the verifier enforced this already; checking again also covers a resumed
    // session (whose rules or identity anchors may have changed since).
    let denial = listener.policy.check(identity.as_ref()).err();
    if let Some(denial) = &denial {
        log_denial(
            listener,
            peer,
            &identity.clone().unwrap_or_default(),
            denial,
        );
    }

    if let Some(http) = &listener.http {
        let drain = Drain {
            graceful: shared.graceful.clone(),
            close_all: shared.close_all.clone(),
        };
        let caller = Caller {
            addr: peer,
            h2: conn.alpn.as_deref() == Some("h2"),
            leaf,
            identity,
            denial,
        };
        // Boxed, like `forward` below: every connection's task is as large as its largest
        // state, and a connection still waiting for its ClientHello (thousands of them under
        // a flood) should not carry the size of an HTTP connection.
        let outcome = Box::pin(http.serve_from_first_bytes(tls, caller, drain)).await;
        conn.counts.bytes_in = outcome.bytes_in;
        conn.counts.bytes_out = outcome.bytes_out;
        conn.requests = Some(outcome.requests);
        listener
            .metrics
            .bytes_in
            .fetch_add(outcome.bytes_in, Relaxed);
        listener
            .metrics
            .bytes_out
            .fetch_add(outcome.bytes_out, Relaxed);
        return outcome.error.map_or(Ok(()), |e| Err(ConnError::Http(e)));
    }

    if let Some(denial) = denial {
        listener.metrics.denials.fetch_add(1, Relaxed);
        let _ = timeout(CLOSE_GRACE, tls.shutdown()).await;
        return Err(ConnError::Denied(denial));
    }
    Box::pin(forward(tls, peer, listener, shared, conn)).await
}

/// The warning every refused caller gets, naming it by its CF identity.
fn log_denial(listener: &Listener, peer: SocketAddr, identity: &CfIdentity, denial: &Denial) {
    warn!(
        listener = listener.port,
        peer = %peer,
        app = identity.app.as_ref().map_or("-", |g| g.as_str()),
        space = identity.space.as_ref().map_or("-", |g| g.as_str()),
        org = identity.org.as_ref().map_or("-", |g| g.as_str()),
        instance = identity.instance.as_deref().unwrap_or("-"),
        "access denied: {denial}"
    );
}

/// tcp mode: connect to the app, send the PROXY header if asked, copy both ways.
async fn forward(
    mut tls: TlsStream<HeldBack<TcpStream>>,
    peer: SocketAddr,
    listener: &Listener,
    shared: &Shared,
    conn: &mut Conn,
) -> Result<(), ConnError> {
    let limits = &shared.limits;
    let upstream = &listener.upstream;
    let connect = TcpStream::connect((upstream.host.as_str(), upstream.port));
    let mut app = match timeout(limits.connect_timeout, connect).await {
        Ok(Ok(app)) => app,
        failed => {
            let cause = match failed {
                Ok(Err(e)) => e.to_string(),
                _ => format!(
                    "no connection within {} ms",
                    limits.connect_timeout.as_millis()
                ),
            };
            // Tell the client we are done rather than leave it waiting for bytes.
            let _ = timeout(CLOSE_GRACE, tls.shutdown()).await;
            return Err(ConnError::UpstreamUnavailable {
                upstream: upstream.to_string(),
                cause,
            });
        }
    };
    let _ = app.set_nodelay(true);
    if listener.proxy_protocol {
        // The address the client connected to; asked for here only, as nothing else needs it
        // (a system call per connection).
        let local = tls
            .get_ref()
            .0
            .get_ref()
            .local_addr()
            .unwrap_or(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                listener.port,
            ));
        // Before any client byte; small enough for one segment.
        let header = proxy_protocol::header(peer, local);
        app.write_all(&header).await.map_err(ConnError::Upstream)?;
    }

    let metrics = &listener.metrics;
    let result = pump(
        &mut tls,
        &mut app,
        &mut conn.counts,
        &metrics.bytes_in,
        &metrics.bytes_out,
        limits.idle_timeout,
    )
    .await
    .map_err(|e| match e {
        PumpError::Tls(e) => ConnError::Client(e),
        PumpError::Plain(e) => ConnError::Upstream(e),
        PumpError::Idle(d) => ConnError::Idle(d),
        PumpError::Stalled(d) => ConnError::Stalled(d),
    });
    if let Err(ConnError::Stalled(_)) = result {
        metrics.stalled.fetch_add(1, Relaxed);
    }
    if let Err(ConnError::Idle(_)) = result {
        // A clean close_notify tells the client this was on purpose, not a network fault.
        let _ = timeout(CLOSE_GRACE, tls.shutdown()).await;
    }
    result
}

/// How a [`pump`] ended badly: on the TLS side, on the plaintext side, idle, or with data for
/// the TLS side that it took none of for the idle limit.
#[derive(Debug)]
pub(crate) enum PumpError {
    Tls(io::Error),
    Plain(io::Error),
    Idle(Duration),
    Stalled(Duration),
}

/// Copies TLS→plaintext and plaintext→TLS at once until both directions are done (see
/// [`Pump`]). `counts.bytes_in` is what came out of TLS, `counts.bytes_out` what went in; the
/// same amounts are added to `from_tls` and `to_tls` as they move.
pub(crate) async fn pump<T>(
    tls: &mut T,
    plain: &mut TcpStream,
    counts: &mut Counts,
    from_tls: &AtomicU64,
    to_tls: &AtomicU64,
    idle: Duration,
) -> Result<(), PumpError>
where
    T: AsyncBufRead + AsyncWrite + Unpin,
{
    let mut pump = Pump {
        tls,
        plain,
        counts,
        from_tls,
        to_tls,
        idle,
        last_activity: Instant::now(),
        last_toward_tls: Instant::now(),
        to_plain: ToPlain::default(),
        to_tls_side: ToTls::default(),
    };
    let timer = tokio::time::sleep(idle);
    tokio::pin!(timer);
    poll_fn(|cx| pump.poll(cx, timer.as_mut())).await
}

/// Copies both ways at once. A FIN (or close_notify) from one side shuts down writing to the
/// other, and the pump ends when both directions have, when either fails, after `idle`
/// without a byte either way, or after `idle` with bytes for the TLS side that it took none
/// of (a client that stopped reading must not hold the app's connection by sending). Used for ingress (TLS = the client, plaintext = the app) and for
/// egress (TLS = the target, plaintext = the app).
struct Pump<'a, T> {
    tls: &'a mut T,
    plain: &'a mut TcpStream,
    counts: &'a mut Counts,
    from_tls: &'a AtomicU64,
    to_tls: &'a AtomicU64,
    idle: Duration,
    last_activity: Instant,
    /// When bytes last moved toward the TLS side (read from the plaintext side or written).
    last_toward_tls: Instant,
    to_plain: ToPlain,
    to_tls_side: ToTls,
}

#[derive(Default)]
struct ToPlain {
    eof: bool,
    done: bool,
}

#[derive(Default)]
struct ToTls {
    /// No capacity while the plaintext side is quiet. Bytes `pos..len()` are still to be
    /// written to the TLS side.
    buf: BytesMut,
    pos: usize,
    /// Bytes read from the plaintext side so far.
    taken: u64,
    /// A read has filled the small buffer: allocate [`BULK_READ_BUFFER`] from now on.
    bulk: bool,
    eof: bool,
    done: bool,
    need_flush: bool,
}

impl ToTls {
    /// Nothing more to read for now: push out what rustls holds, then give the buffer back.
    fn poll_quiet<T: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        tls: &mut T,
    ) -> Poll<Result<(), PumpError>> {
        // rustls keeps encrypted bytes that the socket did not take.
        if self.need_flush {
            ready!(Pin::new(tls).poll_flush(cx)).map_err(PumpError::Tls)?;
            self.need_flush = false;
        }
        self.buf = BytesMut::new();
        Poll::Pending
    }
}

impl<T: AsyncBufRead + AsyncWrite + Unpin> Pump<'_, T> {
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        mut idle: Pin<&mut Sleep>,
    ) -> Poll<Result<(), PumpError>> {
        let moved = self.counts.bytes_in + self.counts.bytes_out;
        let toward_tls = self.counts.bytes_out + self.to_tls_side.taken;
        if !self.to_plain.done
            && let Poll::Ready(result) = self.poll_to_plain(cx)
        {
            result?;
            self.to_plain.done = true;
        }
        if !self.to_tls_side.done
            && let Poll::Ready(result) = self.poll_to_tls(cx)
        {
            result?;
            self.to_tls_side.done = true;
        }
        if self.to_plain.done && self.to_tls_side.done {
            return Poll::Ready(Ok(()));
        }
        if self.counts.bytes_in + self.counts.bytes_out != moved {
            let now = Instant::now();
            self.last_activity = now;
            if self.counts.bytes_out + self.to_tls_side.taken != toward_tls {
                self.last_toward_tls = now;
            }
        }
        // The timer is re-armed only when it fires, not on every byte.
        while idle.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            let out = &self.to_tls_side;
            if out.pos < out.buf.len() {
                let stall_deadline = self.last_toward_tls + self.idle;
                if now >= stall_deadline {
                    return Poll::Ready(Err(PumpError::Stalled(self.idle)));
                }
                let deadline = stall_deadline.min(self.last_activity + self.idle);
                if now < deadline {
                    idle.as_mut().reset(deadline);
                    continue;
                }
            }
            let deadline = self.last_activity + self.idle;
            if now >= deadline {
                return Poll::Ready(Err(PumpError::Idle(self.idle)));
            }
            idle.as_mut().reset(deadline);
        }
        Poll::Pending
    }

    fn poll_to_plain(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), PumpError>> {
        loop {
            if self.to_plain.eof {
                ready!(Pin::new(&mut *self.plain).poll_shutdown(cx)).map_err(PumpError::Plain)?;
                return Poll::Ready(Ok(()));
            }
            let filled = match Pin::new(&mut *self.tls).poll_fill_buf(cx) {
                Poll::Ready(filled) => filled,
                Poll::Pending => {
                    // Reading may have queued a TLS message of our own (the alert refusing a
                    // TLS 1.2 renegotiation, a TLS 1.3 KeyUpdate response). Send it now, not
                    // with the app's next bytes, which may never come. Nothing queued: no
                    // syscall.
                    ready!(Pin::new(&mut *self.tls).poll_flush(cx)).map_err(PumpError::Tls)?;
                    return Poll::Pending;
                }
            };
            let data = match filled {
                Ok(data) => data,
                // Most peers close the TCP connection without a close_notify. For a byte
                // stream that is simply the end, as it would be without TLS.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => &[],
                Err(e) => return Poll::Ready(Err(PumpError::Tls(e))),
            };
            if data.is_empty() {
                self.to_plain.eof = true;
                continue;
            }
            let n = ready!(Pin::new(&mut *self.plain).poll_write(cx, data))
                .map_err(PumpError::Plain)?;
            if n == 0 {
                return Poll::Ready(Err(PumpError::Plain(io::ErrorKind::WriteZero.into())));
            }
            Pin::new(&mut *self.tls).consume(n);
            self.counts.bytes_in += n as u64;
            self.from_tls.fetch_add(n as u64, Relaxed);
        }
    }

    fn poll_to_tls(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), PumpError>> {
        let out = &mut self.to_tls_side;
        loop {
            if out.pos < out.buf.len() {
                let written = ready!(Pin::new(&mut *self.tls).poll_write(cx, &out.buf[out.pos..]))
                    .map_err(PumpError::Tls)?;
                if written == 0 {
                    return Poll::Ready(Err(PumpError::Tls(io::ErrorKind::WriteZero.into())));
                }
                out.pos += written;
                out.need_flush = true;
                self.counts.bytes_out += written as u64;
                self.to_tls.fetch_add(written as u64, Relaxed);
                continue;
            }
            if out.eof {
                // Flushes, sends close_notify, then the TCP FIN; the peer may keep sending.
                ready!(Pin::new(&mut *self.tls).poll_shutdown(cx)).map_err(PumpError::Tls)?;
                return Poll::Ready(Ok(()));
            }
            // Wait for readiness before touching the buffer, so that a quiet plaintext side
            // holds no buffer at all.
            match self.plain.poll_read_ready(cx) {
                Poll::Ready(ready) => ready.map_err(PumpError::Plain)?,
                Poll::Pending => return out.poll_quiet(cx, &mut *self.tls),
            }
            out.buf.clear();
            out.pos = 0;
            let size = if out.bulk {
                BULK_READ_BUFFER
            } else {
                PLAIN_READ_BUFFER
            };
            // Uninitialised capacity: zeroing a fresh buffer before every response (it is
            // given back while the app is quiet) was a memset of 8 KiB per request.
            out.buf.reserve(size);
            // A read that does not fill the buffer has drained the socket, and poll_read then
            // clears the readiness, which saves the extra read that would only return EAGAIN
            // (one syscall per response on keep-alive traffic).
            let n = match poll_read_buf(Pin::new(&mut *self.plain), cx, &mut out.buf) {
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(PumpError::Plain(e))),
                Poll::Pending => return out.poll_quiet(cx, &mut *self.tls),
            };
            if n == 0 {
                out.eof = true;
                continue;
            }
            // A read that filled the buffer: the app is streaming.
            out.bulk |= out.buf.len() == out.buf.capacity();
            out.taken += n as u64;
        }
    }
}
