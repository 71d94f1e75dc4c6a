//! Arbitrary certificate fields through the XFCC grammar and back: `Element::to_header` then
//! `xfcc::parse` must give one element whose every field (hash, subject, each URI and DNS SAN)
//! is exactly what went in, whatever the fields hold (`,` `;` `=` `"` `\`, edge whitespace,
//! text that spells more keys or elements). A port of Envoy's own reader (the `XFCC_VALUE`
//! formatter: quote-aware split, unquote, unescape `\"` and `\\`) must read the same first
//! value for each key, so an Envoy-grammar consumer and the sidecar agree byte for byte.
//!
//! Input: fields separated by 0xFF bytes, read as UTF-8 (lossily): hash, subject, then SANs,
//! each a URI when its first byte is even, a DNS name otherwise (that byte is dropped).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tls_sidecar::xfcc::{Element, parse};

fuzz_target!(|data: &[u8]| {
    let mut fields = data.split(|&b| b == 0xFF);
    let mut text = |f: &[u8]| String::from_utf8_lossy(f).into_owned();
    let hash = fields.next().map(&mut text).unwrap_or_default();
    let subject = fields.next().map(&mut text).unwrap_or_default();
    let mut element = Element {
        hash,
        subject,
        uris: Vec::new(),
        dns: Vec::new(),
    };
    for san in fields {
        match san.split_first() {
            Some((kind, rest)) if kind % 2 == 0 => element.uris.push(text(rest)),
            Some((_, rest)) => element.dns.push(text(rest)),
            None => {}
        }
    }
    let header = element.to_header();
    let elements = parse(&header).unwrap_or_else(|e| panic!("{e}: {header:?}"));
    assert_eq!(elements.len(), 1, "one element: {header:?}");
    let back = Element::from_pairs(&elements[0]).expect("Hash, Subject, URI and DNS only");
    assert_eq!(back, element, "{header:?}");

    let envoy = |key: &str| envoy_value(&header, key);
    assert_eq!(
        envoy("hash").as_deref(),
        Some(element.hash.as_str()),
        "{header:?}"
    );
    assert_eq!(
        envoy("Subject").as_deref(),
        Some(element.subject.as_str()),
        "{header:?}"
    );
    assert_eq!(envoy("uri"), element.uris.first().cloned(), "{header:?}");
    assert_eq!(envoy("dns"), element.dns.first().cloned(), "{header:?}");
});

/// Envoy's `parseValueFromXfccByKey` (source/extensions/formatter/xfcc_value), step for step:
/// the first value of `key` in the leftmost element that has it.
fn envoy_value(header: &str, key: &str) -> Option<String> {
    for element in split_unquoted(header, b',') {
        for pair in split_unquoted(element, b';') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if !strip(k).eq_ignore_ascii_case(key) {
                continue;
            }
            let mut v = strip(v);
            if v.len() >= 2 && v.starts_with('"') && v.ends_with('"') {
                v = &v[1..v.len() - 1];
            }
            if !v.contains('\\') || v.len() < 2 {
                return Some(v.to_owned());
            }
            let b = v.as_bytes();
            let mut out = Vec::with_capacity(b.len());
            let mut i = 0;
            while i + 1 < b.len() {
                if b[i] == b'\\' && (b[i + 1] == b'"' || b[i + 1] == b'\\') {
                    out.push(b[i + 1]);
                    i += 2;
                } else {
                    out.push(b[i]);
                    i += 1;
                }
            }
            if i < b.len() {
                out.push(b[i]);
            }
            return Some(String::from_utf8(out).expect("unescaping keeps UTF-8"));
        }
    }
    None
}

/// Splits on `sep` outside quotes; a quote toggles unless an odd run of backslashes precedes it.
fn split_unquoted(s: &str, sep: u8) -> Vec<&str> {
    let b = s.as_bytes();
    let (mut parts, mut start, mut quoted) = (Vec::new(), 0, false);
    for i in 0..=b.len() {
        if i == b.len() || b[i] == sep {
            if !quoted {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            continue;
        }
        if b[i] == b'"' && b[..i].iter().rev().take_while(|&&c| c == b'\\').count() % 2 == 0 {
            quoted = !quoted;
        }
    }
    assert!(!quoted, "unmatched quotes: {s:?}");
    parts
}

fn strip(s: &str) -> &str {
    s.trim_matches(|c| matches!(c, ' ' | '\t' | '\n' | '\x0B' | '\x0C' | '\r'))
}
