//! Listeners, admission, readiness and the drain.

use crate::config::{EgressConfig, ListenerConfig, SidecarConfig};
use crate::egress::{self, Egress, EgressTls};
use crate::errors::StartError;
use crate::http::{HttpService, HttpSettings};
use crate::identity::AccessPolicy;
use crate::metrics::{ListenerMetrics, Metrics};
use crate::reload::{self, CertJob, Reloader, TrustJob};
use crate::retry::{Backoff, LOG_REPEAT, LogThrottle};
use crate::tls::{self, CertStore, ListenerTls};
use crate::trust::{self, TrustBundle};
use crate::{admin, forward};
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tls_sidecar_config::{HostPort, Mode};
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout};
use tracing::{info, warn};

/// Retry pacing when a port cannot be bound (e.g. still held by a previous process).
const BIND_RETRY_MIN: Duration = Duration::from_millis(250);
const BIND_RETRY_MAX: Duration = Duration::from_secs(5);
/// Pause after a failed accept (EMFILE and friends): retrying at once would spin.
const ACCEPT_RETRY_MIN: Duration = Duration::from_millis(10);
const ACCEPT_RETRY_MAX: Duration = Duration::from_secs(1);
/// After the drain timeout, how long closed connections get to log their line.
const FORCED_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// What every connection task needs, whatever its listener.
pub(crate) struct Shared {
    pub(crate) store: Arc<CertStore>,
    pub(crate) limits: crate::Limits,
    /// Turns true when the drain starts (the HTTP side then closes idle connections).
    pub(crate) graceful: watch::Receiver<bool>,
    /// Turns true when the drain timeout ends: every connection still open closes.
    pub(crate) close_all: watch::Receiver<bool>,
    /// One permit per open TLS listener connection.
    permits: Arc<Semaphore>,
    /// One permit per open egress connection: separate, because egress keeps accepting while
    /// the TLS listeners drain (the app may still call other apps to finish its requests).
    egress_permits: Arc<Semaphore>,
    /// `max_connections`, within what a semaphore and `acquire_many` can count.
    capacity: u32,
}

impl Shared {
    fn in_flight(&self) -> usize {
        let open = |permits: &Semaphore| {
            (self.capacity as usize).saturating_sub(permits.available_permits())
        };
        open(&self.permits) + open(&self.egress_permits)
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
    /// `Some` in http mode.
    pub(crate) http: Option<HttpService>,
}

/// What `/ready` and `/metrics` report.
pub(crate) struct Health {
    store: Arc<CertStore>,
    /// What a missing certificate is waited for from.
    cert_source: String,
    listeners: Vec<Slot>,
    /// One per egress entry, with its name.
    egress: Vec<(String, Slot)>,
    draining: AtomicBool,
    pub(crate) metrics: Arc<Metrics>,
}

struct Slot {
    configured: SocketAddr,
    bound: OnceLock<SocketAddr>,
}

impl Health {
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
        if let Some(slot) = self.listeners.iter().find(|s| s.bound.get().is_none()) {
            return Err(format!("not listening on {} yet", slot.configured));
        }
        match self.egress.iter().find(|(_, s)| s.bound.get().is_none()) {
            Some((name, slot)) => Err(format!(
                "egress \"{name}\" not listening on {} yet",
                slot.configured
            )),
            None => Ok(()),
        }
    }
}

/// A started sidecar. Dropping it leaves the tasks running; call [`Running::shutdown`].
pub struct Running {
    shared: Arc<Shared>,
    health: Arc<Health>,
    admin_addr: Arc<OnceLock<SocketAddr>>,
    reload_now: Vec<Arc<Notify>>,
    stop_accepting: watch::Sender<bool>,
    stop_egress: watch::Sender<bool>,
    close_all: watch::Sender<bool>,
    stop_background: watch::Sender<bool>,
    listener_tasks: Vec<JoinHandle<()>>,
    egress_tasks: Vec<JoinHandle<()>>,
    background_tasks: Vec<JoinHandle<()>>,
}

