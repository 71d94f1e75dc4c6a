//! `certificate.source: instance` (the default): Diego's instance identity at
//! `CF_INSTANCE_CERT`/`CF_INSTANCE_KEY`. Read like any pair of files ([`super::files`]), but
//! Diego owns it: it rotates the pair itself (key first, so a mismatch is a moment of
//! rotation, not a mistake) and only a restart gets a new one.

use super::error::{LoadError, Remedy};
use super::files::{self, CertificatePaths};
use super::pem::Material;

/// Reads the instance identity at `paths` (blocking: small files).
pub(super) fn read(paths: &CertificatePaths) -> Result<Material, LoadError> {
    files::read(paths, true)
}

/// How to fix the instance identity when it does not load.
pub(super) fn remedy() -> Remedy {
    Remedy {
        replace: "Diego issues and rotates the instance identity itself: restart the instance (cf restart APP) to get a new one; outside Diego point CF_INSTANCE_CERT and CF_INSTANCE_KEY at a valid pair".to_owned(),
        missing: "the instance identity exists only in a Diego container: run this inside the app's container (cf ssh APP), or set CF_INSTANCE_CERT and CF_INSTANCE_KEY to existing files",
        unbound: None,
    }
}
