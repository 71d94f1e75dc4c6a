//! The serving certificate (reading a key/cert pair from PEM, checking it, handing it to rustls)
//! and each listener's `ServerConfig`.
//!
//! Every listener's `ServerConfig` asks the one [`CertStore`] for the pair on every handshake,
//! so a certificate reload swaps one pointer. A trust bundle reload builds new client
//! verifiers and so new `ServerConfig`s ([`ListenerTls::install`]); each listener keeps its own
//! ticketer and session cache across those swaps, so clients keep resuming. They are not shared
//! between listeners: a session resumed elsewhere would skip this listener's client
//! certificate checks.

use crate::identity::AccessPolicy;
use crate::logging::rfc3339;
use crate::source::PairNames;
use crate::verifier;
use arc_swap::{ArcSwap, ArcSwapOption};
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{
    ClientHello, ProducesTickets, ResolvesServerCert, ServerSessionMemoryCache,
    StoresServerSessions,
};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, server::danger::ClientCertVerifier};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tls_sidecar_config::{ClientAuth, Mode};
use tokio_rustls::TlsAcceptor;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Sessions kept for stateful resumption (TLS 1.2 clients without ticket support). Each entry
/// is a few hundred bytes.
const SESSION_CACHE_SIZE: usize = 1024;

/// TLS 1.3 tickets sent per connection (rustls's default is 2, like OpenSSL after a full
/// handshake). One is enough for a client to resume its next connection, and every resumed
/// connection brings a fresh one, so the second only costs a ticket encryption and a key
/// derivation on every connection (OpenSSL, too, sends one after a resumption).
const TLS13_TICKETS: usize = 1;

/// The only crypto provider in the graph, passed explicitly (docs/DESIGN.md).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
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

#[derive(Debug)]
struct Resolver(Arc<CertStore>);

impl ResolvesServerCert for Resolver {
    // `None` before the first load: rustls aborts the handshake with an alert, which is right
    // while there is nothing to prove our identity with.
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.current()
    }
}

/// One listener's TLS settings and its current `ServerConfig`.
pub(crate) struct ListenerTls {
    settings: Settings,
    current: ArcSwap<ServerConfig>,
}

/// What stays the same across trust bundle reloads.
struct Settings {
    provider: Arc<CryptoProvider>,
    resolver: Arc<dyn ResolvesServerCert>,
    ticketer: Arc<dyn ProducesTickets>,
    sessions: Arc<dyn StoresServerSessions>,
    alpn: Vec<Vec<u8>>,
    client_auth: ClientAuth,
    /// tcp mode with `allow` rules: enforced in the client certificate verifier.
    handshake_policy: Option<Arc<AccessPolicy>>,
}

impl ListenerTls {
    /// TLS 1.3 and 1.2, the certificate from `store`, client certificates per `client_auth`
    /// verified against `roots`, ALPN `h2`/`http/1.1` in http mode (none in tcp mode).
    pub(crate) fn new(
        provider: Arc<CryptoProvider>,
        store: Arc<CertStore>,
        mode: Mode,
        client_auth: ClientAuth,
        policy: &AccessPolicy,
        roots: &Arc<RootCertStore>,
    ) -> Result<Self, rustls::Error> {
        let alpn = match mode {
            Mode::Http => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            Mode::Tcp => Vec::new(),
        };
        let settings = Settings {
            provider,
            resolver: Arc::new(Resolver(store)),
            ticketer: rustls::crypto::aws_lc_rs::Ticketer::new()?,
            sessions: ServerSessionMemoryCache::new(SESSION_CACHE_SIZE),
            alpn,
            client_auth,
            handshake_policy: (mode == Mode::Tcp && policy.has_rules())
                .then(|| Arc::new(policy.clone())),
        };
        let current = ArcSwap::new(settings.build(roots)?);
        Ok(ListenerTls { settings, current })
    }

    /// An acceptor for one connection, with the configuration current now.
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.load_full())
    }

    /// Swaps in client verifiers built from `roots`, keeping tickets and sessions.
    pub(crate) fn install(&self, roots: &Arc<RootCertStore>) -> Result<(), rustls::Error> {
        self.current.store(self.settings.build(roots)?);
        Ok(())
    }
}

