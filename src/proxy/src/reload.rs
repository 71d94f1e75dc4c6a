//! Keeps what the sidecar loaded from disk in step with the disk, forever: the serving
//! certificate ([`CertJob`]) and the trust bundle ([`TrustJob`]).
//!
//! Diego rotates the instance identity by writing `instance.key.tmp` and `instance.crt.tmp` and
//! renaming the key first, then the certificate. So: watch the parent directories (a watch on a
//! renamed-over file goes dead), let a burst of events settle, read everything, and swap only
//! material that checks out (a pair whose key matches its leaf; a bundle without unreadable
//! files). Directory events can be missed, so a periodic re-check and SIGHUP back them up. A
//! failed load never drops what is being served.

use crate::cert::{CertStore, CertificateConfig, Fresh, LoadError, Loader, unix_now};
use crate::config::{ReloadTiming, TrustConfig};
use crate::egress::EgressTls;
use crate::logging::{millis, rfc3339};
use crate::metrics::Metrics;
use crate::retry::{Backoff, LOG_REPEAT, LogThrottle};
use crate::stop::stopped;
use crate::tls::ListenerTls;
use crate::trust::{self, TrustBundle};
use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use rustls::crypto::CryptoProvider;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::{Instant, sleep, sleep_until};
use tracing::{debug, info, warn};

/// Something loaded from files and kept current.
pub(crate) trait Job: Send + 'static {
    /// "certificate", "trust bundle": for log lines.
    const WHAT: &'static str;
    /// Directories whose changes may change the result.
    fn directories(&self) -> Vec<PathBuf>;
    /// One load attempt: installs new material, or changes nothing when the sources did not
    /// change. An error leaves what is served untouched.
    fn attempt(&mut self) -> impl Future<Output = Result<(), String>> + Send;
    /// Logs a failed attempt (called at most every [`LOG_REPEAT`] for the same error).
    fn log_failure(&self, error: &str, retry_ms: u64, held_back: u64);
    /// Logs an explicit reload request (SIGHUP).
    fn log_request(&self);
    /// When the next attempt is due regardless of changes (a minted certificate's renewal),
    /// if sooner than the periodic re-check.
    fn due_in(&self) -> Option<Duration> {
        None
    }
}

pub(crate) struct Reloader<J> {
    job: J,
    timing: ReloadTiming,
    backoff: Backoff,
    throttle: LogThrottle,
    watcher: Option<RecommendedWatcher>,
    watch_failure_logged: bool,
}

impl<J: Job> Reloader<J> {
    pub(crate) fn new(job: J, timing: ReloadTiming) -> Self {
        Reloader {
            job,
            timing,
            backoff: Backoff::new(timing.retry_min, timing.retry_max),
            throttle: LogThrottle::new(LOG_REPEAT),
            watcher: None,
            watch_failure_logged: false,
        }
    }

    /// Loads at once, then whenever the directories change, `reload_now` is notified, a retry
    /// is due or the periodic re-check comes round; until `stop` turns true.
    pub(crate) async fn run(mut self, reload_now: Arc<Notify>, mut stop: watch::Receiver<bool>) {
        let (events_tx, mut events) = mpsc::channel::<()>(1);
        let mut next_check = Instant::now();
        loop {
            if self.watcher.is_none() {
                self.watcher = self.watch(&events_tx);
            }
            tokio::select! {
                () = stopped(&mut stop) => return,
                _ = sleep_until(next_check) => {}
                Some(()) = events.recv() => {
                    sleep(self.timing.debounce).await;
                    while events.try_recv().is_ok() {}
                }
                () = reload_now.notified() => {
                    self.job.log_request();
                    // An explicit request should report even an unchanged failure.
                    self.throttle.clear();
                }
            }
            next_check = Instant::now() + self.check().await;
        }
    }

