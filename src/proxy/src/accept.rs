//! Binding a port (retried while it is busy) and the one accept loop every listener runs: the
//! TLS listeners, egress, the route port and the admin endpoint. What differs between them —
//! which slot a connection gets, what is spawned for it, what is counted and logged — is the
//! listener's [`Door`].

use crate::config::ListenerConfig;
use crate::logging::millis;
use crate::retry::{Backoff, LOG_REPEAT, LogThrottle};
use crate::stop::stopped;
use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::sleep;
use tracing::{info, warn};

/// Retry pacing when a port cannot be bound (e.g. still held by a previous process).
const BIND_RETRY_MIN: Duration = Duration::from_millis(250);
const BIND_RETRY_MAX: Duration = Duration::from_secs(5);
/// Pause after a failed accept (EMFILE and friends): retrying at once would spin.
const ACCEPT_RETRY_MIN: Duration = Duration::from_millis(10);
const ACCEPT_RETRY_MAX: Duration = Duration::from_secs(1);
/// Connections accepted in a row before the accept loop lets other tasks run.
const ACCEPT_BURST: u32 = 8;
/// Connections the kernel completes and queues while the sidecar is busy. tokio (mio) listens
/// with 128, like std: a burst of callers beyond that (a flood, a client pool opening at once)
/// had its SYNs dropped and waited a second for the retransmission. The kernel caps it at
/// `net.core.somaxconn` (4096 since Linux 5.4), as it does for nginx (511), HAProxy and Go.
const LISTEN_BACKLOG: i32 = 4096;

/// What one listener does with the connections its accept loop takes.
pub(crate) trait Door {
    /// What an open connection holds: its place in the listener's share of connections.
    type Slot;

    /// A slot for a connection just accepted (and counted as accepted), or `None` when every
    /// slot is held. Must not wait: the loop accepts the next connection after it.
    fn admit(&mut self, tcp: &TcpStream) -> Option<Self::Slot>;

    /// Spawns the task that serves the connection while it holds `slot`.
    fn serve(&self, tcp: TcpStream, peer: SocketAddr, slot: Self::Slot);

    /// Counts a connection closed for want of a slot, and says so when `held_back` is `Some`
    /// (the loop holds back repeats: this many since the last line).
    fn refused(&self, peer: SocketAddr, held_back: Option<u64>);

    /// Says that `accept` failed. The loop holds back repeats (`held_back` of them since the
    /// last line) and pauses `retry_ms` before accepting again.
    fn accept_failed(&self, error: &io::Error, held_back: u64, retry_ms: u64);
}

/// Spawns a listener's task: binds `addr` unless `first` is bound already (retrying until it
/// works or `stop`; `slot` gets the address), then accepts into `door` until `stop`.
pub(crate) fn spawn(
    first: Option<TcpListener>,
    addr: SocketAddr,
    kind: &'static str,
    slot: Arc<OnceLock<SocketAddr>>,
    mut door: impl Door + Send + 'static,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move { listen(first, addr, kind, &slot, &mut door, &mut stop).await })
}

/// Binds `addr` unless `first` is bound already (retrying until it works or `stop`), then
/// accepts into `door` until `stop`. Returning drops the socket: the port then refuses
/// connections.
pub(crate) async fn listen(
    first: Option<TcpListener>,
    addr: SocketAddr,
    kind: &'static str,
    slot: &OnceLock<SocketAddr>,
    door: &mut impl Door,
    stop: &mut watch::Receiver<bool>,
) {
    let Some(socket) = bound_or_retry(first, addr, kind, slot, stop).await else {
        return;
    };
    accept_until_stopped(&socket, door, stop).await;
}