impl Settings {
    fn build(&self, roots: &Arc<RootCertStore>) -> Result<Arc<ServerConfig>, rustls::Error> {
        let verifier = self.verifier(roots)?;
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(self.resolver.clone());
        config.ticketer = self.ticketer.clone();
        config.session_storage = self.sessions.clone();
        config.send_tls13_tickets = TLS13_TICKETS;
        config.alpn_protocols = self.alpn.clone();
        Ok(Arc::new(config))
    }

    fn verifier(
        &self,
        roots: &Arc<RootCertStore>,
    ) -> Result<Arc<dyn ClientCertVerifier>, rustls::Error> {
        let optional = match self.client_auth {
            ClientAuth::None => return Ok(rustls::server::WebPkiClientVerifier::no_client_auth()),
            ClientAuth::Optional => true,
            ClientAuth::Required => false,
        };
        let chain = verifier::chain_verifier(roots, &self.provider, optional)?;
        Ok(match &self.handshake_policy {
            Some(policy) => Arc::new(verifier::PolicyVerifier::new(chain, policy.clone())),
            None => chain,
        })
    }
}

/// A checked pair, ready to serve.
#[derive(Debug)]
pub(crate) struct Pair {
    pub(crate) certified: Arc<CertifiedKey>,
    pub(crate) leaf: LeafInfo,
}

/// What the log and `check` say about a leaf (never anything about the key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LeafInfo {
    pub(crate) subject_cn: String,
    /// Lower-case hex.
    pub(crate) serial: String,
    /// Seconds since the Unix epoch.
    pub(crate) not_before: i64,
    /// Seconds since the Unix epoch.
    pub(crate) not_after: i64,
    /// `DNS:<name>` and `IP:<addr>` entries of the subjectAltName, in certificate order.
    pub(crate) sans: Vec<String>,
    pub(crate) der: CertificateDer<'static>,
}

/// Why a pair could not be loaded. Texts name files (or service keys), never their contents.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LoadError {
    #[error("{} does not exist (yet)", .0.display())]
    Missing(PathBuf),
    #[error("cannot read {}: {cause}", .path.display())]
    Unreadable {
        path: PathBuf,
        cause: std::io::Error,
    },
    /// The service source: `VCAP_SERVICES` has no usable credentials.
    #[error("{0}")]
    Service(String),
    #[error("{what} is not valid PEM: {problem}")]
    BadPem { what: String, problem: &'static str },
    #[error("{0} is not PEM: it holds no -----BEGIN CERTIFICATE----- block")]
    NoCertificate(String),
    #[error(
        "{0} is not PEM: it holds no private key block (expected RSA PRIVATE KEY, PRIVATE KEY or EC PRIVATE KEY)"
    )]
    NoKey(String),
    #[error("the certificate in {what} cannot be parsed: {problem}")]
    BadCertificate { what: String, problem: String },
    #[error(
        "the private key in {what} is of an unsupported type ({kind}); use an RSA (2048-8192 bits), ECDSA (P-256, P-384, P-521) or Ed25519 key"
    )]
    UnsupportedKey { what: String, kind: String },
    #[error("the private key in {what} cannot be used: {cause}")]
    BadKey { what: String, cause: String },
    #[error("the key in {key} does not match the certificate in {cert}{}",
        if *.rotated_by_diego {
            " (during rotation Diego replaces the key first; waiting for the new certificate)"
        } else { "" })]
    Mismatch {
        cert: String,
        key: String,
        rotated_by_diego: bool,
    },
    #[error("the certificate in {what} expired at {}", rfc3339(*.not_after))]
    Expired { what: String, not_after: i64 },
    #[error("the certificate in {what} is not valid yet (valid from {})", rfc3339(*.not_before))]
    NotYetValid { what: String, not_before: i64 },
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

/// Parses the chain in `cert_pem` and describes its leaf.
pub(crate) fn parse_chain(
    names: &PairNames,
    cert_pem: &[u8],
) -> Result<(Vec<CertificateDer<'static>>, LeafInfo), LoadError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(&names.cert, &e))?;
    let leaf_der = chain
        .first()
        .ok_or_else(|| LoadError::NoCertificate(names.cert.clone()))?;
    let leaf = leaf_info(leaf_der).map_err(|problem| LoadError::BadCertificate {
        what: names.cert.clone(),
        problem,
    })?;
    Ok((chain, leaf))
}

