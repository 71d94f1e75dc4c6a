//! The trust bundle client certificates are verified against: every certificate in every file
//! under `$CF_SYSTEM_CERT_PATH` (Diego writes `trusted-ca-1.crt`, `trusted-ca-2.crt`, …, each
//! possibly holding several PEMs; in cf-deployment one of them is appRootCA, the root of every
//! instance identity), then `trust.ca_files`, then a bound service's `ca`.
//!
//! # Which anchors speak for CF identities
//!
//! Every anchor in the bundle can sign a chain that verifies, and any of them can put
//! `OU=app:<guid>` in a subject (name constraints cannot restrict OUs). So a `cf:` identity is
//! read only from a chain that ALSO verifies against the *identity anchors*: the trust
//! anchor(s) this instance's own `CF_INSTANCE_CERT` chains to, plus every anchor from
//! `$CF_SYSTEM_CERT_PATH` with exactly the same subject. Any other chain is "verified, no CF
//! identity": `dns:` rules and XFCC still work, `cf:` rules never match it.
//!
//! Why the root anchor and not our issuing intermediate (instanceIdentityCA):
//! - webpki proves which *anchor* a chain ends at; the anchor is what the operator declared.
//!   In cf-deployment appRootCA signs nothing but instanceIdentityCA, so the two name the same
//!   set of certificates.
//! - Diego cells are rolled one by one when instanceIdentityCA is rotated: for a while callers
//!   on other cells present the other intermediate under the same root. Pinning our own
//!   intermediate would refuse them; pinning the root does not.
//! - When the root itself is rotated (CredHub's transitional CAs), the operator's trust store
//!   holds the old and the new appRootCA under the same subject: same-subject anchors from
//!   the operator's `$CF_SYSTEM_CERT_PATH` (never from `trust.ca_files` or a service) count
//!   too, so instances on either side of the rotation keep their identities.
//!
//! Both sets are re-derived whenever the bundle or the instance certificate changes.

use crate::cert::pem_problem;
use crate::config::TrustConfig;
use crate::identity::CfIdentity;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DistinguishedName, Error, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use x509_parser::prelude::{FromDer, X509Certificate};

/// A loaded bundle.
#[derive(Debug, Clone)]
pub(crate) struct TrustBundle {
    pub(crate) roots: Arc<RootCertStore>,
    /// Where the anchors came from, in load order.
    pub(crate) files: Vec<AnchorFile>,
    /// Hash of every source read: an unchanged bundle is not rebuilt.
    pub(crate) fingerprint: [u8; 32],
    /// The first `system_anchors` roots came from `$CF_SYSTEM_CERT_PATH` (the operator's).
    pub(crate) system_anchors: usize,
    /// The subject (CN, else the whole DN) of each root, in `roots` order.
    pub(crate) anchor_names: Vec<String>,
}

