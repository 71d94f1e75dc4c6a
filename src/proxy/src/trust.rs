//! The trust bundle client certificates are verified against: every certificate in every file
//! under `$CF_SYSTEM_CERT_PATH` (Diego writes `trusted-ca-1.crt`, `trusted-ca-2.crt`, …, each
//! possibly holding several PEMs; in cf-deployment one of them is appRootCA, the root of every
//! instance identity), then `trust.ca_files`, then a bound service's `ca`.

use crate::config::TrustConfig;
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::{self, PemObject};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use x509_parser::prelude::{FromDer, X509Certificate};

/// A loaded bundle.
#[derive(Debug, Clone)]
pub(crate) struct TrustBundle {
    pub(crate) roots: Arc<RootCertStore>,
    /// Where the anchors came from, in load order.
    pub(crate) files: Vec<AnchorFile>,
    /// Hash of every source read: an unchanged bundle is not rebuilt.
    pub(crate) fingerprint: [u8; 32],
}

impl TrustBundle {
    pub(crate) fn empty() -> Self {
        TrustBundle {
            roots: Arc::new(RootCertStore::empty()),
            files: Vec::new(),
            fingerprint: [0; 32],
        }
    }

    pub(crate) fn anchor_count(&self) -> usize {
        self.roots.len()
    }
}

/// One source file (or PEM value) and the subjects (CN, else the whole DN) of its anchors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AnchorFile {
    pub(crate) name: String,
    pub(crate) subjects: Vec<String>,
}

/// Why (part of) the bundle could not be loaded. Texts name files, never their contents.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub(crate) enum TrustError {
    #[error("CF_SYSTEM_CERT_PATH {} does not exist", .0.display())]
    SystemDirMissing(PathBuf),
    #[error("the trust file {} (trust.ca_files) does not exist", .0.display())]
    CaFileMissing(PathBuf),
    #[error("cannot read {what}: {cause}")]
    Unreadable { what: String, cause: String },
    #[error("{what} is not valid PEM: {problem}")]
    BadPem { what: String, problem: &'static str },
    #[error("{0} holds no -----BEGIN CERTIFICATE----- block")]
    NoCertificate(String),
    #[error("a certificate in {what} cannot be used as a trust anchor: {problem}")]
    BadCertificate { what: String, problem: String },
}

/// Loads every source. The bundle holds whatever loaded; the errors say what did not. A
/// reload installs the bundle only when there are no errors (keeping the previous one
/// otherwise); at start a partial bundle is better than none: it trusts fewer CAs, never more.
pub(crate) fn load(config: &TrustConfig) -> (TrustBundle, Vec<TrustError>) {
    let mut loader = Loader {
        roots: RootCertStore::empty(),
        files: Vec::new(),
        errors: Vec::new(),
        hash: Sha256::new(),
    };
    if let Some(dir) = &config.system_dir {
        loader.system_dir(dir);
    }
    for file in &config.ca_files {
        match std::fs::read(file) {
            Ok(pem) => loader.pem(&file.display().to_string(), &pem, true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                loader.errors.push(TrustError::CaFileMissing(file.clone()));
            }
            Err(e) => loader.errors.push(TrustError::Unreadable {
                what: file.display().to_string(),
                cause: e.to_string(),
            }),
        }
    }
    for (name, pem) in &config.extra {
        loader.pem(name, pem.as_bytes(), true);
    }
    let bundle = TrustBundle {
        roots: Arc::new(loader.roots),
        files: loader.files,
        fingerprint: loader.hash.finalize().into(),
    };
    (bundle, loader.errors)
}

/// Directories whose changes can change the bundle.
pub(crate) fn directories(config: &TrustConfig) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = config.system_dir.iter().cloned().collect();
    for file in &config.ca_files {
        if let Some(parent) = file.parent()
            && !dirs.iter().any(|d| d == parent)
        {
            dirs.push(parent.to_owned());
        }
    }
    dirs
}

struct Loader {
    roots: RootCertStore,
    files: Vec<AnchorFile>,
    errors: Vec<TrustError>,
    hash: Sha256,
}

impl Loader {
    fn system_dir(&mut self, dir: &Path) {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.errors
                    .push(TrustError::SystemDirMissing(dir.to_owned()));
                return;
            }
            Err(e) => {
                self.errors.push(TrustError::Unreadable {
                    what: dir.display().to_string(),
                    cause: e.to_string(),
                });
                return;
            }
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            // Follows symlinks; skips directories and hidden files (editors' and tools' temp
            // files).
            .filter(|p| p.is_file())
            .filter(|p| {
                !p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with('.'))
            })
            .collect();
        paths.sort();
        for path in paths {
            match std::fs::read(&path) {
                Ok(pem) => self.pem(&path.display().to_string(), &pem, false),
                // Removed between the listing and the read: a rotation in progress.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => self.errors.push(TrustError::Unreadable {
                    what: path.display().to_string(),
                    cause: e.to_string(),
                }),
            }
        }
    }

    /// Adds every certificate in `pem`. `required`: a source with none is an error (a file
    /// in the system directory without certificates is simply not a CA file).
    fn pem(&mut self, name: &str, pem: &[u8], required: bool) {
        self.hash.update((name.len() as u64).to_be_bytes());
        self.hash.update(name.as_bytes());
        self.hash.update((pem.len() as u64).to_be_bytes());
        self.hash.update(pem);
        let certs = match CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>() {
            Ok(certs) => certs,
            Err(e) => {
                self.errors.push(TrustError::BadPem {
                    what: name.to_owned(),
                    problem: pem_problem(&e),
                });
                return;
            }
        };
        if certs.is_empty() {
            if required {
                self.errors.push(TrustError::NoCertificate(name.to_owned()));
            }
            return;
        }
        let mut subjects = Vec::with_capacity(certs.len());
        for cert in certs {
            let subject = subject_name(&cert);
            match self.roots.add(cert) {
                Ok(()) => subjects.push(subject),
                Err(e) => self.errors.push(TrustError::BadCertificate {
                    what: name.to_owned(),
                    problem: e.to_string(),
                }),
            }
        }
        self.files.push(AnchorFile {
            name: name.to_owned(),
            subjects,
        });
    }
}

fn pem_problem(e: &pem::Error) -> &'static str {
    match e {
        pem::Error::MissingSectionEnd { .. } => "a section has no END line (file partly written?)",
        pem::Error::IllegalSectionStart { .. } => "a BEGIN line is malformed",
        pem::Error::Base64Decode(_) => "a section is not valid base64",
        _ => "unreadable",
    }
}

/// The subject CN, else the whole subject.
fn subject_name(der: &CertificateDer<'_>) -> String {
    match X509Certificate::from_der(der.as_ref()) {
        Ok((_, cert)) => cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map_or_else(|| cert.subject().to_string(), str::to_owned),
        Err(_) => "(unparsable)".to_owned(),
    }
}
