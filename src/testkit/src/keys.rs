//! Private keys in the encodings the sidecar meets: PKCS#1 (Diego's `instance.key`), SEC1 and
//! PKCS#8.

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _};
use base64::Engine as _;

/// How a test key is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// RSA of this many bits (2048, 3072 or 4096), PKCS#1 (`RSA PRIVATE KEY`).
    Rsa(u32),
    /// P-256, SEC1 (`EC PRIVATE KEY`).
    Ec,
}

/// An Ed448 key in PKCS#8: a type rustls cannot sign with. aws-lc-rs cannot make one, and any
/// one will do, so it is fixed (made once with `openssl genpkey -algorithm ed448`).
pub const ED448_PKCS8_PEM: &str = "-----BEGIN PRIVATE KEY-----
MEcCAQAwBQYDK2VxBDsEOYK/Q5MTmjiYlGFiYm/4pbtPIdFsNsEZauLAO2ciB4M9
IwZBb5nWXhVgcajtmYyJB0bc8GYIUkhSCg==
-----END PRIVATE KEY-----
";

/// A fresh key pair.
pub(crate) struct Key {
    /// In the kind's own encoding: PKCS#1 for RSA, SEC1 for EC.
    pub pem: String,
    pub pkcs8_der: Vec<u8>,
    /// SubjectPublicKeyInfo.
    pub spki_der: Vec<u8>,
}

pub(crate) fn generate(kind: KeyKind) -> Key {
    match kind {
        KeyKind::Rsa(bits) => {
            let size = match bits {
                2048 => aws_lc_rs::rsa::KeySize::Rsa2048,
                3072 => aws_lc_rs::rsa::KeySize::Rsa3072,
                4096 => aws_lc_rs::rsa::KeySize::Rsa4096,
                other => panic!("no RSA key size {other}: use 2048, 3072 or 4096"),
            };
            let pair = aws_lc_rs::rsa::KeyPair::generate(size)
                .unwrap_or_else(|e| panic!("RSA-{bits} key generation: {e}"));
            let pkcs8: aws_lc_rs::encoding::Pkcs8V1Der<'_> = pair
                .as_der()
                .unwrap_or_else(|e| panic!("RSA key encoding: {e}"));
            let spki: aws_lc_rs::encoding::PublicKeyX509Der<'_> = pair
                .public_key()
                .as_der()
                .unwrap_or_else(|e| panic!("RSA public key encoding: {e}"));
            let pkcs8_der = pkcs8.as_ref().to_vec();
            Key {
                pem: pem("RSA PRIVATE KEY", &pkcs1_of(&pkcs8_der)),
                pkcs8_der,
                spki_der: spki.as_ref().to_vec(),
            }
        }
        KeyKind::Ec => {
            let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING)
                .unwrap_or_else(|e| panic!("P-256 key generation: {e}"));
            let sec1: aws_lc_rs::encoding::EcPrivateKeyRfc5915Der<'_> = pair
                .private_key()
                .as_der()
                .unwrap_or_else(|e| panic!("SEC1 encoding: {e}"));
            let pkcs8 = pair
                .to_pkcs8v1()
                .unwrap_or_else(|e| panic!("PKCS#8 encoding: {e}"));
            let spki: aws_lc_rs::encoding::PublicKeyX509Der<'_> = pair
                .public_key()
                .as_der()
                .unwrap_or_else(|e| panic!("EC public key encoding: {e}"));
            Key {
                pem: pem("EC PRIVATE KEY", sec1.as_ref()),
                pkcs8_der: pkcs8.as_ref().to_vec(),
                spki_der: spki.as_ref().to_vec(),
            }
        }
    }
}

/// The RSAPrivateKey (PKCS#1) inside a PKCS#8 PrivateKeyInfo: its `privateKey` OCTET STRING.
fn pkcs1_of(pkcs8: &[u8]) -> Vec<u8> {
    yasna::parse_der(pkcs8, |r| {
        r.read_sequence(|r| {
            r.next().read_u8()?;
            r.next().read_der()?;
            r.next().read_bytes()
        })
    })
    .unwrap_or_else(|e| panic!("PKCS#8 from aws-lc-rs did not parse: {e}"))
}

/// `der` as a PEM block with `label`, 64 characters a line.
pub fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
