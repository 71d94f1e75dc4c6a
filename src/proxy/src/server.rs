//! Wires the sidecar together and takes it apart again: [`start`] binds the ports, builds the
//! shared state and each listener, and spawns the listeners and the background work;
//! [`Running::shutdown`] drains them in order. What runs lives elsewhere: the shared state in
//! `shared` and `gate`, binding and accepting in `accept`, connections in `forward`,
//! `egress`, `route` and `admin`, certificates and trust in `reload`.

use crate::accept::{self, Door, announce};
use crate::admin::AdminDoor;
use crate::cert::CertStore;
use crate::config::{CertificateConfig, EgressConfig, Plan, ReloadTiming, SidecarConfig};
use crate::egress::{Egress, EgressDoor, EgressTls};
use crate::egress_proxy::{EgressProxy, ProxyDoor, Target};
use crate::errors::StartError;
use crate::forward::TlsDoor;
use crate::gate::{self, Gate};
use crate::http::{Forwarding, HttpLimits, HttpService, HttpSettings};
use crate::identity::{AccessPolicy, Expectation, RequestPolicy};
use crate::logging::millis;
use crate::metrics::Metrics;
use crate::reload::{self, CertJob, Job, Reloader, TrustJob};
use crate::route::{self, Route};
use crate::shared::{Health, Listener, Shared};
use crate::tls::{self, ListenerTls};
use crate::trust::{self, Derived, InstanceCert, TrustBundle};
use rustls::crypto::CryptoProvider;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tls_sidecar_config::Mode;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{info, warn};

/// After the drain timeout, how long closed connections get to log their line.
const FORCED_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// A started sidecar. Dropping it leaves the tasks running; call [`Running::shutdown`].
pub struct Running {
    shared: Arc<Shared>,
    health: Arc<Health>,
    admin_addr: Arc<OnceLock<SocketAddr>>,
    /// The route listener's address once bound (after the app accepts).
    route_addr: Arc<OnceLock<SocketAddr>>,
    switches: Switches,
    listener_tasks: Vec<JoinHandle<()>>,
    egress_tasks: Vec<JoinHandle<()>>,
    background: Background,
}

/// The drain's phases, in the order [`Running::shutdown`] flips them; each task watches the
/// switch of its phase.
struct Switches {
    /// The TLS listeners and the route port stop accepting; the HTTP side closes idle
    /// connections.
    stop_accepting: watch::Sender<bool>,
    /// Egress stops accepting.
    stop_egress: watch::Sender<bool>,
    /// The drain timeout ended: every connection still open closes.
    close_all: watch::Sender<bool>,
    /// Reloaders, memory reclaim and the admin endpoint stop.
    stop_background: watch::Sender<bool>,
}

impl Switches {
    fn new() -> Self {
        Switches {
            stop_accepting: watch::channel(false).0,
            stop_egress: watch::channel(false).0,
            close_all: watch::channel(false).0,
            stop_background: watch::channel(false).0,
        }
    }
}

/// The tasks that run beside the listeners until the end of the drain, and the notifiers that
/// make a reloader load now (SIGHUP).
struct Background {
    /// `stop_background`, for each new task.
    stop: watch::Receiver<bool>,
    tasks: Vec<JoinHandle<()>>,
    reload_now: Vec<Arc<Notify>>,
}

impl Background {
    fn new(stop: &watch::Sender<bool>) -> Self {
        Background {
            stop: stop.subscribe(),
            tasks: Vec::new(),
            reload_now: Vec::new(),
        }
    }

    /// Keeps what `job` loads current until the end of the drain.
    fn reload(&mut self, job: impl Job, timing: ReloadTiming) {
        let now = Arc::new(Notify::new());
        let task = Reloader::new(job, timing).run(now.clone(), self.stop.clone());
        self.tasks.push(tokio::spawn(task));
        self.reload_now.push(now);
    }

