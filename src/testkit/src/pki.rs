//! The CA hierarchy of a (fake) cf-deployment and the certificates it issues.

use crate::keys::{self, KeyKind, pem};
use crate::leaf::{self, Tbs};
use crate::name::Name;
use crate::util::{new_guid, random_bytes, unix_now};
use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DistinguishedName, DnType, GeneralSubtree,
    IsCa, KeyPair, KeyUsagePurpose, NameConstraints, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::OnceLock;
use time::{Duration, OffsetDateTime};

/// The CF identity in a certificate's OUs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub org: String,
    pub space: String,
    pub app: String,
}

impl Identity {
    /// A new app in a new space of a new org.
    pub fn random() -> Identity {
        Identity {
            org: new_guid(),
            space: new_guid(),
            app: new_guid(),
        }
    }

    /// Another app in the same space.
    pub fn same_space(&self) -> Identity {
        Identity {
            app: new_guid(),
            ..self.clone()
        }
    }

    /// An app in another space of the same org.
    pub fn same_org(&self) -> Identity {
        Identity {
            space: new_guid(),
            app: new_guid(),
            ..self.clone()
        }
    }

    /// Diego's subject for an instance of this app.
    pub fn subject(&self, instance: &str) -> Name {
        Name::diego(&self.org, &self.space, &self.app, instance)
    }

    /// `VCAP_APPLICATION` of an app with this identity.
    pub fn vcap_application(&self) -> tls_sidecar_config::VcapApplication {
        tls_sidecar_config::VcapApplication {
            application_id: Some(self.app.clone()),
            application_name: Some("test-app".to_owned()),
            space_id: Some(self.space.clone()),
            organization_id: Some(self.org.clone()),
            ..Default::default()
        }
    }
}

/// Validity of a test leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// From now (not backdated, as Diego does), one day.
    OneDay,
    /// From now for this many seconds (Diego's `instance_identity_validity_period_in_hours`).
    For(u64),
    /// Between these Unix times (seconds): in the past, or in the future.
    Between(i64, i64),
    /// From a minute ago until this Unix time (seconds): a certificate that expires while a
    /// test runs.
    Until(u64),
}

/// Expired on 2020-01-02.
pub const EXPIRED: Validity = Validity::Between(1_577_836_800, 1_577_923_200);
/// Valid from 2049-01-01, for a day.
pub const NOT_YET_VALID: Validity = Validity::Between(2_493_072_000, 2_493_158_400);

impl Validity {
    fn window(self) -> (OffsetDateTime, OffsetDateTime) {
        let at = |unix: i64| {
            OffsetDateTime::from_unix_timestamp(unix).unwrap_or_else(|e| panic!("time {unix}: {e}"))
        };
        let now = i64::try_from(unix_now()).unwrap_or(i64::MAX);
        let secs = |s: u64| i64::try_from(s).unwrap_or(i64::MAX);
        match self {
            Validity::OneDay => (at(now), at(now + 24 * 3600)),
            Validity::For(seconds) => (at(now), at(now.saturating_add(secs(seconds)))),
            Validity::Between(start, end) => (at(start), at(end)),
            Validity::Until(end) => (at(now - 60), at(secs(end))),
        }
    }
}

/// What a leaf says. [`Pki::issue`] and its kin fill it in the Diego way.
#[derive(Debug, Clone)]
pub struct LeafSpec {
    pub subject: Name,
    pub dns: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub uris: Vec<String>,
    pub key: KeyKind,
    pub validity: Validity,
}

impl LeafSpec {
    /// A leaf with only `subject` (OpenSSL's `-subj` syntax, see [`Name::openssl`]): a P-256
    /// key, no SANs, valid from now for a day.
    pub fn subject(subj: &str) -> LeafSpec {
        LeafSpec {
            subject: Name::openssl(subj),
            dns: Vec::new(),
            ips: Vec::new(),
            uris: Vec::new(),
            key: KeyKind::Ec,
            validity: Validity::OneDay,
        }
    }
}

/// An issued identity: `chain_pem` is `instance.crt` (leaf + intermediate), `key_pem` is
/// `instance.key` (PKCS#1 for RSA, SEC1 for EC).
#[derive(Debug, Clone)]
pub struct Leaf {
    pub chain_pem: String,
    pub key_pem: String,
    /// The leaf alone.
    pub leaf_pem: String,
    pub leaf_der: CertificateDer<'static>,
    /// The same key in PKCS#8 (`PRIVATE KEY`).
    pub key_pkcs8_pem: String,
    /// The CN and DNS SAN.
    pub guid: String,
    /// The org, space and app in its OUs (empty for [`Pki::issue_without_ous`]).
    pub identity: Identity,
    /// The serial number, big-endian.
    pub serial: Vec<u8>,
}

