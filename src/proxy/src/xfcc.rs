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
//! Values follow Envoy's grammar ([`parse`] reads it back): elements separated by `,`, pairs by
//! `;`, a value holding `,` `;` `=` (or `"`, `\`, edge whitespace) double-quoted with `"` and
//! `\` backslash-escaped. `Subject` is always quoted, as Envoy quotes it; a URI or DNS SAN is
//! quoted when it needs to be, so no SAN can add a key or an element of its own. Where this
//! differs from Envoy's own bytes it is on purpose: Envoy writes SANs unquoted and does not
//! escape the subject's backslashes, so its reader (the `XFCC_VALUE` formatter) can misread
//! them; for a Diego certificate (GUIDs only) the bytes are the same.
//!
//! `raw` is Gorouter's format: the leaf's DER in standard base64 (its PEM body without the
//! armour and line breaks).

use sha2::{Digest, Sha256};
use x509_parser::der_parser::asn1_rs::{Any, Tag};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate, X509Name};

/// One client certificate as an Envoy XFCC element: what [`envoy`] sends and what [`parse`]
/// reads back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Element {
    /// Lower-case hex SHA-256 of the leaf's DER.
    pub hash: String,
    /// The subject as OpenSSL prints it with `XN_FLAG_RFC2253` ([`rfc2253`]).
    pub subject: String,
    /// URI SANs, in certificate order.
    pub uris: Vec<String>,
    /// DNS SANs, in certificate order.
    pub dns: Vec<String>,
}

impl Element {
    /// The fields of a verified client leaf certificate.
    pub fn from_der(leaf_der: &[u8]) -> Result<Self, String> {
        let (_, cert) = X509Certificate::from_der(leaf_der)
            .map_err(|e| format!("client certificate does not parse: {e}"))?;
        let mut element = Element {
            hash: hex::encode(Sha256::digest(leaf_der)),
            subject: rfc2253(cert.subject()),
            uris: Vec::new(),
            dns: Vec::new(),
        };
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            // Envoy emits every URI SAN, then every DNS SAN, each in certificate order.
            for name in &san.value.general_names {
                match name {
                    GeneralName::URI(uri) => element.uris.push((*uri).to_owned()),
                    GeneralName::DNSName(dns) => element.dns.push((*dns).to_owned()),
                    _ => {}
                }
            }
        }
        Ok(element)
    }

    /// The element as Envoy's grammar writes it: `Hash=..;Subject="..";URI=..;DNS=..`.
    /// `Subject` is always quoted (as Envoy does); `URI` and `DNS` values are quoted when they
    /// hold a character the grammar gives a meaning to, so a SAN such as
    /// `spiffe://x;DNS=admin` stays one value instead of forging a second key or element.
    pub fn to_header(&self) -> String {
        let mut out = String::with_capacity(96 + self.subject.len());
        out.push_str("Hash=");
        push_xfcc_value(&mut out, &self.hash, false);
        out.push_str(";Subject=");
        push_xfcc_value(&mut out, &self.subject, true);
        for uri in &self.uris {
            out.push_str(";URI=");
            push_xfcc_value(&mut out, uri, false);
        }
        for dns in &self.dns {
            out.push_str(";DNS=");
            push_xfcc_value(&mut out, dns, false);
        }
        out
    }
}

/// The Envoy-format XFCC element for a verified client leaf certificate.
pub fn envoy(leaf_der: &[u8]) -> Result<String, String> {
    Element::from_der(leaf_der).map(|e| e.to_header())
}

/// Appends `value` as an XFCC value, double-quoted when `always_quote` or when it needs to be.
///
/// Envoy's documented grammar: values containing `,` `;` or `=` are double-quoted and a `"`
/// inside becomes `\"`. Envoy's own reader (the `XFCC_VALUE` formatter) also turns `\\` back
/// into `\` and trims whitespace around an unquoted value, so a backslash is escaped as `\\`
/// and a value with a backslash, a quote or edge whitespace is quoted too: every value then
/// comes back byte for byte. The Diego subject (`CN=<guid>,OU=app:<guid>+..`) has no backslash,
/// so what we send for it is exactly Envoy's bytes.
fn push_xfcc_value(out: &mut String, value: &str, always_quote: bool) {
    let edge_space = value.starts_with(is_ows) || value.ends_with(is_ows);
    let quote = always_quote || edge_space || value.contains([',', ';', '=', '"', '\\']);
    if !quote {
        out.push_str(value);
        return;
    }
    out.push('"');
    for c in value.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

/// The whitespace Envoy trims around keys and values (`absl::StripAsciiWhitespace`: Rust's
/// `is_ascii_whitespace` plus vertical tab).
fn is_ows(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0B' | '\x0C' | '\r')
}

/// Why an XFCC header value does not follow the grammar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// Byte offset in the header value.
    pub at: usize,
    pub what: &'static str,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "{} at byte {}", self.what, self.at)
    }
}

