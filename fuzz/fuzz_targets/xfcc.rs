//! Arbitrary bytes as a client certificate: the XFCC formatters and the identity parser must
//! never panic, and a value they produce must be unambiguous for the app that parses it: `Hash`
//! is the SHA-256 of exactly these bytes and the quoted `Subject` ends at its closing quote
//! (every `"` inside is escaped), so a crafted subject cannot inject `;URI=` or `,Hash=`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};
use tls_sidecar::{identity::CfIdentity, xfcc};
use xfcc::Element;

fuzz_target!(|der: &[u8]| {
    let _ = CfIdentity::from_der(der);
    let raw = xfcc::raw(der);
    assert!(raw.bytes().all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b)));
    let Ok(value) = xfcc::envoy(der) else { return };
    let hash = format!("Hash={};Subject=\"", hex::encode(Sha256::digest(der)));
    let subject = value.strip_prefix(&hash).expect("starts with the hash of these bytes");
    // The closing quote is the first `"` not escaped by an odd run of backslashes.
    let bytes = subject.as_bytes();
    let mut i = 0;
    let end = loop {
        assert!(i < bytes.len(), "the Subject value is never closed: {value}");
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => break i,
            _ => i += 1,
        }
    };
    let after = &subject[end + 1..];
    assert!(after.is_empty() || after.starts_with(";URI=") || after.starts_with(";DNS="), "{value}");
    assert!(!subject[..end].contains(['\n', '\r']), "control characters must be escaped: {value}");
    // And the whole value reads back, field for field, as the certificate's fields.
    let elements = xfcc::parse(&value).unwrap_or_else(|e| panic!("{e}: {value}"));
    assert_eq!(elements.len(), 1, "{value}");
    assert_eq!(Element::from_pairs(&elements[0]), Element::from_der(der).ok(), "{value}");
});
