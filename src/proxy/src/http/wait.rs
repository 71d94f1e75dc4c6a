//! Waiting with limits: deadlines that cannot overflow, switches that only turn on, and the
//! listener's slots toward the app.

use super::settings::APP_SLOT_WAIT;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;

/// A slot toward the app: at once, or within [`APP_SLOT_WAIT`]; `None` if the cap held.
pub(super) async fn app_slot(slots: &Arc<Semaphore>) -> Option<OwnedSemaphorePermit> {
    if let Ok(slot) = slots.clone().try_acquire_owned() {
        return Some(slot);
    }
    match tokio::time::timeout(APP_SLOT_WAIT, slots.clone().acquire_owned()).await {
        Ok(Ok(slot)) => Some(slot),
        _ => None,
    }
}

/// Resolves once `switch` is true; never, if its sender is gone without turning it.
pub(super) async fn turned_true(switch: &mut watch::Receiver<bool>) {
    if switch.wait_for(|on| *on).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// `Instant` arithmetic that cannot overflow with `Duration::MAX`.
pub(super) fn later(at: Instant, by: Duration) -> Instant {
    at.checked_add(by)
        .unwrap_or_else(|| at + Duration::from_secs(86_400 * 365))
}
