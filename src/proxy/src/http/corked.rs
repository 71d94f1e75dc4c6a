//! HTTP/2 output to the client written once per turn of the connection's task.
//!
//! The h2 crate writes a DATA frame of more than 256 bytes as a write of its own and flushes
//! the stream after each one. Eight responses ready in one turn thus cost eight TLS records and
//! eight `writev`s, each waking the client. HAProxy and nginx write what one turn of their event
//! loop produced at once, and so does this: [`corked`] splits the client stream into the half
//! hyper owns ([`Corked`]), which takes writes into a buffer and lets a flush wait, and the half
//! the connection's task keeps ([`Cork`]), which [`Flushing`] uses to write that buffer out
//! after every poll of the connection. Nothing stays buffered while the task waits, except what
//! a full socket holds back: then the task waits for the socket, as it did before.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Buffered output past which a write or a flush goes to the stream at once: the bound on what
/// one connection holds here, besides what the TLS layer holds. A TLS record's worth: eight
/// small responses fit, and a large body still goes out in full records.
const HELD: usize = 16 * 1024;

/// The client stream, split: `(what hyper is given, what the connection's task keeps)`.
pub(crate) fn corked<IO>(io: IO) -> (Corked<IO>, Cork<IO>) {
    let shared = Arc::new(Mutex::new(Shared {
        io,
        out: Vec::new(),
        sent: 0,
        unflushed: false,
        failed: None,
    }));
    (Corked(shared.clone()), Cork(shared))
}

/// The stream as hyper sees it: reads go through, writes are buffered, and a flush is left to
/// the [`Cork`] unless [`HELD`] bytes wait.
pub(crate) struct Corked<IO>(Arc<Mutex<Shared<IO>>>);

/// Writes out what [`Corked`] buffered.
pub(crate) struct Cork<IO>(Arc<Mutex<Shared<IO>>>);

struct Shared<IO> {
    io: IO,
    /// Written by hyper, not yet to the stream; `out[..sent]` already went.
    out: Vec<u8>,
    sent: usize,
    /// Output went to the stream and its flush has not completed (the TLS layer may hold
    /// records a full socket did not take).
    unflushed: bool,
    /// A write the [`Cork`] made failed: the next call from hyper gets the error.
    failed: Option<io::Error>,
}

fn lock<IO>(shared: &Mutex<Shared<IO>>) -> MutexGuard<'_, Shared<IO>> {
    // Never contended: both halves are used from the connection's one task.
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<IO> Shared<IO> {
    /// Appends `bytes`, the buffer being made once per turn at its bound's size: grown a
    /// response at a time, it would be copied again at every doubling.
    fn hold(&mut self, bytes: &[u8]) {
        if self.out.capacity() == 0 {
            self.out.reserve(HELD.max(bytes.len()));
        }
        self.out.extend_from_slice(bytes);
    }
}

