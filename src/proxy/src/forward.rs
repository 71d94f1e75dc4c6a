//! One TLS connection: handshake, connect to the app, copy both ways, one log line.

use crate::server::{Shared, stopped};
use rustls::ProtocolVersion;
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tls_sidecar_config::HostPort;
use tokio::io::{AsyncBufRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep, timeout};
use tokio_rustls::server::TlsStream;
use tracing::{info, warn};

/// Size of the app-to-client buffer, allocated on the first byte from the app and reused. The
/// client-to-app direction needs none: it writes straight out of rustls's plaintext buffer.
/// Small on purpose: an idle connection should cost little more than its rustls state.
const APP_READ_BUFFER: usize = 8 * 1024;

/// How long a connection we close gets to take our close_notify.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnError {
    #[error("no certificate loaded yet")]
    NoCertificate,
    #[error("TLS handshake did not finish within {} ms", .0.as_millis())]
    HandshakeTimeout(Duration),
    #[error("TLS handshake failed: {0}")]
    Handshake(io::Error),
    #[error("upstream unavailable: {upstream}: {cause}")]
    UpstreamUnavailable { upstream: String, cause: String },
    #[error("client: {0}")]
    Client(io::Error),
    #[error("upstream: {0}")]
    Upstream(io::Error),
    #[error("idle for {} ms", .0.as_millis())]
    Idle(Duration),
    #[error("closed at the end of the drain")]
    Drained,
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
struct Counts {
    bytes_in: u64,
    bytes_out: u64,
    tls: Option<ProtocolVersion>,
}

/// Serves one accepted connection. `_permit` is its `max_connections` slot, held until the
/// log line is written so that a drain waits for it.
pub(crate) async fn serve(
    tcp: TcpStream,
    peer: SocketAddr,
    listener_port: u16,
    upstream: Arc<HostPort>,
    shared: Arc<Shared>,
    _permit: OwnedSemaphorePermit,
) {
    let started = Instant::now();
    let mut counts = Counts::default();
    let mut close_all = shared.close_all.clone();
    let result = tokio::select! {
        result = proxy(tcp, &upstream, &shared, &mut counts) => result,
        () = stopped(&mut close_all) => Err(ConnError::Drained),
    };
    let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let tls = match counts.tls {
        Some(ProtocolVersion::TLSv1_3) => "1.3",
        Some(ProtocolVersion::TLSv1_2) => "1.2",
        Some(_) => "other",
        None => "none",
    };
    let (bytes_in, bytes_out) = (counts.bytes_in, counts.bytes_out);
    let error = result.err();
    let ours = error.as_ref().is_some_and(ConnError::is_ours);
    let error = error.as_ref().map(tracing::field::display);
    if ours {
        warn!(
            listener = listener_port, peer = %peer, duration_ms, bytes_in, bytes_out, tls, error,
            "connection closed"
        );
    } else {
        info!(
            listener = listener_port, peer = %peer, duration_ms, bytes_in, bytes_out, tls, error,
            "connection closed"
        );
    }
}

async fn proxy(
    tcp: TcpStream,
    upstream: &HostPort,
    shared: &Shared,
    counts: &mut Counts,
) -> Result<(), ConnError> {
    let limits = &shared.limits;
    // Both sockets carry small interactive writes (TLS records, request/response heads):
    // Nagle's delay would only add latency.
    let _ = tcp.set_nodelay(true);
    let mut tls = match timeout(limits.handshake_timeout, shared.acceptor.accept(tcp)).await {
        Err(_) => return Err(ConnError::HandshakeTimeout(limits.handshake_timeout)),
        Ok(Err(_)) if !shared.store.is_loaded() => return Err(ConnError::NoCertificate),
        Ok(Err(e)) => return Err(ConnError::Handshake(e)),
        Ok(Ok(tls)) => tls,
    };
    counts.tls = tls.get_ref().1.protocol_version();

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

    let result = {
        let mut pump = Pump::new(&mut tls, &mut app, counts, limits.idle_timeout);
        let idle = tokio::time::sleep(limits.idle_timeout);
        tokio::pin!(idle);
        poll_fn(|cx| pump.poll(cx, idle.as_mut())).await
    };
    if let Err(ConnError::Idle(_)) = result {
        // A clean close_notify tells the client this was on purpose, not a network fault.
        let _ = timeout(CLOSE_GRACE, tls.shutdown()).await;
    }
    result
}

/// Copies client→app and app→client at once. A FIN (or close_notify) from one side shuts down
/// writing to the other, and the pump ends when both directions have, when either fails, or
/// after `idle` without a byte either way.
struct Pump<'a> {
    tls: &'a mut TlsStream<TcpStream>,
    app: &'a mut TcpStream,
    counts: &'a mut Counts,
    idle: Duration,
    last_activity: Instant,
    to_app: ToApp,
    to_client: ToClient,
}