/// Starts everything and returns without waiting for a certificate or a port: a missing
/// certificate or a busy port is retried in the background (and reported by `/ready`), because
/// in CF a sidecar exit kills the app instance. Each port is tried once before this returns,
/// so with free ports [`Running::tls_addrs`] is complete at once. Fails only on `allow` rules
/// that cannot be resolved (exit 64) or when TLS cannot be set up at all.
pub async fn start(config: SidecarConfig) -> Result<Running, StartError> {
    let policies = config.policies()?;
    let expectations = config.expectations()?;
    let provider = tls::provider();
    let store = Arc::new(CertStore::default());
    let trust = if config.verifies_peers() {
        initial_trust(&config)
    } else {
        TrustBundle::empty()
    };

    let (stop_accepting, graceful) = watch::channel(false);
    let (stop_egress, _) = watch::channel(false);
    let (close_all, close_all_rx) = watch::channel(false);
    let (stop_background, _) = watch::channel(false);

    // Bind first: the bound ports label the metrics (tests bind port 0).
    let mut firsts = Vec::with_capacity(config.listeners.len());
    for listener in &config.listeners {
        firsts.push(TcpListener::bind(listener.bind).await.ok());
    }
    let ports: Vec<u16> = config
        .listeners
        .iter()
        .zip(&firsts)
        .map(|(l, first)| {
            first
                .as_ref()
                .and_then(|f| f.local_addr().ok())
                .map_or(l.bind.port(), |a| a.port())
        })
        .collect();
    let mut egress_firsts = Vec::with_capacity(config.egress.len());
    for e in &config.egress {
        egress_firsts.push(TcpListener::bind(e.bind).await.ok());
    }
    let metrics = Arc::new(
        Metrics::new(ports.iter().copied())
            .with_egress(config.egress.iter().map(|e| e.name.as_str())),
    );

    let capacity = config.limits.max_connections.min(Semaphore::MAX_PERMITS);
    let capacity = u32::try_from(capacity).unwrap_or(u32::MAX);
    let shared = Arc::new(Shared {
        store: store.clone(),
        limits: config.limits,
        graceful,
        close_all: close_all_rx,
        permits: Arc::new(Semaphore::new(capacity as usize)),
        egress_permits: Arc::new(Semaphore::new(capacity as usize)),
        capacity,
    });
    let health = Arc::new(Health {
        store: store.clone(),
        cert_source: config.certificate.describe(),
        listeners: config
            .listeners
            .iter()
            .map(|l| Slot {
                configured: l.bind,
                bound: OnceLock::new(),
            })
            .collect(),
        egress: config
            .egress
            .iter()
            .map(|e| {
                let slot = Slot {
                    configured: e.bind,
                    bound: OnceLock::new(),
                };
                (e.name.clone(), slot)
            })
            .collect(),
        draining: AtomicBool::new(false),
        metrics: metrics.clone(),
    });

    let mut listeners = Vec::with_capacity(config.listeners.len());
    let mut verifying = Vec::new();
    for (index, (l, policy)) in config.listeners.iter().zip(policies).enumerate() {
        let tls = ListenerTls::new(
            provider.clone(),
            store.clone(),
            l.mode,
            l.client_auth,
            &policy,
            &trust.roots,
        )
        .map_err(StartError::Tls)?;
        let tls = Arc::new(tls);
        if l.verifies_clients() {
            verifying.push(tls.clone());
        }
        let listener_metrics = metrics.listeners[index].clone();
        let http = (l.mode == Mode::Http).then(|| {
            let settings = HttpSettings {
                upstream: l.upstream.clone(),
                xfcc: l.xfcc,
                connect_timeout: config.limits.connect_timeout,
                idle_timeout: config.limits.idle_timeout,
            };
            HttpService::new(settings, listener_metrics.clone())
        });
        listeners.push(Arc::new(Listener {
            port: ports[index],
            tls,
            upstream: l.upstream.clone(),
            policy,
            proxy_protocol: l.proxy_protocol,
            metrics: listener_metrics,
            http,
        }));
    }

    let mut egress = Vec::with_capacity(config.egress.len());
    for ((e, expect), metrics) in config.egress.iter().zip(expectations).zip(&metrics.egress) {
        let tls = EgressTls::new(provider.clone(), store.clone(), expect, &trust.roots);
        egress.push(Arc::new(Egress {
            name: e.name.clone(),
            target: e.target.clone(),
            addrs: e.addrs.clone(),
            tls: Arc::new(tls),
            metrics: metrics.clone(),
        }));
    }

    let cert_now = Arc::new(Notify::new());
    let cert_job = CertJob::new(
        config.certificate.clone(),
        store,
        provider.clone(),
        metrics.clone(),
    );
    let mut background_tasks = vec![tokio::spawn(
        Reloader::new(cert_job, config.reload).run(cert_now.clone(), stop_background.subscribe()),
    )];
    let stop = stop_background.subscribe();
    background_tasks.push(tokio::spawn(async move {
        crate::memory::reclaim_when_quiet(stop).await;
    }));
    let mut reload_now = vec![cert_now];
    if !verifying.is_empty() || !egress.is_empty() {
        let trust_now = Arc::new(Notify::new());
        let egress_tls = egress.iter().map(|e| e.tls.clone()).collect();
        let job = TrustJob::new(config.trust.clone(), verifying, egress_tls, &trust);
        background_tasks.push(tokio::spawn(
            Reloader::new(job, config.reload).run(trust_now.clone(), stop_background.subscribe()),
        ));
        reload_now.push(trust_now);
    }

    let mut listener_tasks = Vec::with_capacity(config.listeners.len());
    for (index, ((l, first), listener)) in config
        .listeners
        .iter()
        .zip(firsts)
        .zip(listeners)
        .enumerate()
    {
        if let Some(bound) = &first {
            announce(bound, &health.listeners[index].bound, "tls", Some(l));
        }
        let task = tls_listener(
            index,
            l.bind,
            first,
            listener,
            shared.clone(),
            health.clone(),
            stop_accepting.subscribe(),
        );
        listener_tasks.push(tokio::spawn(task));
    }

    let mut egress_tasks = Vec::with_capacity(config.egress.len());
    for (index, ((e, first), entry)) in config
        .egress
        .iter()
        .zip(egress_firsts)
        .zip(egress)
        .enumerate()
    {
        if let Some(bound) = &first {
            announce_egress(bound, &health.egress[index].1.bound, e);
        }
        let task = egress_listener(
            index,
            e.clone(),
            first,
            entry,
            shared.clone(),
            health.clone(),
            stop_egress.subscribe(),
        );
        egress_tasks.push(tokio::spawn(task));
    }

    let admin_addr = Arc::new(OnceLock::new());
    if let Some(addr) = config.admin {
        let first = TcpListener::bind(addr).await.ok();
        if let Some(bound) = &first {
            announce(bound, &admin_addr, "admin", None);
        }
        let (health, admin_addr, mut stop) = (
            health.clone(),
            admin_addr.clone(),
            stop_background.subscribe(),
        );
        background_tasks.push(tokio::spawn(async move {
            let Some(listener) = bound_or_retry(first, addr, "admin", &admin_addr, &mut stop).await
            else {
                return;
            };
            admin::serve(listener, health, stop).await;
        }));
    }

    Ok(Running {
        shared,
        health,
        admin_addr,
        reload_now,
        stop_accepting,
        stop_egress,
        close_all,
        stop_background,
        listener_tasks,
        egress_tasks,
        background_tasks,
    })
}

