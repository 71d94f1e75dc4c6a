//! Gives memory back to the OS once connections have closed and the sidecar has gone quiet.
//!
//! The binary's global allocator is mimalloc (`main.rs`). It returns freed pages to the OS
//! (`MADV_DONTNEED`) only `purge_delay` after they were freed, and only from inside a later
//! allocator call. A sidecar that has just served a burst of connections and is now idle makes
//! no such call, so without help the burst's peak would stay resident — charged to the app's
//! memory quota — until the next connection arrives, which for a quiet app may be never.
//! [`reclaim_when_quiet`] makes that later call: one collection shortly after connections end,
//! at most one per [`QUIET`] under steady load, and no wake-ups at all while nothing closes.

use crate::server::stopped;
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// How long after a connection ends the collection runs: longer than mimalloc's default
/// `purge_delay` (1 s), so that everything the ended connections freed is due for purging.
const QUIET: Duration = Duration::from_millis(1_200);

/// Set by every ended connection; one stored permit however many end.
static ENDED: Notify = Notify::const_new();

/// Records that a connection ended and freed its buffers (cheap: one atomic when a permit is
/// already stored).
pub(crate) fn connection_ended() {
    ENDED.notify_one();
}

/// Runs until `stop`: after connections end, waits [`QUIET`], then returns what was freed.
pub(crate) async fn reclaim_when_quiet(mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            () = ENDED.notified() => {}
            () = stopped(&mut stop) => return,
        }
        tokio::select! {
            () = tokio::time::sleep(QUIET) => {}
            () = stopped(&mut stop) => return,
        }
        collect();
    }
}

/// Returns what both allocators hold free to the OS: mimalloc (Rust allocations) and the C
/// library's malloc, which aws-lc uses for its per-connection key schedules and contexts.
#[allow(unsafe_code)]
fn collect() {
    // SAFETY: mi_collect takes no pointers and only walks mimalloc's own bookkeeping; it is
    // documented as callable from any thread at any time. `force = true` purges what is free
    // now rather than waiting for another allocator call: the point of calling it at all.
    unsafe { libmimalloc_sys::mi_collect(true) };
    // glibc keeps freed memory of its per-thread arenas until told otherwise; musl's malloc
    // returns it by itself.
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim takes no pointers and is thread-safe (it locks each arena).
    unsafe {
        libc::malloc_trim(0);
    }
}
