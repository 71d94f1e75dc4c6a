//! Process signals: SIGTERM (CF's stop) and SIGINT drain and exit; SIGHUP re-reads the
//! certificate and the trust bundle.

use crate::server::Running;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tracing::info;

/// Installed handlers. Install them before starting: until then SIGTERM would kill the process
/// without a drain.
pub struct Signals {
    terminate: Signal,
    interrupt: Signal,
    hangup: Signal,
}

impl Signals {
    /// Must run inside the tokio runtime.
    pub fn install() -> std::io::Result<Self> {
        Ok(Signals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    /// Reloads the certificate and the trust bundle on each SIGHUP; returns on SIGTERM or SIGINT.
    pub async fn wait_for_shutdown(mut self, running: &Running) {
        loop {
            tokio::select! {
                _ = self.terminate.recv() => {
                    info!(signal = "SIGTERM", "shutting down");
                    return;
                }
                _ = self.interrupt.recv() => {
                    info!(signal = "SIGINT", "shutting down");
                    return;
                }
                _ = self.hangup.recv() => running.reload_certificates(),
            }
        }
    }
}