/// The trust bundle at start. Problems are logged and the reloader keeps retrying; a partial
/// bundle trusts fewer CAs, never more.
fn initial_trust(config: &SidecarConfig) -> TrustBundle {
    let (bundle, errors) = trust::load(&config.trust);
    for e in &errors {
        warn!(error = %e, "trust bundle incomplete; retrying");
    }
    if bundle.anchor_count() == 0 {
        warn!(
            "no trust anchors: every client certificate and every egress server is refused (set trust.ca_files, or run where CF_SYSTEM_CERT_PATH is set)"
        );
    } else {
        reload::log_bundle(&bundle, "trust bundle loaded");
    }
    bundle
}

impl Running {
    /// The bound address of each TLS listener, in config order; `None` while its port is
    /// still being retried.
    pub fn tls_addrs(&self) -> Vec<Option<SocketAddr>> {
        self.health
            .listeners
            .iter()
            .map(|s| s.bound.get().copied())
            .collect()
    }

    /// The bound address of each egress listener, in config order; `None` while its port is
    /// still being retried.
    pub fn egress_addrs(&self) -> Vec<Option<SocketAddr>> {
        self.health
            .egress
            .iter()
            .map(|(_, s)| s.bound.get().copied())
            .collect()
    }

    /// The bound admin address; `None` when disabled or while its port is being retried.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr.get().copied()
    }

    /// What `/ready` says: `Ok` once a certificate is loaded and every listener is bound.
    pub fn readiness(&self) -> Result<(), String> {
        self.health.readiness()
    }

    /// Connections open right now.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight()
    }

    /// Re-reads the certificate and the trust bundle now (what SIGHUP does).
    pub fn reload_certificates(&self) {
        for job in &self.reload_now {
            job.notify_one();
        }
    }

    /// The counters `/metrics` renders.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.health.metrics.clone()
    }

    /// Drains: `/ready` turns 503, the TLS listeners close (new connections are refused) and
    /// their open connections get up to `limits.drain_timeout` to finish. Egress listeners keep
    /// accepting until then (the app may still call other apps to finish its own requests),
    /// then close, and their connections get what is left of the drain timeout. Whatever is
    /// still open at the end is closed.
    pub async fn shutdown(self) {
        let started = Instant::now();
        self.health.draining.store(true, Ordering::Relaxed);
        let _ = self.stop_accepting.send(true);
        // Once these return every TLS listening socket is closed.
        for task in self.listener_tasks {
            let _ = task.await;
        }
        let in_flight = self.shared.in_flight();
        let drain_timeout = self.shared.limits.drain_timeout;
        info!(
            in_flight,
            drain_timeout_ms = millis(drain_timeout),
            "draining: stopped accepting connections"
        );

        let everyone = self.shared.capacity;
        let deadline = started + drain_timeout;
        let permits = self.shared.permits.clone();
        let egress_permits = self.shared.egress_permits.clone();
        let mut drained = tokio::time::timeout_at(deadline, permits.acquire_many(everyone))
            .await
            .is_ok();
        let _ = self.stop_egress.send(true);
        for task in self.egress_tasks {
            let _ = task.await;
        }
        if drained {
            drained = tokio::time::timeout_at(deadline, egress_permits.acquire_many(everyone))
                .await
                .is_ok();
        }
        let closed = if drained {
            0
        } else {
            let left = self.shared.in_flight();
            let _ = self.close_all.send(true);
            let _ = timeout(FORCED_CLOSE_GRACE, async {
                let _ = permits.acquire_many(everyone).await;
                let _ = egress_permits.acquire_many(everyone).await;
            })
            .await;
            left
        };
        info!(
            finished = in_flight.saturating_sub(closed),
            closed,
            duration_ms = millis(started.elapsed()),
            "drain finished"
        );
        let _ = self.stop_background.send(true);
        for task in self.background_tasks {
            let _ = task.await;
        }
    }
}

