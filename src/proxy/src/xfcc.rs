//! `X-Forwarded-Client-Cert` values for http-mode listeners.
//!
//! `envoy` reproduces Envoy's element byte for byte, because RFC-0055 (Gorouter identity-aware
//! routing) and the c2c mTLS RFC draft standardise on it and app libraries parse it:
//! `Hash=<hex sha256 of the leaf DER>;Subject="<RFC 2253 subject>"` then `URI=` and `DNS=` per
//! SAN. Envoy renders the subject with OpenSSL's `X509_NAME_print_ex(.., XN_FLAG_RFC2253)`, so
//! [`rfc2253`] follows OpenSSL's rules exactly (last RDN first, members of a multi-valued RDN
//! reversed too, `+` inside an RDN, `\`-escapes, bytes above 0x7f as `\XX`), not RFC 4514's
//! prettier variant: Diego puts three OUs in one multi-valued RDN, and a consumer that splits
//! on `,` and `+` must see what Envoy would send.
//!
//! `raw` is Gorouter's format: the leaf's DER in standard base64 (its PEM body without the
//! armour and line breaks).

use sha2::{Digest, Sha256};
use x509_parser::der_parser::asn1_rs::{Any, Tag};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate, X509Name};

/// The Envoy-format XFCC element for a verified client leaf certificate.
pub fn envoy(leaf_der: &[u8]) -> Result<String, String> {
    let (_, cert) = X509Certificate::from_der(leaf_der)
        .map_err(|e| format!("client certificate does not parse: {e}"))?;
    let mut out = format!(
        "Hash={};Subject=\"{}\"",
        hex::encode(Sha256::digest(leaf_der)),
        rfc2253(cert.subject())
    );
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        // Envoy emits every URI SAN, then every DNS SAN, each in certificate order.
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name {
                out.push_str(";URI=");
                out.push_str(uri);
            }
        }
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                out.push_str(";DNS=");
                out.push_str(dns);
            }
        }
    }
    Ok(out)
}

/// Gorouter's `raw` format: base64 of the leaf DER.
pub fn raw(leaf_der: &[u8]) -> String {
    base64(leaf_der)
}

/// `name` as OpenSSL prints it with `XN_FLAG_RFC2253`.
pub fn rfc2253(name: &X509Name) -> String {
    // OpenSSL walks the flattened attribute list backwards and puts '+' between attributes of
    // the same RDN, ',' between RDNs.
    let mut out = String::new();
    let rdns: Vec<_> = name.iter().collect();
    for (i, rdn) in rdns.iter().rev().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let attrs: Vec<_> = rdn.iter().collect();
        for (j, attr) in attrs.iter().rev().enumerate() {
            if j > 0 {
                out.push('+');
            }
            out.push_str(&short_name(&attr.attr_type().to_id_string()));
            out.push('=');
            push_value(&mut out, attr.attr_value());
        }
    }
    out
}

/// OpenSSL's short names (`OBJ_nid2sn`) for the attribute types found in certificates; any
/// other type prints as its dotted OID, as OpenSSL does for types it has no name for.
fn short_name(oid: &str) -> String {
    let name = match oid {
        "2.5.4.3" => "CN",
        "2.5.4.4" => "SN",
        "2.5.4.5" => "serialNumber",
        "2.5.4.6" => "C",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.9" => "street",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "2.5.4.12" => "title",
        "2.5.4.13" => "description",
        "2.5.4.17" => "postalCode",
        "2.5.4.42" => "GN",
        "2.5.4.43" => "initials",
        "2.5.4.44" => "generationQualifier",
        "2.5.4.46" => "dnQualifier",
        "2.5.4.65" => "pseudonym",
        "2.5.4.97" => "organizationIdentifier",
        "0.9.2342.19200300.100.1.1" => "UID",
        "0.9.2342.19200300.100.1.25" => "DC",
        "1.2.840.113549.1.9.1" => "emailAddress",
        "1.3.6.1.4.1.311.60.2.1.3" => "jurisdictionC",
        other => return other.to_owned(),
    };
    name.to_owned()
}

