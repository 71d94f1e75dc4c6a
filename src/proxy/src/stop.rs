//! The stop switches: `watch` channels that turn true once, when a phase of the shutdown starts
//! (stop accepting, close everything, stop the background work). Its own module because every
//! room waits on them and none may import the rooms that flip them.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::task::{Poll, ready};
use tokio::sync::watch;

/// Resolves once `stop` turns true (or its sender is gone). Holds no borrow of the value, so
/// it can sit in a `select!` beside branches that await.
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// A stop switch watched from a task that is polled many times over (a connection's: several
/// times per request). Polling the future that waits on the switch takes its notifier's lock,
/// so it is polled only when the switch's version has moved since the last look (an atomic
/// load) or the switch's sender is gone. Once polled, that future stays registered with the
/// switch, so a change still wakes the task: the waker of its last poll, which is enough
/// because one task polls it for its whole life (a tokio task's waker does not change).
pub(crate) struct Watched<F> {
    /// A receiver of the switch `wait` waits on, only looked at.
    look: watch::Receiver<bool>,
    polled: bool,
    done: bool,
    // Boxed: pinned once per connection, so that the whole can move with the loop it is in.
    wait: Pin<Box<F>>,
}

impl<F: Future<Output = ()>> Watched<F> {
    /// `look`: a receiver of the switch that `wait` waits on.
    pub(crate) fn new(look: watch::Receiver<bool>, wait: F) -> Self {
        Watched {
            look,
            polled: false,
            done: false,
            wait: Box::pin(wait),
        }
    }

    /// The switch is on (looked at, not waited for).
    pub(crate) fn is_on(&self) -> bool {
        self.done || *self.look.borrow()
    }

    /// Resolves when `wait` does, and at once ever after.
    pub(crate) fn fired(&mut self) -> impl Future<Output = ()> + '_ {
        poll_fn(|cx| {
            if self.done {
                return Poll::Ready(());
            }
            if self.polled && !self.look.has_changed().unwrap_or(true) {
                return Poll::Pending;
            }
            self.polled = true;
            self.look.mark_unchanged();
            ready!(self.wait.as_mut().poll(cx));
            self.done = true;
            Poll::Ready(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
    use std::task::{Context, Wake, Waker};

    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Relaxed);
        }
    }

    fn poll_once<F: Future>(future: F, waker: &Waker) -> Poll<F::Output> {
        let mut future = std::pin::pin!(future);
        future.as_mut().poll(&mut Context::from_waker(waker))
    }

    #[test]
    fn a_watched_switch_fires_once_turned_true_and_stays_fired() {
        let (tx, mut rx) = watch::channel(false);
        let look = rx.clone();
        let mut watched = Watched::new(look, stopped(&mut rx));
        let waker = Waker::noop();
        assert!(poll_once(watched.fired(), waker).is_pending());
        tx.send(true).unwrap();
        assert!(poll_once(watched.fired(), waker).is_ready());
        assert!(poll_once(watched.fired(), waker).is_ready());
    }

    #[test]
    fn the_waiting_future_is_polled_only_after_the_switch_moved() {
        let (tx, rx) = watch::channel(false);
        let polls = AtomicUsize::new(0);
        let wait = poll_fn(|_| {
            polls.fetch_add(1, Relaxed);
            Poll::<()>::Pending
        });
        let mut watched = Watched::new(rx, wait);
        let waker = Waker::noop();
        for _ in 0..5 {
            assert!(poll_once(watched.fired(), waker).is_pending());
        }
        assert_eq!(
            polls.load(Relaxed),
            1,
            "polled once to register, then left alone"
        );
        tx.send(false).unwrap();
        assert!(poll_once(watched.fired(), waker).is_pending());
        assert!(poll_once(watched.fired(), waker).is_pending());
        assert_eq!(
            polls.load(Relaxed),
            2,
            "polled again once, after the switch moved"
        );
    }

    #[test]
    fn turning_the_switch_wakes_the_task_that_last_polled_it() {
        let (tx, mut rx) = watch::channel(false);
        let look = rx.clone();
        let mut watched = Watched::new(look, stopped(&mut rx));
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(counter.clone());
        assert!(poll_once(watched.fired(), &waker).is_pending());
        // Looked at again without a change: still registered.
        assert!(poll_once(watched.fired(), &waker).is_pending());
        tx.send(true).unwrap();
        assert_eq!(counter.0.load(Relaxed), 1);
        assert!(poll_once(watched.fired(), &waker).is_ready());
    }
}
