//! A stream that tells an observer what moved through it: the client connection counts its
//! bytes and watches HTTP/1 framing, an upgraded tunnel notes when it last saw a byte.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub(crate) trait Observer {
    /// A TCP close without TLS close_notify ends the stream cleanly instead of failing it.
    const EOF_IS_END: bool = false;

    /// Bytes that arrived; empty at the end of the stream.
    fn read(&mut self, bytes: &[u8]);

    /// `n` bytes were written.
    fn wrote(&mut self, _n: usize) {}
}

pub(crate) struct Observed<IO, O> {
    io: IO,
    observer: O,
}

impl<IO, O> Observed<IO, O> {
    pub(crate) fn new(io: IO, observer: O) -> Self {
        Observed { io, observer }
    }

    pub(crate) fn observer_mut(&mut self) -> &mut O {
        &mut self.observer
    }
}

impl<IO: AsyncRead + Unpin, O: Observer + Unpin> AsyncRead for Observed<IO, O> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                this.observer.read(&buf.filled()[before..]);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) if O::EOF_IS_END && e.kind() == io::ErrorKind::UnexpectedEof => {
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl<IO: AsyncWrite + Unpin, O: Observer + Unpin> AsyncWrite for Observed<IO, O> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = written {
            this.observer.wrote(n);
        }
        written
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = written {
            this.observer.wrote(n);
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
