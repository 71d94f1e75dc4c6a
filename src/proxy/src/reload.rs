//! Keeps what the sidecar loaded from disk in step with the disk, forever: the serving
//! certificate ([`CertJob`]) and the trust bundle ([`TrustJob`]).
//!
//! Diego rotates the instance identity by writing `instance.key.tmp` and `instance.crt.tmp` and
//! renaming the key first, then the certificate. So: watch the parent directories (a watch on a
//! renamed-over file goes dead), let a burst of events settle, read everything, and swap only
//! material that checks out (a pair whose key matches its leaf; a bundle without unreadable
//! files). Directory events can be missed, so a periodic re-check and SIGHUP back them up. A
//! failed load never drops what is being served.

use crate::config::{CertificateConfig, ReloadTiming, TrustConfig};
use crate::egress::EgressTls;
use crate::logging::rfc3339;
use crate::metrics::Metrics;
use crate::retry::{Backoff, LOG_REPEAT, LogThrottle};
use crate::server::stopped;
use crate::tls::{self, CertStore, ListenerTls, LoadError};
use crate::trust::{self, TrustBundle};
use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use rustls::crypto::CryptoProvider;
use sha2::{Digest, Sha256};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
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
                    let retry_ms = u64::try_from(retry.as_millis()).unwrap_or(u64::MAX);
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

/// The serving certificate.
pub(crate) struct CertJob {
    source: CertificateConfig,
    store: Arc<CertStore>,
    provider: Arc<CryptoProvider>,
    metrics: Arc<Metrics>,
    /// Hash of the material behind the pair being served: unchanged material is not parsed
    /// again.
    loaded: Option<[u8; 32]>,
    /// `source: minted`: when the leaf being served is due for renewal (Unix seconds).
    renew_at: Option<i64>,
}

impl CertJob {
    pub(crate) fn new(
        source: CertificateConfig,
        store: Arc<CertStore>,
        provider: Arc<CryptoProvider>,
        metrics: Arc<Metrics>,
    ) -> Self {
        CertJob {
            source,
            store,
            provider,
            metrics,
            loaded: None,
            renew_at: None,
        }
    }

    async fn load(&mut self) -> Result<(), LoadError> {
        if let CertificateConfig::Minted(config) = &self.source {
            return self.mint(config.clone()).await;
        }
        let source = self.source.clone();
        let material = tokio::task::spawn_blocking(move || source.read())
            .await
            .map_err(|e| LoadError::Service(format!("reading the certificate failed: {e}")))??;
        let fingerprint = fingerprint(&material.cert_pem, &material.key_pem);
        if self.loaded == Some(fingerprint) {
            return Ok(());
        }
        let names = &material.names;
        let pair = tls::parse_pair(names, &material.cert_pem, &material.key_pem, &self.provider)?;
        tls::check_validity(names, &pair.leaf, unix_now())?;
        self.store.replace(pair.certified);
        self.loaded = Some(fingerprint);
        let leaf = pair.leaf;
        self.metrics.cert_not_after.store(leaf.not_after, Relaxed);
        self.metrics.reloads_succeeded.fetch_add(1, Relaxed);
        info!(
            subject_cn = %leaf.subject_cn,
            serial = %leaf.serial,
            not_after = %rfc3339(leaf.not_after),
            cert = %names.cert,
            "certificate loaded"
        );
        Ok(())
    }
}

