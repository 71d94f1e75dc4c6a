//! Gives memory back to the OS once connections have closed and the sidecar has gone quiet.
//!
//! The binary's global allocator is mimalloc (`main.rs`). It returns freed pages to the OS
//! (`MADV_DONTNEED`) only from inside a later allocator call, and each worker thread's pages
//! only from a call on that thread; memory one worker allocated and another freed is not even
//! known to be free until its owner looks. A sidecar that has just served a burst of
//! connections and gone idle makes no such calls, so without help the burst's peak would stay
//! resident — charged to the app's memory quota — until traffic returns, which for a quiet app
//! may be never (measured: 210 MB kept after 9,900 connections, against 6 MB idle).
//! [`reclaim_when_quiet`] makes the calls: once no connection has ended for [`QUIET`], it has
//! every worker thread collect its own heap. Under steady traffic it does nothing (the memory
//! is being reused), and while nothing happens it never wakes.

use crate::stop::stopped;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// How long without a connection ending before collecting. Long enough that a steady stream
/// of short connections never triggers it; short enough that a burst's memory is back within
/// seconds.
const QUIET: Duration = Duration::from_millis(1_200);

/// The longest a worker waits for the others to join a collection. Idle workers join within
/// microseconds; the bound matters when one is busy with other connections' work, and then
/// that one is skipped this time rather than stalling the connections of the rest for longer.
const GATHER: Duration = Duration::from_millis(5);

/// Set by every [`collect_soon`]; one stored permit however many calls.
static FREED: Notify = Notify::const_new();

/// Memory was just freed (a connection ended): collect once the sidecar has
/// been quiet for [`QUIET`]. Cheap: one atomic when a permit is already stored.
pub(crate) fn collect_soon() {
    FREED.notify_one();
}

/// Runs until `stop`: after [`collect_soon`], once no call has come for [`QUIET`], returns
/// what was freed to the OS. Returns how many times it did.
pub(crate) async fn reclaim_when_quiet(mut stop: watch::Receiver<bool>) -> u64 {
    let mut collections = 0;
    loop {
        tokio::select! {
            () = FREED.notified() => {}
            () = stopped(&mut stop) => return collections,
        }
        loop {
            tokio::select! {
                () = tokio::time::sleep(QUIET) => break,
                () = FREED.notified() => {}
                () = stopped(&mut stop) => return collections,
            }
        }
        collect_on_every_worker().await;
        collections += 1;
    }
}

/// Has each worker thread of the current runtime collect its own heap: one task per worker,
/// each holding its thread until all have started (or [`GATHER`] passed), so that no worker
/// runs two of them while another runs none.
async fn collect_on_every_worker() {
    let started = std::time::Instant::now();
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    let gate = Arc::new(Gate {
        arrived: Mutex::new(0),
        all_here: Condvar::new(),
        workers,
    });
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let gate = gate.clone();
            tokio::spawn(async move {
                gate.arrive_and_wait();
                collect_this_thread();
            })
        })
        .collect();
    for task in tasks {
        let _ = task.await;
    }
    trim_c_heap();
    let took_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    tracing::debug!(workers, took_us, "returned freed memory to the OS");
}

struct Gate {
    arrived: Mutex<usize>,
    all_here: Condvar,
    workers: usize,
}

impl Gate {
    fn arrive_and_wait(&self) {
        let mut arrived = self.arrived.lock().unwrap_or_else(PoisonError::into_inner);
        *arrived += 1;
        if *arrived >= self.workers {
            self.all_here.notify_all();
            return;
        }
        let _ = self
            .all_here
            .wait_timeout_while(arrived, GATHER, |arrived| *arrived < self.workers);
    }
}

/// Frees this thread's empty pages and purges every arena's free memory now.
#[allow(unsafe_code)]
fn collect_this_thread() {
    // SAFETY: mi_collect takes no pointers and only walks the calling thread's own heap and
    // mimalloc's arenas; it is callable from any thread at any time. `force = true` purges what
    // is free now rather than after `purge_delay`, at a later call that may never come.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

/// The C library's malloc serves aws-lc (key schedules, cipher contexts). glibc keeps what its
/// per-thread arenas freed until told; musl's malloc returns it by itself.
#[allow(unsafe_code)]
fn trim_c_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim takes no pointers and locks each arena it trims.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_collection_does_not_wait_for_a_worker_busy_with_other_work() {
        let (busy_tx, busy_rx) = std::sync::mpsc::channel();
        // Holds one of the two workers for 600 ms, as a long poll would.
        let busy = tokio::spawn(async move {
            let _ = busy_tx.send(());
            std::thread::sleep(Duration::from_millis(600));
        });
        busy_rx.recv().unwrap();
        let started = Instant::now();
        collect_on_every_worker().await;
        let took = started.elapsed();
        assert!(
            took < Duration::from_millis(300),
            "the collection waited {took:?} for the busy worker"
        );
        busy.await.unwrap();
    }

    // The only test in this binary that runs a reclaimer: they share the one signal.
    #[tokio::test(start_paused = true)]
    async fn the_reclaimer_collects_once_per_quiet_period_after_memory_is_freed_and_ends_when_told()
    {
        let (stop_tx, stop_rx) = watch::channel(false);
        let reclaimer = tokio::spawn(reclaim_when_quiet(stop_rx));
        // A burst of ended connections, each within QUIET of the last: one collection, after.
        for _ in 0..5 {
            collect_soon();
            tokio::time::sleep(QUIET / 2).await;
        }
        tokio::time::sleep(QUIET).await;
        // Nothing freed since: no more collections however long it stays idle.
        tokio::time::sleep(QUIET * 10).await;
        stop_tx.send(true).unwrap();
        let collections = tokio::time::timeout(Duration::from_secs(5), reclaimer)
            .await
            .expect("the reclaimer did not stop")
            .unwrap();
        assert_eq!(collections, 1);
    }
}