    /// One load attempt; returns how long to wait before the next unprompted one.
    async fn check(&mut self) -> Duration {
        match self.job.attempt().await {
            Ok(()) => {
                self.backoff.reset();
                self.throttle.clear();
                match self.job.due_in() {
                    Some(due) => due.min(self.timing.recheck),
                    None => self.timing.recheck,
                }
            }
            Err(text) => {
                let retry = self.backoff.next_delay();
                if let Some(held_back) = self.throttle.allow(&text) {
                    let retry_ms = millis(retry);
                    self.job.log_failure(&text, retry_ms, held_back);
                }
                retry
            }
        }
    }

    /// Watches the directories; `None` (logged once) when that is impossible, e.g. a directory
    /// does not exist yet. The caller retries on every loop.
    fn watch(&mut self, events: &mpsc::Sender<()>) -> Option<RecommendedWatcher> {
        let dirs = self.directories();
        if dirs.is_empty() {
            return None;
        }
        let events = events.clone();
        let handler = move |event: notify::Result<notify::Event>| {
            // Opening and reading the files (ours included) are Access events: reacting to
            // them would re-read forever. Close-after-write is a real change.
            if let Ok(event) = &event {
                let written = matches!(
                    event.kind,
                    EventKind::Access(AccessKind::Close(AccessMode::Write))
                );
                if matches!(event.kind, EventKind::Access(_)) && !written {
                    return;
                }
            }
            // A full channel already holds a wake-up; nothing is lost by dropping this one.
            let _ = events.try_send(());
        };
        let result = notify::recommended_watcher(handler).and_then(|mut watcher| {
            for dir in &dirs {
                watcher.watch(dir, RecursiveMode::NonRecursive)?;
            }
            Ok(watcher)
        });
        match result {
            Ok(watcher) => {
                debug!(dirs = ?dirs, "watching for {} changes", J::WHAT);
                Some(watcher)
            }
            Err(e) => {
                if !self.watch_failure_logged {
                    self.watch_failure_logged = true;
                    let recheck_s = self.timing.recheck.as_secs();
                    info!(
                        error = %e, recheck_s,
                        "cannot watch the {} directory; re-checking periodically instead",
                        J::WHAT
                    );
                }
                None
            }
        }
    }

    fn directories(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = Vec::new();
        for dir in self.job.directories() {
            let dir = if dir.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                dir
            };
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
        dirs
    }
}

/// The serving certificate: a [`Loader`] kept current, its pairs handed to the [`CertStore`].
pub(crate) struct CertJob {
    /// Shared with the blocking thread each load runs on.
    loader: Arc<Mutex<Loader>>,
    store: Arc<CertStore>,
    provider: Arc<CryptoProvider>,
    /// `None` for the instance identity egress presents beside another serving source: the
    /// certificate metrics describe the serving certificate.
    metrics: Option<Arc<Metrics>>,
    /// "certificate" or "egress certificate", for log lines.
    role: &'static str,
    /// The app's name, for the `cf` commands of fix texts.
    app: String,
    /// How to fix the last failure, logged beside it (the text `check` prints for it).
    fix: String,
}

impl CertJob {
    pub(crate) fn new(
        source: CertificateConfig,
        store: Arc<CertStore>,
        provider: Arc<CryptoProvider>,
        metrics: Arc<Metrics>,
        app: String,
    ) -> Self {
        CertJob {
            metrics: Some(metrics),
            role: "certificate",
            ..Self::for_egress(source, store, provider, app)
        }
    }

    /// The instance identity egress presents when another source serves ingress.
    pub(crate) fn for_egress(
        source: CertificateConfig,
        store: Arc<CertStore>,
        provider: Arc<CryptoProvider>,
        app: String,
    ) -> Self {
        CertJob {
            loader: Arc::new(Mutex::new(Loader::new(source))),
            store,
            provider,
            metrics: None,
            role: "egress certificate",
            app,
            fix: String::new(),
        }
    }

