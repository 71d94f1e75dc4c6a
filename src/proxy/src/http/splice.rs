//! Upgraded connections (websockets and friends): once the app has answered `101`, the client
//! and the app talk directly, byte for byte, through the sidecar.

use super::observed::{Observed, Observer};
use super::wait::later;
use crate::logging::millis;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, sleep_until};

/// The tunnel of one upgraded request: ends when both sides have closed, either fails, or no
/// byte moved for the idle limit.
pub(crate) type Tunnel = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// The tunnel between the client's side of an upgraded request (once hyper hands it over) and
/// the app's (generic so that this module needs nothing from the app's side).
pub(crate) fn tunnel<S>(client: OnUpgrade, app: S, idle: Duration) -> Tunnel
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    Box::pin(async move {
        let client = client
            .await
            .map_err(|e| format!("the upgrade did not complete: {e}"))?;
        splice(TokioIo::new(client), app, idle).await.map(drop)
    })
}

/// Copies bytes both ways until both sides have closed, either fails, or no byte moved for
/// `idle`; the bytes copied from `a` to `b` and from `b` to `a`.
pub(crate) async fn splice<A, B>(a: A, b: B, idle: Duration) -> Result<(u64, u64), String>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let opened = Instant::now();
    let last_ms = AtomicU64::new(0);
    let touch = || Touch {
        opened,
        last_ms: &last_ms,
    };
    let mut a = Observed::new(a, touch());
    let mut b = Observed::new(b, touch());
    let copy = tokio::io::copy_bidirectional(&mut a, &mut b);
    tokio::pin!(copy);
    let deadline = || later(opened + Duration::from_millis(last_ms.load(Relaxed)), idle);
    let timer = sleep_until(deadline());
    tokio::pin!(timer);
    loop {
        tokio::select! {
            result = copy.as_mut() => {
                return result.map_err(|e| format!("upgraded connection: {e}"));
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
struct Touch<'a> {
    opened: Instant,
    last_ms: &'a AtomicU64,
}

impl Observer for Touch<'_> {
    fn read(&mut self, bytes: &[u8]) {
        if !bytes.is_empty() {
            self.last_ms
                .fetch_max(millis(self.opened.elapsed()), Relaxed);
        }
    }
}
