//! Client certificate verification: the chain (rustls' WebPKI verifier over the trust bundle)
//! and, for tcp listeners with `allow` rules, the caller's identity inside the handshake, so a
//! refused caller gets an `access_denied` alert and not one byte reaches the app. Also: why a
//! handshake failed, in words and as a metrics label.

use crate::identity::{AccessPolicy, CfIdentity, Denial};
use crate::logging::rfc3339;
use crate::metrics::HandshakeFailure;
use crate::trust::Anchors;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName};
use rustls::{Error, SignatureScheme};
use rustls_pki_types::{CertificateDer, UnixTime};
use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::sync::Arc;

/// Why a tcp listener refused a verified caller, recorded for the connection that asked.
#[derive(Debug, Clone)]
pub(crate) struct Verdict {
    pub(crate) identity: CfIdentity,
    pub(crate) denial: Denial,
}

tokio::task_local! {
    /// Set by [`with_verdict`] around one handshake: rustls calls the verifier synchronously
    /// while the accept future is polled, so the verifier can tell that connection (and only
    /// it) who was refused and why. The TLS alert itself can carry no such detail.
    static VERDICT: RefCell<Option<Verdict>>;
}

/// Runs `handshake` and returns the verdict the policy verifier recorded during it, if any.
pub(crate) async fn with_verdict<F: Future>(handshake: F) -> (F::Output, Option<Verdict>) {
    VERDICT
        .scope(RefCell::new(None), async move {
            let output = handshake.await;
            let verdict = VERDICT.with(|v| v.borrow_mut().take());
            (output, verdict)
        })
        .await
}

/// The chain first, then the `allow` rules over the leaf's CF identity, which only a chain
/// ending at the platform identity CA has (see [`crate::trust`]).
#[derive(Debug)]
pub(crate) struct PolicyVerifier {
    chain: Arc<dyn ClientCertVerifier>,
    policy: Arc<AccessPolicy>,
    anchors: Arc<Anchors>,
}

impl PolicyVerifier {
    pub(crate) fn new(
        chain: Arc<dyn ClientCertVerifier>,
        policy: Arc<AccessPolicy>,
        anchors: Arc<Anchors>,
    ) -> Self {
        PolicyVerifier {
            chain,
            policy,
            anchors,
        }
    }
}

impl ClientCertVerifier for PolicyVerifier {
    fn offer_client_auth(&self) -> bool {
        self.chain.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.chain.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.chain.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        // The chain against the bundle (the same anchors `self.chain` was built from), then
        // the identity; remembered for the check after the handshake (forward.rs).
        let mut chain = Vec::with_capacity(1 + intermediates.len());
        chain.push(end_entity.clone());
        chain.extend(intermediates.iter().cloned());
        let identity = self.anchors.check_client(&chain, now)?;
        match self.policy.check(Some(&identity)) {
            Ok(()) => Ok(ClientCertVerified::assertion()),
            Err(denial) => {
                let _ = VERDICT.try_with(|v| *v.borrow_mut() = Some(Verdict { identity, denial }));
                // rustls answers this one with an access_denied alert.
                Err(Error::InvalidCertificate(
                    CertificateError::ApplicationVerificationFailure,
                ))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

/// Why a handshake failed: the metrics label and a precise sentence for the log.
pub(crate) fn classify(
    error: &io::Error,
    certificate_loaded: bool,
    verdict: Option<&Verdict>,
) -> (HandshakeFailure, String) {
    if let Some(v) = verdict {
        return (HandshakeFailure::Denied, format!("denied: {}", v.denial));
    }
    let rustls_error = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<Error>());
    match rustls_error {
        Some(Error::NoCertificatesPresented) => (
            HandshakeFailure::ClientCertMissing,
            "no client certificate (this listener requires one)".to_owned(),
        ),
        Some(Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)) => (
            HandshakeFailure::Denied,
            "denied by the allow rules".to_owned(),
        ),
        Some(Error::InvalidCertificate(e)) => (
            HandshakeFailure::ClientCertInvalid,
            format!("client certificate rejected: {}", describe(e)),
        ),
        _ if !certificate_loaded => (
            HandshakeFailure::NoCertificate,
            "no certificate loaded yet".to_owned(),
        ),
        Some(e) => (HandshakeFailure::Protocol, e.to_string()),
        None => (HandshakeFailure::Protocol, error.to_string()),
    }
}

pub(crate) fn describe(e: &CertificateError) -> String {
    let unix = |t: &UnixTime| i64::try_from(t.as_secs()).unwrap_or(i64::MAX);
    match e {
        CertificateError::UnknownIssuer => {
            "unknown CA (it does not chain to a trusted CA; the client must send its intermediate too)".to_owned()
        }
        CertificateError::ExpiredContext { not_after, .. } => {
            format!("expired at {}", rfc3339(unix(not_after)))
        }
        CertificateError::Expired => "expired".to_owned(),
        CertificateError::NotValidYetContext { not_before, .. } => {
            format!("not valid yet (valid from {})", rfc3339(unix(not_before)))
        }
        CertificateError::NotValidYet => "not valid yet".to_owned(),
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            "not valid for client authentication (extended key usage)".to_owned()
        }
        CertificateError::BadEncoding => "malformed".to_owned(),
        CertificateError::Revoked => "revoked".to_owned(),
        #[allow(deprecated)]
        CertificateError::BadSignature
        | CertificateError::UnsupportedSignatureAlgorithm
        | CertificateError::UnsupportedSignatureAlgorithmContext { .. }
        | CertificateError::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => {
            "bad or unsupported signature (not issued by a trusted CA, though by one with the same name, e.g. another foundation's appRootCA?)".to_owned()
        }
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wrapped(e: Error) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }

    #[test]
    fn handshake_failures_get_their_label_and_a_precise_reason() {
        let (why, text) = classify(&wrapped(Error::NoCertificatesPresented), true, None);
        assert_eq!(why, HandshakeFailure::ClientCertMissing);
        assert!(text.contains("no client certificate"), "{text}");

        let e = wrapped(Error::InvalidCertificate(CertificateError::UnknownIssuer));
        let (why, text) = classify(&e, true, None);
        assert_eq!(why, HandshakeFailure::ClientCertInvalid);
        assert!(text.contains("unknown CA"), "{text}");

        let e = wrapped(Error::InvalidCertificate(
            CertificateError::ExpiredContext {
                time: UnixTime::since_unix_epoch(std::time::Duration::from_secs(2_000_000_000)),
                not_after: UnixTime::since_unix_epoch(std::time::Duration::from_secs(
                    1_900_000_000,
                )),
            },
        ));
        let (_, text) = classify(&e, true, None);
        assert_eq!(
            text,
            "client certificate rejected: expired at 2030-03-17T17:46:40Z"
        );

        let eof = io::Error::from(io::ErrorKind::UnexpectedEof);
        assert_eq!(
            classify(&eof, false, None).0,
            HandshakeFailure::NoCertificate
        );
        assert_eq!(classify(&eof, true, None).0, HandshakeFailure::Protocol);

        let verdict = Verdict {
            identity: CfIdentity::default(),
            denial: Denial("caller app=x is not allowed".into()),
        };
        let e = wrapped(Error::InvalidCertificate(
            CertificateError::ApplicationVerificationFailure,
        ));
        let (why, text) = classify(&e, true, Some(&verdict));
        assert_eq!(why, HandshakeFailure::Denied);
        assert_eq!(text, "denied: caller app=x is not allowed");
    }
}
