//! `certificate.source: minted`: an ECDSA P-256 key made in memory (it never touches the disk)
//! and a leaf signed by the CA of a bound service, renewed before two thirds of its lifetime
//! have passed.
//!
//! The leaf is shaped like Diego's instance identity, so everything that reads one reads this:
//! CN = the instance GUID and `OU=app:<g>`, `OU=space:<g>`, `OU=organization:<g>` in ONE
//! multi-valued RDN. Unlike Diego's it names the app's internal routes (`backend.apps.internal`
//! and `<index>.backend.apps.internal`), so clients can verify the hostname they dialled
//! (diego-release #587). EKU serverAuth + clientAuth; the chain sent is the leaf, then the
//! service's `ca_certificate` PEM as given.
//!
//! rcgen builds and signs the certificate. Its `DistinguishedName` keeps one value per
//! attribute type, so it cannot write three OUs; the subject (and the issuer, copied byte for
//! byte from the CA certificate so that chain building matches it exactly) are put into the
//! TBSCertificate afterwards and the TBSCertificate is signed again with the CA key.

use super::der::{der, elements, split};
use super::error::LoadError;
use super::pem::{LeafInfo, PairNames, check_validity, leaf_info, parse_chain};
use super::service::{self, CA_CERT_KEYS, CA_KEY_KEYS};
use rcgen::{
    CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod,
    KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType, SerialNumber,
    SigningKey,
};
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};

/// Most that notBefore is backdated, for peers whose clocks run behind.
const MAX_BACKDATE_SECS: i64 = 300;

/// OIDs 2.5.4.3 (commonName) and 2.5.4.11 (organizationalUnitName), content octets.
const OID_CN: &[u8] = &[0x55, 0x04, 0x03];
const OID_OU: &[u8] = &[0x55, 0x04, 0x0B];

/// `certificate.source: minted`: what the minted leaf says, all resolved at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MintConfig {
    /// The bound CA service's name (`certificate.service`).
    pub service: String,
    /// `VCAP_SERVICES` as found at start (`None` when unset).
    pub vcap_services: Option<String>,
    /// Subject CN: the instance GUID (`CF_INSTANCE_GUID`).
    pub common_name: String,
    /// Subject OUs, as Diego writes them: `app:<g>`, `space:<g>`, `organization:<g>`.
    pub organizational_units: Vec<String>,
    /// DNS SANs: the internal routes, their `<index>.<route>` forms, the instance GUID, then
    /// `certificate.names`.
    pub dns_names: Vec<String>,
    /// IP SANs: `CF_INSTANCE_INTERNAL_IP`.
    pub ips: Vec<IpAddr>,
    /// Lifetime of each leaf (`certificate.validity`).
    pub validity: Duration,
}

/// The CA this source adds to the trust bundle (`ca_certificate`), named for messages: apps
/// bound to the same CA service verify each other's minted certificates.
pub(super) fn trust_extra(config: &MintConfig) -> Option<(String, String)> {
    let raw = config.vcap_services.as_deref()?;
    let creds = service::ca_credentials(raw, &config.service).ok()?;
    Some((
        format!("service \"{}\" credentials.ca_certificate", config.service),
        creds.certificate,
    ))
}

/// How to fix a CA that cannot mint: bind it, or put a usable CA into its credentials.
pub(super) fn fix(config: &MintConfig, e: &LoadError, app: &str) -> String {
    match e {
        LoadError::Service(_) => format!(
            "bind a service instance called \"{name}\" whose credentials hold \"ca_certificate\" and \"ca_private_key\" (PEM; e.g. cf create-user-provided-service {name} -p ca.json, then cf bind-service {app} {name}), then cf restage {app}",
            name = config.service
        ),
        _ => format!(
            "put a valid CA certificate (CA:TRUE, not expired) and its own key into the service's credentials (cf update-user-provided-service {} -p ca.json), then cf restart {app}",
            config.service
        ),
    }
}