/// Accepts until `stop`, handing each connection to `door`. A failed accept (out of file
/// descriptors, say) is retried after a growing pause, never fatal.
async fn accept_until_stopped(
    socket: &TcpListener,
    door: &mut impl Door,
    stop: &mut watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new(ACCEPT_RETRY_MIN, ACCEPT_RETRY_MAX);
    let mut accept_errors = LogThrottle::new(LOG_REPEAT);
    let mut refusals = LogThrottle::new(LOG_REPEAT);
    let mut burst = 0u32;
    loop {
        // A flood keeps accept() ready forever. Letting the connections just accepted (and the
        // I/O driver) run every few accepts gets a real client's ClientHello noticed before
        // `capacity` newer connections could shed it as silent.
        burst += 1;
        if burst >= ACCEPT_BURST {
            burst = 0;
            tokio::task::yield_now().await;
        }
        let accepted = tokio::select! {
            biased;
            () = stopped(stop) => return,
            accepted = socket.accept() => accepted,
        };
        match accepted {
            Ok((tcp, peer)) => {
                backoff.reset();
                match door.admit(&tcp) {
                    Some(slot) => door.serve(tcp, peer, slot),
                    None => {
                        // Counted before it is closed: a caller that saw the close then
                        // finds it in /metrics.
                        door.refused(peer, refusals.allow("max_connections"));
                        // Closed at once: cheaper than any work for it.
                        drop(tcp);
                    }
                }
            }
            Err(e) => {
                let delay = backoff.next_delay();
                if let Some(held_back) = accept_errors.allow(&e.to_string()) {
                    door.accept_failed(&e, held_back, millis(delay));
                }
                tokio::select! {
                    () = sleep(delay) => {}
                    () = stopped(stop) => return,
                }
            }
        }
    }
}

/// `first` if the first bind worked, else binds `addr` with backoff until it works or `stop`.
async fn bound_or_retry(
    first: Option<TcpListener>,
    addr: SocketAddr,
    kind: &'static str,
    slot: &OnceLock<SocketAddr>,
    stop: &mut watch::Receiver<bool>,
) -> Option<TcpListener> {
    if first.is_some() {
        return first;
    }
    let mut backoff = Backoff::new(BIND_RETRY_MIN, BIND_RETRY_MAX);
    let mut throttle = LogThrottle::new(LOG_REPEAT);
    loop {
        match bind(addr) {
            Ok(listener) => {
                announce(&listener, slot, kind, None);
                return Some(listener);
            }
            Err(e) => {
                let delay = backoff.next_delay();
                if throttle.allow(&e.to_string()).is_some() {
                    let hint = match e.kind() {
                        std::io::ErrorKind::AddrInUse => "another process holds the port; retrying",
                        _ => "retrying",
                    };
                    warn!(
                        listener = kind, %addr, error = %e, retry_ms = millis(delay),
                        "cannot listen on {addr}: {hint}"
                    );
                }
                tokio::select! {
                    () = sleep(delay) => {}
                    () = stopped(stop) => return None,
                }
            }
        }
    }
}

/// A listening socket on `addr` with [`LISTEN_BACKLOG`], set up as tokio's own `bind` does
/// (`SO_REUSEADDR`, non-blocking). Must run inside the runtime.
///
/// `TCP_NODELAY` is set here, once: Linux gives every accepted socket the listener's, which
/// saves a system call per connection. Every connection accepted here carries small
/// interactive writes (TLS records, request and response heads), which Nagle's delay would
/// only hold back.
pub(crate) fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// Marks `listener` bound and logs the line tests and operators wait for.
pub(crate) fn announce(
    listener: &TcpListener,
    slot: &OnceLock<SocketAddr>,
    kind: &'static str,
    config: Option<&ListenerConfig>,
) {
    if let Ok(addr) = listener.local_addr() {
        let _ = slot.set(addr);
        match config {
            Some(c) => info!(
                listener = kind,
                mode = c.mode.as_str(),
                client_auth = c.client_auth.as_str(),
                upstream = %c.upstream,
                "listening on {addr}"
            ),
            None => info!(listener = kind, "listening on {addr}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_accepted_on_a_bound_listener_has_nagle_off_without_asking() {
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert!(
            accepted.nodelay().unwrap(),
            "TCP_NODELAY must come from the listening socket: the connection loops no longer set it"
        );
        drop(client);
    }
}
