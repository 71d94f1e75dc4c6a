//! The dependency tarball `tls-sidecar-<version>-linux-x64.tgz`.
//!
//! Deterministic by construction, so that its sha256 (which goes into the manifest and is
//! checked by supply) depends only on the sidecar binary: every header field that could carry
//! the build machine's state (mtime, uid/gid, user/group names) is fixed, entries come in a
//! fixed order, and the gzip header has mtime 0, no file name and a fixed OS byte.

use std::io::{self, Write};

use flate2::{Compression, GzBuilder};
use tar::{Builder, EntryType, Header};

/// The dependency's name in the manifest and the file name of the sidecar binary.
pub const DEPENDENCY_NAME: &str = "tls-sidecar";

/// Where the sidecar sits inside the tarball; supply extracts it to `deps/<idx>/bin/tls-sidecar`.
pub const SIDECAR_PATH_IN_TARBALL: &str = "bin/tls-sidecar";

/// The gzip header's OS byte for Unix, what `gzip -n` writes on Linux.
const GZIP_OS_UNIX: u8 = 3;

/// `tls-sidecar-<version>-linux-x64.tgz`.
#[must_use]
pub fn tarball_name(version: &str) -> String {
    format!("{DEPENDENCY_NAME}-{version}-linux-x64.tgz")
}

/// Builds the gzip'd tar holding `bin/` (0755) and `bin/tls-sidecar` (0755).
///
/// # Errors
/// Only if writing to memory fails, which in practice means out of memory.
pub fn build_tarball(sidecar: &[u8]) -> io::Result<Vec<u8>> {
    let gzip = GzBuilder::new()
        .mtime(0)
        .operating_system(GZIP_OS_UNIX)
        .write(Vec::new(), Compression::best());
    let mut tar = Builder::new(gzip);
    tar.append(&header("bin/", EntryType::Directory, 0)?, io::empty())?;
    let size = u64::try_from(sidecar.len()).map_err(io::Error::other)?;
    tar.append(
        &header(SIDECAR_PATH_IN_TARBALL, EntryType::Regular, size)?,
        sidecar,
    )?;
    let mut gzip = tar.into_inner()?;
    gzip.flush()?;
    gzip.finish()
}

/// A ustar header with every machine-dependent field fixed.
fn header(path: &str, kind: EntryType, size: u64) -> io::Result<Header> {
    // ustar everywhere: the paths are short, so no GNU long-name extension is ever needed, and
    // one format for every entry keeps the bytes predictable.
    let mut header = Header::new_ustar();
    // Written by hand rather than with `set_path`, which drops the trailing slash that GNU tar
    // (and this crate's readers) give a directory name.
    let ustar = header
        .as_ustar_mut()
        .ok_or_else(|| io::Error::other("not a ustar header"))?;
    let name = ustar
        .name
        .get_mut(..path.len())
        .ok_or_else(|| io::Error::other(format!("{path} is too long for a ustar name")))?;
    name.copy_from_slice(path.as_bytes());
    header.set_entry_type(kind);
    header.set_mode(0o755);
    header.set_size(size);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header.set_cksum();
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::GzDecoder;
    use std::io::Read;

    fn entries(tgz: &[u8]) -> Vec<(String, EntryType, u32, u64, Vec<u8>)> {
        let mut archive = tar::Archive::new(GzDecoder::new(tgz));
        archive
            .entries()
            .expect("entries")
            .map(|entry| {
                let mut entry = entry.expect("entry");
                let h = entry.header().clone();
                let mut data = Vec::new();
                entry.read_to_end(&mut data).expect("read");
                let path = h.path().expect("path").to_string_lossy().into_owned();
                (
                    path,
                    h.entry_type(),
                    h.mode().expect("mode"),
                    h.mtime().expect("mtime"),
                    data,
                )
            })
            .collect()
    }

    #[test]
    fn the_tarball_holds_bin_and_the_sidecar_both_0755_with_mtime_0() {
        let tgz = build_tarball(b"sidecar bytes").expect("tarball");
        assert_eq!(
            entries(&tgz),
            vec![
                (
                    "bin/".to_owned(),
                    EntryType::Directory,
                    0o755,
                    0,
                    Vec::new()
                ),
                (
                    "bin/tls-sidecar".to_owned(),
                    EntryType::Regular,
                    0o755,
                    0,
                    b"sidecar bytes".to_vec()
                ),
            ]
        );
    }

    #[test]
    fn the_headers_carry_no_owner() {
        let tgz = build_tarball(b"x").expect("tarball");
        let mut archive = tar::Archive::new(GzDecoder::new(tgz.as_slice()));
        for entry in archive.entries().expect("entries") {
            let entry = entry.expect("entry");
            let h = entry.header();
            assert_eq!((h.uid().expect("uid"), h.gid().expect("gid")), (0, 0));
            assert_eq!(h.username_bytes(), Some(&b""[..]));
            assert_eq!(h.groupname_bytes(), Some(&b""[..]));
            assert!(h.as_ustar().is_some(), "every header is ustar");
        }
    }

    #[test]
    fn the_gzip_header_has_mtime_0_and_no_file_name() {
        let tgz = build_tarball(b"x").expect("tarball");
        // Bytes 3 (FLG: no FNAME/FCOMMENT/FEXTRA), 4..8 (MTIME), 9 (OS).
        assert_eq!(tgz[3], 0);
        assert_eq!(&tgz[4..8], &[0, 0, 0, 0]);
        assert_eq!(tgz[9], GZIP_OS_UNIX);
    }

    #[test]
    fn the_same_sidecar_gives_the_same_bytes() {
        assert_eq!(
            build_tarball(b"abc").expect("a"),
            build_tarball(b"abc").expect("b")
        );
    }

    #[test]
    fn the_tarball_is_named_for_the_version() {
        assert_eq!(tarball_name("1.2.3"), "tls-sidecar-1.2.3-linux-x64.tgz");
    }
}
