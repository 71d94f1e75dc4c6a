//! Why a serving certificate could not be loaded, and how to fix it. The fix text lives here,
//! beside the error, so `check` and a failed reload say the same thing.

use crate::logging::rfc3339;
use std::path::{Path, PathBuf};

/// Why a pair could not be loaded. Texts name files (or service keys), never their contents.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LoadError {
    #[error("{} does not exist (yet)", .0.display())]
    Missing(PathBuf),
    #[error("cannot read {}: {cause}", .path.display())]
    Unreadable {
        path: PathBuf,
        cause: std::io::Error,
    },
    /// The service source: `VCAP_SERVICES` has no usable credentials.
    #[error("{0}")]
    Service(String),
    #[error("{what} is not valid PEM: {problem}")]
    BadPem { what: String, problem: &'static str },
    #[error("{0} is not PEM: it holds no -----BEGIN CERTIFICATE----- block")]
    NoCertificate(String),
    #[error(
        "{0} is not PEM: it holds no private key block (expected RSA PRIVATE KEY, PRIVATE KEY or EC PRIVATE KEY)"
    )]
    NoKey(String),
    #[error("the certificate in {what} cannot be parsed: {problem}")]
    BadCertificate { what: String, problem: String },
    #[error(
        "the private key in {what} is of an unsupported type ({kind}); use an RSA (2048-8192 bits), ECDSA (P-256, P-384, P-521) or Ed25519 key"
    )]
    UnsupportedKey { what: String, kind: String },
    #[error("the private key in {what} cannot be used: {cause}")]
    BadKey { what: String, cause: String },
    #[error("the key in {key} does not match the certificate in {cert}{}",
        if *.rotated_by_diego {
            " (during rotation Diego replaces the key first; waiting for the new certificate)"
        } else { "" })]
    Mismatch {
        cert: String,
        key: String,
        rotated_by_diego: bool,
    },
    #[error("the certificate in {what} expired at {}", rfc3339(*.not_after))]
    Expired { what: String, not_after: i64 },
    #[error("the certificate in {what} is not valid yet (valid from {})", rfc3339(*.not_before))]
    NotYetValid { what: String, not_before: i64 },
}

impl LoadError {
    pub(crate) fn read(path: &Path, cause: std::io::Error) -> Self {
        match cause.kind() {
            std::io::ErrorKind::NotFound => LoadError::Missing(path.to_owned()),
            _ => LoadError::Unreadable {
                path: path.to_owned(),
                cause,
            },
        }
    }
}

/// What a source that serves a PEM pair (instance, files, service) says in a fix text; the
/// error picks the part that applies. `APP` stands for the app's name.
pub(super) struct Remedy {
    /// How to put a new, valid pair in place.
    pub(super) replace: String,
    /// How to provide a pair that is not there at all.
    pub(super) missing: &'static str,
    /// How to bind the service that holds the pair (`source: service` only).
    pub(super) unbound: Option<String>,
}

impl Remedy {
    /// The fix for `e`, with `APP` still standing for the app's name.
    pub(super) fn fix(self, e: &LoadError) -> String {
        let replace = self.replace;
        match e {
            LoadError::Missing(_) | LoadError::Unreadable { .. } => self.missing.to_owned(),
            LoadError::Service(_) => self.unbound.unwrap_or(replace),
            LoadError::Expired { .. } => replace,
            LoadError::NotYetValid { .. } => format!(
                "check the issuer's clock, or wait until the certificate becomes valid; or {replace}"
            ),
            LoadError::Mismatch {
                rotated_by_diego: true,
                ..
            } => "Diego may be mid-rotation: run check again in a minute; if it persists, cf restart APP".to_owned(),
            LoadError::Mismatch { .. } => format!(
                "use the certificate's own key (`openssl x509 -noout -pubkey -in CERT` and `openssl pkey -pubout -in KEY` must print the same): {replace}"
            ),
            LoadError::UnsupportedKey { .. } | LoadError::BadKey { .. } => format!(
                "issue the certificate for an RSA (e.g. openssl genrsa 3072) or ECDSA P-256 key: {replace}"
            ),
            LoadError::BadPem { .. }
            | LoadError::NoCertificate(_)
            | LoadError::NoKey(_)
            | LoadError::BadCertificate { .. } => format!(
                "provide PEM (-----BEGIN ...-----); convert DER with `openssl x509 -inform DER -in CERT -out CERT.pem`; {replace}"
            ),
        }
    }
}
