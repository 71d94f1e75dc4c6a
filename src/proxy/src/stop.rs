//! The stop switches: `watch` channels that turn true once, when a phase of the shutdown starts
//! (stop accepting, close everything, stop the background work). Its own module because every
//! room waits on them and none may import the rooms that flip them.

use tokio::sync::watch;

/// Resolves once `stop` turns true (or its sender is gone). Holds no borrow of the value, so
/// it can sit in a `select!` beside branches that await.
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}
