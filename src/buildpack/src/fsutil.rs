//! Atomic file writes: a temp file beside the target, then `rename(2)` over it.
//!
//! A staging container can be killed at any moment (staging timeout, `cf push` interrupted);
//! a half-written launch.yml would make the builder fail with a YAML error instead of ours.
//! Rename within a directory is atomic, so readers see the old file or the new one.

use crate::errors::{Error, FileError};
use std::fs::{self, File, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Prefix of every temp file and dir we create, so a leftover is recognisable.
pub const TEMP_PREFIX: &str = ".tls-sidecar-tmp-";

/// Writes `contents` to `path` with `mode`, creating the parent directory if needed.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), Error> {
    let write_err = FileError::writing(path);
    let dir = parent(path);
    fs::create_dir_all(dir).map_err(write_err)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .tempfile_in(dir)
        .map_err(write_err)?;
    tmp.write_all(contents).map_err(write_err)?;
    tmp.as_file()
        .set_permissions(Permissions::from_mode(mode))
        .map_err(write_err)?;
    tmp.persist(path).map_err(|e| write_err(e.error))?;
    Ok(())
}

/// Copies the regular file `from` to `to` atomically, keeping its permission bits (as
/// libbuildpack's `CopyFile` does for profile.d scripts).
pub fn copy_atomic(from: &Path, to: &Path) -> Result<(), Error> {
    let read_err = FileError::reading(from);
    let write_err = FileError::writing(to);
    let mut src = File::open(from).map_err(read_err)?;
    let mode = src.metadata().map_err(read_err)?.permissions().mode() & 0o777;
    let dir = parent(to);
    fs::create_dir_all(dir).map_err(write_err)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .tempfile_in(dir)
        .map_err(write_err)?;
    io::copy(&mut src, tmp.as_file_mut()).map_err(write_err)?;
    tmp.as_file()
        .set_permissions(Permissions::from_mode(mode))
        .map_err(write_err)?;
    tmp.persist(to).map_err(|e| write_err(e.error))?;
    Ok(())
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_atomic_write_replaces_the_file_and_leaves_no_temp_file() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("sub/launch.yml");
        write_atomic(&f, b"one", 0o644).unwrap();
        write_atomic(&f, b"two", 0o644).unwrap();
        assert_eq!(fs::read_to_string(&f).unwrap(), "two");
        assert_eq!(
            fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o644
        );
        assert_eq!(fs::read_dir(tmp.path().join("sub")).unwrap().count(), 1);
    }

    #[test]
    fn a_copy_keeps_the_permission_bits() {
        let tmp = tempfile::tempdir().unwrap();
        let a = tmp.path().join("a.sh");
        write_atomic(&a, b"echo", 0o755).unwrap();
        copy_atomic(&a, &tmp.path().join("p/0_a.sh")).unwrap();
        let m = fs::metadata(tmp.path().join("p/0_a.sh")).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o755);
    }
}