impl Leaf {
    /// The serial as `openssl x509 -noout -serial` prints it: upper-case hex.
    pub fn serial_hex(&self) -> String {
        let start = self.serial.iter().position(|b| *b != 0).unwrap_or(0);
        hex::encode_upper(&self.serial[start..])
    }
}

/// A root (appRootCA) and an intermediate (instanceIdentityCA) like cf-deployment's, both RSA
/// with PKCS#1 keys (the rep refuses any other CA key).
pub struct Pki {
    pub root_der: CertificateDer<'static>,
    /// appRootCA in PEM, what Diego puts in `$CF_SYSTEM_CERT_PATH/trusted-ca-1.crt`.
    pub root_pem: String,
    /// PKCS#1.
    pub root_key_pem: String,
    pub intermediate_pem: String,
    pub intermediate_der: CertificateDer<'static>,
    /// PKCS#1.
    pub intermediate_key_pem: String,
    intermediate_key: KeyPair,
    intermediate_subject: Vec<u8>,
    intermediate_key_id: Vec<u8>,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").finish_non_exhaustive()
    }
}

/// A CA certificate's parameters: CA:TRUE (critical), keyCertSign + cRLSign, SKI, 10 years
/// from an hour ago.
fn ca_params(cn: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.serial_number = Some(SerialNumber::from_slice(&random_bytes()));
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(3650);
    params
}

/// A new key of `kind` and its rcgen signer.
fn ca_key(kind: KeyKind) -> (keys::Key, KeyPair) {
    let key = keys::generate(kind);
    let pair = KeyPair::try_from(key.pkcs8_der.as_slice())
        .unwrap_or_else(|e| panic!("rcgen does not take the aws-lc-rs key: {e}"));
    (key, pair)
}

fn cert_der(cert: &rcgen::Certificate) -> CertificateDer<'static> {
    CertificateDer::from(cert.der().to_vec())
}