/// Appends one attribute value with `ASN1_STRFLGS_RFC2253`: string types are converted to
/// UTF-8 and escaped; any other type is dumped as `#` + hex of its DER encoding.
fn push_value(out: &mut String, value: &Any) {
    let bytes: Vec<u8> = match value.tag() {
        Tag::Utf8String
        | Tag::PrintableString
        | Tag::Ia5String
        | Tag::NumericString
        | Tag::VisibleString => value.data.to_vec(),
        // T61String: OpenSSL treats it as one byte per character (Latin-1).
        Tag::T61String => latin1_to_utf8(value.data),
        Tag::BmpString => match utf16_to_utf8(value.data) {
            Some(s) => s,
            None => return dump_der(out, value),
        },
        Tag::UniversalString => match utf32_to_utf8(value.data) {
            Some(s) => s,
            None => return dump_der(out, value),
        },
        _ => return dump_der(out, value),
    };
    let last = bytes.len().saturating_sub(1);
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b',' | b'+' | b'"' | b'\\' | b'<' | b'>' | b';' => {
                out.push('\\');
                out.push(b as char);
            }
            b'#' if i == 0 => out.push_str("\\#"),
            b' ' if i == 0 || i == last => out.push_str("\\ "),
            0..=0x1f | 0x7f..=0xff => out.push_str(&format!("\\{b:02X}")),
            _ => out.push(b as char),
        }
    }
}

fn dump_der(out: &mut String, value: &Any) {
    out.push('#');
    let mut der = Vec::with_capacity(value.data.len() + 4);
    // Re-encode tag and length: Any keeps the header apart from the content.
    let tag = value.tag().0;
    let class = value.class() as u32;
    let constructed = if value.header.is_constructed() {
        0x20
    } else {
        0
    };
    if tag < 31 {
        der.push(((class << 6) as u8) | constructed | tag as u8);
    } else {
        // Multi-byte tags are not used by any attribute value OpenSSL would reach here with.
        der.push(((class << 6) as u8) | constructed | 0x1f);
        let mut t = Vec::new();
        let mut v = tag;
        t.push((v & 0x7f) as u8);
        v >>= 7;
        while v > 0 {
            t.push(0x80 | (v & 0x7f) as u8);
            v >>= 7;
        }
        der.extend(t.iter().rev());
    }
    let len = value.data.len();
    if len < 0x80 {
        der.push(len as u8);
    } else {
        let be = len.to_be_bytes();
        let skip = be.iter().take_while(|b| **b == 0).count();
        der.push(0x80 | (be.len() - skip) as u8);
        der.extend_from_slice(&be[skip..]);
    }
    der.extend_from_slice(value.data);
    out.push_str(&hex::encode(der));
}

fn latin1_to_utf8(data: &[u8]) -> Vec<u8> {
    data.iter()
        .map(|&b| b as char)
        .collect::<String>()
        .into_bytes()
}

fn utf16_to_utf8(data: &[u8]) -> Option<Vec<u8>> {
    if !data.len().is_multiple_of(2) {
        return None;
    }
    let units: Vec<u16> = data
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    String::from_utf16(&units).ok().map(String::into_bytes)
}