    /// Gives memory back to the OS whenever the sidecar goes quiet.
    fn reclaim_memory(&mut self) {
        let stop = self.stop.clone();
        self.tasks.push(tokio::spawn(async move {
            crate::memory::reclaim_when_quiet(stop).await;
        }));
    }
}

/// Each port bound once before anything else, so that the bound ports label the metrics
/// (tests bind port 0). `None` where the port was busy: its listener retries.
struct FirstBinds {
    listeners: Vec<Option<TcpListener>>,
    egress: Vec<Option<TcpListener>>,
    /// Each TLS listener's port: the bound one, else the configured one.
    ports: Vec<u16>,
}

impl FirstBinds {
    fn bind(config: &SidecarConfig) -> Self {
        let mut listeners = Vec::with_capacity(config.listeners.len());
        for listener in &config.listeners {
            listeners.push(accept::bind(listener.bind).ok());
        }
        let ports = config
            .listeners
            .iter()
            .zip(&listeners)
            .map(|(l, first)| {
                first
                    .as_ref()
                    .and_then(|f| f.local_addr().ok())
                    .map_or(l.bind.port(), |a| a.port())
            })
            .collect();
        let mut egress = Vec::with_capacity(config.egress.len());
        for e in &config.egress {
            egress.push(accept::bind(e.bind).ok());
        }
        FirstBinds {
            listeners,
            egress,
            ports,
        }
    }

    /// Marks each port bound at the first try bound and logs it, before `start` returns (the
    /// others are marked by their task once bound).
    fn announce(&self, config: &SidecarConfig, health: &Health) {
        let tls = config.listeners.iter().zip(&self.listeners);
        for ((l, first), slot) in tls.zip(health.listener_slots()) {
            if let Some(bound) = first {
                announce(bound, &slot, "tls", Some(l));
            }
        }
        let egress = config.egress.iter().zip(&self.egress);
        for ((e, first), slot) in egress.zip(health.egress_slots()) {
            if let Some(bound) = first {
                announce_egress(bound, &slot, e);
            }
        }
    }
}

/// [`serve`] for a configuration built in code: resolves its rules first ([`Plan::new`]).
pub async fn start(config: SidecarConfig) -> Result<Running, StartError> {
    serve(Plan::new(config)?).await
}