impl Pki {
    /// One hierarchy shared by every test in a binary.
    pub fn shared() -> &'static Pki {
        static PKI: OnceLock<Pki> = OnceLock::new();
        PKI.get_or_init(Pki::generate)
    }

    /// Another CA hierarchy, unrelated to [`Pki::shared`], with names of its own.
    pub fn other() -> Pki {
        Pki::named("otherRootCA", "otherIdentityCA")
    }

    /// A hierarchy with cf-deployment's names (as another foundation's would be).
    pub fn generate() -> Pki {
        Pki::named("appRootCA", "instanceIdentityCA")
    }

    /// A hierarchy with these CNs.
    pub fn named(root_cn: &str, intermediate_cn: &str) -> Pki {
        let (root_key, root_pair) = ca_key(KeyKind::Rsa(2048));
        let root_params = ca_params(root_cn);
        let root = root_params
            .self_signed(&root_pair)
            .unwrap_or_else(|e| panic!("signing {root_cn}: {e}"));
        let (intermediate_key, intermediate_pair) = ca_key(KeyKind::Rsa(2048));
        let mut params = ca_params(intermediate_cn);
        params.use_authority_key_identifier_extension = true;
        let issuer = rcgen::Issuer::from_params(&root_params, &root_pair);
        let intermediate = params
            .signed_by(&intermediate_pair, &issuer)
            .unwrap_or_else(|e| panic!("signing {intermediate_cn}: {e}"));
        let intermediate_der = cert_der(&intermediate);
        let (intermediate_subject, intermediate_key_id) =
            subject_and_key_id(&intermediate_der, &intermediate_pair);
        Pki {
            root_pem: pem("CERTIFICATE", root.der()),
            root_der: cert_der(&root),
            root_key_pem: root_key.pem,
            intermediate_pem: pem("CERTIFICATE", &intermediate_der),
            intermediate_der,
            intermediate_key_pem: intermediate_key.pem,
            intermediate_key: intermediate_pair,
            intermediate_subject,
            intermediate_key_id,
        }
    }

    /// A hierarchy saved earlier as PEM (for a CA shared by several test processes).
    pub fn from_pem(
        root_pem: &str,
        root_key_pem: &str,
        intermediate_pem: &str,
        intermediate_key_pem: &str,
    ) -> Pki {
        use rustls_pki_types::PrivateKeyDer;
        use rustls_pki_types::pem::PemObject;
        let cert = |pem: &str| {
            CertificateDer::from_pem_slice(pem.as_bytes())
                .unwrap_or_else(|e| panic!("a saved CA certificate: {e}"))
        };
        let key = PrivateKeyDer::from_pem_slice(intermediate_key_pem.as_bytes())
            .unwrap_or_else(|e| panic!("the saved intermediate key: {e}"));
        let intermediate_key = KeyPair::try_from(&key)
            .unwrap_or_else(|e| panic!("rcgen does not take the saved intermediate key: {e}"));
        let intermediate_der = cert(intermediate_pem);
        let (intermediate_subject, intermediate_key_id) =
            subject_and_key_id(&intermediate_der, &intermediate_key);
        Pki {
            root_der: cert(root_pem),
            root_pem: root_pem.to_owned(),
            root_key_pem: root_key_pem.to_owned(),
            intermediate_pem: intermediate_pem.to_owned(),
            intermediate_der,
            intermediate_key_pem: intermediate_key_pem.to_owned(),
            intermediate_key,
            intermediate_subject,
            intermediate_key_id,
        }
    }

    /// A new leaf with a new RSA key of `bits` in PKCS#1, shaped like Diego's (see
    /// cf-instance-identity.md §1): CN = instance GUID, the three OUs in one multi-valued RDN,
    /// SANs DNS:<guid> and IP:127.0.0.1, serverAuth + clientAuth.
    pub fn leaf(&self, bits: u32) -> Leaf {
        self.issue(&Identity::random(), KeyKind::Rsa(bits), Validity::OneDay)
    }

    /// Like [`Pki::leaf`] with a P-256 key in SEC1 (`EC PRIVATE KEY`).
    pub fn ec_leaf(&self) -> Leaf {
        self.issue(&Identity::random(), KeyKind::Ec, Validity::OneDay)
    }

    /// An instance identity of an app with `identity` (a P-256 key: quick to make), used as a
    /// client certificate.
    pub fn client(&self, identity: &Identity) -> Leaf {
        self.issue(identity, KeyKind::Ec, Validity::OneDay)
    }

    /// A Diego-shaped leaf for `identity`, SAN IP 127.0.0.1.
    pub fn issue(&self, identity: &Identity, key: KeyKind, validity: Validity) -> Leaf {
        self.issue_at(
            identity,
            &new_guid(),
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            key,
            validity,
        )
    }

    /// A Diego-shaped leaf for instance `guid` of `identity` in a container with `ip`.
    pub fn issue_at(
        &self,
        identity: &Identity,
        guid: &str,
        ip: IpAddr,
        key: KeyKind,
        validity: Validity,
    ) -> Leaf {
        let mut leaf = self.issue_spec(&LeafSpec {
            subject: identity.subject(guid),
            dns: vec![guid.to_owned()],
            ips: vec![ip],
            uris: Vec::new(),
            key,
            validity,
        });
        leaf.guid = guid.to_owned();
        leaf.identity = identity.clone();
        leaf
    }

    /// Like [`Pki::issue`], but the subject is only `CN=<guid>`: no OUs, so no CF identity
    /// (its [`Leaf::identity`] fields are empty).
    pub fn issue_without_ous(&self, key: KeyKind) -> Leaf {
        let guid = new_guid();
        let mut leaf = self.issue_spec(&LeafSpec {
            subject: Name::common_name(&guid),
            dns: vec![guid.clone()],
            ips: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            uris: Vec::new(),
            key,
            validity: Validity::OneDay,
        });
        leaf.guid = guid;
        leaf
    }

    /// Any leaf the intermediate signs (the `guid` and `identity` of the result are empty).
    pub fn issue_spec(&self, spec: &LeafSpec) -> Leaf {
        let key = keys::generate(spec.key);
        let (not_before, not_after) = spec.validity.window();
        let serial = random_bytes();
        let der = leaf::sign(
            &Tbs {
                serial,
                issuer_der: &self.intermediate_subject,
                issuer_key_id: &self.intermediate_key_id,
                not_before,
                not_after,
                subject_der: spec.subject.to_der(),
                spki_der: &key.spki_der,
                dns: &spec.dns,
                ips: &spec.ips,
                uris: &spec.uris,
            },
            &self.intermediate_key,
        );
        let leaf_pem = pem("CERTIFICATE", &der);
        Leaf {
            chain_pem: format!("{leaf_pem}{}", self.intermediate_pem),
            key_pem: key.pem,
            key_pkcs8_pem: pem("PRIVATE KEY", &key.pkcs8_der),
            leaf_pem,
            leaf_der: CertificateDer::from(der),
            guid: String::new(),
            identity: Identity {
                org: String::new(),
                space: String::new(),
                app: String::new(),
            },
            serial: serial.to_vec(),
        }
    }

    /// A key of a type rustls cannot sign with (Ed448), in PKCS#8.
    pub fn ed448_key(&self) -> String {
        keys::ED448_PKCS8_PEM.to_owned()
    }

    /// `leaf` with its key as PKCS#8 (`PRIVATE KEY`).
    pub fn as_pkcs8(&self, leaf: &Leaf) -> Leaf {
        Leaf {
            key_pem: leaf.key_pkcs8_pem.clone(),
            ..leaf.clone()
        }
    }
}