fn utf32_to_utf8(data: &[u8]) -> Option<Vec<u8>> {
    if !data.len().is_multiple_of(4) {
        return None;
    }
    data.chunks_exact(4)
        .map(|c| char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
        .collect::<Option<String>>()
        .map(String::into_bytes)
}

fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::process::Command;

    fn openssl(dir: &Path, args: &[&str]) -> String {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// A self-signed certificate with `subj` (OpenSSL `-subj` syntax) and `san`; returns DER.
    fn cert(dir: &Path, subj: &str, san: &str, extra: &[&str]) -> Vec<u8> {
        let mut args = vec![
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "k.pem",
            "-out",
            "c.pem",
            "-days",
            "1",
            "-subj",
            subj,
            "-addext",
            san,
        ];
        args.extend_from_slice(extra);
        openssl(dir, &args);
        openssl(
            dir,
            &["x509", "-in", "c.pem", "-outform", "DER", "-out", "c.der"],
        );
        std::fs::read(dir.join("c.der")).unwrap()
    }

    fn openssl_subject(dir: &Path) -> String {
        let s = openssl(
            dir,
            &[
                "x509", "-in", "c.pem", "-noout", "-subject", "-nameopt", "RFC2253",
            ],
        );
        s.trim_end().strip_prefix("subject=").unwrap().to_owned()
    }

    fn subject_of(der: &[u8]) -> String {
        let (_, c) = X509Certificate::from_der(der).unwrap();
        rfc2253(c.subject())
    }

    #[test]
    fn a_diego_subject_prints_as_openssl_and_envoy_print_it() {
        let dir = tempfile::tempdir().unwrap();
        let der = cert(
            dir.path(),
            "/OU=organization:0f8a4d6e-6c61-4c39-a6d0-2b0d6c1f8b11+OU=space:5c4d1b0e-2a3f-4e5d-9c8b-7a6f5e4d3c2b+OU=app:9e8d7c6b-5a4f-4e3d-8c2b-1a0f9e8d7c6b/CN=4e0a8b9c-1d2e-4f3a-5b6c-7d8e9f0a1b2c",
            "subjectAltName=DNS:4e0a8b9c-1d2e-4f3a-5b6c-7d8e9f0a1b2c,IP:10.255.1.2",
            &[],
        );
        let want = openssl_subject(dir.path());
        assert_eq!(subject_of(&der), want);
        assert!(
            want.starts_with("CN=4e0a8b9c-1d2e-4f3a-5b6c-7d8e9f0a1b2c,OU="),
            "{want}"
        );
        assert_eq!(want.matches('+').count(), 2, "three OUs in one RDN: {want}");
    }

    #[test]
    fn special_characters_are_escaped_exactly_as_openssl_escapes_them() {
        let dir = tempfile::tempdir().unwrap();
        for subj in [
            "/C=GB/O=Sue\\, Grabbit and Runn/CN=L. Eagle",
            "/O=a\\+b;c<d>e\"f\\\\g/CN=#hash/OU= lead and trail ",
            "/CN=caf\u{e9} \u{2603}/O=Widget Inc./DC=example/DC=com",
            "/CN=ctrl\u{1}char/emailAddress=me@example.com/UID=u1",
        ] {
            let der = cert(dir.path(), subj, "subjectAltName=DNS:x.example", &["-utf8"]);
            let want = openssl_subject(dir.path());
            assert!(
                want.contains('\\'),
                "the case must exercise escaping: {want}"
            );
            assert_eq!(subject_of(&der), want, "subject {subj}");
        }
    }

    #[test]
    fn the_envoy_element_has_the_openssl_fingerprint_subject_and_sans() {
        let dir = tempfile::tempdir().unwrap();
        let der = cert(
            dir.path(),
            "/OU=app:1+OU=space:2/CN=guid",
            "subjectAltName=DNS:a.apps.internal,URI:spiffe://cf/app/1,IP:10.0.0.1,DNS:b.apps.internal",
            &[],
        );
        let fp = openssl(
            dir.path(),
            &["x509", "-in", "c.pem", "-noout", "-fingerprint", "-sha256"],
        );
        let hash = fp
            .trim()
            .rsplit('=')
            .next()
            .unwrap()
            .replace(':', "")
            .to_ascii_lowercase();
        assert_eq!(
            envoy(&der).unwrap(),
            format!(
                "Hash={hash};Subject=\"{}\";URI=spiffe://cf/app/1;DNS=a.apps.internal;DNS=b.apps.internal",
                openssl_subject(dir.path())
            )
        );
    }

    #[test]
    fn raw_is_the_pem_body_without_armour() {
        let dir = tempfile::tempdir().unwrap();
        let der = cert(dir.path(), "/CN=raw", "subjectAltName=DNS:raw", &[]);
        let pem = std::fs::read_to_string(dir.path().join("c.pem")).unwrap();
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        assert_eq!(raw(&der), body);
    }
}
