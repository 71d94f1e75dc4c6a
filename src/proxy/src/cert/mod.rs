//! The serving certificate, in the spirit of ghostunnel's `certloader`: one interface over
//! every source, and everything about a certificate behind it. [`CertificateConfig`] says
//! where the pair comes from (resolved by [`crate::config`]); a [`Loader`] reads it, checks it
//! and says when to look again; the [`CertStore`] hands the current pair to every handshake;
//! [`CertificateConfig::fix`] says how to repair a pair that does not load, for `check` and for
//! a failed reload alike.
//!
//! | Module | Source |
//! |---|---|
//! | [`instance`] | `instance`: Diego's identity at `CF_INSTANCE_CERT`/`CF_INSTANCE_KEY` |
//! | [`files`] | `files`: the app's own pair |
//! | [`service`] | `service`: a bound service's credentials |
//! | [`minted`] | `minted`: a leaf made in memory, signed by a bound service's CA |
//!
//! [`pem`] parses PEM and certificates for all of them, [`der`] is the one hand-written DER
//! reader, [`error`] holds what can go wrong and the fix texts.

mod der;
mod error;
mod files;
mod instance;
mod minted;
mod pem;
mod service;

pub use files::CertificatePaths;
pub use minted::MintConfig;

pub(crate) use error::LoadError;
pub(crate) use minted::{Minted, mint};
pub(crate) use pem::{
    LeafInfo, Material, check_validity, leaf_info, parse_chain, parse_pair, pem_problem,
};

use arc_swap::ArcSwapOption;
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tls_sidecar_config::CertificateSource;

/// The serving certificate's source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertificateConfig {
    /// `source: instance` (Diego's instance identity) or `source: files` (the app's own pair):
    /// a key/cert pair read from files and reloaded when they change.
    Files {
        source: CertificateSource,
        paths: CertificatePaths,
    },
    /// `source: service`: the credentials of a bound service instance in `VCAP_SERVICES`
    /// (see [`service`] for the keys read).
    Service {
        /// The service instance's name (`cf bind-service APP NAME`).
        name: String,
        /// `VCAP_SERVICES` as found at start (`None` when unset).
        vcap_services: Option<String>,
    },
    /// `source: minted`: a key made in memory and a leaf signed by a bound service's CA,
    /// renewed before two thirds of its lifetime have passed (see [`minted`]).
    Minted(MintConfig),
}

impl CertificateConfig {
    /// The instance identity at `paths`.
    pub fn instance(paths: CertificatePaths) -> Self {
        CertificateConfig::Files {
            source: CertificateSource::Instance,
            paths,
        }
    }

    /// What `/ready` and the logs say the sidecar waits for.
    pub fn describe(&self) -> String {
        match self {
            CertificateConfig::Files { paths, .. } => paths.cert.display().to_string(),
            CertificateConfig::Service { name, .. } => {
                format!("the credentials of the bound service \"{name}\"")
            }
            CertificateConfig::Minted(m) => {
                format!(
                    "a certificate minted from the CA of the bound service \"{}\"",
                    m.service
                )
            }
        }
    }

    /// What `check` and messages call the source.
    pub fn source(&self) -> CertificateSource {
        match self {
            CertificateConfig::Files { source, .. } => *source,
            CertificateConfig::Service { .. } => CertificateSource::Service,
            CertificateConfig::Minted(_) => CertificateSource::Minted,
        }
    }
}

impl CertificateConfig {
    /// Reads the current PEM material (blocking: small files, or an env value). A minted
    /// certificate is made, not read: see [`mint`].
    pub(crate) fn read(&self) -> Result<Material, LoadError> {
        match self {
            CertificateConfig::Files {
                source: CertificateSource::Instance,
                paths,
            } => instance::read(paths),
            CertificateConfig::Files { paths, .. } => files::read(paths, false),
            CertificateConfig::Service {
                name,
                vcap_services,
            } => service::read(name, vcap_services.as_deref()),
            CertificateConfig::Minted(_) => Err(LoadError::Service(
                "a minted certificate is made in memory, not read".to_owned(),
            )),
        }
    }

    /// Directories whose changes can change the pair (none for a service: `VCAP_SERVICES`
    /// is fixed for the life of the process).
    pub(crate) fn directories(&self) -> Vec<PathBuf> {
        match self {
            CertificateConfig::Files { paths, .. } => files::directories(paths),
            CertificateConfig::Service { .. } | CertificateConfig::Minted(_) => Vec::new(),
        }
    }