impl TrustBundle {
    pub(crate) fn empty() -> Self {
        TrustBundle {
            roots: Arc::new(RootCertStore::empty()),
            files: Vec::new(),
            fingerprint: [0; 32],
            system_anchors: 0,
            anchor_names: Vec::new(),
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
        names: Vec::new(),
    };
    if let Some(dir) = &config.system_dir {
        loader.system_dir(dir);
    }
    let system_anchors = loader.roots.len();
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
        system_anchors,
        anchor_names: loader.names,
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
    names: Vec<String>,
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
                Ok(()) => {
                    self.names.push(subject.clone());
                    subjects.push(subject);
                }
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

/// What peer certificates are checked against now: the whole bundle, and the identity anchors
/// among it. Swapped whole on every change, so one connection sees one consistent pair.
#[derive(Debug)]
pub(crate) struct Anchors {
    pub(crate) bundle: Arc<RootCertStore>,
    /// The platform instance-identity anchors (a subset of `bundle`); empty outside CF, while
    /// the instance certificate is missing, or when it chains to no anchor of the bundle.
    pub(crate) identity: Arc<RootCertStore>,
    /// Verifies client chains against `bundle` (re-checking resumed sessions).
    chain: Arc<dyn ClientCertVerifier>,
    /// Verifies client chains against `identity`; `None` when there is no identity anchor.
    identity_chain: Option<Arc<dyn ClientCertVerifier>>,
    provider: Arc<CryptoProvider>,
    /// Client chains that verified against these anchors, with their identity: see
    /// [`Anchors::check_client`].
    verified: Mutex<HashMap<[u8; 32], Verified>>,
}

/// A client chain that verified against one [`Anchors`], and the identity read from it.
#[derive(Debug, Clone)]
struct Verified {
    identity: CfIdentity,
    /// The verdict holds while every certificate of the chain is within its validity
    /// (Unix seconds): with fixed anchors and no revocation, time is the only thing that can
    /// change it.
    from: u64,
    until: u64,
}

/// Chains remembered per [`Anchors`] (a few hundred bytes each); the map is emptied when
/// full, which costs only re-verifications.
const VERIFIED_CAPACITY: usize = 512;

impl Anchors {
    pub(crate) fn new(
        bundle: Arc<RootCertStore>,
        identity: RootCertStore,
        provider: &Arc<CryptoProvider>,
    ) -> Result<Self, rustls::Error> {
        let identity = Arc::new(identity);
        let identity_chain = if identity.is_empty() {
            None
        } else {
            Some(chain_verifier(&identity, provider, false)?)
        };
        Ok(Anchors {
            chain: chain_verifier(&bundle, provider, false)?,
            bundle,
            identity,
            identity_chain,
            provider: provider.clone(),
            verified: Mutex::new(HashMap::new()),
        })
    }

    /// Verifies a client chain (leaf first) against the bundle at `now` and returns its CF
    /// identity (see [`Anchors::identity`]). Both take two chain verifications (about
    /// 0.15 ms for Diego's RSA-3072 CAs), so a chain that verified against these very anchors
    /// is remembered until the first of its certificates expires: a resumed session, and the
    /// same caller's next connections, cost a hash and a lookup. A trust change builds new
    /// `Anchors`, and so starts with nothing remembered.
    pub(crate) fn check_client(
        &self,
        chain: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<CfIdentity, rustls::Error> {
        let (leaf, intermediates) = chain
            .split_first()
            .ok_or(rustls::Error::NoCertificatesPresented)?;
        let mut hash = Sha256::new();
        for cert in chain {
            hash.update((cert.len() as u64).to_be_bytes());
            hash.update(cert.as_ref());
        }
        let key: [u8; 32] = hash.finalize().into();
        let secs = now.as_secs();
        if let Ok(map) = self.verified.lock()
            && let Some(v) = map.get(&key)
            && v.from <= secs
            && secs < v.until
        {
            return Ok(v.identity.clone());
        }
        self.chain.verify_client_cert(leaf, intermediates, now)?;
        let identity = self.identity(Side::Client, leaf, intermediates, now);
        if let Some((from, until)) = validity_window(chain)
            && let Ok(mut map) = self.verified.lock()
        {
            if map.len() >= VERIFIED_CAPACITY {
                map.clear();
            }
            map.insert(
                key,
                Verified {
                    identity: identity.clone(),
                    from,
                    until,
                },
            );
        }
        Ok(identity)
    }

    /// The CF identity of a chain that verified against the bundle: the leaf's OUs when the
    /// chain also ends at an identity anchor, checked for `side`'s purpose, else none (the
    /// OUs were written by some other CA: `not_platform` says so).
    pub(crate) fn identity(
        &self,
        side: Side,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> CfIdentity {
        platform_identity(leaf, || match side {
            Side::Client => self
                .identity_chain
                .as_ref()
                .is_some_and(|v| v.verify_client_cert(leaf, intermediates, now).is_ok()),
            // No hostname: Diego certificates name no routes.
            Side::Server => {
                !self.identity.is_empty()
                    && rustls::server::ParsedCertificate::try_from(leaf).is_ok_and(|cert| {
                        rustls::client::verify_server_cert_signed_by_trust_anchor(
                            &cert,
                            &self.identity,
                            intermediates,
                            now,
                            self.provider.signature_verification_algorithms.all,
                        )
                        .is_ok()
                    })
            }
        })
    }
}

/// Which end of a connection presented a chain: a caller (ingress) or an egress target.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Side {
    Client,
    Server,
}

/// The leaf's OUs if it claims a CF identity and `on_platform` (checked only then: it costs a
/// chain verification) says its chain ends at an identity anchor; else none.
fn platform_identity(leaf: &CertificateDer<'_>, on_platform: impl FnOnce() -> bool) -> CfIdentity {
    let claimed = CfIdentity::from_der(leaf).unwrap_or_default();
    if !claimed.claims_cf_identity() || on_platform() {
        claimed
    } else {
        claimed.dropped_as_not_platform()
    }
}

/// When every certificate of `chain` is valid: (latest not-before, earliest not-after) in
/// Unix seconds; `None` if one does not parse.
fn validity_window(chain: &[CertificateDer<'_>]) -> Option<(u64, u64)> {
    let mut window = (0u64, u64::MAX);
    for cert in chain {
        let (_, parsed) = X509Certificate::from_der(cert.as_ref()).ok()?;
        let validity = parsed.validity();
        let from = u64::try_from(validity.not_before.timestamp()).unwrap_or(0);
        let until = u64::try_from(validity.not_after.timestamp()).unwrap_or(0);
        window = (window.0.max(from), window.1.min(until));
    }
    Some(window)
}

/// Why no identity anchor could be derived (then no peer has a CF identity).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub(crate) enum IdentityCaError {
    #[error("cannot read the instance certificate {path}: {cause}")]
    Unreadable { path: String, cause: String },
    #[error("the instance certificate {0} holds no certificate")]
    Empty(String),
    #[error(
        "the instance certificate {0} chains to no CA of the trust bundle, so the platform identity CA is unknown"
    )]
    NoAnchor(String),
}

/// The identity anchors (see the module documentation) for the instance certificate in
/// `instance_pem` (leaf + instanceIdentityCA, as Diego writes it).
///
/// The chain is checked at the middle of the leaf's validity, not now: which CA issued our
/// certificate does not change when it expires, and an instance certificate is served or
/// refused for expiry elsewhere.
pub(crate) fn identity_anchors(
    bundle: &TrustBundle,
    name: &str,
    instance_pem: &[u8],
    provider: &Arc<CryptoProvider>,
) -> Result<RootCertStore, IdentityCaError> {
    let chain = CertificateDer::pem_slice_iter(instance_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| IdentityCaError::Unreadable {
            path: name.to_owned(),
            cause: pem_problem(&e).to_owned(),
        })?;
    let (leaf, intermediates) = chain
        .split_first()
        .ok_or_else(|| IdentityCaError::Empty(name.to_owned()))?;
    let (_, parsed) =
        X509Certificate::from_der(leaf.as_ref()).map_err(|e| IdentityCaError::Unreadable {
            path: name.to_owned(),
            cause: e.to_string(),
        })?;
    let validity = parsed.validity();
    let (from, to) = (
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    );
    let middle = from.saturating_add(to.saturating_sub(from) / 2);
    let at = UnixTime::since_unix_epoch(Duration::from_secs(u64::try_from(middle).unwrap_or(0)));

    let mut ours: Vec<usize> = Vec::new();
    for (i, anchor) in bundle.roots.roots.iter().enumerate() {
        let single = Arc::new(RootCertStore {
            roots: vec![anchor.clone()],
        });
        let verified = chain_verifier(&single, provider, false)
            .is_ok_and(|v| v.verify_client_cert(leaf, intermediates, at).is_ok());
        if verified {
            ours.push(i);
        }
    }
    if ours.is_empty() {
        return Err(IdentityCaError::NoAnchor(name.to_owned()));
    }
    let roots = &bundle.roots.roots;
    let mut identity = RootCertStore::empty();
    for (i, anchor) in roots.iter().enumerate() {
        let chained = ours.contains(&i);
        let rotated = i < bundle.system_anchors
            && ours
                .iter()
                .any(|&o| roots[o].subject.as_ref() == anchor.subject.as_ref());
        if chained || rotated {
            identity.roots.push(anchor.clone());
        }
    }
    Ok(identity)
}

/// The anchors for `bundle` and the instance certificate at `instance_cert` (`None` outside
/// CF), with a fingerprint of both (unchanged: nothing to install) and, when the identity
/// anchors could not be derived, why (then no peer has a CF identity until they can be).
pub(crate) struct Derived {
    pub(crate) anchors: Arc<Anchors>,
    pub(crate) fingerprint: [u8; 32],
    pub(crate) problem: Option<IdentityCaError>,
    /// The identity anchors' names, for the log.
    pub(crate) identity_names: Vec<String>,
}

pub(crate) fn derive(
    bundle: &TrustBundle,
    instance_cert: Option<&mut InstanceCert>,
    provider: &Arc<CryptoProvider>,
) -> Result<Derived, rustls::Error> {
    let mut hash = Sha256::new();
    hash.update(bundle.fingerprint);
    let mut problem = None;
    let mut identity = RootCertStore::empty();
    if let Some(instance) = instance_cert {
        let name = instance.path.display().to_string();
        match instance.read() {
            Ok(pem) => {
                hash.update([1]);
                hash.update(pem);
                match identity_anchors(bundle, &name, pem, provider) {
                    Ok(found) => identity = found,
                    Err(e) => problem = Some(e),
                }
            }
            Err(cause) => {
                hash.update([0]);
                problem = Some(IdentityCaError::Unreadable { path: name, cause });
            }
        }
    }
    let identity_names = bundle
        .roots
        .roots
        .iter()
        .zip(&bundle.anchor_names)
        .filter(|(root, _)| identity.roots.contains(root))
        .map(|(_, name)| name.clone())
        .collect();
    Ok(Derived {
        anchors: Arc::new(Anchors::new(bundle.roots.clone(), identity, provider)?),
        fingerprint: hash.finalize().into(),
        problem,
        identity_names,
    })
}

/// `CF_INSTANCE_CERT`, and what was last read from it. Which CA issued this instance does not
/// change because the file is briefly unreadable (Diego's rename, a missed event): the last
/// good read is used then, so a read failure never drops the identity anchors.
#[derive(Debug, Clone)]
pub(crate) struct InstanceCert {
    pub(crate) path: PathBuf,
    last: Option<Vec<u8>>,
}

impl InstanceCert {
    pub(crate) fn new(path: PathBuf) -> Self {
        InstanceCert { path, last: None }
    }