impl CertJob {
    /// Mints a new leaf when none is served yet or the served one is due for renewal.
    async fn mint(&mut self, config: crate::config::MintConfig) -> Result<(), LoadError> {
        let now = unix_now();
        if self.renew_at.is_some_and(|at| now < at) && self.store.is_loaded() {
            return Ok(());
        }
        let provider = self.provider.clone();
        let minted =
            tokio::task::spawn_blocking(move || crate::mint::mint(&config, &provider, now))
                .await
                .map_err(|e| LoadError::Service(format!("minting failed: {e}")))??;
        self.store.replace(minted.certified);
        self.renew_at = Some(minted.renew_at);
        let leaf = minted.leaf;
        self.metrics.cert_not_after.store(leaf.not_after, Relaxed);
        self.metrics.reloads_succeeded.fetch_add(1, Relaxed);
        info!(
            subject_cn = %leaf.subject_cn,
            serial = %leaf.serial,
            sans = %leaf.sans.join(","),
            ca = %minted.ca_subject,
            not_after = %rfc3339(leaf.not_after),
            renew_at = %rfc3339(minted.renew_at),
            left_out = (!minted.left_out.is_empty()).then(|| minted.left_out.join(",")).as_deref(),
            "certificate minted"
        );
        Ok(())
    }
}

impl Job for CertJob {
    const WHAT: &'static str = "certificate";

    fn due_in(&self) -> Option<Duration> {
        let at = self.renew_at?;
        let secs = u64::try_from(at.saturating_sub(unix_now())).unwrap_or(0);
        Some(Duration::from_secs(secs))
    }

    fn directories(&self) -> Vec<PathBuf> {
        self.source.directories()
    }

    async fn attempt(&mut self) -> Result<(), String> {
        self.load().await.map_err(|e| {
            let text = e.to_string();
            self.metrics.reloads_failed.fetch_add(1, Relaxed);
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
                retry_ms,
                held_back,
                "certificate reload failed; still serving the previous certificate"
            );
        } else {
            warn!(
                error,
                retry_ms,
                held_back,
                "no certificate loaded yet; TLS handshakes fail until one loads"
            );
        }
    }

    fn log_request(&self) {
        let cert = self.source.describe();
        info!(cert = %cert, "re-reading the certificate on request");
    }
}

/// The trust bundle of every listener that verifies client certificates and of every egress
/// entry.
pub(crate) struct TrustJob {
    config: TrustConfig,
    listeners: Vec<Arc<ListenerTls>>,
    egress: Vec<Arc<EgressTls>>,
    /// Fingerprint of the bundle installed now.
    installed: [u8; 32],
}

impl TrustJob {
    /// `installed` is the bundle the listeners were built with.
    pub(crate) fn new(
        config: TrustConfig,
        listeners: Vec<Arc<ListenerTls>>,
        egress: Vec<Arc<EgressTls>>,
        installed: &TrustBundle,
    ) -> Self {
        TrustJob {
            config,
            listeners,
            egress,
            installed: installed.fingerprint,
        }
    }
}

impl Job for TrustJob {
    const WHAT: &'static str = "trust bundle";

    fn directories(&self) -> Vec<PathBuf> {
        trust::directories(&self.config)
    }

    async fn attempt(&mut self) -> Result<(), String> {
        let config = self.config.clone();
        let (bundle, errors) = tokio::task::spawn_blocking(move || trust::load(&config))
            .await
            .map_err(|e| format!("reading the trust bundle failed: {e}"))?;
        if !errors.is_empty() {
            let texts: Vec<String> = errors.iter().map(ToString::to_string).collect();
            return Err(texts.join("; "));
        }
        if bundle.fingerprint == self.installed {
            return Ok(());
        }
        for listener in &self.listeners {
            listener
                .install(&bundle.roots)
                .map_err(|e| format!("cannot build the client certificate verifier: {e}"))?;
        }
        for egress in &self.egress {
            egress.install(&bundle.roots);
        }
        self.installed = bundle.fingerprint;
        log_bundle(&bundle, "trust bundle loaded");
        Ok(())
    }

    fn log_failure(&self, error: &str, retry_ms: u64, held_back: u64) {
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

fn fingerprint(cert: &[u8], key: &[u8]) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update((cert.len() as u64).to_be_bytes());
    hash.update(cert);
    hash.update(key);
    hash.finalize().into()
}

pub(crate) fn unix_now() -> i64 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    i64::try_from(secs).unwrap_or(i64::MAX)
}
