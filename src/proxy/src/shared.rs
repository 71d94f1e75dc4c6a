//! The state every connection shares while the sidecar runs: the certificate store, the
//! limits, the drain switches and the connection slots ([`Shared`]); each TLS listener as its
//! connections see it ([`Listener`]); and what `/ready` and `/metrics` report ([`Health`]).
//!
//! The rooms that serve connections (forward, egress, route, admin) read this; `server` builds
//! it. It imports none of them, so that no room depends on the one that wires them together.

use crate::cert::CertStore;
use crate::config::{Limits, SidecarConfig};
use crate::gate::Gate;
use crate::http::HttpService;
use crate::identity::AccessPolicy;
use crate::metrics::{ListenerMetrics, Metrics};
use crate::tls::ListenerTls;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use tls_sidecar_config::HostPort;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;

/// What every connection task needs, whatever its listener.
pub(crate) struct Shared {
    pub(crate) store: Arc<CertStore>,
    pub(crate) limits: Limits,
    /// Turns true when the drain starts (the HTTP side then closes idle connections).
    pub(crate) graceful: watch::Receiver<bool>,
    /// Turns true when the drain timeout ends: every connection still open closes.
    pub(crate) close_all: watch::Receiver<bool>,
    /// One permit per open egress connection: separate, because egress keeps accepting while
    /// the TLS listeners drain (the app may still call other apps to finish its requests).
    egress_permits: Arc<Semaphore>,
    /// `max_connections`, within what a semaphore and `acquire_many` can count.
    capacity: u32,
    /// Each listener's slots (its share of `max_connections`), in config order, the route
    /// port's last.
    gates: Vec<Arc<Gate>>,
}

impl Shared {
    pub(crate) fn new(
        store: Arc<CertStore>,
        limits: Limits,
        graceful: watch::Receiver<bool>,
        close_all: watch::Receiver<bool>,
        gates: Vec<Arc<Gate>>,
    ) -> Self {
        let capacity = limits.max_connections.min(Semaphore::MAX_PERMITS);
        let capacity = u32::try_from(capacity).unwrap_or(u32::MAX);
        Shared {
            store,
            limits,
            graceful,
            close_all,
            egress_permits: Arc::new(Semaphore::new(capacity as usize)),
            capacity,
            gates,
        }
    }

    /// A slot for one more egress connection; `None` at `max_connections`.
    pub(crate) fn egress_permit(&self) -> Option<OwnedSemaphorePermit> {
        self.egress_permits.clone().try_acquire_owned().ok()
    }

    /// Connections open right now, egress included.
    pub(crate) fn in_flight(&self) -> usize {
        let egress =
            (self.capacity as usize).saturating_sub(self.egress_permits.available_permits());
        egress + self.gates.iter().map(|g| g.open()).sum::<usize>()
    }

    /// Waits until every listener's connections have closed, or `deadline`; `false` at the
    /// deadline.
    pub(crate) async fn listeners_drained_by(&self, deadline: Instant) -> bool {
        let mut drained = true;
        for gate in &self.gates {
            drained = drained && gate.drained_by(deadline).await;
        }
        drained
    }

    /// Waits until every egress connection has closed, or `deadline`; `false` at the deadline.
    pub(crate) async fn egress_drained_by(&self, deadline: Instant) -> bool {
        let everyone = self.egress_permits.acquire_many(self.capacity);
        tokio::time::timeout_at(deadline, everyone).await.is_ok()
    }

    /// After `close_all`: waits for every connection to close, or `deadline`.
    pub(crate) async fn closed_by(&self, deadline: Instant) {
        for gate in &self.gates {
            gate.drained_by(deadline).await;
        }
        self.egress_drained_by(deadline).await;
    }
}

/// One listener, as its connection tasks see it.
pub(crate) struct Listener {
    /// The bound port (the configured one while binding is retried): log field and metrics
    /// label.
    pub(crate) port: u16,
    pub(crate) tls: Arc<ListenerTls>,
    pub(crate) upstream: HostPort,
    /// The resolved `allow` rules (tcp mode: also enforced in the handshake).
    pub(crate) policy: AccessPolicy,
    pub(crate) proxy_protocol: bool,
    pub(crate) metrics: Arc<ListenerMetrics>,
    /// This listener's connection slots.
    pub(crate) gate: Arc<Gate>,
    /// `Some` in http mode.
    pub(crate) http: Option<HttpService>,
}