    /// The file's chain (PEM) as read now, else as last read.
    fn read(&mut self) -> Result<&[u8], String> {
        match std::fs::read(&self.path) {
            Ok(pem) if CertificateDer::pem_slice_iter(&pem).next().is_some() => {
                self.last = Some(pem);
            }
            Ok(_) if self.last.is_none() => {
                return Err("it holds no certificate (yet)".to_owned());
            }
            Err(e) if self.last.is_none() => return Err(e.to_string()),
            _ => {}
        }
        self.last
            .as_deref()
            .ok_or_else(|| "it was never read".to_owned())
    }
}

/// A chain verifier over `roots`; `optional` lets clients without a certificate through.
/// With no trust anchors at all every presented certificate is refused as from an unknown CA
/// (rustls cannot build a verifier without anchors, and failing closed is the only safe
/// answer).
pub(crate) fn chain_verifier(
    roots: &Arc<RootCertStore>,
    provider: &Arc<CryptoProvider>,
    optional: bool,
) -> Result<Arc<dyn ClientCertVerifier>, Error> {
    if roots.is_empty() {
        return Ok(Arc::new(NoAnchors {
            mandatory: !optional,
            algorithms: provider.signature_verification_algorithms,
        }));
    }
    let builder = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone());
    let builder = if optional {
        builder.allow_unauthenticated()
    } else {
        builder
    };
    builder.build().map_err(|e| Error::General(e.to_string()))
}

