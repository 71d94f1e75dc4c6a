//! Connection slots: each listener's share of `max_connections`, and which connection gives
//! up its slot when a listener is full (the oldest one still in its TLS handshake).

use crate::config::Limits;
use std::collections::BTreeMap;
use std::os::fd::{BorrowedFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio::time::Instant;

/// One gate per listener (the route port counts as one), so that a flood on one cannot take
/// the slots of another.
pub(crate) fn shares(limits: &Limits, listeners: usize) -> Vec<Arc<Gate>> {
    (0..listeners)
        .map(|_| Arc::new(Gate::new(listener_share(limits, listeners))))
        .collect()
}

/// How many connections one of `listeners` TLS listeners may hold: `limits.listener_connections`,
/// or an equal share of `max_connections`.
fn listener_share(limits: &Limits, listeners: usize) -> u32 {
    let share = match limits.listener_connections {
        Some(n) => n,
        None => limits.max_connections / listeners.max(1),
    };
    u32::try_from(share.clamp(1, Semaphore::MAX_PERMITS)).unwrap_or(u32::MAX)
}

/// Whether the client has sent anything yet (its ClientHello, normally), without waiting or
/// consuming it. A real client's ClientHello is usually there by the time its connection
/// leaves the accept queue; asking the socket now, rather than waiting for the runtime to
/// deliver readiness, keeps it out of the silent connections a flood sheds first.
pub(crate) fn has_sent(tcp: &tokio::net::TcpStream) -> bool {
    sent(socket2::SockRef::from(tcp))
}

/// How many bytes the client has sent and the socket holds, up to one, without taking them:
/// 0 at EOF, `WouldBlock` when nothing has arrived.
pub(crate) fn waiting(tcp: &tokio::net::TcpStream) -> std::io::Result<usize> {
    peek(socket2::SockRef::from(tcp))
}

/// [`has_sent`] for a socket known by its descriptor: the connection's own, which its
/// handshake owns while the connection asks (see [`Admission::appeal`]).
///
/// # Safety
/// `fd` is open for the length of the call.
#[allow(unsafe_code)]
pub(crate) unsafe fn has_sent_fd(fd: RawFd) -> bool {
    // SAFETY: the caller's contract; the borrow ends with this call.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    sent(socket2::SockRef::from(&fd))
}

fn sent(socket: socket2::SockRef<'_>) -> bool {
    matches!(peek(socket), Ok(n) if n > 0)
}

fn peek(socket: socket2::SockRef<'_>) -> std::io::Result<usize> {
    let mut byte = [std::mem::MaybeUninit::<u8>::uninit()];
    // MSG_PEEK on a non-blocking socket: WouldBlock when nothing has arrived, never waits.
    socket.peek(&mut byte)
}

/// One TLS listener's share of `max_connections`, and the connections of it that have not
/// finished their TLS handshake yet, oldest first.
///
/// At the cap, a new connection takes the slot of the oldest one still in its handshake
/// (preferring one that has not sent a byte) instead of being refused: a caller that has not
/// authenticated has no claim on a slot against one that may, and a pre-handshake flood can
/// then no longer lock out every new caller for `handshake_timeout`. Established connections
/// are never shed; with every slot held by one, new connections are refused.
pub(crate) struct Gate {
    permits: Arc<Semaphore>,
    capacity: u32,
    pending: Mutex<Pending>,
}

#[derive(Default)]
struct Pending {
    next: u64,
    /// Accepted, nothing received yet: shed first.
    silent: BTreeMap<u64, Held>,
    /// Sent something (a ClientHello, normally): shed only when no silent one is left.
    talking: BTreeMap<u64, Held>,
}

/// A pending connection's slot, and the switch that tells it it was shed (dropping the
/// sender wakes the receiver).
struct Held {
    permit: OwnedSemaphorePermit,
    _shed: oneshot::Sender<()>,
}

/// What [`Gate::admit`] did with a new connection.
pub(crate) enum Admitted {
    /// A free slot.
    Free(Admission),
    /// The slot of the oldest connection still in its handshake, which is now closing.
    Shed(Admission),
    /// Every slot is held by an established connection.
    Full,
}

impl Gate {
    fn new(capacity: u32) -> Self {
        Gate {
            permits: Arc::new(Semaphore::new(capacity as usize)),
            capacity,
            pending: Mutex::new(Pending::default()),
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        // Nothing in the critical sections can panic halfway; a poisoned lock still holds
        // consistent maps.
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A slot for a connection just accepted: a free one, or the oldest pending one's.
    /// `talking`: the client has sent bytes already.
    pub(crate) fn admit(self: &Arc<Self>, talking: bool) -> Admitted {
        let free = self.permits.clone().try_acquire_owned().ok();
        let mut pending = self.pending();
        let (permit, shed) = match free {
            Some(permit) => (permit, false),
            None => {
                let oldest = match pending.silent.pop_first() {
                    Some(entry) => Some(entry),
                    None => pending.talking.pop_first(),
                };
                match oldest {
                    // Dropping its sender tells the old connection to close.
                    Some((_, held)) => (held.permit, true),
                    None => return Admitted::Full,
                }
            }
        };
        let id = pending.next;
        pending.next += 1;
        let (tx, rx) = oneshot::channel();
        let held = Held { permit, _shed: tx };
        if talking {
            pending.talking.insert(id, held);
        } else {
            pending.silent.insert(id, held);
        }
        drop(pending);
        let admission = Admission {
            gate: self.clone(),
            id,
            shed: Some(rx),
            permit: None,
            talking: AtomicBool::new(talking),
        };
        if shed {
            Admitted::Shed(admission)
        } else {
            Admitted::Free(admission)
        }
    }

    /// How many slots this listener has.
    pub(crate) fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Connections holding a slot now (pending or established).
    pub(crate) fn open(&self) -> usize {
        (self.capacity as usize).saturating_sub(self.permits.available_permits())
    }

    /// Waits until every slot is free again (the drain), or `deadline`.
    pub(crate) async fn drained_by(&self, deadline: Instant) -> bool {
        let all = self.permits.acquire_many(self.capacity);
        matches!(tokio::time::timeout_at(deadline, all).await, Ok(Ok(_)))
    }
}

/// A connection's claim on a [`Gate`] slot: pending until [`Admission::established`], after
/// which it holds the slot until dropped.
pub(crate) struct Admission {
    gate: Arc<Gate>,
    id: u64,
    shed: Option<oneshot::Receiver<()>>,
    permit: Option<OwnedSemaphorePermit>,
    /// Known to have sent bytes (at admission or since).
    talking: AtomicBool,
}

impl Admission {
    /// The client sent its first bytes: it is shed after every silent connection.
    pub(crate) fn talking(&self) {
        self.talking.store(true, Relaxed);
        let mut pending = self.gate.pending();
        if let Some(held) = pending.silent.remove(&self.id) {
            pending.talking.insert(self.id, held);
        }
    }

    /// Known to have sent bytes: [`Self::talking`] has nothing left to do.
    pub(crate) fn is_talking(&self) -> bool {
        self.talking.load(Relaxed)
    }

    /// Resolves when a newer connection takes this one's slot before [`Self::established`].
    /// Call once: the signal is the future's, so the admission stays usable beside it.
    pub(crate) fn shed(&mut self) -> Shed {
        Shed(self.shed.take())
    }

    /// This connection was shed as silent, but its client has sent bytes by now (`has_sent`
    /// true now). A flood can admit a listener's whole capacity of newer connections before
    /// the runtime delivers one caller's readiness: the ClientHello was there, not yet
    /// noticed. The connection takes the slot of the oldest connection that is still silent,
    /// which is shed in its place, and waits among the talking ones: what it gets back is its
    /// new shed signal. `None` when none is silent (then a talking one was shed fairly, oldest
    /// first, and this one stays shed).
    pub(crate) fn appeal(&self, has_sent: bool) -> Option<Shed> {
        if !has_sent {
            return None;
        }
        let mut pending = self.gate.pending();
        let (_, silent) = pending.silent.pop_first()?;
        // Dropping its sender (the rest of `silent`) tells that connection it was shed.
        let (tx, rx) = oneshot::channel();
        let held = Held {
            permit: silent.permit,
            _shed: tx,
        };
        pending.talking.insert(self.id, held);
        self.talking.store(true, Relaxed);
        Some(Shed(Some(rx)))
    }

    /// The handshake finished: the slot is this connection's until it closes. `false` when it
    /// was shed in the meantime.
    pub(crate) fn established(&mut self) -> bool {
        let mut pending = self.gate.pending();
        let held = match pending.silent.remove(&self.id) {
            Some(held) => Some(held),
            None => pending.talking.remove(&self.id),
        };
        drop(pending);
        self.permit = held.map(|h| h.permit);
        self.permit.is_some()
    }
}

/// A pending connection's shed signal ([`Admission::shed`]): resolves when a newer connection
/// took its slot; never, for one that has none.
pub(crate) struct Shed(Option<oneshot::Receiver<()>>);

impl Future for Shed {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.0 {
            // Resolves (with an error) when the sender is dropped: that is the signal.
            Some(signal) => Pin::new(signal).poll(cx).map(|_| ()),
            None => Poll::Pending,
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if self.permit.is_none() {
            let mut pending = self.gate.pending();
            if pending.silent.remove(&self.id).is_none() {
                pending.talking.remove(&self.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admitted(gate: &Arc<Gate>, talking: bool) -> Admission {
        match gate.admit(talking) {
            Admitted::Free(admission) => admission,
            _ => panic!("a gate with free slots must give a free one"),
        }
    }

    #[test]
    fn a_connection_admitted_with_bytes_waiting_is_known_to_talk_and_a_silent_one_once_told() {
        let gate = Arc::new(Gate::new(4));
        let talking = admitted(&gate, true);
        assert!(talking.is_talking());
        let silent = admitted(&gate, false);
        assert!(!silent.is_talking());
        silent.talking();
        assert!(silent.is_talking());
        assert_eq!(
            gate.pending().talking.len(),
            2,
            "both wait among the talking"
        );
        assert!(gate.pending().silent.is_empty());
    }

    #[tokio::test]
    async fn a_connection_shed_as_silent_that_had_sent_bytes_takes_the_oldest_silent_slot_instead()
    {
        let gate = Arc::new(Gate::new(2));
        let mut late = admitted(&gate, false);
        let mut other = admitted(&gate, false);
        let (mut late_shed, mut other_shed) = (late.shed(), other.shed());
        // Full: the newcomer takes the oldest silent slot, `late`'s.
        let Admitted::Shed(_newcomer) = gate.admit(true) else {
            panic!("a full gate with silent connections sheds one");
        };
        (&mut late_shed).await;
        // Its ClientHello had come in unnoticed: it appeals, and `other` goes in its place.
        let mut again = late
            .appeal(true)
            .expect("a silent connection is left to shed");
        (&mut other_shed).await;
        assert!(late.is_talking());
        assert!(
            !other.established(),
            "the one shed in its place lost its slot"
        );
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(
            Pin::new(&mut again).poll(&mut cx).is_pending(),
            "not shed again"
        );
        assert!(late.established(), "the slot is the appealing connection's");
        assert_eq!(gate.open(), 2);
    }

    #[tokio::test]
    async fn an_appeal_without_bytes_sent_or_without_a_silent_connection_left_stays_shed() {
        let gate = Arc::new(Gate::new(1));
        let mut first = admitted(&gate, false);
        let first_shed = first.shed();
        let Admitted::Shed(second) = gate.admit(true) else {
            panic!("a full gate with a silent connection sheds it");
        };
        first_shed.await;
        assert!(
            first.appeal(false).is_none(),
            "it had sent nothing: shed rightly"
        );
        // The only other pending connection talks: nothing silent to shed in its place.
        assert!(first.appeal(true).is_none());
        assert!(!first.established());
        drop(second);
    }
}