/// Starts everything and returns without waiting for a certificate or a port: a missing
/// certificate or a busy port is retried in the background (and reported by `/ready`), because
/// in CF a sidecar exit kills the app instance. Each port is tried once before this returns,
/// so with free ports [`Running::tls_addrs`] is complete at once. Fails only when TLS cannot
/// be set up at all.
pub async fn serve(plan: Plan) -> Result<Running, StartError> {
    let Plan {
        config,
        policies,
        requests,
        expectations,
        proxy_expectations,
    } = plan;
    let provider = tls::provider();
    let (derived, instance_cert) = initial_identity(&config, &provider)?;
    let switches = Switches::new();
    let firsts = FirstBinds::bind(&config);
    let metrics = Arc::new(
        Metrics::with_request_rules(
            firsts
                .ports
                .iter()
                .copied()
                .zip(requests.iter().map(RequestPolicy::len)),
        )
        .with_egress(egress_names(&config).iter().map(String::as_str))
        .with_route(config.route.as_ref().map(|r| r.bind.port())),
    );

    let store = Arc::new(CertStore::default());
    // Each listener (the route port too) gets its own share, so a flood on one cannot take
    // the slots of another. The route port's gate comes last.
    let shares = config.listeners.len() + usize::from(config.route.is_some());
    let gates = gate::shares(&config.limits, shares);
    let shared = Arc::new(Shared::new(
        store.clone(),
        config.limits,
        switches.stop_accepting.subscribe(),
        switches.close_all.subscribe(),
        gates.clone(),
    ));
    let health = Arc::new(Health::new(&config, store.clone(), metrics.clone()));
    let parts = Parts {
        provider: &provider,
        store: &store,
        derived: &derived,
        metrics: &metrics,
        ports: &firsts.ports,
        gates: &gates,
    };
    let built = BuiltListeners::new(&config, policies, requests, &parts)?;

    let mut background = Background::new(&switches.stop_background);
    let egress_store = egress_store(&config, &parts, &health, &mut background);
    let egress = egress_entries(&config, expectations, &parts, &egress_store);
    let proxy = egress_proxy(&config, proxy_expectations, &parts, &egress_store);
    let mut egress_tls: Vec<Arc<EgressTls>> = egress.iter().map(|e| e.tls.clone()).collect();
    egress_tls.extend(
        proxy
            .iter()
            .flat_map(|p| p.targets.iter().map(|t| t.tls.clone())),
    );
    keep_current(
        &mut background,
        &config,
        &parts,
        built.verifying,
        egress_tls,
        instance_cert,
    );

    firsts.announce(&config, &health);
    let tls_binds = config.listeners.iter().map(|l| l.bind);
    let doors = built.listeners.into_iter();
    let doors = doors.map(|listener| TlsDoor::new(listener, shared.clone()));
    let slots = health.listener_slots();
    let stop = &switches.stop_accepting;
    let mut listener_tasks =
        spawn_listeners("tls", tls_binds, firsts.listeners, slots, doors, stop);
    // Egress keeps accepting until the drain has waited for the TLS listeners' connections.
    let egress_binds = config.egress.iter().map(|e| e.bind);
    let doors = egress.into_iter();
    let doors = doors.map(|egress| EgressDoor {
        egress,
        shared: shared.clone(),
    });
    let slots = health.egress_slots();
    let stop = &switches.stop_egress;
    let mut egress_tasks =
        spawn_listeners("egress", egress_binds, firsts.egress, slots, doors, stop);
    if let (Some(p), Some(proxy), Some(slot)) = (&config.egress_proxy, proxy, health.proxy_slot()) {
        let door = ProxyDoor {
            proxy,
            shared: shared.clone(),
        };
        let first = accept::bind(p.bind).ok();
        if let Some(bound) = first.as_ref().and_then(|l| l.local_addr().ok()) {
            let _ = slot.set(bound);
            info!(
                listener = "egress_proxy",
                "listening on {bound} (TLS_SIDECAR_PROXY)"
            );
        }
        egress_tasks.push(accept::spawn(
            first,
            p.bind,
            "egress_proxy",
            slot,
            door,
            stop.subscribe(),
        ));
    }
    let route_addr = Arc::new(OnceLock::new());
    if let Some(task) = spawn_route(&config, &metrics, &gates, &shared, &route_addr, &switches) {
        listener_tasks.push(task);
    }
    let admin_addr = Arc::new(OnceLock::new());
    if let Some(task) = spawn_admin(&config, &health, &admin_addr, &switches).await {
        background.tasks.push(task);
    }

    Ok(Running {
        shared,
        health,
        admin_addr,
        route_addr,
        switches,
        listener_tasks,
        egress_tasks,
        background,
    })
}

/// The trust bundle at start and the platform identity CA derived from it (with the instance
/// certificate it was found through, which the trust reloader keeps watching).
fn initial_identity(
    config: &SidecarConfig,
    provider: &Arc<CryptoProvider>,
) -> Result<(Derived, Option<InstanceCert>), StartError> {
    let trust = if config.verifies_peers() {
        initial_trust(config)
    } else {
        TrustBundle::empty()
    };
    let mut instance_cert = config
        .identity_ca
        .paths()
        .filter(|_| config.verifies_peers())
        .map(|p| InstanceCert::new(p.cert.clone()));
    let derived =
        trust::derive(&trust, instance_cert.as_mut(), provider).map_err(StartError::Tls)?;
    reload::log_identity(&derived);
    if let Some(problem) = derived
        .problem
        .as_ref()
        .filter(|_| config.identity_rules_written())
    {
        warn!(error = %problem, "platform identity CA unknown yet: cf: rules match nothing until it is; retrying");
    }
    Ok((derived, instance_cert))
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

/// Each TLS listener as its connections see it, and the TLS setups that verify client
/// certificates (the trust reloader updates their anchors).
struct BuiltListeners {
    listeners: Vec<Arc<Listener>>,
    verifying: Vec<Arc<ListenerTls>>,
}

/// What the steps after the first binds build from, besides the config.
struct Parts<'a> {
    provider: &'a Arc<CryptoProvider>,
    store: &'a Arc<CertStore>,
    derived: &'a Derived,
    metrics: &'a Arc<Metrics>,
    /// Each listener's port (bound or configured), in config order.
    ports: &'a [u16],
    /// Each listener's slots, in config order.
    gates: &'a [Arc<Gate>],
}

