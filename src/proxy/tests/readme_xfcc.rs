//! The README's XFCC parser (Python, for apps) reads exactly what the sidecar writes: the
//! snippet is taken from README.md as it stands and run against headers the formatter made
//! from certificates whose SANs and subject hold every character the grammar quotes.

// Test code: a failed unwrap is a failed test, with the error printed.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::process::{Command, Stdio};

const APP: &str = "9e8d7c6b-5a4f-4e3d-8c2b-1a0f9e8d7c6b";

/// The README's `xfcc_elements` function, verbatim.
fn readme_parser() -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let start = readme.find("def xfcc_elements(header):").unwrap();
    let end = start
        + readme[start..]
            .find("    return elements + [pairs]")
            .unwrap();
    let end = end + readme[end..].find('\n').unwrap();
    readme[start..end].to_owned()
}

fn leaf(cn: &str, dns: &str, uri: &str) -> Vec<u8> {
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    // rcgen writes one value per attribute type: one OU is enough here.
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationalUnitName, format!("app:{APP}"));
    params.subject_alt_names = vec![
        rcgen::SanType::DnsName(dns.try_into().unwrap()),
        rcgen::SanType::URI(uri.try_into().unwrap()),
    ];
    let key = rcgen::KeyPair::generate().unwrap();
    params.self_signed(&key).unwrap().der().to_vec()
}

#[test]
fn the_readme_parser_reads_back_every_field_the_sidecar_writes_including_quoted_ones() {
    let certs = [
        leaf(
            "4e0a8b9c-1d2e-4f3a-5b6c-7d8e9f0a1b2c",
            "b.apps.internal",
            "spiffe://cf/app",
        ),
        leaf(
            "x, \"y\"+z\\\\",
            "c.apps.internal",
            "spiffe://cf/x;DNS=admin.internal,Hash=00;Subject=\"CN=admin\"",
        ),
    ];
    let elements: Vec<tls_sidecar::xfcc::Element> = certs
        .iter()
        .map(|der| tls_sidecar::xfcc::Element::from_der(der).unwrap())
        .collect();
    let header = elements
        .iter()
        .map(tls_sidecar::xfcc::Element::to_header)
        .collect::<Vec<_>>()
        .join(",");
    let program = format!(
        "{}\nimport json, sys\nprint(json.dumps(xfcc_elements(sys.stdin.read())))\n",
        readme_parser()
    );
    let mut python = Command::new("python3")
        .args(["-c", &program])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    python
        .stdin
        .take()
        .unwrap()
        .write_all(header.as_bytes())
        .unwrap();
    let out = python.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let parsed: Vec<serde_json::Map<String, serde_json::Value>> =
        serde_json::from_slice(&out.stdout).unwrap();

    assert_eq!(parsed.len(), elements.len(), "{header}");
    for (got, want) in parsed.iter().zip(&elements) {
        let field = |k: &str| -> Vec<String> {
            got.get(k)
                .and_then(|v| v.as_array())
                .map(|a| a.iter().map(|s| s.as_str().unwrap().to_owned()).collect())
                .unwrap_or_default()
        };
        assert_eq!(field("Hash"), std::slice::from_ref(&want.hash), "{header}");
        assert_eq!(
            field("Subject"),
            std::slice::from_ref(&want.subject),
            "{header}"
        );
        assert_eq!(field("DNS"), want.dns, "{header}");
        assert_eq!(field("URI"), want.uris, "{header}");
    }
    // What the README's app GUID lookup reads.
    assert!(
        elements[0].subject.contains(&format!("OU=app:{APP}")),
        "{}",
        elements[0].subject
    );
}