/// Parses an `X-Forwarded-Client-Cert` value into its elements, each a list of `(key, value)`
/// pairs in order, values unquoted and unescaped. The grammar is Envoy's: elements separated by
/// `,`, pairs by `;`, key and value by the first `=`; a value is either a bare token (no `,`
/// `;` `"` `\`) or a double-quoted string in which `\"` and `\\` stand for `"` and `\`.
/// Whitespace around keys and values is ignored, as Envoy ignores it. Strict where Envoy is
/// lenient (a stray quote, a pair without `=`, text after a closing quote are errors), so what
/// it accepts every Envoy-grammar reader reads the same way.
pub fn parse(header: &str) -> Result<Vec<Vec<(String, String)>>, ParseError> {
    let bytes = header.as_bytes();
    let mut elements = Vec::new();
    let mut pairs = Vec::new();
    let mut i = 0;
    let err = |at, what| Err(ParseError { at, what });
    loop {
        // Key: up to '='.
        let start = i;
        while i < bytes.len() && !matches!(bytes[i], b'=' | b',' | b';' | b'"' | b'\\') {
            i += 1;
        }
        if i >= bytes.len() || bytes[i] != b'=' {
            return err(i, "a key without '='");
        }
        let key = header[start..i].trim_matches(is_ows);
        if key.is_empty() {
            return err(start, "an empty key");
        }
        i += 1;
        while i < bytes.len() && is_ows(char::from(bytes[i])) {
            i += 1;
        }
        let value = if bytes.get(i) == Some(&b'"') {
            i += 1;
            let mut value = String::new();
            let mut run = i;
            loop {
                match bytes.get(i) {
                    None => return err(i, "an unterminated quoted value"),
                    Some(b'"') => break,
                    Some(b'\\') => match bytes.get(i + 1) {
                        Some(b'"' | b'\\') => {
                            value.push_str(&header[run..i]);
                            run = i + 1;
                            i += 2;
                        }
                        _ => return err(i, "a backslash that escapes neither '\"' nor '\\'"),
                    },
                    Some(_) => i += 1,
                }
            }
            value.push_str(&header[run..i]);
            i += 1;
            while i < bytes.len() && is_ows(char::from(bytes[i])) {
                i += 1;
            }
            value
        } else {
            let start = i;
            while i < bytes.len() && !matches!(bytes[i], b',' | b';') {
                if matches!(bytes[i], b'"' | b'\\') {
                    return err(i, "a '\"' or '\\' in an unquoted value");
                }
                i += 1;
            }
            header[start..i].trim_matches(is_ows).to_owned()
        };
        pairs.push((key.to_owned(), value));
        match bytes.get(i) {
            None => {
                elements.push(pairs);
                return Ok(elements);
            }
            Some(b';') => {}
            Some(b',') => elements.push(std::mem::take(&mut pairs)),
            Some(_) => return err(i, "text after a quoted value"),
        }
        i += 1;
    }
}