/// A freshly minted pair.
pub(crate) struct Minted {
    pub(crate) certified: Arc<CertifiedKey>,
    pub(crate) leaf: LeafInfo,
    /// The whole chain sent (leaf first), for `check` and tests.
    pub(crate) chain: Vec<CertificateDer<'static>>,
    /// When to mint the next one (Unix seconds): before two thirds of this one's lifetime.
    pub(crate) renew_at: i64,
    /// The signing CA's subject, for the log.
    pub(crate) ca_subject: String,
    /// SANs the CA's name constraints do not permit, so not in the leaf (`DNS:x`, `IP:y`).
    pub(crate) left_out: Vec<String>,
}

/// How messages name the CA material of the service.
fn names(service: &str) -> PairNames {
    PairNames {
        cert: format!("service \"{service}\" credentials.{}", CA_CERT_KEYS[0]),
        key: format!("service \"{service}\" credentials.{}", CA_KEY_KEYS[0]),
        rotated_by_diego: false,
    }
}

/// Mints a leaf for `config` valid from now (Unix seconds `now`, backdated a little).
pub(crate) fn mint(
    config: &MintConfig,
    provider: &CryptoProvider,
    now: i64,
) -> Result<Minted, LoadError> {
    let raw = service::unbound(config.vcap_services.as_deref())?;
    let creds = service::ca_credentials(raw, &config.service).map_err(LoadError::Service)?;
    let names = names(&config.service);
    let ca = Ca::parse(&names, &creds.certificate, &creds.private_key, now)?;

    let leaf_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|e| LoadError::Service(format!("cannot generate an ECDSA P-256 key: {e}")))?;
    let validity = i64::try_from(config.validity.as_secs()).unwrap_or(i64::MAX / 2);
    let backdate = (validity / 10).min(MAX_BACKDATE_SECS);
    let not_before = now - backdate;
    // A leaf outliving its CA would only fail later, at every peer.
    let not_after = now.saturating_add(validity).min(ca.not_after);
    if not_after <= now {
        return Err(LoadError::Expired {
            what: names.cert.clone(),
            not_after: ca.not_after,
        });
    }

    // A name-constrained CA (the recommended kind) cannot vouch for names outside its
    // subtrees, and a chain with one such name fails everywhere: leave those out.
    let (dns_names, left_out_dns): (Vec<&String>, Vec<&String>) = config
        .dns_names
        .iter()
        .partition(|n| ca.constraints.permits_dns(n));
    let (ips, left_out_ips): (Vec<IpAddr>, Vec<IpAddr>) = config
        .ips
        .iter()
        .partition(|ip| ca.constraints.permits_ip(**ip));
    let mut left_out: Vec<String> = left_out_dns.iter().map(|n| format!("DNS:{n}")).collect();
    left_out.extend(left_out_ips.iter().map(|ip| format!("IP:{ip}")));
    if dns_names.is_empty() && ips.is_empty() {
        return Err(LoadError::Service(format!(
            "the CA in {} is name-constrained and permits none of this instance's names ({}): give it permitted subtrees for the internal domains (e.g. DNS:apps.internal) or list permitted names in certificate.names",
            names.cert,
            left_out.join(", ")
        )));
    }

    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    for name in dns_names {
        let name = name.as_str().try_into().map_err(|e| {
            LoadError::Service(format!(
                "\"{name}\" cannot be a DNS name in a certificate: {e}"
            ))
        })?;
        params.subject_alt_names.push(SanType::DnsName(name));
    }
    for ip in ips {
        params.subject_alt_names.push(SanType::IpAddress(ip));
    }
    params.not_before = time(not_before)?;
    params.not_after = time(not_after)?;
    params.serial_number = Some(serial(provider)?);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = ca.key_id.is_some();

    let mut issuer_params = CertificateParams::default();
    issuer_params.distinguished_name = DistinguishedName::new();
    if let Some(id) = &ca.key_id {
        issuer_params.key_identifier_method = KeyIdMethod::PreSpecified(id.clone());
    }
    let issuer = Issuer::new(issuer_params, ca.key);
    let signed = params
        .signed_by(&leaf_key, &issuer)
        .map_err(|e| LoadError::Service(format!("cannot sign the minted certificate: {e}")))?;
    let subject = diego_subject(&config.common_name, &config.organizational_units);
    let der = resign(signed.der(), &ca.subject_der, &subject, issuer.key())
        .map_err(|e| LoadError::Service(format!("cannot sign the minted certificate: {e}")))?;
    let leaf_der = CertificateDer::from(der);

    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| LoadError::Service(format!("the minted key cannot be used: {e}")))?;
    let mut chain = vec![leaf_der.clone()];
    chain.extend(ca.chain);
    let leaf = leaf_info(&leaf_der).map_err(|problem| LoadError::BadCertificate {
        what: "the minted certificate".to_owned(),
        problem,
    })?;
    Ok(Minted {
        certified: Arc::new(CertifiedKey::new(chain.clone(), signing_key)),
        renew_at: renew_at(leaf.not_before, leaf.not_after),
        leaf,
        chain,
        ca_subject: ca.subject,
        left_out,
    })
}

