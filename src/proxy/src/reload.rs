//! Keeps [`CertStore`] in step with the files on disk, forever.
//!
//! Diego rotates the instance identity by writing `instance.key.tmp` and `instance.crt.tmp` and
//! renaming the key first, then the certificate. So: watch the parent directories (a watch on a
//! renamed-over file goes dead), let a burst of events settle, read both files, and swap only a
//! pair whose key matches its leaf. Directory events can be missed, so a periodic re-check and
//! SIGHUP back them up. A failed load never drops the pair being served.

use crate::config::{CertificatePaths, ReloadTiming};
use crate::logging::rfc3339;
use crate::retry::{Backoff, LOG_REPEAT, LogThrottle};
use crate::server::stopped;
use crate::tls::{self, CertStore, LeafInfo, LoadError};
use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use rustls::crypto::CryptoProvider;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::{Instant, sleep, sleep_until};
use tracing::{debug, info, warn};

pub(crate) struct Reloader {
    paths: CertificatePaths,
    store: Arc<CertStore>,
    provider: Arc<CryptoProvider>,
    timing: ReloadTiming,
    /// Hash of the files behind the pair being served: unchanged files are not parsed again.
    loaded: Option<[u8; 32]>,
    backoff: Backoff,
    throttle: LogThrottle,
    watcher: Option<RecommendedWatcher>,
    watch_failure_logged: bool,
}

enum Outcome {
    Unchanged,
    Loaded(LeafInfo),
}

impl Reloader {
    pub(crate) fn new(
        paths: CertificatePaths,
        store: Arc<CertStore>,
        provider: Arc<CryptoProvider>,
        timing: ReloadTiming,
    ) -> Self {
        Reloader {
            paths,
            store,
            provider,
            timing,
            loaded: None,
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
                    let cert = self.paths.cert.display();
                    info!(cert = %cert, "re-reading the certificate on request");
                    // An explicit request should report even an unchanged failure.
                    self.throttle.clear();
                }
            }
            next_check = Instant::now() + self.check().await;
        }
    }

    /// One load attempt; returns how long to wait before the next unprompted one.
    async fn check(&mut self) -> Duration {
        match self.load().await {
            Ok(outcome) => {
                if let Outcome::Loaded(leaf) = outcome {
                    let expired = leaf.not_after < unix_now();
                    info!(
                        subject_cn = %leaf.subject_cn,
                        serial = %leaf.serial,
                        not_after = %rfc3339(leaf.not_after),
                        expired,
                        cert = %self.paths.cert.display(),
                        "certificate loaded"
                    );
                }
                self.backoff.reset();
                self.throttle.clear();
                self.timing.recheck
            }
            Err(e) => {
                let retry = self.backoff.next_delay();
                let text = e.to_string();
                if let Some(held_back) = self.throttle.allow(&text) {
                    let retry_ms = u64::try_from(retry.as_millis()).unwrap_or(u64::MAX);
                    if self.store.is_loaded() {
                        warn!(
                            error = %text, retry_ms, held_back,
                            "certificate reload failed; still serving the previous certificate"
                        );
                    } else {
                        warn!(
                            error = %text, retry_ms, held_back,
                            "no certificate loaded yet; TLS handshakes fail until one loads"
                        );
                    }
                }
                retry
            }
        }
    }

    async fn load(&mut self) -> Result<Outcome, LoadError> {
        // The certificate first: Diego renames the key before the certificate, so a new
        // certificate read here guarantees that the key read next is new too.
        let cert = tokio::fs::read(&self.paths.cert)
            .await
            .map_err(|e| LoadError::read(&self.paths.cert, e))?;
        let key = tokio::fs::read(&self.paths.key)
            .await
            .map_err(|e| LoadError::read(&self.paths.key, e))?;
        let fingerprint = fingerprint(&cert, &key);
        if self.loaded == Some(fingerprint) {
            return Ok(Outcome::Unchanged);
        }
        let pair = tls::parse_pair(&self.paths, &cert, &key, &self.provider)?;
        self.store.replace(pair.certified);
        self.loaded = Some(fingerprint);
        Ok(Outcome::Loaded(pair.leaf))
    }

    /// Watches the parent directories; `None` (logged once) when that is impossible, e.g. the
    /// directory does not exist yet. The caller retries on every loop.
    fn watch(&mut self, events: &mpsc::Sender<()>) -> Option<RecommendedWatcher> {
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
            for dir in self.directories() {
                watcher.watch(&dir, RecursiveMode::NonRecursive)?;
            }
            Ok(watcher)
        });
        match result {
            Ok(watcher) => {
                debug!(dirs = ?self.directories(), "watching for certificate rotation");
                Some(watcher)
            }
            Err(e) => {
                if !self.watch_failure_logged {
                    self.watch_failure_logged = true;
                    let recheck_s = self.timing.recheck.as_secs();
                    info!(
                        error = %e, recheck_s,
                        "cannot watch the certificate directory; re-checking periodically instead"
                    );
                }
                None
            }
        }
    }

    fn directories(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = [&self.paths.cert, &self.paths.key]
            .iter()
            .map(|p| parent(p))
            .collect();
        dirs.dedup();
        dirs
    }
}

fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    }
}

fn fingerprint(cert: &[u8], key: &[u8]) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update((cert.len() as u64).to_be_bytes());
    hash.update(cert);
    hash.update(key);
    hash.finalize().into()
}

fn unix_now() -> i64 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    i64::try_from(secs).unwrap_or(i64::MAX)
}