impl<IO: AsyncWrite + Unpin> Shared<IO> {
    /// Writes out the buffer, then flushes the stream.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.out.len() {
            self.unflushed = true;
            let n =
                std::task::ready!(Pin::new(&mut self.io).poll_write(cx, &self.out[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        if !self.out.is_empty() {
            // Given back, not kept: an idle connection holds no output buffer.
            self.out = Vec::new();
            self.sent = 0;
        }
        if self.unflushed {
            std::task::ready!(Pin::new(&mut self.io).poll_flush(cx))?;
            self.unflushed = false;
        }
        Poll::Ready(Ok(()))
    }

    fn pending(&self) -> usize {
        self.out.len() - self.sent
    }

    fn idle(&self) -> bool {
        self.pending() == 0 && !self.unflushed
    }

    fn take_failure(&mut self) -> io::Result<()> {
        self.failed.take().map_or(Ok(()), Err)
    }

    /// Room for more output: at once below [`HELD`], else once the stream took some.
    fn poll_room(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.take_failure()?;
        if self.pending() >= HELD {
            std::task::ready!(self.poll_send(cx))?;
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Corked<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut shared = lock(&self.0);
        if let Some(e) = shared.failed.take() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut shared.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Corked<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut shared = lock(&self.0);
        std::task::ready!(shared.poll_room(cx))?;
        shared.hold(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut shared = lock(&self.0);
        std::task::ready!(shared.poll_room(cx))?;
        let mut n = 0;
        for buf in bufs {
            shared.hold(buf);
            n += buf.len();
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    /// Done at once below [`HELD`]: the [`Cork`] writes the buffer out before the task waits.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        lock(&self.0).poll_room(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut shared = lock(&self.0);
        shared.take_failure()?;
        std::task::ready!(shared.poll_send(cx))?;
        Pin::new(&mut shared.io).poll_shutdown(cx)
    }
}

impl<IO: AsyncWrite + Unpin> Cork<IO> {
    /// Writes out what waits. A failure is kept for hyper's next call on the stream, and the
    /// task is woken so that the call comes.
    fn poll_send(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut shared = lock(&self.0);
        if shared.idle() {
            return Poll::Ready(());
        }
        match std::task::ready!(shared.poll_send(cx)) {
            Ok(()) => {}
            Err(e) => {
                shared.failed = Some(e);
                cx.waker().wake_by_ref();
            }
        }
        Poll::Ready(())
    }
}

/// A connection future whose buffered output is written out after each of its polls.
pub(crate) struct Flushing<C, IO> {
    connection: Pin<Box<C>>,
    cork: Cork<IO>,
}

impl<C, IO> Flushing<C, IO> {
    pub(crate) fn new(connection: C, cork: Cork<IO>) -> Self {
        Flushing {
            connection: Box::pin(connection),
            cork,
        }
    }

    pub(crate) fn connection(self: Pin<&mut Self>) -> Pin<&mut C> {
        self.get_mut().connection.as_mut()
    }
}

impl<C: Future, IO: AsyncWrite + Unpin> Future for Flushing<C, IO> {
    type Output = C::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let polled = self.connection.as_mut().poll(cx);
        // Pending only on a full socket, which wakes the task when it has room; the
        // connection is polled again then, and the rest written after it.
        let _ = self.cork.poll_send(cx);
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::task::Waker;

    /// A stream that records what reaches it, and can be told to be full or broken.
    #[derive(Default)]
    struct Record {
        writes: Vec<Vec<u8>>,
        flushes: usize,
        shut_after_writes: Option<usize>,
        /// Polls of write (then of flush) answered `Pending` before one is taken.
        full_writes: usize,
        full_flushes: usize,
        broken: bool,
    }

    #[derive(Clone, Default)]
    struct Stream(Arc<Mutex<Record>>);

    impl Stream {
        fn record(&self) -> MutexGuard<'_, Record> {
            self.0.lock().unwrap()
        }
    }

    impl AsyncRead for Stream {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Pending
        }
    }

    impl AsyncWrite for Stream {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let mut record = self.record();
            if record.broken {
                return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
            }
            if record.full_writes > 0 {
                record.full_writes -= 1;
                return Poll::Pending;
            }
            record.writes.push(buf.to_vec());
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            let mut record = self.record();
            if record.full_flushes > 0 {
                record.full_flushes -= 1;
                return Poll::Pending;
            }
            record.flushes += 1;
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            let mut record = self.record();
            record.shut_after_writes = Some(record.writes.len());
            Poll::Ready(Ok(()))
        }
    }

    fn cx() -> Context<'static> {
        Context::from_waker(Waker::noop())
    }

    /// What the h2 crate does for each small response: a write, then a flush.
    fn frame(corked: &mut Corked<Stream>, bytes: &[u8]) -> Poll<io::Result<()>> {
        let mut cx = cx();
        let n = std::task::ready!(Pin::new(&mut *corked).poll_write(&mut cx, bytes))?;
        assert_eq!(n, bytes.len());
        Pin::new(&mut *corked).poll_flush(&mut cx)
    }

    /// A stand-in for hyper's connection: writes `frames` on its first poll, then waits.
    fn connection(
        mut corked: Corked<Stream>,
        frames: Vec<&'static [u8]>,
    ) -> impl Future<Output = ()> {
        let mut frames = Some(frames);
        poll_fn(move |_| {
            for f in frames.take().unwrap_or_default() {
                assert!(frame(&mut corked, f).is_ready());
            }
            Poll::Pending
        })
    }

    #[test]
    fn frames_flushed_one_by_one_in_a_turn_reach_the_stream_as_one_write_at_its_end() {
        let stream = Stream::default();
        let (corked, cork) = corked(stream.clone());
        let mut turn = Flushing::new(connection(corked, vec![b"one", b"two", b"three"]), cork);

        assert!(Pin::new(&mut turn).poll(&mut cx()).is_pending());

        let record = stream.record();
        assert_eq!(record.writes, vec![b"onetwothree".to_vec()]);
        assert_eq!(record.flushes, 1);
    }

    #[test]
    fn nothing_written_in_a_turn_means_nothing_is_written_or_flushed() {
        let stream = Stream::default();
        let (corked, cork) = corked(stream.clone());
        let mut turn = Flushing::new(connection(corked, vec![]), cork);

        assert!(Pin::new(&mut turn).poll(&mut cx()).is_pending());

        assert!(stream.record().writes.is_empty());
        assert_eq!(stream.record().flushes, 0);
    }

    #[test]
    fn a_flush_is_done_at_once_by_the_stream_once_a_record_s_worth_waits() {
        let stream = Stream::default();
        let (mut corked, _cork) = corked(stream.clone());
        let big = vec![7u8; HELD];

        assert!(frame(&mut corked, &big).is_ready());

        assert_eq!(stream.record().writes, vec![big]);
        assert_eq!(stream.record().flushes, 1);
    }

    #[test]
    fn a_full_stream_holds_the_writer_back_instead_of_growing_the_buffer() {
        let stream = Stream::default();
        stream.record().full_writes = 1;
        let (mut corked, _cork) = corked(stream.clone());
        assert!(frame(&mut corked, &vec![1u8; HELD]).is_pending());

        // The buffer is full and the stream still is: the next write waits too.
        stream.record().full_writes = 1;
        assert!(
            Pin::new(&mut corked)
                .poll_write(&mut cx(), b"more")
                .is_pending()
        );
        assert!(stream.record().writes.is_empty());

        // Once the stream takes the buffer, the write is accepted.
        assert!(matches!(
            Pin::new(&mut corked).poll_write(&mut cx(), b"more"),
            Poll::Ready(Ok(4))
        ));
        assert_eq!(stream.record().writes, vec![vec![1u8; HELD]]);
    }

    #[test]
    fn a_flush_the_stream_could_not_finish_is_finished_on_the_next_turn() {
        let stream = Stream::default();
        stream.record().full_flushes = 1;
        let (corked, cork) = corked(stream.clone());
        let mut turn = Flushing::new(connection(corked, vec![b"reply"]), cork);

        assert!(Pin::new(&mut turn).poll(&mut cx()).is_pending());
        assert_eq!(stream.record().writes, vec![b"reply".to_vec()]);
        assert_eq!(stream.record().flushes, 0);

        // The socket had room again: the next poll completes the flush, with nothing new written.
        assert!(Pin::new(&mut turn).poll(&mut cx()).is_pending());
        assert_eq!(stream.record().writes.len(), 1);
        assert_eq!(stream.record().flushes, 1);
    }

    #[test]
    fn a_write_that_fails_after_the_turn_fails_the_connection_s_next_read_or_write() {
        let stream = Stream::default();
        stream.record().broken = true;
        let (mut corked, cork) = corked(stream.clone());
        assert!(frame(&mut corked, b"reply").is_ready());

        assert!(cork.poll_send(&mut cx()).is_ready());

        let mut buf = [0u8; 8];
        let read = Pin::new(&mut corked).poll_read(&mut cx(), &mut ReadBuf::new(&mut buf));
        assert!(
            matches!(read, Poll::Ready(Err(ref e)) if e.kind() == io::ErrorKind::BrokenPipe),
            "{read:?}"
        );
        stream.record().broken = false;
        assert!(matches!(
            Pin::new(&mut corked).poll_write(&mut cx(), b"x"),
            Poll::Ready(Ok(1))
        ));
    }

    #[test]
    fn shutting_down_writes_out_what_waits_first() {
        let stream = Stream::default();
        let (mut corked, _cork) = corked(stream.clone());
        assert!(frame(&mut corked, b"goaway").is_ready());

        assert!(Pin::new(&mut corked).poll_shutdown(&mut cx()).is_ready());

        let record = stream.record();
        assert_eq!(record.writes, vec![b"goaway".to_vec()]);
        assert_eq!(record.shut_after_writes, Some(1));
    }
}