/// Three fifths into the lifetime: before two thirds, with room for retries.
pub(crate) fn renew_at(not_before: i64, not_after: i64) -> i64 {
    not_before + (not_after - not_before) * 3 / 5
}

/// The signing CA, checked.
struct Ca {
    key: KeyPair,
    /// Every certificate of `ca_certificate`, the signing CA first: sent after the leaf.
    chain: Vec<CertificateDer<'static>>,
    /// The signing CA's subject DER: the leaf's issuer, byte for byte.
    subject_der: Vec<u8>,
    subject: String,
    /// Its subjectKeyIdentifier: the leaf's authorityKeyIdentifier.
    key_id: Option<Vec<u8>>,
    not_after: i64,
    constraints: Constraints,
}

/// A CA's nameConstraints, for DNS names and IP addresses (RFC 5280 §4.2.1.10).
#[derive(Debug, Default)]
struct Constraints {
    permitted_dns: Vec<String>,
    excluded_dns: Vec<String>,
    /// (address, mask) octets.
    permitted_ips: Vec<(Vec<u8>, Vec<u8>)>,
    excluded_ips: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Constraints {
    fn of(cert: &X509Certificate<'_>) -> Self {
        let mut c = Constraints::default();
        let Ok(Some(ext)) = cert.name_constraints() else {
            return c;
        };
        let mut collect = |subtrees: &Option<Vec<x509_parser::extensions::GeneralSubtree>>,
                           dns: bool,
                           permitted: bool| {
            for tree in subtrees.iter().flatten() {
                match (&tree.base, dns) {
                    (GeneralName::DNSName(name), true) => {
                        let list = if permitted {
                            &mut c.permitted_dns
                        } else {
                            &mut c.excluded_dns
                        };
                        list.push(name.to_ascii_lowercase());
                    }
                    (GeneralName::IPAddress(bytes), false) if bytes.len() % 2 == 0 => {
                        let (addr, mask) = bytes.split_at(bytes.len() / 2);
                        let list = if permitted {
                            &mut c.permitted_ips
                        } else {
                            &mut c.excluded_ips
                        };
                        list.push((addr.to_vec(), mask.to_vec()));
                    }
                    _ => {}
                }
            }
        };
        let value = ext.value;
        collect(&value.permitted_subtrees, true, true);
        collect(&value.excluded_subtrees, true, false);
        collect(&value.permitted_subtrees, false, true);
        collect(&value.excluded_subtrees, false, false);
        c
    }

    fn permits_dns(&self, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        let within = |c: &String| {
            if c.is_empty() {
                true
            } else if let Some(suffix) = c.strip_prefix('.') {
                name.ends_with(&format!(".{suffix}"))
            } else {
                name == *c || name.ends_with(&format!(".{c}"))
            }
        };
        (self.permitted_dns.is_empty() || self.permitted_dns.iter().any(within))
            && !self.excluded_dns.iter().any(within)
    }

    fn permits_ip(&self, ip: IpAddr) -> bool {
        let octets = match ip {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        };
        let within = |(addr, mask): &(Vec<u8>, Vec<u8>)| {
            addr.len() == octets.len()
                && octets
                    .iter()
                    .zip(addr)
                    .zip(mask)
                    .all(|((o, a), m)| o & m == a & m)
        };
        let same_family =
            |list: &[(Vec<u8>, Vec<u8>)]| list.iter().any(|(a, _)| a.len() == octets.len());
        (!same_family(&self.permitted_ips) || self.permitted_ips.iter().any(within))
            && !self.excluded_ips.iter().any(within)
    }
}

impl Ca {
    fn parse(
        names: &PairNames,
        cert_pem: &str,
        key_pem: &str,
        now: i64,
    ) -> Result<Self, LoadError> {
        let (chain, info) = parse_chain(names, cert_pem.as_bytes())?;
        let (_, cert) = X509Certificate::from_der(info.der.as_ref()).map_err(|e| {
            LoadError::BadCertificate {
                what: names.cert.clone(),
                problem: e.to_string(),
            }
        })?;
        let is_ca = matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
        if !is_ca {
            return Err(LoadError::BadCertificate {
                what: names.cert.clone(),
                problem: "it is not a CA certificate (basicConstraints CA:TRUE is missing)"
                    .to_owned(),
            });
        }
        check_validity(names, &info, now)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|_| LoadError::NoKey(names.key.clone()))?;
        let key = KeyPair::try_from(&key).map_err(|e| LoadError::UnsupportedKey {
            what: names.key.clone(),
            kind: format!("{e}; the CA key must be RSA or ECDSA (P-256, P-384, P-521)"),
        })?;
        if key.subject_public_key_info() != cert.tbs_certificate.subject_pki.raw {
            return Err(LoadError::Mismatch {
                cert: names.cert.clone(),
                key: names.key.clone(),
                rotated_by_diego: false,
            });
        }
        let key_id = cert
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
                _ => None,
            });
        Ok(Ca {
            key,
            chain,
            subject_der: cert.tbs_certificate.subject.as_raw().to_vec(),
            subject: cert.tbs_certificate.subject.to_string(),
            key_id,
            not_after: info.not_after,
            constraints: Constraints::of(&cert),
        })
    }
}

