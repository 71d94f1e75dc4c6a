//! A leaf certificate written field by field (RFC 5280 §4.1), in the shape of the template in
//! Diego's `credmanager.go`. rcgen writes every attribute in an RDN of its own; Diego's subject
//! has three in one, so the kit writes the TBSCertificate itself and has rcgen's key sign it.

use rcgen::SigningKey as _;
use std::net::IpAddr;
use time::OffsetDateTime;
use yasna::models::{GeneralizedTime, ObjectIdentifier, UTCTime};
use yasna::{DERWriter, Tag};

/// What goes into the TBSCertificate besides the fixed Diego extensions.
pub(crate) struct Tbs<'a> {
    pub serial: [u8; 16],
    /// The issuer's subject, as encoded in its certificate.
    pub issuer_der: &'a [u8],
    /// The issuer's subjectKeyIdentifier, for authorityKeyIdentifier.
    pub issuer_key_id: &'a [u8],
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub subject_der: Vec<u8>,
    pub spki_der: &'a [u8],
    pub dns: &'a [String],
    pub ips: &'a [IpAddr],
    pub uris: &'a [String],
}

fn oid(arcs: &[u64]) -> ObjectIdentifier {
    ObjectIdentifier::from_slice(arcs)
}

/// The certificate, signed by `signer` (an RSA or P-256 CA key).
pub(crate) fn sign(tbs: &Tbs<'_>, signer: &rcgen::KeyPair) -> Vec<u8> {
    let alg = signer.algorithm();
    let (sig_oid, null_params): (&[u64], bool) = if alg == &rcgen::PKCS_RSA_SHA256 {
        (&[1, 2, 840, 113549, 1, 1, 11], true)
    } else if alg == &rcgen::PKCS_ECDSA_P256_SHA256 {
        (&[1, 2, 840, 10045, 4, 3, 2], false)
    } else {
        panic!("the kit signs with RSA-SHA256 or ECDSA-P256-SHA256 CA keys only")
    };
    let write_alg = |w: DERWriter<'_>| {
        w.write_sequence(|w| {
            w.next().write_oid(&oid(sig_oid));
            if null_params {
                w.next().write_null();
            }
        });
    };
    let tbs_der = yasna::construct_der(|w| write_tbs(w, tbs, &write_alg));
    let signature = signer
        .sign(&tbs_der)
        .unwrap_or_else(|e| panic!("signing a leaf: {e}"));
    yasna::construct_der(|w| {
        w.write_sequence(|w| {
            w.next().write_der(&tbs_der);
            write_alg(w.next());
            w.next().write_bitvec_bytes(&signature, signature.len() * 8);
        });
    })
}

fn write_tbs(w: DERWriter<'_>, tbs: &Tbs<'_>, write_alg: &dyn Fn(DERWriter<'_>)) {
    w.write_sequence(|w| {
        w.next().write_tagged(Tag::context(0), |w| w.write_u8(2)); // v3
        w.next().write_bigint_bytes(&tbs.serial, true);
        write_alg(w.next());
        w.next().write_der(tbs.issuer_der);
        w.next().write_sequence(|w| {
            write_time(w.next(), tbs.not_before);
            write_time(w.next(), tbs.not_after);
        });
        w.next().write_der(&tbs.subject_der);
        w.next().write_der(tbs.spki_der);
        w.next().write_tagged(Tag::context(3), |w| {
            w.write_sequence(|w| {
                // keyUsage: digitalSignature (bit 0), keyEncipherment (2), keyAgreement (4).
                let key_usage = yasna::construct_der(|w| w.write_bitvec_bytes(&[0b1010_1000], 5));
                extension(w.next(), &[2, 5, 29, 15], true, &key_usage);
                // extKeyUsage: serverAuth and clientAuth, on every Diego certificate.
                let eku = yasna::construct_der(|w| {
                    w.write_sequence(|w| {
                        w.next().write_oid(&oid(&[1, 3, 6, 1, 5, 5, 7, 3, 1]));
                        w.next().write_oid(&oid(&[1, 3, 6, 1, 5, 5, 7, 3, 2]));
                    });
                });
                extension(w.next(), &[2, 5, 29, 37], false, &eku);
                if !(tbs.dns.is_empty() && tbs.ips.is_empty() && tbs.uris.is_empty()) {
                    extension(w.next(), &[2, 5, 29, 17], false, &sans(tbs));
                }
                let aki = yasna::construct_der(|w| {
                    w.write_sequence(|w| {
                        w.next().write_tagged_implicit(Tag::context(0), |w| {
                            w.write_bytes(tbs.issuer_key_id)
                        });
                    });
                });
                extension(w.next(), &[2, 5, 29, 35], false, &aki);
            });
        });
    });
}

/// subjectAltName: dNSName [2], uniformResourceIdentifier [6], iPAddress [7].
fn sans(tbs: &Tbs<'_>) -> Vec<u8> {
    yasna::construct_der(|w| {
        w.write_sequence(|w| {
            for dns in tbs.dns {
                w.next()
                    .write_tagged_implicit(Tag::context(2), |w| w.write_ia5_string(dns));
            }
            for uri in tbs.uris {
                w.next()
                    .write_tagged_implicit(Tag::context(6), |w| w.write_ia5_string(uri));
            }
            for ip in tbs.ips {
                let octets = match ip {
                    IpAddr::V4(v4) => v4.octets().to_vec(),
                    IpAddr::V6(v6) => v6.octets().to_vec(),
                };
                w.next()
                    .write_tagged_implicit(Tag::context(7), |w| w.write_bytes(&octets));
            }
        });
    })
}

fn extension(w: DERWriter<'_>, id: &[u64], critical: bool, value: &[u8]) {
    w.write_sequence(|w| {
        w.next().write_oid(&oid(id));
        if critical {
            w.next().write_bool(true);
        }
        w.next().write_bytes(value);
    });
}

/// UTCTime through 2049, GeneralizedTime from 2050 (RFC 5280 §4.1.2.5).
fn write_time(w: DERWriter<'_>, at: OffsetDateTime) {
    let at = at.replace_nanosecond(0).unwrap_or(at);
    if at.year() < 2050 {
        w.write_utctime(&UTCTime::from_datetime(at));
    } else {
        w.write_generalized_time(&GeneralizedTime::from_datetime(at));
    }
}