    fn loader(&self) -> MutexGuard<'_, Loader> {
        // A panic mid-load leaves nothing half-written: the loader only records what loaded.
        self.loader.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn load(&mut self) -> Result<(), LoadError> {
        let loader = self.loader.clone();
        let provider = self.provider.clone();
        let fresh = tokio::task::spawn_blocking(move || {
            loader
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .load(&provider)
        })
        .await
        .map_err(|e| LoadError::Service(format!("loading the certificate failed: {e}")))??;
        let Some(fresh) = fresh else {
            return Ok(());
        };
        self.store.replace(fresh.certified());
        let leaf = fresh.leaf();
        if let Some(metrics) = &self.metrics {
            metrics.cert_not_after.store(leaf.not_after, Relaxed);
            metrics.reloads_succeeded.fetch_add(1, Relaxed);
        }
        match &fresh {
            Fresh::Read { cert, .. } => info!(
                subject_cn = %leaf.subject_cn,
                serial = %leaf.serial,
                not_after = %rfc3339(leaf.not_after),
                cert = %cert,
                "{} loaded", self.role
            ),
            Fresh::Minted(minted) => info!(
                subject_cn = %leaf.subject_cn,
                serial = %leaf.serial,
                sans = %leaf.sans.join(","),
                ca = %minted.ca_subject,
                not_after = %rfc3339(leaf.not_after),
                renew_at = %rfc3339(minted.renew_at),
                left_out = (!minted.left_out.is_empty()).then(|| minted.left_out.join(",")).as_deref(),
                "certificate minted"
            ),
        }
        Ok(())
    }
}

impl Job for CertJob {
    const WHAT: &'static str = "certificate";

    fn due_in(&self) -> Option<Duration> {
        let at = self.loader().renew_at()?;
        let secs = u64::try_from(at.saturating_sub(unix_now())).unwrap_or(0);
        Some(Duration::from_secs(secs))
    }

    fn directories(&self) -> Vec<PathBuf> {
        self.loader().config().directories()
    }

    async fn attempt(&mut self) -> Result<(), String> {
        self.load().await.map_err(|e| {
            let text = e.to_string();
            let fix = self.loader().config().fix(&e, &self.app);
            self.fix = fix;
            if let Some(metrics) = &self.metrics {
                metrics.reloads_failed.fetch_add(1, Relaxed);
            }
            if !self.store.is_loaded() {
                self.store.set_problem(text.clone());
            }
            text
        })
    }

    fn log_failure(&self, error: &str, retry_ms: u64, held_back: u64) {
        if self.store.is_loaded() {
            warn!(
                error,
                fix = %self.fix,
                retry_ms,
                held_back,
                "certificate reload failed; still serving the previous certificate"
            );
        } else {
            warn!(
                error,
                fix = %self.fix,
                retry_ms,
                held_back,
                "no certificate loaded yet; TLS handshakes fail until one loads"
            );
        }
    }

    fn log_request(&self) {
        let cert = self.loader().config().describe();
        info!(cert = %cert, "re-reading the certificate on request");
    }
}

/// The trust bundle of every listener that verifies client certificates and of every egress
/// entry, and the platform identity anchors among it, derived from the instance certificate
/// (whose directory is watched too: a rotated instance certificate may chain to a rotated CA).
pub(crate) struct TrustJob {
    config: TrustConfig,
    /// `CF_INSTANCE_CERT`, when there is one.
    instance_cert: Option<trust::InstanceCert>,
    provider: Arc<CryptoProvider>,
    listeners: Vec<Arc<ListenerTls>>,
    egress: Vec<Arc<EgressTls>>,
    /// Fingerprint of the bundle and instance certificate installed now.
    installed: [u8; 32],
    /// Why the installed anchors have no platform identity CA (retried until they do).
    identity_problem: Option<String>,
    /// Some `allow`/`expect` rule is a `cf:` rule: without the identity CA it matches nobody,
    /// so not finding it is a failure to retry (else it only costs CF names in log lines).
    identity_required: bool,
}