fn time(unix: i64) -> Result<time::OffsetDateTime, LoadError> {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .map_err(|e| LoadError::Service(format!("bad certificate time {unix}: {e}")))
}

/// 16 random bytes, positive.
fn serial(provider: &CryptoProvider) -> Result<SerialNumber, LoadError> {
    let mut bytes = [0u8; 16];
    provider
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| LoadError::Service("no randomness for a serial number".to_owned()))?;
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01; // no leading zero byte to strip
    Ok(SerialNumber::from_slice(&bytes))
}

/// Diego's subject (Go's `pkix.Name` encoding): one RDN holding every OU, DER-sorted as a SET
/// OF, then the CN.
pub(crate) fn diego_subject(common_name: &str, ous: &[String]) -> Vec<u8> {
    let attribute = |oid: &[u8], value: &str| {
        let tag = if value.bytes().all(printable) {
            0x13
        } else {
            0x0C
        };
        der(0x30, &[der(0x06, oid), der(tag, value.as_bytes())].concat())
    };
    let mut members: Vec<Vec<u8>> = ous.iter().map(|ou| attribute(OID_OU, ou)).collect();
    members.sort_by(|a, b| set_order(a, b));
    let mut rdns = Vec::new();
    if !members.is_empty() {
        rdns.push(der(0x31, &members.concat()));
    }
    rdns.push(der(0x31, &attribute(OID_CN, common_name)));
    der(0x30, &rdns.concat())
}

/// PrintableString's alphabet.
fn printable(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b" '()+,-./:=?".contains(&b)
}

/// DER's SET OF order: encodings compared as octet strings, the shorter padded with zeros.
fn set_order(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    let len = a.len().max(b.len());
    let pad = |s: &[u8], i: usize| s.get(i).copied().unwrap_or(0);
    (0..len)
        .map(|i| pad(a, i).cmp(&pad(b, i)))
        .find(|o| o.is_ne())
        .unwrap_or(std::cmp::Ordering::Equal)
}