/// Resolves once `stop` turns true (or its sender is gone). Holds no borrow of the value, so
/// it can sit in a `select!` beside branches that await.
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Marks `listener` bound and logs the line tests and operators wait for.
fn announce(
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
        match TcpListener::bind(addr).await {
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

async fn tls_listener(
    index: usize,
    bind: SocketAddr,
    first: Option<TcpListener>,
    listener: Arc<Listener>,
    shared: Arc<Shared>,
    health: Arc<Health>,
    mut stop: watch::Receiver<bool>,
) {
    let slot = &health.listeners[index].bound;
    let Some(socket) = bound_or_retry(first, bind, "tls", slot, &mut stop).await else {
        return;
    };
    accept_loop(&socket, &listener, &shared, &mut stop).await;
    // Returning drops the socket: the port now refuses connections.
}

/// Marks an egress listener bound and logs where the app reaches it.
fn announce_egress(listener: &TcpListener, slot: &OnceLock<SocketAddr>, config: &EgressConfig) {
    if let Ok(addr) = listener.local_addr() {
        let _ = slot.set(addr);
        info!(
            listener = "egress",
            egress = %config.name,
            target = %config.target,
            expect = %config
                .expect
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
            "listening on {addr}"
        );
    }
}

async fn egress_listener(
    index: usize,
    config: EgressConfig,
    first: Option<TcpListener>,
    egress: Arc<Egress>,
    shared: Arc<Shared>,
    health: Arc<Health>,
    mut stop: watch::Receiver<bool>,
) {
    let slot = &health.egress[index].1.bound;
    let socket = match first {
        Some(first) => first,
        None => {
            // Logs "listening on" itself once the port is free.
            let Some(socket) = bound_or_retry(None, config.bind, "egress", slot, &mut stop).await
            else {
                return;
            };
            socket
        }
    };
    let name = egress.name.clone();
    let mut backoff = Backoff::new(ACCEPT_RETRY_MIN, ACCEPT_RETRY_MAX);
    let mut accept_errors = LogThrottle::new(LOG_REPEAT);
    let mut refusals = LogThrottle::new(LOG_REPEAT);
    loop {
        let accepted = tokio::select! {
            biased;
            () = stopped(&mut stop) => return,
            accepted = socket.accept() => accepted,
        };
        match accepted {
            Ok((tcp, peer)) => {
                backoff.reset();
                egress.metrics.accepted.fetch_add(1, Relaxed);
                match shared.egress_permits.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let task = egress::serve(tcp, peer, egress.clone(), shared.clone(), permit);
                        tokio::spawn(task);
                    }
                    Err(_) => {
                        drop(tcp);
                        egress.metrics.refused.fetch_add(1, Relaxed);
                        if let Some(held_back) = refusals.allow("max_connections") {
                            let max_connections = shared.limits.max_connections;
                            warn!(
                                egress = %name, peer = %peer, max_connections, held_back,
                                "egress connection refused: max_connections reached"
                            );
                        }
                    }
                }
            }
            Err(e) => {
                let delay = backoff.next_delay();
                if let Some(held_back) = accept_errors.allow(&e.to_string()) {
                    let retry_ms = millis(delay);
                    warn!(egress = %name, error = %e, held_back, retry_ms, "accept failed");
                }
                tokio::select! {
                    () = sleep(delay) => {}
                    () = stopped(&mut stop) => return,
                }
            }
        }
    }
}