impl Element {
    /// The element made of `pairs` as [`parse`] returns them; `None` unless it has exactly one
    /// `Hash`, exactly one `Subject` and nothing but `URI` and `DNS` besides (keys compared
    /// case-insensitively, as Envoy compares them).
    pub fn from_pairs(pairs: &[(String, String)]) -> Option<Self> {
        let (mut hash, mut subject) = (None, None);
        let mut element = Element::default();
        for (key, value) in pairs {
            let slot = match key.to_ascii_lowercase().as_str() {
                "hash" => &mut hash,
                "subject" => &mut subject,
                "uri" => {
                    element.uris.push(value.clone());
                    continue;
                }
                "dns" => {
                    element.dns.push(value.clone());
                    continue;
                }
                _ => return None,
            };
            if slot.replace(value.clone()).is_some() {
                return None;
            }
        }
        element.hash = hash?;
        element.subject = subject?;
        Some(element)
    }
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

/// The bytes of a string-typed attribute value converted to UTF-8 as OpenSSL converts them
/// for `ASN1_STRFLGS_RFC2253` (one-byte types as they are, T61String as Latin-1, BMPString as
/// UTF-16BE, UniversalString as UTF-32BE); `None` for any other type or an undecodable value,
/// which OpenSSL dumps as `#` + hex of the DER.
fn attr_bytes(value: &Any) -> Option<Vec<u8>> {
    match value.tag() {
        Tag::Utf8String
        | Tag::PrintableString
        | Tag::Ia5String
        | Tag::NumericString
        | Tag::VisibleString => Some(value.data.to_vec()),
        // T61String: OpenSSL treats it as one byte per character (Latin-1).
        Tag::T61String => Some(latin1_to_utf8(value.data)),
        Tag::BmpString => utf16_to_utf8(value.data),
        Tag::UniversalString => utf32_to_utf8(value.data),
        _ => None,
    }
}

/// An attribute value as text, read exactly as [`rfc2253`] reads it for XFCC, so that
/// authorization (`CfIdentity`) and the app (the XFCC `Subject`) see the same string for every
/// string type. `None` when the value is not a string or not valid text.
pub(crate) fn attr_text(value: &Any) -> Option<String> {
    attr_bytes(value).and_then(|bytes| String::from_utf8(bytes).ok())
}

/// Appends one attribute value with `ASN1_STRFLGS_RFC2253`: string types are converted to
/// UTF-8 and escaped; any other type is dumped as `#` + hex of its DER encoding.
fn push_value(out: &mut String, value: &Any) {
    let Some(bytes) = attr_bytes(value) else {
        return dump_der(out, value);
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
    use std::net::IpAddr;
    use std::process::Command;
    use tls_sidecar_testkit::{LeafSpec, Pki, pem};

    /// A certificate with `subj` (OpenSSL `-subj` syntax) and these SANs; returns DER.
    fn cert(subj: &str, dns: &[&str], uris: &[&str], ips: &[&str]) -> Vec<u8> {
        let owned = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect();
        let spec = LeafSpec {
            dns: owned(dns),
            uris: owned(uris),
            ips: ips.iter().map(|ip| ip.parse::<IpAddr>().unwrap()).collect(),
            ..LeafSpec::subject(subj)
        };
        Pki::shared().issue_spec(&spec).leaf_der.to_vec()
    }

    /// `openssl x509 -noout -subject -nameopt RFC2253` of `der`: the one cross-check against
    /// OpenSSL itself, whose rendering Envoy's XFCC `Subject` follows.
    fn openssl_subject(der: &[u8]) -> String {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("c.pem"), pem("CERTIFICATE", der)).unwrap();
        let out = Command::new("openssl")
            .args([
                "x509", "-in", "c.pem", "-noout", "-subject", "-nameopt", "RFC2253",
            ])
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl x509: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let s = String::from_utf8(out.stdout).unwrap();
        s.trim_end().strip_prefix("subject=").unwrap().to_owned()
    }

    fn subject_of(der: &[u8]) -> String {
        let (_, c) = X509Certificate::from_der(der).unwrap();
        rfc2253(c.subject())
    }

    #[test]
    fn a_diego_subject_prints_as_openssl_and_envoy_print_it() {
        let der = cert(
            "/OU=organization:0f8a4d6e-6c61-4c39-a6d0-2b0d6c1f8b11+OU=space:5c4d1b0e-2a3f-4e5d-9c8b-7a6f5e4d3c2b+OU=app:9e8d7c6b-5a4f-4e3d-8c2b-1a0f9e8d7c6b/CN=4e0a8b9c-1d2e-4f3a-5b6c-7d8e9f0a1b2c",
            &["4e0a8b9c-1d2e-4f3a-5b6c-7d8e9f0a1b2c"],
            &[],
            &["10.255.1.2"],
        );
        let want = openssl_subject(&der);
        assert_eq!(subject_of(&der), want);
        assert!(
            want.starts_with("CN=4e0a8b9c-1d2e-4f3a-5b6c-7d8e9f0a1b2c,OU="),
            "{want}"
        );
        assert_eq!(want.matches('+').count(), 2, "three OUs in one RDN: {want}");
    }

    #[test]
    fn special_characters_are_escaped_exactly_as_openssl_escapes_them() {
        // `want` is what `openssl x509 -noout -subject -nameopt RFC2253` (OpenSSL 3) prints for
        // a certificate made with `openssl req -utf8 -subj <subj>`.
        for (subj, want) in [
            (
                "/C=GB/O=Sue\\, Grabbit and Runn/CN=L. Eagle",
                "CN=L. Eagle,O=Sue\\, Grabbit and Runn,C=GB",
            ),
            (
                "/O=a\\+b;c<d>e\"f\\\\g/CN=#hash/OU= lead and trail ",
                "OU=\\ lead and trail\\ ,CN=\\#hash,O=a\\+b\\;c\\<d\\>e\\\"f\\\\g",
            ),
            (
                "/CN=caf\u{e9} \u{2603}/O=Widget Inc./DC=example/DC=com",
                "DC=com,DC=example,O=Widget Inc.,CN=caf\\C3\\A9 \\E2\\98\\83",
            ),
            (
                "/CN=ctrl\u{1}char/emailAddress=me@example.com/UID=u1",
                "UID=u1,emailAddress=me@example.com,CN=ctrl\\01char",
            ),
        ] {
            let der = cert(subj, &["x.example"], &[], &[]);
            let want = want.to_owned();
            assert!(
                want.contains('\\'),
                "the case must exercise escaping: {want}"
            );
            assert_eq!(subject_of(&der), want, "subject {subj}");
        }
    }

    #[test]
    fn the_envoy_element_has_the_openssl_fingerprint_subject_and_sans() {
        let der = cert(
            "/OU=app:1+OU=space:2/CN=guid",
            &["a.apps.internal", "b.apps.internal"],
            &["spiffe://cf/app/1"],
            &["10.0.0.1"],
        );
        // `openssl x509 -fingerprint -sha256`: the SHA-256 of the DER, in hex.
        let hash = hex::encode(Sha256::digest(&der));
        assert_eq!(
            envoy(&der).unwrap(),
            format!(
                "Hash={hash};Subject=\"{}\";URI=spiffe://cf/app/1;DNS=a.apps.internal;DNS=b.apps.internal",
                "CN=guid,OU=space:2+OU=app:1"
            )
        );
    }

    #[test]
    fn a_san_with_grammar_characters_is_quoted_and_cannot_forge_a_key_or_element() {
        // openssl's -addext cannot write a ',' into a SAN: rcgen can.
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = vec![
            rcgen::SanType::URI("spiffe://cf/a;DNS=admin.internal".try_into().unwrap()),
            rcgen::SanType::URI("spiffe://cf/b,Hash=00".try_into().unwrap()),
            rcgen::SanType::DnsName("plain.example".try_into().unwrap()),
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let der = params.self_signed(&key).unwrap().der().to_vec();
        let value = envoy(&der).unwrap();
        assert!(
            value.ends_with(";URI=\"spiffe://cf/a;DNS=admin.internal\";URI=\"spiffe://cf/b,Hash=00\";DNS=plain.example"),
            "{value}"
        );
        let elements = parse(&value).unwrap();
        assert_eq!(elements.len(), 1, "one certificate, one element: {value}");
        let element = Element::from_pairs(&elements[0]).unwrap();
        assert_eq!(element, Element::from_der(&der).unwrap());
        assert_eq!(
            element.uris,
            ["spiffe://cf/a;DNS=admin.internal", "spiffe://cf/b,Hash=00"]
        );
        assert_eq!(element.dns, ["plain.example"]);
    }

    #[test]
    fn quotes_and_backslashes_round_trip_through_the_grammar() {
        let element = Element {
            hash: "ab".into(),
            subject: "CN=a\\\"b\\\\,O=x\\,y".into(),
            uris: vec!["u\"v\\".into(), " edge ".into(), String::new()],
            dns: vec!["a=b".into()],
        };
        let value = element.to_header();
        assert_eq!(
            value,
            "Hash=ab;Subject=\"CN=a\\\\\\\"b\\\\\\\\,O=x\\\\,y\";URI=\"u\\\"v\\\\\";URI=\" edge \";URI=;DNS=\"a=b\""
        );
        let parsed = parse(&format!("{value}, {value}")).unwrap();
        assert_eq!(parsed.len(), 2);
        for pairs in &parsed {
            assert_eq!(Element::from_pairs(pairs).as_ref(), Some(&element));
        }
    }

    #[test]
    fn the_parser_refuses_what_the_grammar_does_not_allow() {
        for bad in [
            "Hash=1;Subject=\"CN=x",
            "Hash=1;Subject=\"CN=x\"y",
            "Hash=1;Subject=CN\"x",
            "Hash=1;Subject=\"a\\b\"",
            "Hash",
            "=1",
            "Hash=1;",
        ] {
            assert!(parse(bad).is_err(), "{bad} must not parse");
        }
        assert_eq!(
            parse(" Hash = 1 ;subject=\"a,b\" ").unwrap(),
            [vec![
                ("Hash".to_owned(), "1".to_owned()),
                ("subject".to_owned(), "a,b".to_owned())
            ]]
        );
        assert_eq!(
            Element::from_pairs(&parse("Hash=1;Hash=2;Subject=").unwrap()[0]),
            None,
            "two hashes are ambiguous"
        );
    }

    /// A certificate whose CN and two OUs (`app:`, `space:`) are all encoded by `encode`.
    fn typed_ou_cert(encode: impl Fn(&str) -> rcgen::DnValue) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::default();
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CommonName, encode("instance"));
        // rcgen keeps one value per attribute type: the second OU goes in under its OID.
        dn.push(
            rcgen::DnType::OrganizationalUnitName,
            encode("app:9e8d7c6b-5a4f-4e3d-8c2b-1a0f9e8d7c6b"),
        );
        dn.push(
            rcgen::DnType::CustomDnType(vec![2, 5, 4, 11]),
            encode("space:5c4d1b0e-2a3f-4e5d-9c8b-7a6f5e4d3c2b"),
        );
        params.distinguished_name = dn;
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn ous_of_every_string_type_read_the_same_for_authorization_and_xfcc() {
        use rcgen::DnValue;
        type Encode<'a> = &'a dyn Fn(&str) -> DnValue;
        let encodings: [(&str, Encode); 6] = [
            ("UTF8String", &|s| DnValue::Utf8String(s.into())),
            ("PrintableString", &|s| {
                DnValue::PrintableString(s.try_into().unwrap())
            }),
            ("IA5String", &|s| DnValue::Ia5String(s.try_into().unwrap())),
            ("T61String", &|s| {
                DnValue::TeletexString(s.try_into().unwrap())
            }),
            ("BMPString", &|s| DnValue::BmpString(s.try_into().unwrap())),
            ("UniversalString", &|s| {
                DnValue::UniversalString(s.try_into().unwrap())
            }),
        ];
        for (name, encode) in encodings {
            let der = typed_ou_cert(encode);
            let id = crate::identity::CfIdentity::from_der(&der).unwrap();
            assert_eq!(
                id.space.as_ref().map(|g| g.as_str()),
                Some("5c4d1b0e-2a3f-4e5d-9c8b-7a6f5e4d3c2b"),
                "{name}: {id}"
            );
            assert_eq!(
                id.app.as_ref().map(|g| g.as_str()),
                Some("9e8d7c6b-5a4f-4e3d-8c2b-1a0f9e8d7c6b"),
                "{name}"
            );
            let subject = Element::from_der(&der).unwrap().subject;
            for part in [
                "OU=app:9e8d7c6b-5a4f-4e3d-8c2b-1a0f9e8d7c6b",
                "OU=space:5c4d1b0e-2a3f-4e5d-9c8b-7a6f5e4d3c2b",
                "CN=instance",
            ] {
                assert!(subject.contains(part), "{name}: {subject}");
            }
        }
    }

    #[test]
    fn raw_is_the_pem_body_without_armour() {
        let der = cert("/CN=raw", &["raw"], &[], &[]);
        let pem = pem("CERTIFICATE", &der);
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        assert_eq!(raw(&der), body);
    }
}
