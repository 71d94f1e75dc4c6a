//! The TLS 1.3 suites of the one provider (aws-lc-rs), with an HKDF that computes each key's
//! HMAC pads once.
//!
//! Why: rustls's aws-lc-rs HKDF hands every expand to aws-lc's one-shot `HKDF_expand`, which
//! hashes the key's two HMAC pad blocks again on each call, and an expand on a freshly extracted
//! secret runs the extract again too (aws-lc-rs keeps salt and secret, not the PRK). A resumed
//! TLS 1.3 connection makes about 37 HMACs: 161 SHA-384 compressions, 15 % of its CPU
//! (aws-lc uses the scalar SHA-512 code on AMD CPUs). rustls's own [`HkdfUsingHmac`] over an
//! aws-lc-rs `hmac::Key`, whose context holds the pads already hashed, makes the same HMACs with
//! two compressions each (docs/DESIGN.md, "Memory and CPU").
//!
//! Only the HKDF changes: the hash, the AEAD, the key exchange and the bytes on the wire are the
//! provider's own. The unit tests check every output against the provider's HKDF.

use aws_lc_rs::hmac;
use rustls::crypto::CryptoProvider;
use rustls::crypto::aws_lc_rs::ALL_CIPHER_SUITES;
use rustls::crypto::hash::HashAlgorithm;
use rustls::crypto::hmac::{Hmac, Key, Tag};
use rustls::crypto::tls13::{Hkdf, HkdfUsingHmac};
use rustls::{CipherSuiteCommon, SupportedCipherSuite, Tls13CipherSuite};
use std::sync::LazyLock;

/// HMAC through an aws-lc-rs key: the pads are hashed when the key is made, and each signature
/// starts from a copy of that state.
struct PrecomputedHmac(&'static hmac::Algorithm);

struct PrecomputedKey(hmac::Key);

impl Hmac for PrecomputedHmac {
    fn with_key(&self, key: &[u8]) -> Box<dyn Key> {
        Box::new(PrecomputedKey(hmac::Key::new(*self.0, key)))
    }

    fn hash_output_len(&self) -> usize {
        self.0.digest_algorithm().output_len()
    }

    fn fips(&self) -> bool {
        aws_lc_rs::try_fips_mode().is_ok()
    }
}

impl Key for PrecomputedKey {
    fn sign_concat(&self, first: &[u8], middle: &[&[u8]], last: &[u8]) -> Tag {
        let mut context = hmac::Context::with_key(&self.0);
        context.update(first);
        for part in middle {
            context.update(part);
        }
        context.update(last);
        Tag::new(context.sign().as_ref())
    }

    fn tag_len(&self) -> usize {
        self.0.algorithm().digest_algorithm().output_len()
    }
}

static HMAC_SHA256: PrecomputedHmac = PrecomputedHmac(&hmac::HMAC_SHA256);
static HMAC_SHA384: PrecomputedHmac = PrecomputedHmac(&hmac::HMAC_SHA384);
static HKDF_SHA256: HkdfUsingHmac<'static> = HkdfUsingHmac(&HMAC_SHA256);
static HKDF_SHA384: HkdfUsingHmac<'static> = HkdfUsingHmac(&HMAC_SHA384);

/// The provider's suite with its HKDF replaced by the one above for the same hash (a suite of
/// another hash keeps the provider's HKDF).
fn with_precomputed_hkdf(base: &'static Tls13CipherSuite) -> Tls13CipherSuite {
    let hkdf_provider: &'static dyn Hkdf = match base.common.hash_provider.algorithm() {
        HashAlgorithm::SHA256 => &HKDF_SHA256,
        HashAlgorithm::SHA384 => &HKDF_SHA384,
        _ => base.hkdf_provider,
    };
    Tls13CipherSuite {
        common: CipherSuiteCommon {
            suite: base.common.suite,
            hash_provider: base.common.hash_provider,
            confidentiality_limit: base.common.confidentiality_limit,
        },
        hkdf_provider,
        aead_alg: base.aead_alg,
        quic: base.quic,
    }
}

/// Every TLS 1.3 suite of the provider, rebuilt once: a `ServerConfig` holds `&'static` suites.
static REBUILT: LazyLock<Vec<Tls13CipherSuite>> = LazyLock::new(|| {
    ALL_CIPHER_SUITES
        .iter()
        .filter_map(SupportedCipherSuite::tls13)
        .map(with_precomputed_hkdf)
        .collect()
});