/// The three handshake-signature methods of a rustls certificate verifier, checked with the
/// verifier's own `algorithms: WebPkiSupportedAlgorithms` (the one crypto provider's): our
/// verifiers decide about chains and identities, never about signatures.
macro_rules! signatures_by_provider {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &rustls_pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &rustls_pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.algorithms.supported_schemes()
        }
    };
}
pub(crate) use signatures_by_provider;

/// Asks for a client certificate but trusts no CA (the trust bundle is empty).
#[derive(Debug)]
struct NoAnchors {
    mandatory: bool,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for NoAnchors {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        Err(Error::InvalidCertificate(CertificateError::UnknownIssuer))
    }

    signatures_by_provider!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };

    /// `der` as a PEM certificate (rcgen's `pem` feature is off in this build).
    fn pem(der: &[u8]) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut b64 = String::new();
        for chunk in der.chunks(3) {
            let n = chunk.len();
            let v = u32::from(chunk[0]) << 16
                | u32::from(*chunk.get(1).unwrap_or(&0)) << 8
                | u32::from(*chunk.get(2).unwrap_or(&0));
            for i in 0..4 {
                b64.push(if i <= n {
                    char::from(ALPHABET[((v >> (18 - 6 * i)) & 63) as usize])
                } else {
                    '='
                });
            }
        }
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|l| std::str::from_utf8(l).unwrap())
            .collect();
        format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            lines.join("\n")
        )
    }

    /// A CA: its PEM and what signs with it.
    struct Ca {
        pem: String,
        issuer: Issuer<'static, KeyPair>,
    }

    fn ca(name: &str, parent: Option<&Ca>) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = match parent {
            Some(p) => params.signed_by(&key, &p.issuer).unwrap(),
            None => params.self_signed(&key).unwrap(),
        };
        Ca {
            pem: pem(cert.der()),
            issuer: Issuer::new(params, key),
        }
    }

    /// A Diego-shaped instance.crt (leaf + intermediate), valid from `from` to `to` (years).
    fn instance_crt(intermediate: &Ca, from: i32, to: i32) -> String {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["instance".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "instance");
        params.distinguished_name.push(
            DnType::OrganizationalUnitName,
            "app:9e8d7c6b-5a4f-4e3d-8c2b-1a0f9e8d7c6b",
        );
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = rcgen::date_time_ymd(from, 1, 1);
        params.not_after = rcgen::date_time_ymd(to, 1, 1);
        let leaf = params.signed_by(&key, &intermediate.issuer).unwrap();
        format!("{}{}", pem(leaf.der()), intermediate.pem)
    }

    /// A bundle: `system` as `$CF_SYSTEM_CERT_PATH` files, `app` as `trust.ca_files`.
    fn bundle(system: &[&Ca], app: &[&Ca]) -> (TrustBundle, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path().join("system");
        std::fs::create_dir(&sys).unwrap();
        for (i, ca) in system.iter().enumerate() {
            std::fs::write(sys.join(format!("trusted-ca-{}.crt", i + 1)), &ca.pem).unwrap();
        }
        let mut ca_files = Vec::new();
        for (i, ca) in app.iter().enumerate() {
            let path = dir.path().join(format!("app-{i}.pem"));
            std::fs::write(&path, &ca.pem).unwrap();
            ca_files.push(path);
        }
        let config = TrustConfig {
            system_dir: Some(sys),
            system_certs: true,
            ca_files,
            extra: Vec::new(),
        };
        let (bundle, errors) = load(&config);
        assert!(errors.is_empty(), "{errors:?}");
        (bundle, dir)
    }

    fn anchors_of(bundle: &TrustBundle, crt: &str) -> Result<Vec<String>, IdentityCaError> {
        let provider = crate::tls::provider();
        let found = identity_anchors(bundle, "instance.crt", crt.as_bytes(), &provider)?;
        Ok(bundle
            .roots
            .roots
            .iter()
            .zip(&bundle.anchor_names)
            .enumerate()
            .filter(|(_, (root, _))| found.roots.contains(root))
            .map(|(i, (_, name))| format!("{i}:{name}"))
            .collect())
    }

    #[test]
    fn the_identity_anchor_is_the_root_our_own_chain_ends_at_and_nothing_else_in_the_bundle() {
        let root = ca("appRootCA", None);
        let intermediate = ca("instanceIdentityCA", Some(&root));
        let corporate = ca("corporateCA", None);
        let partner = ca("partnerCA", None);
        let (bundle, _dir) = bundle(&[&corporate, &root], &[&partner]);
        let crt = instance_crt(&intermediate, 2025, 2035);
        assert_eq!(anchors_of(&bundle, &crt).unwrap(), ["1:appRootCA"]);
    }

    #[test]
    fn a_same_named_root_counts_only_from_the_operators_system_certificates() {
        let root = ca("appRootCA", None);
        let rotated = ca("appRootCA", None);
        let intermediate = ca("instanceIdentityCA", Some(&root));
        let crt = instance_crt(&intermediate, 2025, 2035);
        let (both_system, _d1) = bundle(&[&root, &rotated], &[]);
        assert_eq!(
            anchors_of(&both_system, &crt).unwrap(),
            ["0:appRootCA", "1:appRootCA"]
        );
        let (lookalike_in_app, _d2) = bundle(&[&root], &[&rotated]);
        assert_eq!(
            anchors_of(&lookalike_in_app, &crt).unwrap(),
            ["0:appRootCA"]
        );
    }

    #[test]
    fn an_expired_instance_certificate_still_names_its_ca_and_a_foreign_one_names_none() {
        let root = ca("appRootCA", None);
        let intermediate = ca("instanceIdentityCA", Some(&root));
        let (bundle, _dir) = bundle(&[&root], &[]);
        let expired = instance_crt(&intermediate, 2020, 2021);
        assert_eq!(anchors_of(&bundle, &expired).unwrap(), ["0:appRootCA"]);

        let other = ca("appRootCA", None);
        let other_intermediate = ca("instanceIdentityCA", Some(&other));
        let foreign = instance_crt(&other_intermediate, 2025, 2035);
        assert!(matches!(
            anchors_of(&bundle, &foreign),
            Err(IdentityCaError::NoAnchor(_))
        ));
    }

    #[test]
    fn a_briefly_missing_instance_certificate_keeps_the_last_good_read() {
        let root = ca("appRootCA", None);
        let intermediate = ca("instanceIdentityCA", Some(&root));
        let (bundle, dir) = bundle(&[&root], &[]);
        let path = dir.path().join("instance.crt");
        let mut instance = InstanceCert::new(path.clone());
        let provider = crate::tls::provider();

        let missing = derive(&bundle, Some(&mut instance), &provider).unwrap();
        assert!(matches!(
            missing.problem,
            Some(IdentityCaError::Unreadable { .. })
        ));
        assert!(missing.anchors.identity.is_empty());

        std::fs::write(&path, instance_crt(&intermediate, 2025, 2035)).unwrap();
        let read = derive(&bundle, Some(&mut instance), &provider).unwrap();
        assert_eq!(read.problem, None);
        assert_eq!(read.identity_names, ["appRootCA"]);

        // Diego's rename window: the file is gone for a moment.
        std::fs::remove_file(&path).unwrap();
        let gone = derive(&bundle, Some(&mut instance), &provider).unwrap();
        assert_eq!(gone.problem, None);
        assert_eq!(gone.fingerprint, read.fingerprint, "nothing to reinstall");
        assert_eq!(gone.anchors.identity.len(), 1);
    }
}