/// `cert` with the TBSCertificate's issuer and subject replaced, signed again by `key` (with
/// the algorithm `cert` already names).
fn resign(
    cert: &[u8],
    issuer: &[u8],
    subject: &[u8],
    key: &impl SigningKey,
) -> Result<Vec<u8>, String> {
    let malformed = || "rcgen produced an unexpected certificate encoding".to_owned();
    let (outer, _) = split(cert, 0x30).ok_or_else(malformed)?;
    let parts = elements(outer).ok_or_else(malformed)?;
    let [tbs, algorithm, _signature] = parts.as_slice() else {
        return Err(malformed());
    };
    let (tbs, _) = split(tbs, 0x30).ok_or_else(malformed)?;
    let mut fields = elements(tbs).ok_or_else(malformed)?;
    // version [0], serialNumber, signature, issuer, validity, subject, spki, extensions [3]
    if fields.len() < 7 || fields[0].first() != Some(&0xA0) {
        return Err(malformed());
    }
    fields[3] = issuer;
    fields[5] = subject;
    let tbs = der(0x30, &fields.concat());
    let signature = key.sign(&tbs).map_err(|e| e.to_string())?;
    let mut bits = Vec::with_capacity(signature.len() + 1);
    bits.push(0); // no unused bits
    bits.extend(signature);
    Ok(der(
        0x30,
        &[tbs, algorithm.to_vec(), der(0x03, &bits)].concat(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_subject_puts_every_ou_in_one_rdn_sorted_like_go_then_the_cn() {
        let ous = [
            "organization:0f8a4d6e-6c61-4c39-a6d0-2b0d6c1f8b11".to_owned(),
            "space:5c4d1b0e-2a3f-4e5d-9c8b-7a6f5e4d3c2b".to_owned(),
            "app:9e8d7c6b-5a4f-4e3d-8c2b-1a0f9e8d7c6b".to_owned(),
        ];
        let der = diego_subject("4e0a8b9c-1d2e-4f3a-5b6c-7d8e9f0a1b2c", &ous);
        let (_, name) = x509_parser::x509::X509Name::from_der(&der).unwrap();
        let rdns: Vec<_> = name.iter().collect();
        assert_eq!(rdns.len(), 2, "one RDN of OUs, one of the CN");
        let first: Vec<&str> = rdns[0].iter().map(|a| a.as_str().unwrap()).collect();
        // By encoded length, as Go's encoding/asn1 sorts a SET OF.
        assert_eq!(first, [ous[2].as_str(), ous[1].as_str(), ous[0].as_str()]);
        assert_eq!(
            name.iter_common_name().next().unwrap().as_str().unwrap(),
            "4e0a8b9c-1d2e-4f3a-5b6c-7d8e9f0a1b2c"
        );
    }

    #[test]
    fn name_constraints_permit_subdomains_and_matching_addresses_only() {
        let c = Constraints {
            permitted_dns: vec!["apps.internal".into(), ".svc.example".into()],
            excluded_dns: vec!["secret.apps.internal".into()],
            permitted_ips: vec![(vec![10, 255, 0, 0], vec![255, 255, 0, 0])],
            excluded_ips: Vec::new(),
        };
        assert!(c.permits_dns("backend.apps.internal"));
        assert!(c.permits_dns("0.backend.Apps.Internal"));
        assert!(c.permits_dns("apps.internal"));
        assert!(
            !c.permits_dns("svc.example"),
            "a leading dot means subdomains only"
        );
        assert!(c.permits_dns("a.svc.example"));
        assert!(!c.permits_dns("4e0a8b9c-1d2e-4f3a-5b6c-7d8e"));
        assert!(!c.permits_dns("x.secret.apps.internal"));
        assert!(!c.permits_dns("badapps.internal"));
        assert!(c.permits_ip("10.255.3.4".parse().unwrap()));
        assert!(!c.permits_ip("10.254.3.4".parse().unwrap()));
        assert!(
            c.permits_ip("::1".parse().unwrap()),
            "no IPv6 subtree: unconstrained"
        );
        assert!(Constraints::default().permits_dns("anything"));
    }

    #[test]
    fn renewal_comes_before_two_thirds_of_the_lifetime() {
        for (nb, na) in [(0, 86_400), (1_000, 1_006), (-300, 3_600)] {
            let at = renew_at(nb, na);
            assert!(at > nb && at < nb + (na - nb) * 2 / 3, "{nb} {na} {at}");
        }
    }
}