/// Replaces the provider's TLS 1.3 suites by the same suites with the precomputing HKDF, in the
/// same order. TLS 1.2 suites are left as they are (their PRF is not HKDF).
pub(crate) fn precompute_hmac_pads(provider: &mut CryptoProvider) {
    let rebuilt: &'static [Tls13CipherSuite] = &REBUILT;
    for suite in &mut provider.cipher_suites {
        if let Some(replacement) = rebuilt.iter().find(|r| r.common.suite == suite.suite()) {
            *suite = SupportedCipherSuite::Tls13(replacement);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::CipherSuite;
    use rustls::crypto::aws_lc_rs::cipher_suite;
    use rustls::crypto::tls13::OkmBlock;

    const TLS13_SUITES: [SupportedCipherSuite; 3] = [
        cipher_suite::TLS13_AES_256_GCM_SHA384,
        cipher_suite::TLS13_AES_128_GCM_SHA256,
        cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    ];

    fn tls13(suite: SupportedCipherSuite) -> &'static Tls13CipherSuite {
        match suite {
            SupportedCipherSuite::Tls13(suite) => suite,
            SupportedCipherSuite::Tls12(_) => panic!("not a TLS 1.3 suite"),
        }
    }

    /// Every way rustls's key schedule uses an HKDF, with inputs shaped like its own (hash-length
    /// secrets, `HkdfLabel` infos, traffic keys and IVs).
    fn outputs(hkdf: &dyn Hkdf, len: usize) -> Vec<Vec<u8>> {
        let secret: Vec<u8> = (0..len).map(|i| i as u8 ^ 0x5a).collect();
        let salt: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(7)).collect();
        let info: [&[u8]; 3] = [b"\x00\x30", b"\x0dtls13 c hs traffic", &[0x20; 48]];
        let expand = |expander: &dyn rustls::crypto::tls13::HkdfExpander, out_len: usize| {
            let mut out = vec![0; out_len];
            expander
                .expand_slice(&info, &mut out)
                .expect("length within 255 blocks");
            out
        };
        let mut all = Vec::new();
        for out_len in [12, 16, 32, len, 100] {
            all.push(expand(&*hkdf.extract_from_zero_ikm(None), out_len));
            all.push(expand(&*hkdf.extract_from_zero_ikm(Some(&salt)), out_len));
            all.push(expand(&*hkdf.extract_from_secret(None, &secret), out_len));
            all.push(expand(
                &*hkdf.extract_from_secret(Some(&salt), &secret),
                out_len,
            ));
            all.push(expand(
                &*hkdf.expander_for_okm(&OkmBlock::new(&secret)),
                out_len,
            ));
        }
        let expander = hkdf.extract_from_secret(Some(&salt), &secret);
        all.push(expander.expand_block(&info).as_ref().to_vec());
        all.push(expander.expand_block(&info[..1]).as_ref().to_vec());
        all.push(
            hkdf.hmac_sign(&OkmBlock::new(&secret), b"transcript hash")
                .as_ref()
                .to_vec(),
        );
        all
    }

    #[test]
    fn every_tls13_suite_of_the_provider_uses_the_precomputing_hkdf_in_the_same_order() {
        let original = rustls::crypto::aws_lc_rs::default_provider();
        let mut provider = rustls::crypto::aws_lc_rs::default_provider();
        precompute_hmac_pads(&mut provider);

        let ids = |p: &CryptoProvider| {
            p.cipher_suites
                .iter()
                .map(|s| s.suite())
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&provider), ids(&original));
        let mut rebuilt = 0;
        for (ours, theirs) in provider.cipher_suites.iter().zip(&original.cipher_suites) {
            match (ours, theirs) {
                (SupportedCipherSuite::Tls13(ours), SupportedCipherSuite::Tls13(theirs)) => {
                    let expected: *const u8 = match ours.common.suite {
                        CipherSuite::TLS13_AES_256_GCM_SHA384 => {
                            std::ptr::from_ref(&HKDF_SHA384).cast()
                        }
                        _ => std::ptr::from_ref(&HKDF_SHA256).cast(),
                    };
                    assert!(std::ptr::eq(
                        std::ptr::from_ref(ours.hkdf_provider).cast(),
                        expected
                    ));
                    assert_eq!(ours.aead_alg.key_len(), theirs.aead_alg.key_len());
                    assert_eq!(
                        ours.common.hash_provider.algorithm(),
                        theirs.common.hash_provider.algorithm()
                    );
                    assert_eq!(
                        ours.common.confidentiality_limit,
                        theirs.common.confidentiality_limit
                    );
                    rebuilt += 1;
                }
                (SupportedCipherSuite::Tls12(ours), SupportedCipherSuite::Tls12(theirs)) => {
                    assert!(std::ptr::eq(*ours, *theirs));
                }
                _ => panic!("suite kinds differ"),
            }
        }
        assert_eq!(rebuilt, 3);
    }

    #[test]
    fn the_precomputing_hkdf_derives_exactly_what_the_providers_hkdf_derives() {
        for suite in TLS13_SUITES {
            let theirs = tls13(suite);
            let ours = with_precomputed_hkdf(theirs);
            let len = theirs.common.hash_provider.output_len();
            let expected = outputs(theirs.hkdf_provider, len);
            assert_eq!(
                outputs(ours.hkdf_provider, len),
                expected,
                "{:?}",
                theirs.common.suite
            );
            // The outputs differ from each other: a constant answer cannot pass.
            let distinct: std::collections::HashSet<_> = expected.iter().collect();
            assert!(distinct.len() > expected.len() / 2);
        }
    }

    #[test]
    fn the_precomputing_hkdf_matches_rfc_5869_test_case_1() {
        let ikm = [0x0b; 22];
        let salt: Vec<u8> = (0x00..=0x0c).collect();
        let info: Vec<u8> = (0xf0..=0xf9).collect();
        let mut okm = [0; 42];
        HKDF_SHA256
            .extract_from_secret(Some(&salt), &ikm)
            .expand_slice(&[&info], &mut okm)
            .expect("42 bytes is within 255 blocks");
        assert_eq!(
            hex::encode(okm),
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
        );
    }
}