impl BuiltListeners {
    fn new(
        config: &SidecarConfig,
        policies: Vec<AccessPolicy>,
        requests: Vec<RequestPolicy>,
        parts: &Parts<'_>,
    ) -> Result<Self, StartError> {
        let mut listeners = Vec::with_capacity(config.listeners.len());
        let mut verifying = Vec::new();
        let rules = policies.into_iter().zip(requests);
        for (index, (l, (policy, requests))) in config.listeners.iter().zip(rules).enumerate() {
            let tls = ListenerTls::new(
                parts.provider.clone(),
                parts.store.clone(),
                l.mode,
                l.client_auth,
                &policy,
                &parts.derived.anchors,
            )
            .map_err(StartError::Tls)?;
            let tls = Arc::new(tls);
            if l.verifies_clients() {
                verifying.push(tls.clone());
            }
            let listener_metrics = parts.metrics.listeners[index].clone();
            let http = (l.mode == Mode::Http).then(|| {
                let settings = HttpSettings {
                    upstream: l.upstream.clone(),
                    xfcc: l.xfcc,
                    connect_timeout: config.limits.connect_timeout,
                    idle_timeout: config.limits.idle_timeout,
                    forwarding: Forwarding::Tls,
                    rules: requests,
                };
                HttpService::with_limits(settings, http_limits(config), listener_metrics.clone())
            });
            listeners.push(Arc::new(Listener {
                port: parts.ports[index],
                tls,
                upstream: l.upstream.clone(),
                policy,
                proxy_protocol: l.proxy_protocol,
                metrics: listener_metrics,
                gate: parts.gates[index].clone(),
                http,
            }));
        }
        Ok(BuiltListeners {
            listeners,
            verifying,
        })
    }
}

fn http_limits(config: &SidecarConfig) -> HttpLimits {
    HttpLimits {
        app_connections: config.limits.app_connections,
        streams_per_connection: config.limits.streams_per_connection,
    }
}

/// Keeps the certificate current (and, when anything verifies peers, the trust bundle), and
/// gives memory back to the OS whenever the sidecar goes quiet.
fn keep_current(
    background: &mut Background,
    config: &SidecarConfig,
    parts: &Parts<'_>,
    verifying: Vec<Arc<ListenerTls>>,
    egress_tls: Vec<Arc<EgressTls>>,
    instance_cert: Option<InstanceCert>,
) {
    let cert_job = CertJob::new(
        config.certificate.clone(),
        parts.store.clone(),
        parts.provider.clone(),
        parts.metrics.clone(),
        config.app_name(),
    );
    background.reload(cert_job, config.reload);
    background.reclaim_memory();
    if !verifying.is_empty() || !egress_tls.is_empty() {
        let job = TrustJob::new(
            config.trust.clone(),
            instance_cert,
            parts.provider.clone(),
            verifying,
            egress_tls,
            parts.derived,
            config.identity_rules_written(),
        );
        background.reload(job, config.reload);
    }
}

