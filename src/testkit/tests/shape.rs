//! The kit's certificates have Diego's shape (docs/cf-instance-identity.md §1).

use std::time::Instant;
use tls_sidecar_testkit::{Creds, EXPIRED, Identity, KeyKind, NOT_YET_VALID, Pki, Validity};
use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509Certificate};

#[test]
fn a_leaf_is_shaped_like_diegos() {
    let pki = Pki::shared();
    let id = Identity::random();
    let started = Instant::now();
    let leaf = pki.issue(&id, KeyKind::Rsa(3072), Validity::OneDay);
    eprintln!("RSA-3072 leaf in {:?}", started.elapsed());
    assert!(
        leaf.key_pem
            .starts_with("-----BEGIN RSA PRIVATE KEY-----\n")
    );
    assert_eq!(leaf.chain_pem.matches("BEGIN CERTIFICATE").count(), 2);
    let (_, cert) = X509Certificate::from_der(&leaf.leaf_der).unwrap();
    let rdns: Vec<_> = cert.subject().iter().collect();
    assert_eq!(rdns.len(), 2, "one RDN of OUs, one CN");
    let ous: Vec<&str> = rdns[0].iter().map(|a| a.as_str().unwrap()).collect();
    assert_eq!(ous.len(), 3, "{ous:?}");
    for want in [
        format!("organization:{}", id.org),
        format!("space:{}", id.space),
        format!("app:{}", id.app),
    ] {
        assert!(ous.contains(&want.as_str()), "{ous:?}");
    }
    assert_eq!(rdns[1].iter().next().unwrap().as_str().unwrap(), leaf.guid);
    assert_eq!(cert.issuer().to_string(), "CN=instanceIdentityCA");
    let mut sans = Vec::new();
    for ext in cert.extensions() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() {
            sans = san.general_names.iter().map(|n| format!("{n:?}")).collect();
            assert!(matches!(san.general_names[0], GeneralName::DNSName(d) if d == leaf.guid));
        }
    }
    assert_eq!(sans.len(), 2, "{sans:?}");
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    let ku = cert.key_usage().unwrap().unwrap();
    assert!(ku.critical);
    assert!(
        ku.value.digital_signature() && ku.value.key_encipherment() && ku.value.key_agreement()
    );
    assert!(
        cert.verify_signature(Some(
            X509Certificate::from_der(&pki.intermediate_der)
                .unwrap()
                .1
                .public_key()
        ))
        .is_ok()
    );
    let (_, intermediate) = X509Certificate::from_der(&pki.intermediate_der).unwrap();
    assert!(
        intermediate
            .verify_signature(Some(
                X509Certificate::from_der(&pki.root_der)
                    .unwrap()
                    .1
                    .public_key()
            ))
            .is_ok()
    );
    assert!(
        pki.intermediate_key_pem
            .starts_with("-----BEGIN RSA PRIVATE KEY-----\n")
    );
}

#[test]
fn validity_can_lie_in_the_past_or_the_future() {
    let pki = Pki::shared();
    for (validity, start) in [(EXPIRED, 1_577_836_800), (NOT_YET_VALID, 2_493_072_000)] {
        let leaf = pki.issue(&Identity::random(), KeyKind::Ec, validity);
        let (_, cert) = X509Certificate::from_der(&leaf.leaf_der).unwrap();
        assert_eq!(cert.validity().not_before.timestamp(), start);
        assert_eq!(cert.validity().not_after.timestamp(), start + 86_400);
        assert!(leaf.key_pem.starts_with("-----BEGIN EC PRIVATE KEY-----\n"));
    }
}

#[test]
fn rotation_renames_the_key_before_the_certificate() {
    let pki = Pki::shared();
    let (old, new) = (pki.ec_leaf(), pki.ec_leaf());
    let creds = Creds::with(&old);
    creds.write_tmp(&new);
    creds.rename_key();
    assert_eq!(std::fs::read_to_string(creds.key()).unwrap(), new.key_pem);
    assert_eq!(
        std::fs::read_to_string(creds.cert()).unwrap(),
        old.chain_pem
    );
    creds.rename_cert();
    assert_eq!(
        std::fs::read_to_string(creds.cert()).unwrap(),
        new.chain_pem
    );
}

#[test]
fn a_leaf_names_its_issuer_by_the_key_identifier_the_issuer_carries() {
    let key_id = |der: &[u8]| {
        let (_, cert) = X509Certificate::from_der(der).unwrap();
        let mut ski = None;
        let mut aki = None;
        for ext in cert.extensions() {
            match ext.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(id) => ski = Some(id.0.to_vec()),
                ParsedExtension::AuthorityKeyIdentifier(a) => {
                    aki = a.key_identifier.as_ref().map(|id| id.0.to_vec());
                }
                _ => {}
            }
        }
        (ski, aki)
    };
    let generated = Pki::generate();
    // Loaded from PEM, as test processes that share one CA do.
    let loaded = Pki::from_pem(
        &generated.root_pem,
        &generated.root_key_pem,
        &generated.intermediate_pem,
        &generated.intermediate_key_pem,
    );
    let (intermediate_ski, _) = key_id(&generated.intermediate_der);
    assert!(intermediate_ski.is_some());
    for pki in [&generated, &loaded] {
        let (_, leaf_aki) = key_id(&pki.leaf(2048).leaf_der);
        assert_eq!(leaf_aki, intermediate_ski);
    }
}