/// What `/ready` and `/metrics` report.
pub(crate) struct Health {
    store: Arc<CertStore>,
    /// The instance identity egress presents, when another source serves ingress.
    egress_store: OnceLock<(Arc<CertStore>, String)>,
    /// What a missing certificate is waited for from.
    cert_source: String,
    listeners: Vec<Slot>,
    /// One per egress entry, with its name.
    egress: Vec<(String, Slot)>,
    /// The egress proxy's, when there is one.
    proxy: Option<Slot>,
    draining: AtomicBool,
    pub(crate) metrics: Arc<Metrics>,
}

/// Where a listener was configured to listen, and where it does once bound.
struct Slot {
    configured: SocketAddr,
    /// Shared with the listener's task, which sets it.
    bound: Arc<OnceLock<SocketAddr>>,
}

impl Slot {
    fn new(configured: SocketAddr) -> Self {
        Slot {
            configured,
            bound: Arc::default(),
        }
    }
}

impl Health {
    /// Nothing bound yet, no certificate loaded, not draining.
    pub(crate) fn new(
        config: &SidecarConfig,
        store: Arc<CertStore>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Health {
            store,
            egress_store: OnceLock::new(),
            cert_source: config.certificate.describe(),
            listeners: config.listeners.iter().map(|l| Slot::new(l.bind)).collect(),
            egress: config
                .egress
                .iter()
                .map(|e| (e.name.clone(), Slot::new(e.bind)))
                .collect(),
            proxy: config.egress_proxy.as_ref().map(|p| Slot::new(p.bind)),
            draining: AtomicBool::new(false),
            metrics,
        }
    }

    /// Egress presents `store` (loaded from `waiting_for`) rather than the ingress certificate:
    /// readiness waits for it too.
    pub(crate) fn set_egress_store(&self, store: Arc<CertStore>, waiting_for: String) {
        let _ = self.egress_store.set((store, waiting_for));
    }

    /// Where each TLS listener records its bound address, in config order.
    pub(crate) fn listener_slots(&self) -> Vec<Arc<OnceLock<SocketAddr>>> {
        self.listeners.iter().map(|s| s.bound.clone()).collect()
    }

    /// Where each egress listener records its bound address, in config order.
    pub(crate) fn egress_slots(&self) -> Vec<Arc<OnceLock<SocketAddr>>> {
        self.egress.iter().map(|(_, s)| s.bound.clone()).collect()
    }

    /// Where the egress proxy records its bound address.
    pub(crate) fn proxy_slot(&self) -> Option<Arc<OnceLock<SocketAddr>>> {
        self.proxy.as_ref().map(|s| s.bound.clone())
    }

    /// The egress proxy's bound address.
    pub(crate) fn proxy_addr(&self) -> Option<SocketAddr> {
        self.proxy.as_ref().and_then(|s| s.bound.get().copied())
    }

    /// Each TLS listener's bound address, in config order.
    pub(crate) fn listener_addrs(&self) -> Vec<Option<SocketAddr>> {
        self.listeners
            .iter()
            .map(|s| s.bound.get().copied())
            .collect()
    }

    /// Each egress listener's bound address, in config order.
    pub(crate) fn egress_addrs(&self) -> Vec<Option<SocketAddr>> {
        self.egress
            .iter()
            .map(|(_, s)| s.bound.get().copied())
            .collect()
    }

    /// From now on `/ready` says the sidecar is draining.
    pub(crate) fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// `Ok` when the sidecar can serve; otherwise one line saying why not.
    pub(crate) fn readiness(&self) -> Result<(), String> {
        if self.draining.load(Ordering::Relaxed) {
            return Err("draining: the sidecar is shutting down".to_owned());
        }
        if !self.store.is_loaded() {
            let waiting = format!(
                "no certificate loaded yet (waiting for {})",
                self.cert_source
            );
            return Err(match self.store.problem() {
                Some(problem) => format!("{waiting}: {problem}"),
                None => waiting,
            });
        }
        if let Some((store, waiting)) = self.egress_store.get()
            && !store.is_loaded()
        {
            let waiting = format!("no egress certificate loaded yet (waiting for {waiting})");
            return Err(match store.problem() {
                Some(problem) => format!("{waiting}: {problem}"),
                None => waiting,
            });
        }
        if let Some(slot) = self.listeners.iter().find(|s| s.bound.get().is_none()) {
            return Err(format!("not listening on {} yet", slot.configured));
        }
        if let Some((name, slot)) = self.egress.iter().find(|(_, s)| s.bound.get().is_none()) {
            return Err(format!(
                "egress \"{name}\" not listening on {} yet",
                slot.configured
            ));
        }
        match self.proxy.as_ref().filter(|s| s.bound.get().is_none()) {
            Some(slot) => Err(format!(
                "egress proxy not listening on {} yet",
                slot.configured
            )),
            None => Ok(()),
        }
    }
}
