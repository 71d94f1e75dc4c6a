//! The client's TCP stream under rustls, so that a TLS 1.3 session ticket goes out with the
//! first bytes the sidecar writes after the handshake instead of on its own.
//!
//! rustls makes the ticket once the client's Finished has arrived, and tokio-rustls flushes it
//! as the handshake ends. The client needs no ticket to go on (it sent its request right behind
//! its Finished, mostly in the same segment), so sending it alone costs a system call, a
//! segment over the wire and a wake-up of the client per connection, which is about 2 % of
//! the CPU of a resumed connection. Held back here, it rides in the same `writev` as the
//! answer (or the close_notify of a connection that never answers).
//!
//! While [`HeldBack::handshaking`], every write is kept and goes out before the stream next
//! waits for the client: at the next read, or at [`HeldBack::release`]. Nothing the client
//! waits for is ever held across a wait, so the handshake's round trips are what they were.
//! Once [`HeldBack::handshake_done`], what is still kept (the ticket) goes out in front of the
//! next write or at shutdown; no write after it is held. The caller releases it at once when no
//! answer is on its way: for a client that has sent nothing behind its Finished (it may stay
//! idle, and a ticket that carries a client certificate is a few KiB), and for TLS 1.2, whose
//! last flight (the server's Finished) is what the client waits for.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct HeldBack<S> {
    io: S,
    /// Bytes written and not yet sent.
    kept: Vec<u8>,
    /// Before [`Self::handshake_done`]: keep every write until the next read.
    handshaking: bool,
}

impl<S> HeldBack<S> {
    pub(crate) fn new(io: S) -> Self {
        HeldBack {
            io,
            kept: Vec::new(),
            handshaking: true,
        }
    }

    pub(crate) fn get_ref(&self) -> &S {
        &self.io
    }

    /// From now on only what is kept now is held back, until the next write or shutdown.
    pub(crate) fn handshake_done(&mut self) {
        self.handshaking = false;
    }
}

impl<S: AsyncWrite + Unpin> HeldBack<S> {
    /// Sends what is kept.
    pub(crate) fn poll_release(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.kept.is_empty() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.kept))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.kept.drain(..n);
        }
        // The buffer of the handshake's flights is not kept for the life of the connection.
        self.kept = Vec::new();
        Poll::Ready(Ok(()))
    }

    /// Sends what is kept; then the stream holds nothing back any more.
    pub(crate) async fn release(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_release(cx)).await
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for HeldBack<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.handshaking {
            // The client may be waiting for what was written: it goes before we wait for it.
            ready!(this.poll_release(cx))?;
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for HeldBack<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.handshaking {
            let mut n = 0;
            for buf in bufs {
                this.kept.extend_from_slice(buf);
                n += buf.len();
            }
            return Poll::Ready(Ok(n));
        }
        if this.kept.is_empty() {
            return Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        }
        // What is kept, then this write, in one system call.
        loop {
            let mut slices = Vec::with_capacity(bufs.len() + 1);
            slices.push(IoSlice::new(&this.kept));
            slices.extend(bufs.iter().map(|b| IoSlice::new(b)));
            let n = ready!(Pin::new(&mut this.io).poll_write_vectored(cx, &slices))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            let kept = this.kept.len();
            if n > kept {
                this.kept = Vec::new();
                return Poll::Ready(Ok(n - kept));
            }
            // Not even all of what was kept went: the rest goes first, next time round.
            this.kept.drain(..n);
            if this.kept.is_empty() {
                this.kept = Vec::new();
                return Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Holding back is the point: a flush sends nothing that is kept (see the module
        // documentation for when it goes).
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_release(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// A connected pair: (ours, wrapped; the peer's).
    async fn pair() -> (HeldBack<TcpStream>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = TcpStream::connect(listener.local_addr().unwrap());
        let (peer, accepted) = tokio::join!(peer, listener.accept());
        (HeldBack::new(accepted.unwrap().0), peer.unwrap())
    }

    /// What the peer has received so far, without waiting for more than `settle`.
    async fn received(peer: &mut TcpStream) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while let Ok(Ok(n)) =
            tokio::time::timeout(std::time::Duration::from_millis(200), peer.read(&mut buf)).await
        {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        got
    }

    #[tokio::test]
    async fn a_handshake_write_goes_out_before_the_stream_waits_to_read() {
        let (mut ours, mut peer) = pair().await;
        ours.write_all(b"server flight").await.unwrap();
        ours.flush().await.unwrap();
        assert!(!ours.kept.is_empty(), "kept until the next read");
        // Our read must send the flight first, or both ends would wait for each other.
        let read = tokio::spawn(async move {
            let mut buf = [0u8; 16];
            let n = ours.read(&mut buf).await.unwrap();
            buf[..n].to_vec()
        });
        let mut flight = [0u8; 13];
        peer.read_exact(&mut flight).await.unwrap();
        assert_eq!(&flight, b"server flight");
        peer.write_all(b"finished").await.unwrap();
        assert_eq!(read.await.unwrap(), b"finished");
    }

    #[tokio::test]
    async fn the_last_handshake_write_is_sent_only_in_front_of_the_first_write_after_it() {
        let (mut ours, mut peer) = pair().await;
        ours.write_all(b"ticket;").await.unwrap();
        ours.flush().await.unwrap();
        ours.handshake_done();
        // A read after the handshake does not send the ticket on its own.
        let mut buf = [0u8; 8];
        peer.write_all(b"request").await.unwrap();
        let n = ours.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"request");
        ours.flush().await.unwrap();
        assert!(!ours.kept.is_empty());
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(100), peer.read(&mut buf))
                .await
                .is_err(),
            "nothing may reach the client before the answer"
        );
        ours.write_all(b"answer").await.unwrap();
        assert!(ours.kept.is_empty());
        assert_eq!(received(&mut peer).await, b"ticket;answer");
    }

    #[tokio::test]
    async fn what_is_held_goes_out_at_shutdown_when_nothing_is_written() {
        let (mut ours, mut peer) = pair().await;
        ours.write_all(b"ticket").await.unwrap();
        ours.handshake_done();
        ours.shutdown().await.unwrap();
        assert_eq!(received(&mut peer).await, b"ticket");
    }

    #[tokio::test]
    async fn release_sends_what_is_kept_and_later_writes_go_straight_out() {
        let (mut ours, mut peer) = pair().await;
        ours.write_all(b"tls 1.2 finished;").await.unwrap();
        ours.handshake_done();
        ours.release().await.unwrap();
        assert!(ours.kept.is_empty());
        let mut flight = [0u8; 17];
        peer.read_exact(&mut flight).await.unwrap();
        assert_eq!(&flight, b"tls 1.2 finished;");
        ours.write_all(b"data").await.unwrap();
        assert!(ours.kept.is_empty());
        let mut data = [0u8; 4];
        peer.read_exact(&mut data).await.unwrap();
        assert_eq!(&data, b"data");
    }
}