async fn accept_loop(
    socket: &TcpListener,
    listener: &Arc<Listener>,
    shared: &Arc<Shared>,
    stop: &mut watch::Receiver<bool>,
) {
    let port = listener.port;
    let mut backoff = Backoff::new(ACCEPT_RETRY_MIN, ACCEPT_RETRY_MAX);
    let mut accept_errors = LogThrottle::new(LOG_REPEAT);
    let mut refusals = LogThrottle::new(LOG_REPEAT);
    loop {
        let accepted = tokio::select! {
            biased;
            () = stopped(stop) => return,
            accepted = socket.accept() => accepted,
        };
        match accepted {
            Ok((tcp, peer)) => {
                backoff.reset();
                listener.metrics.accepted.fetch_add(1, Relaxed);
                match shared.permits.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let task =
                            forward::serve(tcp, peer, listener.clone(), shared.clone(), permit);
                        tokio::spawn(task);
                    }
                    Err(_) => {
                        // Closed before the handshake: cheaper than any TLS work.
                        drop(tcp);
                        listener.metrics.refused.fetch_add(1, Relaxed);
                        if let Some(held_back) = refusals.allow("max_connections") {
                            let max_connections = shared.limits.max_connections;
                            warn!(
                                listener = port, peer = %peer, max_connections, held_back,
                                "connection refused: max_connections reached"
                            );
                        }
                    }
                }
            }
            Err(e) => {
                let delay = backoff.next_delay();
                if let Some(held_back) = accept_errors.allow(&e.to_string()) {
                    let retry_ms = millis(delay);
                    warn!(listener = port, error = %e, held_back, retry_ms, "accept failed");
                }
                tokio::select! {
                    () = sleep(delay) => {}
                    () = stopped(stop) => return,
                }
            }
        }
    }
}