/// Parses and checks a pair: the whole chain from the cert PEM, the key in any of the usual
/// PEM forms and of a type rustls can sign with, and that the key belongs to the leaf.
/// Validity dates are checked separately ([`check_validity`]).
pub(crate) fn parse_pair(
    names: &PairNames,
    cert_pem: &[u8],
    key_pem: &[u8],
    provider: &CryptoProvider,
) -> Result<Pair, LoadError> {
    let (chain, leaf) = parse_chain(names, cert_pem)?;
    let key = match PrivateKeyDer::from_pem_slice(key_pem) {
        Ok(key) => key,
        Err(pem::Error::NoItemsFound) => {
            return Err(match unsupported_pem_key(key_pem) {
                Some(kind) => LoadError::UnsupportedKey {
                    what: names.key.clone(),
                    kind,
                },
                None => LoadError::NoKey(names.key.clone()),
            });
        }
        Err(e) => return Err(pem_error(&names.key, &e)),
    };
    let signing_key = provider.key_provider.load_private_key(key.clone_key());
    let signing_key = signing_key.map_err(|cause| match key_kind(&key) {
        Some((kind, false)) => LoadError::UnsupportedKey {
            what: names.key.clone(),
            kind: kind.to_owned(),
        },
        Some((kind, true)) => LoadError::BadKey {
            what: names.key.clone(),
            cause: format!("{kind}: {cause}"),
        },
        None => LoadError::BadKey {
            what: names.key.clone(),
            cause: cause.to_string(),
        },
    })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(_)) => {
            return Err(LoadError::Mismatch {
                cert: names.cert.clone(),
                key: names.key.clone(),
                rotated_by_diego: names.rotated_by_diego,
            });
        }
        Err(e) => {
            return Err(LoadError::BadCertificate {
                what: names.cert.clone(),
                problem: e.to_string(),
            });
        }
    }
    Ok(Pair {
        certified: Arc::new(certified),
        leaf,
    })
}

/// Refuses a leaf that is expired or not valid yet at `now` (Unix seconds).
pub(crate) fn check_validity(
    names: &PairNames,
    leaf: &LeafInfo,
    now: i64,
) -> Result<(), LoadError> {
    if leaf.not_after < now {
        return Err(LoadError::Expired {
            what: names.cert.clone(),
            not_after: leaf.not_after,
        });
    }
    if leaf.not_before > now {
        return Err(LoadError::NotYetValid {
            what: names.cert.clone(),
            not_before: leaf.not_before,
        });
    }
    Ok(())
}

// Generic texts: a PEM error can quote the bad line, and that line may be key material.
fn pem_error(what: &str, e: &pem::Error) -> LoadError {
    let problem = match e {
        pem::Error::MissingSectionEnd { .. } => "a section has no END line (file partly written?)",
        pem::Error::IllegalSectionStart { .. } => "a BEGIN line is malformed",
        pem::Error::Base64Decode(_) => "a section is not valid base64",
        pem::Error::SectionTooLarge => "a section is too large",
        _ => "unreadable",
    };
    LoadError::BadPem {
        what: what.to_owned(),
        problem,
    }
}

/// A PEM private key block rustls does not read at all (e.g. `DSA PRIVATE KEY`), by label.
fn unsupported_pem_key(pem: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(pem);
    text.lines().find_map(|line| {
        let label = line
            .trim()
            .strip_prefix("-----BEGIN ")?
            .strip_suffix("-----")?;
        match label {
            "ENCRYPTED PRIVATE KEY" => {
                Some("an encrypted key; decrypt it first: openssl pkey -in KEY -out KEY".to_owned())
            }
            l if l.ends_with("PRIVATE KEY") => Some(l.trim_end_matches(" PRIVATE KEY").to_owned()),
            _ => None,
        }
    })
}

/// The key's algorithm, and whether rustls (aws-lc-rs) supports that algorithm at all.
fn key_kind(key: &PrivateKeyDer<'_>) -> Option<(&'static str, bool)> {
    match key {
        PrivateKeyDer::Pkcs1(_) => Some(("RSA", true)),
        PrivateKeyDer::Sec1(_) => Some(("ECDSA", true)),
        PrivateKeyDer::Pkcs8(der) => pkcs8_algorithm(der.secret_pkcs8_der()),
        _ => None,
    }
}

