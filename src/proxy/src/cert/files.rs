//! `certificate.source: files`: the app's own key/cert pair, read from files in the app and
//! reloaded when they change. The instance identity ([`super::instance`]) is read the same way.

use super::error::{LoadError, Remedy};
use super::pem::{Material, PairNames};
use std::path::{Path, PathBuf};

/// Reads the pair at `paths` (blocking: small files). `rotated_by_diego`: the files are the
/// instance identity, whose key and certificate are briefly out of step during a rotation.
pub(super) fn read(
    paths: &CertificatePaths,
    rotated_by_diego: bool,
) -> Result<Material, LoadError> {
    // The certificate first: Diego renames the key before the certificate, so a new
    // certificate read here guarantees that the key read next is new too.
    let cert_pem = std::fs::read(&paths.cert).map_err(|e| LoadError::read(&paths.cert, e))?;
    let key_pem = std::fs::read(&paths.key).map_err(|e| LoadError::read(&paths.key, e))?;
    Ok(Material {
        cert_pem,
        key_pem,
        names: PairNames {
            cert: paths.cert.display().to_string(),
            key: paths.key.display().to_string(),
            rotated_by_diego,
        },
    })
}

/// The directories to watch: a rename into a directory is what replaces a file (a watch on
/// the renamed-over file goes dead).
pub(super) fn directories(paths: &CertificatePaths) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = [&paths.cert, &paths.key]
        .iter()
        .filter_map(|p| p.parent().map(Path::to_owned))
        .collect();
    dirs.dedup();
    dirs
}

/// How to fix the app's own pair when it does not load.
pub(super) fn remedy() -> Remedy {
    Remedy {
        replace: "put a valid PEM pair at certificate.cert_file and certificate.key_file (relative to the app directory), then cf push APP; the sidecar also picks up replaced files by itself".to_owned(),
        missing: "add the file to the app (paths are relative to the app directory, $HOME), make it readable, then cf push APP",
        unbound: None,
    }
}

/// The key/cert pair to serve, read together on every (re)load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificatePaths {
    /// PEM chain: leaf first, then the intermediate(s).
    pub cert: PathBuf,
    /// PEM private key: PKCS#1 (`RSA PRIVATE KEY`, Diego's), PKCS#8 or SEC1.
    pub key: PathBuf,
}