    /// How to fix `e`, a failure to load from this source; `app` names the app in `cf`
    /// commands. `check` prints it beside the problem and a failed reload logs it.
    pub(crate) fn fix(&self, e: &LoadError, app: &str) -> String {
        let remedy = match self {
            CertificateConfig::Minted(config) => return minted::fix(config, e, app),
            CertificateConfig::Files {
                source: CertificateSource::Instance,
                ..
            } => instance::remedy(),
            CertificateConfig::Files { .. } => files::remedy(),
            CertificateConfig::Service { name, .. } => service::remedy(name),
        };
        remedy.fix(e).replace("APP", app)
    }

    /// The CA certificate(s) this source adds to the trust bundle, named for messages: a bound
    /// service's `ca`, or the CA a minted certificate is signed with.
    pub(crate) fn trust_extra(&self) -> Option<(String, String)> {
        match self {
            CertificateConfig::Service {
                name,
                vcap_services,
            } => service::trust_extra(name, vcap_services.as_deref()),
            CertificateConfig::Minted(config) => minted::trust_extra(config),
            CertificateConfig::Files { .. } => None,
        }
    }

    /// The instance identity's paths, when this source serves it.
    pub(crate) fn instance_paths(&self) -> Option<&CertificatePaths> {
        match self {
            CertificateConfig::Files {
                source: CertificateSource::Instance,
                paths,
            } => Some(paths),
            _ => None,
        }
    }
}

/// The pair being served. Swapped whole, so a handshake sees the old pair or the new one,
/// never the new key with the old certificate.
#[derive(Debug, Default)]
pub(crate) struct CertStore {
    current: ArcSwapOption<CertifiedKey>,
    /// Why the last load failed, while nothing is loaded (for `/ready`).
    problem: ArcSwapOption<String>,
}

impl CertStore {
    pub(crate) fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.current.load_full()
    }

    pub(crate) fn is_loaded(&self) -> bool {
        self.current.load().is_some()
    }

    pub(crate) fn replace(&self, pair: Arc<CertifiedKey>) {
        self.current.store(Some(pair));
        self.problem.store(None);
    }

    pub(crate) fn set_problem(&self, problem: String) {
        self.problem.store(Some(Arc::new(problem)));
    }

    pub(crate) fn problem(&self) -> Option<Arc<String>> {
        self.problem.load_full()
    }
}

/// Loads one source again and again: re-reads are cheap (unchanged material is not parsed
/// again) and a minted certificate is renewed only when due.
#[derive(Debug)]
pub(crate) struct Loader {
    config: CertificateConfig,
    /// Hash of the material behind the pair loaded last.
    loaded: Option<[u8; 32]>,
    /// `source: minted`: when the leaf loaded last is due for renewal (Unix seconds).
    renew_at: Option<i64>,
}

/// What a load produced that is new.
pub(crate) enum Fresh {
    /// A pair read from its source, named for the log by its certificate.
    Read {
        pair: pem::Pair,
        cert: String,
    },
    Minted(Minted),
}

impl Fresh {
    pub(crate) fn certified(&self) -> Arc<CertifiedKey> {
        match self {
            Fresh::Read { pair, .. } => pair.certified.clone(),
            Fresh::Minted(minted) => minted.certified.clone(),
        }
    }

    pub(crate) fn leaf(&self) -> &LeafInfo {
        match self {
            Fresh::Read { pair, .. } => &pair.leaf,
            Fresh::Minted(minted) => &minted.leaf,
        }
    }
}

impl Loader {
    pub(crate) fn new(config: CertificateConfig) -> Self {
        Loader {
            config,
            loaded: None,
            renew_at: None,
        }
    }

    pub(crate) fn config(&self) -> &CertificateConfig {
        &self.config
    }

    /// When a minted leaf is due for renewal (Unix seconds), once one is loaded.
    pub(crate) fn renew_at(&self) -> Option<i64> {
        self.renew_at
    }

    /// One load (blocking): `Ok(None)` when nothing changed since the last successful one.
    pub(crate) fn load(&mut self, provider: &CryptoProvider) -> Result<Option<Fresh>, LoadError> {
        let now = unix_now();
        if let CertificateConfig::Minted(config) = &self.config {
            if self.renew_at.is_some_and(|at| now < at) {
                return Ok(None);
            }
            let minted = mint(config, provider, now)?;
            self.renew_at = Some(minted.renew_at);
            return Ok(Some(Fresh::Minted(minted)));
        }
        let material = self.config.read()?;
        let fingerprint = fingerprint(&material.cert_pem, &material.key_pem);
        if self.loaded == Some(fingerprint) {
            return Ok(None);
        }
        let names = &material.names;
        let pair = parse_pair(names, &material.cert_pem, &material.key_pem, provider)?;
        check_validity(names, &pair.leaf, now)?;
        self.loaded = Some(fingerprint);
        Ok(Some(Fresh::Read {
            pair,
            cert: material.names.cert,
        }))
    }
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