/// Names the algorithm of a PKCS#8 `PrivateKeyInfo` from its AlgorithmIdentifier OID (and
/// the curve for EC keys).
fn pkcs8_algorithm(der: &[u8]) -> Option<(&'static str, bool)> {
    // PrivateKeyInfo ::= SEQUENCE { version INTEGER, algorithm SEQUENCE { OID, params }, .. }
    let (info, _) = der_tlv(der, 0x30)?;
    let (_, rest) = der_tlv(info, 0x02)?;
    let (algorithm, _) = der_tlv(rest, 0x30)?;
    let (oid, params) = der_tlv(algorithm, 0x06)?;
    let curve = der_tlv(params, 0x06).map(|(c, _)| c);
    Some(match oid {
        [0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x01] => ("RSA", true),
        [0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x0A] => ("RSASSA-PSS", false),
        [0x2A, 0x86, 0x48, 0xCE, 0x38, 0x04, 0x01] => ("DSA", false),
        [0x2B, 0x65, 0x6E] => ("X25519", false),
        [0x2B, 0x65, 0x6F] => ("X448", false),
        [0x2B, 0x65, 0x70] => ("Ed25519", true),
        [0x2B, 0x65, 0x71] => ("Ed448", false),
        [0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x02, 0x01] => match curve {
            Some([0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07]) => ("ECDSA P-256", true),
            Some([0x2B, 0x81, 0x04, 0x00, 0x22]) => ("ECDSA P-384", true),
            Some([0x2B, 0x81, 0x04, 0x00, 0x23]) => ("ECDSA P-521", true),
            Some([0x2B, 0x81, 0x04, 0x00, 0x0A]) => ("ECDSA secp256k1", false),
            _ => ("ECDSA on an unsupported curve", false),
        },
        _ => return None,
    })
}

/// Splits one DER TLV with tag `tag` off `input`: (contents, rest).
fn der_tlv(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, rest) = input.split_first()?;
    if t != tag {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7F);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| rest.split_at(len))
}

pub(crate) fn leaf_info(der: &CertificateDer<'_>) -> Result<LeafInfo, String> {
    let (_, cert) = X509Certificate::from_der(der.as_ref()).map_err(|e| e.to_string())?;
    let subject_cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_owned();
    let mut sans = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(dns) => sans.push(format!("DNS:{dns}")),
                GeneralName::IPAddress(bytes) => {
                    let ip = match bytes.len() {
                        4 => <[u8; 4]>::try_from(*bytes).ok().map(IpAddr::from),
                        16 => <[u8; 16]>::try_from(*bytes).ok().map(IpAddr::from),
                        _ => None,
                    };
                    if let Some(ip) = ip {
                        sans.push(format!("IP:{ip}"));
                    }
                }
                GeneralName::URI(uri) => sans.push(format!("URI:{uri}")),
                _ => {}
            }
        }
    }
    Ok(LeafInfo {
        subject_cn,
        serial: hex::encode(cert.raw_serial()),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        sans,
        der: der.clone().into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_pkcs8_algorithm_oid_and_the_ec_curve() {
        // Minimal PrivateKeyInfo heads (the private key OCTET STRING is irrelevant here).
        let ed448 = [
            0x30, 0x0C, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2B, 0x65, 0x71, 0x04, 0x00,
        ];
        assert_eq!(pkcs8_algorithm(&ed448), Some(("Ed448", false)));
        assert_eq!(pkcs8_algorithm(&ed448[..10]), None, "truncated");
        let p256 = [
            0x30, 0x18, 0x02, 0x01, 0x00, 0x30, 0x13, 0x06, 0x07, 0x2A, 0x86, 0x48, 0xCE, 0x3D,
            0x02, 0x01, 0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07,
        ];
        assert_eq!(pkcs8_algorithm(&p256), Some(("ECDSA P-256", true)));
    }

    #[test]
    fn names_pem_key_labels_rustls_cannot_read() {
        assert_eq!(
            unsupported_pem_key(
                b"-----BEGIN DSA PRIVATE KEY-----\nAAAA\n-----END DSA PRIVATE KEY-----\n"
            )
            .as_deref(),
            Some("DSA")
        );
        assert!(
            unsupported_pem_key(b"-----BEGIN ENCRYPTED PRIVATE KEY-----\n")
                .unwrap()
                .contains("encrypted")
        );
        assert_eq!(unsupported_pem_key(b"garbage"), None);
    }
}