/// The subject (as encoded) and subjectKeyIdentifier of a CA certificate that `ca_params`
/// described: rcgen derives the identifier from the key with the default method those params
/// keep, so the same derivation gives it back for a CA loaded from PEM.
fn subject_and_key_id(der: &[u8], key: &KeyPair) -> (Vec<u8>, Vec<u8>) {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der)
        .unwrap_or_else(|e| panic!("rcgen's CA certificate does not parse: {e}"));
    let key_id = CertificateParams::default().key_identifier(key);
    (cert.subject().as_raw().to_vec(), key_id)
}

/// The key of a [`TestCa`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaKey {
    /// RSA 2048, `RSA PRIVATE KEY`.
    RsaPkcs1,
    /// P-256, `EC PRIVATE KEY`.
    EcSec1,
    /// P-256, `PRIVATE KEY`.
    EcPkcs8,
}

/// A CA for `certificate.source: minted`, as an operator would bind one.
pub struct TestCa {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: CertificateDer<'static>,
}

impl TestCa {
    /// A self-signed CA (CN testMintCA, CA:TRUE, keyCertSign, SKI) with `constraints` as its
    /// nameConstraints (critical) if given, in OpenSSL's config syntax:
    /// `critical,permitted;DNS:apps.internal,permitted;IP:127.0.0.0/255.0.0.0`.
    pub fn new(key: CaKey, constraints: Option<&str>) -> TestCa {
        let (made, pair) = ca_key(match key {
            CaKey::RsaPkcs1 => KeyKind::Rsa(2048),
            CaKey::EcSec1 | CaKey::EcPkcs8 => KeyKind::Ec,
        });
        let key_pem = match key {
            CaKey::RsaPkcs1 | CaKey::EcSec1 => made.pem,
            CaKey::EcPkcs8 => pem("PRIVATE KEY", &made.pkcs8_der),
        };
        let mut params = ca_params("testMintCA");
        params.not_after = OffsetDateTime::now_utc() + Duration::days(30);
        params.name_constraints = constraints.map(name_constraints);
        let cert = params
            .self_signed(&pair)
            .unwrap_or_else(|e| panic!("signing testMintCA: {e}"));
        TestCa {
            cert_pem: pem("CERTIFICATE", cert.der()),
            cert_der: cert_der(&cert),
            key_pem,
        }
    }

    /// `VCAP_SERVICES` with this CA bound as the user-provided service `name`.
    pub fn vcap_services(&self, name: &str) -> String {
        serde_json::json!({
            "user-provided": [{
                "name": name,
                "label": "user-provided",
                "credentials": {"ca_certificate": self.cert_pem, "ca_private_key": self.key_pem}
            }]
        })
        .to_string()
    }
}

/// `permitted;DNS:<name>` and `permitted;IP:<addr>/<mask>` items (rcgen always marks the
/// extension critical, which is what `critical,` asks for).
fn name_constraints(spec: &str) -> NameConstraints {
    let mut permitted = Vec::new();
    for item in spec.split(',').filter(|i| *i != "critical") {
        let value = item
            .strip_prefix("permitted;")
            .unwrap_or_else(|| panic!("the kit knows only permitted subtrees, not {item}"));
        if let Some(dns) = value.strip_prefix("DNS:") {
            permitted.push(GeneralSubtree::DnsName(dns.to_owned()));
        } else if let Some((addr, mask)) = value.strip_prefix("IP:").and_then(|v| v.split_once('/'))
        {
            let v4 = |s: &str| -> [u8; 4] {
                s.parse::<Ipv4Addr>()
                    .unwrap_or_else(|e| panic!("{s} in {spec}: {e}"))
                    .octets()
            };
            permitted.push(GeneralSubtree::IpAddress(CidrSubnet::V4(
                v4(addr),
                v4(mask),
            )));
        } else {
            panic!("the kit knows only DNS and IPv4 subtrees, not {value}");
        }
    }
    NameConstraints {
        permitted_subtrees: permitted,
        excluded_subtrees: Vec::new(),
    }
}
