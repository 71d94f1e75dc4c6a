//! PEM and certificate parsing, once for every source: the chain and its leaf, the private key
//! in any of the usual PEM forms (named when rustls cannot use it), and that the two belong
//! together.

use super::der::split;
use super::error::LoadError;
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::net::IpAddr;
use std::sync::Arc;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// One read of a key/cert pair, with names for messages.
#[derive(Debug)]
pub(crate) struct Material {
    pub(crate) cert_pem: Vec<u8>,
    pub(crate) key_pem: Vec<u8>,
    pub(crate) names: PairNames,
}

/// How messages name the two halves of a pair ("/path/instance.crt", "service \"x\"
/// credentials.certificate").
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PairNames {
    pub(crate) cert: String,
    pub(crate) key: String,
    /// The instance identity: a key/cert mismatch is Diego's rotation window, not a mistake.
    pub(crate) rotated_by_diego: bool,
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

fn pem_error(what: &str, e: &pem::Error) -> LoadError {
    LoadError::BadPem {
        what: what.to_owned(),
        problem: pem_problem(e),
    }
}

/// What is wrong with a PEM file, in generic words: a PEM error can quote the bad line, and
/// that line may be key material. The trust bundle's files are described the same way.
pub(crate) fn pem_problem(e: &pem::Error) -> &'static str {
    match e {
        pem::Error::MissingSectionEnd { .. } => "a section has no END line (file partly written?)",
        pem::Error::IllegalSectionStart { .. } => "a BEGIN line is malformed",
        pem::Error::Base64Decode(_) => "a section is not valid base64",
        pem::Error::SectionTooLarge => "a section is too large",
        _ => "unreadable",
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
    let (info, _) = split(der, 0x30)?;
    let (_, rest) = split(info, 0x02)?;
    let (algorithm, _) = split(rest, 0x30)?;
    let (oid, params) = split(algorithm, 0x06)?;
    let curve = split(params, 0x06).map(|(c, _)| c);
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