impl TrustJob {
    /// `installed` is what the listeners were built with.
    pub(crate) fn new(
        config: TrustConfig,
        instance_cert: Option<trust::InstanceCert>,
        provider: Arc<CryptoProvider>,
        listeners: Vec<Arc<ListenerTls>>,
        egress: Vec<Arc<EgressTls>>,
        installed: &trust::Derived,
        identity_required: bool,
    ) -> Self {
        TrustJob {
            config,
            instance_cert,
            provider,
            listeners,
            egress,
            installed: installed.fingerprint,
            identity_problem: installed.problem.as_ref().map(ToString::to_string),
            identity_required,
        }
    }
}

/// How a failure to find the platform identity CA starts, so its log line can say what it
/// means (everything else is a bundle failure).
const IDENTITY_PROBLEM: &str = "platform identity CA unknown: ";

impl Job for TrustJob {
    const WHAT: &'static str = "trust bundle";

    fn directories(&self) -> Vec<PathBuf> {
        let mut dirs = trust::directories(&self.config);
        if let Some(parent) = self.instance_cert.as_ref().and_then(|c| c.path.parent())
            && !dirs.iter().any(|d| d == parent)
        {
            dirs.push(parent.to_owned());
        }
        dirs
    }

    async fn attempt(&mut self) -> Result<(), String> {
        let config = self.config.clone();
        let mut instance_cert = self.instance_cert.take();
        let provider = self.provider.clone();
        let (loaded, instance_cert) = tokio::task::spawn_blocking(move || {
            let (bundle, errors) = trust::load(&config);
            if !errors.is_empty() {
                return (Ok(Err(errors)), instance_cert);
            }
            let derived = trust::derive(&bundle, instance_cert.as_mut(), &provider);
            (derived.map(|d| Ok((bundle, d))), instance_cert)
        })
        .await
        .map_err(|e| format!("reading the trust bundle failed: {e}"))?;
        self.instance_cert = instance_cert;
        let loaded =
            loaded.map_err(|e| format!("cannot build the client certificate verifier: {e}"))?;
        let (bundle, derived) = loaded.map_err(|errors| {
            let texts: Vec<String> = errors.iter().map(ToString::to_string).collect();
            texts.join("; ")
        })?;
        if derived.fingerprint != self.installed {
            for listener in &self.listeners {
                listener
                    .install(&derived.anchors)
                    .map_err(|e| format!("cannot build the client certificate verifier: {e}"))?;
            }
            for egress in &self.egress {
                egress.install(&derived.anchors);
            }
            self.installed = derived.fingerprint;
            self.identity_problem = derived.problem.as_ref().map(ToString::to_string);
            log_bundle(&bundle, "trust bundle loaded");
            log_identity(&derived);
        }
        match &self.identity_problem {
            Some(problem) if self.identity_required => Err(format!("{IDENTITY_PROBLEM}{problem}")),
            _ => Ok(()),
        }
    }

    fn log_failure(&self, error: &str, retry_ms: u64, held_back: u64) {
        if error.starts_with(IDENTITY_PROBLEM) {
            warn!(
                error,
                retry_ms,
                held_back,
                "no caller or server has a CF identity until the platform identity CA is known: cf: rules match nothing"
            );
            return;
        }
        warn!(
            error,
            retry_ms,
            held_back,
            "trust bundle reload failed; still verifying peer certificates against the anchors loaded before"
        );
    }

    fn log_request(&self) {
        info!("re-reading the trust bundle on request");
    }
}

/// Which anchors speak for CF identities now.
pub(crate) fn log_identity(derived: &trust::Derived) {
    if derived.problem.is_none() && !derived.identity_names.is_empty() {
        info!(
            anchors = %derived.identity_names.join(", "),
            "platform identity CA: cf: identities are read only from chains ending here"
        );
    }
}

/// One line naming the anchors (CNs) and the files they came from.
pub(crate) fn log_bundle(bundle: &TrustBundle, message: &str) {
    let files: Vec<String> = bundle
        .files
        .iter()
        .map(|f| format!("{} ({})", f.name, f.subjects.join(", ")))
        .collect();
    info!(
        anchors = bundle.anchor_count(),
        files = %files.join("; "),
        "{message}"
    );
}
