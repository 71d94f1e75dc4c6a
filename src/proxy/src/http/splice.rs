//! Upgraded connections (websockets and friends): once the app has answered `101`, the client
//! and the app talk directly, byte for byte, through the sidecar.

use super::later;
use crate::logging::millis;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, sleep_until};

/// The tunnel of one upgraded request: ends when both sides have closed, either fails, or no
/// byte moved for the idle limit.
pub(crate) type Tunnel = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

pub(crate) fn tunnel(client: OnUpgrade, app: OnUpgrade, idle: Duration) -> Tunnel {
    Box::pin(async move {
        let (client, app) = tokio::try_join!(client, app)
            .map_err(|e| format!("the upgrade did not complete: {e}"))?;
        splice(TokioIo::new(client), TokioIo::new(app), idle).await
    })
}

async fn splice<A, B>(a: A, b: B, idle: Duration) -> Result<(), String>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let opened = Instant::now();
    let last_ms = AtomicU64::new(0);
    let mut a = Touch {
        io: a,
        opened,
        last_ms: &last_ms,
    };
    let mut b = Touch {
        io: b,
        opened,
        last_ms: &last_ms,
    };
    let copy = tokio::io::copy_bidirectional(&mut a, &mut b);
    tokio::pin!(copy);
    let deadline = || later(opened + Duration::from_millis(last_ms.load(Relaxed)), idle);
    let timer = sleep_until(deadline());
    tokio::pin!(timer);
    loop {
        tokio::select! {
            result = copy.as_mut() => {
                return result.map(drop).map_err(|e| format!("upgraded connection: {e}"));
            }
            () = timer.as_mut() => {
                let at = deadline();
                if Instant::now() >= at {
                    return Err(format!("upgraded connection idle for {} ms", millis(idle)));
                }
                timer.as_mut().reset(at);
            }
        }
    }
}

/// Records when bytes last arrived from either side.
struct Touch<'a, T> {
    io: T,
    opened: Instant,
    last_ms: &'a AtomicU64,
}

impl<T: AsyncRead + Unpin> AsyncRead for Touch<'_, T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.last_ms
                .fetch_max(millis(this.opened.elapsed()), Relaxed);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Touch<'_, T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