/// The store egress presents its certificate from. Egress presents the Diego instance identity
/// whenever there is one (see egress.rs): when another source serves ingress, the instance
/// identity is loaded (and kept current) on its own for egress.
fn egress_store(
    config: &SidecarConfig,
    parts: &Parts<'_>,
    health: &Health,
    background: &mut Background,
) -> Arc<CertStore> {
    match config.identity_ca.paths() {
        Some(paths)
            if (!config.egress.is_empty() || config.egress_proxy.is_some())
                && config.certificate != CertificateConfig::instance(paths.clone()) =>
        {
            let egress_store = Arc::new(CertStore::default());
            let job = CertJob::for_egress(
                CertificateConfig::instance(paths.clone()),
                egress_store.clone(),
                parts.provider.clone(),
                config.app_name(),
            );
            background.reload(job, config.reload);
            health.set_egress_store(egress_store.clone(), paths.cert.display().to_string());
            egress_store
        }
        _ => parts.store.clone(),
    }
}

/// Each egress entry as its connections see it.
fn egress_entries(
    config: &SidecarConfig,
    expectations: Vec<Expectation>,
    parts: &Parts<'_>,
    egress_store: &Arc<CertStore>,
) -> Vec<Arc<Egress>> {
    let mut egress = Vec::with_capacity(config.egress.len());
    let entries = config.egress.iter().zip(expectations);
    for ((e, expect), metrics) in entries.zip(&parts.metrics.egress) {
        let tls = EgressTls::new(
            parts.provider.clone(),
            egress_store.clone(),
            expect,
            &parts.derived.anchors,
        );
        egress.push(Arc::new(Egress {
            name: e.name.clone(),
            target: e.target.clone(),
            addrs: e.addrs.clone(),
            tls: Arc::new(tls),
            metrics: metrics.clone(),
        }));
    }
    egress
}

/// The egress metric blocks: each entry's name, then `egress_proxy.targets[i]` per target.
fn egress_names(config: &SidecarConfig) -> Vec<String> {
    let targets = config.egress_proxy.iter().flat_map(|p| p.targets.iter());
    config
        .egress
        .iter()
        .map(|e| e.name.clone())
        .chain(
            targets
                .enumerate()
                .map(|(i, _)| format!("egress_proxy.targets[{i}]")),
        )
        .collect()
}

/// The egress proxy's targets as its requests see them, when there is one.
fn egress_proxy(
    config: &SidecarConfig,
    expectations: Vec<Expectation>,
    parts: &Parts<'_>,
    egress_store: &Arc<CertStore>,
) -> Option<Arc<EgressProxy>> {
    let p = config.egress_proxy.as_ref()?;
    let metrics = parts.metrics.egress.iter().skip(config.egress.len());
    let targets = p.targets.iter().zip(expectations).zip(metrics);
    let targets = targets
        .map(|((spec, expect), metrics)| {
            let tls = EgressTls::new(
                parts.provider.clone(),
                egress_store.clone(),
                expect,
                &parts.derived.anchors,
            );
            let addrs = p.addrs.as_deref().map(Arc::from);
            Target::new(
                spec.clone(),
                Arc::new(tls),
                metrics.clone(),
                config.limits,
                addrs,
            )
        })
        .collect();
    Some(Arc::new(EgressProxy {
        targets,
        limits: config.limits,
    }))
}

