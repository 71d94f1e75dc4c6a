//! The serving certificate: reading a key/cert pair from PEM and handing it to rustls.
//!
//! One `ServerConfig` lives for the whole process and asks [`CertStore`] for the pair on every
//! handshake, so a reload swaps one pointer: the session cache and the ticket keys survive
//! rotation, and clients keep resuming across it.

use crate::config::CertificatePaths;
use arc_swap::ArcSwapOption;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Sessions kept for stateful resumption (TLS 1.2 clients without ticket support). Each entry
/// is a few hundred bytes.
const SESSION_CACHE_SIZE: usize = 1024;

/// The only crypto provider in the graph, passed explicitly (docs/DESIGN.md).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The pair being served. Swapped whole, so a handshake sees the old pair or the new one,
/// never the new key with the old certificate.
#[derive(Debug, Default)]
pub(crate) struct CertStore {
    current: ArcSwapOption<CertifiedKey>,
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
    }
}

#[derive(Debug)]
struct Resolver(Arc<CertStore>);

impl ResolvesServerCert for Resolver {
    // `None` before the first load: rustls aborts the handshake with an alert, which is right
    // while there is nothing to prove our identity with.
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.current()
    }
}

/// TLS 1.3 and 1.2, no client authentication, the certificate from `store`, session tickets
/// (TLS 1.3 and 1.2) plus a session cache, so repeat callers skip the RSA operation.
pub(crate) fn server_config(
    provider: Arc<CryptoProvider>,
    store: Arc<CertStore>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Resolver(store)));
    config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()?;
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_SIZE);
    Ok(Arc::new(config))
}

/// A checked pair, ready to serve.
#[derive(Debug)]
pub(crate) struct Pair {
    pub(crate) certified: Arc<CertifiedKey>,
    pub(crate) leaf: LeafInfo,
}

/// What the log says about a loaded leaf (never anything about the key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LeafInfo {
    pub(crate) subject_cn: String,
    /// Lower-case hex.
    pub(crate) serial: String,
    /// Seconds since the Unix epoch.
    pub(crate) not_after: i64,
}

/// Why a pair could not be loaded. Texts name files, never their contents.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LoadError {
    #[error("{} does not exist (yet)", .0.display())]
    Missing(PathBuf),
    #[error("cannot read {}: {cause}", .path.display())]
    Unreadable {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{} is not valid PEM: {problem}", .path.display())]
    BadPem {
        path: PathBuf,
        problem: &'static str,
    },
    #[error("{} holds no PEM CERTIFICATE block", .0.display())]
    NoCertificate(PathBuf),
    #[error("{} holds no private key (expected a PEM RSA PRIVATE KEY, PRIVATE KEY or EC PRIVATE KEY block)", .0.display())]
    NoKey(PathBuf),
    #[error("the certificate in {} cannot be parsed: {problem}", .path.display())]
    BadCertificate { path: PathBuf, problem: String },
    #[error("the private key in {} cannot be used: {cause}", .path.display())]
    BadKey { path: PathBuf, cause: rustls::Error },
    #[error(
        "the key in {} does not match the certificate in {} (during rotation Diego replaces the key first; waiting for the new certificate)",
        .key.display(), .cert.display()
    )]
    Mismatch { cert: PathBuf, key: PathBuf },
}

impl LoadError {
    pub(crate) fn read(path: &Path, cause: std::io::Error) -> Self {
        match cause.kind() {
            std::io::ErrorKind::NotFound => LoadError::Missing(path.to_owned()),
            _ => LoadError::Unreadable {
                path: path.to_owned(),
                cause,
            },
        }
    }
}

/// Parses and checks a pair read from `paths` (used only to name files in errors): the whole
/// chain from the cert file, the key in any of the usual PEM forms, and that the key belongs
/// to the leaf.
pub(crate) fn parse_pair(
    paths: &CertificatePaths,
    cert_pem: &[u8],
    key_pem: &[u8],
    provider: &CryptoProvider,
) -> Result<Pair, LoadError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(&paths.cert, &e))?;
    let leaf_der = chain
        .first()
        .ok_or_else(|| LoadError::NoCertificate(paths.cert.clone()))?;
    let leaf = leaf_info(leaf_der).map_err(|problem| LoadError::BadCertificate {
        path: paths.cert.clone(),
        problem,
    })?;

    let key = match PrivateKeyDer::from_pem_slice(key_pem) {
        Ok(key) => key,
        Err(pem::Error::NoItemsFound) => return Err(LoadError::NoKey(paths.key.clone())),
        Err(e) => return Err(pem_error(&paths.key, &e)),
    };
    let certified = CertifiedKey::from_der(chain, key, provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => LoadError::Mismatch {
            cert: paths.cert.clone(),
            key: paths.key.clone(),
        },
        rustls::Error::InvalidCertificate(e) => LoadError::BadCertificate {
            path: paths.cert.clone(),
            problem: format!("{e:?}"),
        },
        cause => LoadError::BadKey {
            path: paths.key.clone(),
            cause,
        },
    })?;
    Ok(Pair {
        certified: Arc::new(certified),
        leaf,
    })
}

// Generic texts: a PEM error can quote the bad line, and that line may be key material.
fn pem_error(path: &Path, e: &pem::Error) -> LoadError {
    let problem = match e {
        pem::Error::MissingSectionEnd { .. } => "a section has no END line (file partly written?)",
        pem::Error::IllegalSectionStart { .. } => "a BEGIN line is malformed",
        pem::Error::Base64Decode(_) => "a section is not valid base64",
        pem::Error::SectionTooLarge => "a section is too large",
        _ => "unreadable",
    };
    LoadError::BadPem {
        path: path.to_owned(),
        problem,
    }
}

fn leaf_info(der: &CertificateDer<'_>) -> Result<LeafInfo, String> {
    let (_, cert) = X509Certificate::from_der(der.as_ref()).map_err(|e| e.to_string())?;
    let subject_cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_owned();
    Ok(LeafInfo {
        subject_cn,
        serial: hex::encode(cert.raw_serial()),
        not_after: cert.validity().not_after.timestamp(),
    })
}