#[derive(Default)]
struct ToApp {
    eof: bool,
    done: bool,
}

#[derive(Default)]
struct ToClient {
    buf: Vec<u8>,
    pos: usize,
    cap: usize,
    eof: bool,
    done: bool,
    need_flush: bool,
}

impl<'a> Pump<'a> {
    fn new(
        tls: &'a mut TlsStream<TcpStream>,
        app: &'a mut TcpStream,
        counts: &'a mut Counts,
        idle: Duration,
    ) -> Self {
        Pump {
            tls,
            app,
            counts,
            idle,
            last_activity: Instant::now(),
            to_app: ToApp::default(),
            to_client: ToClient::default(),
        }
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        mut idle: Pin<&mut Sleep>,
    ) -> Poll<Result<(), ConnError>> {
        let moved = self.counts.bytes_in + self.counts.bytes_out;
        if !self.to_app.done
            && let Poll::Ready(result) = self.poll_to_app(cx)
        {
            result?;
            self.to_app.done = true;
        }
        if !self.to_client.done
            && let Poll::Ready(result) = self.poll_to_client(cx)
        {
            result?;
            self.to_client.done = true;
        }
        if self.to_app.done && self.to_client.done {
            return Poll::Ready(Ok(()));
        }
        if self.counts.bytes_in + self.counts.bytes_out != moved {
            self.last_activity = Instant::now();
        }
        // The timer is re-armed only when it fires, not on every byte.
        while idle.as_mut().poll(cx).is_ready() {
            let deadline = self.last_activity + self.idle;
            if Instant::now() >= deadline {
                return Poll::Ready(Err(ConnError::Idle(self.idle)));
            }
            idle.as_mut().reset(deadline);
        }
        Poll::Pending
    }

    fn poll_to_app(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ConnError>> {
        loop {
            if self.to_app.eof {
                ready!(Pin::new(&mut *self.app).poll_shutdown(cx)).map_err(ConnError::Upstream)?;
                return Poll::Ready(Ok(()));
            }
            let data = match ready!(Pin::new(&mut *self.tls).poll_fill_buf(cx)) {
                Ok(data) => data,
                // Most clients close the TCP connection without a close_notify. For a byte
                // stream that is simply the end, as it would be without TLS.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => &[],
                Err(e) => return Poll::Ready(Err(ConnError::Client(e))),
            };
            if data.is_empty() {
                self.to_app.eof = true;
                continue;
            }
            let n = ready!(Pin::new(&mut *self.app).poll_write(cx, data))
                .map_err(ConnError::Upstream)?;
            if n == 0 {
                return Poll::Ready(Err(ConnError::Upstream(io::ErrorKind::WriteZero.into())));
            }
            Pin::new(&mut *self.tls).consume(n);
            self.counts.bytes_in += n as u64;
        }
    }

    fn poll_to_client(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ConnError>> {
        let out = &mut self.to_client;
        loop {
            if out.pos < out.cap {
                let written =
                    ready!(Pin::new(&mut *self.tls).poll_write(cx, &out.buf[out.pos..out.cap]))
                        .map_err(ConnError::Client)?;
                if written == 0 {
                    return Poll::Ready(Err(ConnError::Client(io::ErrorKind::WriteZero.into())));
                }
                out.pos += written;
                out.need_flush = true;
                self.counts.bytes_out += written as u64;
                continue;
            }
            if out.eof {
                // Flushes, sends close_notify, then the TCP FIN; the client may keep sending.
                ready!(Pin::new(&mut *self.tls).poll_shutdown(cx)).map_err(ConnError::Client)?;
                return Poll::Ready(Ok(()));
            }
            // Wait for readiness before touching the buffer, so that a connection whose app
            // has not answered yet holds no buffer at all.
            if let Poll::Ready(ready) = self.app.poll_read_ready(cx) {
                ready.map_err(ConnError::Upstream)?;
            } else {
                // rustls keeps encrypted bytes that the socket did not take; push them out
                // before going quiet.
                if out.need_flush {
                    ready!(Pin::new(&mut *self.tls).poll_flush(cx)).map_err(ConnError::Client)?;
                    out.need_flush = false;
                }
                return Poll::Pending;
            }
            if out.buf.is_empty() {
                out.buf = vec![0; APP_READ_BUFFER];
            }
            match self.app.try_read(&mut out.buf) {
                Ok(0) => out.eof = true,
                Ok(n) => {
                    out.pos = 0;
                    out.cap = n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(ConnError::Upstream(e))),
            }
        }
    }
}