/// One task per listener of `kind`, in config order: each binds its address unless its first
/// bind worked, records where it listens in its slot and accepts into its door until `stop`.
fn spawn_listeners<D: Door + Send + 'static>(
    kind: &'static str,
    binds: impl Iterator<Item = SocketAddr>,
    firsts: Vec<Option<TcpListener>>,
    slots: Vec<Arc<OnceLock<SocketAddr>>>,
    doors: impl Iterator<Item = D>,
    stop: &watch::Sender<bool>,
) -> Vec<JoinHandle<()>> {
    let listeners = binds.zip(firsts).zip(slots).zip(doors);
    listeners
        .map(|(((bind, first), slot), door)| {
            accept::spawn(first, bind, kind, slot, door, stop.subscribe())
        })
        .collect()
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

/// The route port's task, when there is one. It stops accepting with the TLS listeners when
/// the drain starts (Gorouter has stopped routing here by then).
fn spawn_route(
    config: &SidecarConfig,
    metrics: &Metrics,
    gates: &[Arc<Gate>],
    shared: &Arc<Shared>,
    route_addr: &Arc<OnceLock<SocketAddr>>,
    switches: &Switches,
) -> Option<JoinHandle<()>> {
    let (Some(route), Some(route_metrics)) = (&config.route, metrics.listeners.last()) else {
        return None;
    };
    if !route_metrics.route {
        return None;
    }
    let settings = HttpSettings {
        upstream: route.upstream.clone(),
        xfcc: tls_sidecar_config::Xfcc::Off,
        connect_timeout: config.limits.connect_timeout,
        idle_timeout: config.limits.idle_timeout,
        forwarding: route
            .trusted_xfcc_peer
            .map_or(Forwarding::Route, Forwarding::RouteKeepingXfccFrom),
        rules: RequestPolicy::default(),
    };
    let served = Arc::new(Route {
        http: HttpService::with_limits(settings, http_limits(config), route_metrics.clone()),
        metrics: route_metrics.clone(),
        gate: gates[config.listeners.len()].clone(),
    });
    Some(tokio::spawn(route::run(
        route.clone(),
        served,
        shared.clone(),
        route_addr.clone(),
        switches.stop_accepting.subscribe(),
    )))
}

/// The admin endpoint's task, when enabled: it answers until the end of the drain.
async fn spawn_admin(
    config: &SidecarConfig,
    health: &Arc<Health>,
    admin_addr: &Arc<OnceLock<SocketAddr>>,
    switches: &Switches,
) -> Option<JoinHandle<()>> {
    let addr = config.admin?;
    let first = accept::bind(addr).ok();
    if let Some(bound) = &first {
        announce(bound, admin_addr, "admin", None);
    }
    let door = AdminDoor::new(health.clone());
    let stop = switches.stop_background.subscribe();
    Some(accept::spawn(
        first,
        addr,
        "admin",
        admin_addr.clone(),
        door,
        stop,
    ))
}

impl Running {
    /// The bound address of each TLS listener, in config order; `None` while its port is
    /// still being retried.
    pub fn tls_addrs(&self) -> Vec<Option<SocketAddr>> {
        self.health.listener_addrs()
    }

    /// The bound address of each egress listener, in config order; `None` while its port is
    /// still being retried.
    pub fn egress_addrs(&self) -> Vec<Option<SocketAddr>> {
        self.health.egress_addrs()
    }

    /// The egress proxy's bound address; `None` without one, or while its port is retried.
    pub fn egress_proxy_addr(&self) -> Option<SocketAddr> {
        self.health.proxy_addr()
    }

    /// The bound route port; `None` without one, and until the app accepts on its port.
    pub fn route_addr(&self) -> Option<SocketAddr> {
        self.route_addr.get().copied()
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
        for job in &self.background.reload_now {
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
        self.health.start_draining();
        let _ = self.switches.stop_accepting.send(true);
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

        let deadline = started + drain_timeout;
        let mut drained = self.shared.listeners_drained_by(deadline).await;
        let _ = self.switches.stop_egress.send(true);
        for task in self.egress_tasks {
            let _ = task.await;
        }
        if drained {
            drained = self.shared.egress_drained_by(deadline).await;
        }
        let closed = if drained {
            0
        } else {
            let left = self.shared.in_flight();
            let _ = self.switches.close_all.send(true);
            self.shared
                .closed_by(Instant::now() + FORCED_CLOSE_GRACE)
                .await;
            left
        };
        info!(
            finished = in_flight.saturating_sub(closed),
            closed,
            duration_ms = millis(started.elapsed()),
            "drain finished"
        );
        let _ = self.switches.stop_background.send(true);
        for task in self.background.tasks {
            let _ = task.await;
        }
    }
}
