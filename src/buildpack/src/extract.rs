//! Safe extraction of the dependency `.tgz` into `deps/<idx>/`.
//!
//! The tarball is checked against its sha256 before it gets here, but the check only proves it
//! is the file the manifest names, not that the file is sane: a packaging bug or a hand-edited
//! manifest must not be able to write outside `deps/<idx>/`. So every entry is unpacked into a
//! temp dir inside `deps/<idx>/` under these rules, and only a fully checked tree is moved
//! into place; on any failure the temp dir is removed and nothing is installed.
//!
//! - paths are relative, without `..`;
//! - nothing is written through a symlink (a parent component that is a symlink is refused);
//! - symlinks are relative and resolve inside the tree, both by their text and, once all
//!   entries exist, on disk (a chain like `x -> y/..` with `y -> .` passes the text check);
//! - hard links name an earlier regular file of the tree;
//! - devices and fifos are refused; setuid, setgid and sticky bits are dropped.

use crate::errors::ExtractError;
use crate::fsutil::TEMP_PREFIX;
use flate2::read::GzDecoder;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, BufReader, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use tar::{Archive, Entry, EntryType};

/// Extracts `tarball` (gzip'd tar) into `dest`, merging with what is there (a restage
/// replaces the files of the previous install). Returns the installed paths, relative to
/// `dest`, directories excluded.
pub fn install_tgz(tarball: &Path, dest: &Path) -> Result<Vec<PathBuf>, ExtractError> {
    install(tarball, dest, None)
}

/// [`install_tgz`], refusing a tarball without the regular file `required` (relative to
/// `dest`): that is checked before anything is moved into `dest`, so such a tarball installs
/// none of its other files either.
pub fn install_tgz_requiring(
    tarball: &Path,
    dest: &Path,
    required: &Path,
) -> Result<Vec<PathBuf>, ExtractError> {
    install(tarball, dest, Some(required))
}

fn install(
    tarball: &Path,
    dest: &Path,
    required: Option<&Path>,
) -> Result<Vec<PathBuf>, ExtractError> {
    let io_err = |entry: &Path| {
        let entry = entry.display().to_string();
        move |source| ExtractError::Io { entry, source }
    };
    // Inside dest: the final renames stay on one filesystem, and a crash leaves the debris in
    // this buildpack's own directory, never anywhere else.
    let staging = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .tempdir_in(dest)
        .map_err(io_err(dest))?;
    let root = staging.path();
    let file = File::open(tarball).map_err(io_err(tarball))?;
    let mut archive = Archive::new(GzDecoder::new(BufReader::new(file)));
    for entry in archive
        .entries()
        .map_err(|source| ExtractError::Corrupt { source })?
    {
        let mut entry = entry.map_err(|source| ExtractError::Corrupt { source })?;
        unpack_entry(&mut entry, root)?;
    }
    check_symlinks_on_disk(root, root)?;
    if let Some(required) = required
        && !fs::symlink_metadata(root.join(required)).is_ok_and(|m| m.is_file())
    {
        return Err(ExtractError::Missing {
            path: required.display().to_string(),
        });
    }
    let mut installed = Vec::new();
    merge_into(root, dest, Path::new(""), &mut installed)?;
    Ok(installed)
    // `staging` (now empty) is removed on drop, here and on every early return above.
}

fn unpack_entry<R: Read>(entry: &mut Entry<R>, root: &Path) -> Result<(), ExtractError> {
    let kind = entry.header().entry_type();
    if kind == EntryType::XGlobalHeader {
        // pax global metadata (e.g. from `git archive`): describes no file.
        return Ok(());
    }
    let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
    let path = entry
        .path()
        .map_err(|source| ExtractError::Corrupt { source })?
        .into_owned();
    let rel = relative(&path).map_err(|bad| match bad {
        Bad::Absolute => ExtractError::Absolute {
            entry: name.clone(),
        },
        Bad::ParentDir => ExtractError::ParentDir {
            entry: name.clone(),
        },
    })?;
    if rel.as_os_str().is_empty() {
        return Ok(()); // "./": the root itself
    }
    let dst = root.join(&rel);
    let io_err = |source| ExtractError::Io {
        entry: name.clone(),
        source,
    };
    // Only permission bits: setuid/setgid/sticky from a tarball have no business in deps/.
    let mode = entry.header().mode().unwrap_or(0o644) & 0o777;

    match kind {
        EntryType::Directory => {
            make_parents(root, &rel, &name)?;
            match fs::symlink_metadata(&dst) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Err(ExtractError::Conflict { entry: name }),
                Err(_) => fs::create_dir(&dst).map_err(io_err)?,
            }
            // Owner rwx always: the tree must stay movable and removable by us.
            fs::set_permissions(&dst, Permissions::from_mode(mode | 0o700)).map_err(io_err)?;
        }
        EntryType::Regular | EntryType::Continuous => {
            make_parents(root, &rel, &name)?;
            replace_non_dir(&dst, &name)?;
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&dst)
                .map_err(io_err)?;
            io::copy(entry, &mut f).map_err(io_err)?;
            f.set_permissions(Permissions::from_mode(mode))
                .map_err(io_err)?;
        }
        EntryType::Symlink => {
            let target = link_target(entry, &name)?;
            check_symlink_text(&rel, &target, &name)?;
            make_parents(root, &rel, &name)?;
            replace_non_dir(&dst, &name)?;
            std::os::unix::fs::symlink(&target, &dst).map_err(io_err)?;
        }
        EntryType::Link => {
            let target = link_target(entry, &name)?;
            let shown = target.display().to_string();
            // A hard link names another member of the archive by its archive path.
            let target_rel = relative(&target).map_err(|bad| match bad {
                Bad::Absolute => ExtractError::AbsoluteLink {
                    entry: name.clone(),
                    target: shown.clone(),
                },
                Bad::ParentDir => ExtractError::LinkEscapes {
                    entry: name.clone(),
                    target: shown.clone(),
                },
            })?;
            let source = root.join(&target_rel);
            let is_plain_file = no_symlink_on_the_way(root, &target_rel)
                && fs::symlink_metadata(&source).is_ok_and(|m| m.file_type().is_file());
            if !is_plain_file {
                return Err(ExtractError::Dangling {
                    entry: name,
                    target: shown,
                });
            }
            make_parents(root, &rel, &name)?;
            replace_non_dir(&dst, &name)?;
            fs::hard_link(&source, &dst).map_err(io_err)?;
        }
        EntryType::Char => {
            return Err(ExtractError::Special {
                entry: name,
                kind: "character device",
            });
        }
        EntryType::Block => {
            return Err(ExtractError::Special {
                entry: name,
                kind: "block device",
            });
        }
        EntryType::Fifo => {
            return Err(ExtractError::Special {
                entry: name,
                kind: "fifo",
            });
        }
        other => {
            return Err(ExtractError::Unsupported {
                entry: name,
                kind: format!("{other:?}"),
            });
        }
    }
    Ok(())
}

enum Bad {
    Absolute,
    ParentDir,
}

/// The normal components of `p`; `.` is dropped, `..` and roots are refused.
fn relative(p: &Path) -> Result<PathBuf, Bad> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => return Err(Bad::ParentDir),
            Component::RootDir | Component::Prefix(_) => return Err(Bad::Absolute),
        }
    }
    Ok(out)
}

fn link_target<R: Read>(entry: &Entry<R>, name: &str) -> Result<PathBuf, ExtractError> {
    match entry.link_name() {
        Ok(Some(t)) if !t.as_os_str().is_empty() => Ok(t.into_owned()),
        Ok(_) => Err(ExtractError::Dangling {
            entry: name.to_owned(),
            target: String::new(),
        }),
        Err(source) => Err(ExtractError::Corrupt { source }),
    }
}

/// A symlink at `rel` pointing to `target` must be relative and, read as text from the link's
/// directory, stay inside the tree.
fn check_symlink_text(rel: &Path, target: &Path, name: &str) -> Result<(), ExtractError> {
    let shown = || target.display().to_string();
    let mut stack: Vec<OsString> = rel
        .parent()
        .map(|p| p.components().map(|c| c.as_os_str().to_owned()).collect())
        .unwrap_or_default();
    for c in target.components() {
        match c {
            Component::Normal(n) => stack.push(n.to_owned()),
            Component::CurDir => {}
            Component::ParentDir => {
                if stack.pop().is_none() {
                    return Err(ExtractError::LinkEscapes {
                        entry: name.to_owned(),
                        target: shown(),
                    });
                }
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(ExtractError::AbsoluteLink {
                    entry: name.to_owned(),
                    target: shown(),
                });
            }
        }
    }
    Ok(())
}

/// Creates the missing parent directories of `rel`, refusing to go through a symlink or a file.
fn make_parents(root: &Path, rel: &Path, name: &str) -> Result<(), ExtractError> {
    let Some(parent) = rel.parent() else {
        return Ok(());
    };
    let mut cur = root.to_path_buf();
    let mut shown = PathBuf::new();
    for c in parent.components() {
        cur.push(c);
        shown.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(ExtractError::ThroughSymlink {
                    entry: name.to_owned(),
                    link: shown.display().to_string(),
                });
            }
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(ExtractError::Conflict {
                    entry: name.to_owned(),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&cur).map_err(|source| ExtractError::Io {
                    entry: name.to_owned(),
                    source,
                })?;
            }
            Err(source) => {
                return Err(ExtractError::Io {
                    entry: name.to_owned(),
                    source,
                });
            }
        }
    }
    Ok(())
}

fn no_symlink_on_the_way(root: &Path, rel: &Path) -> bool {
    let mut cur = root.to_path_buf();
    let Some(parent) = rel.parent() else {
        return true;
    };
    parent.components().all(|c| {
        cur.push(c);
        fs::symlink_metadata(&cur).is_ok_and(|m| m.is_dir())
    })
}

/// A later entry with the same path replaces an earlier file or link, as tar does; a
/// directory is never replaced by something else.
fn replace_non_dir(dst: &Path, name: &str) -> Result<(), ExtractError> {
    match fs::symlink_metadata(dst) {
        Ok(m) if m.is_dir() => Err(ExtractError::Conflict {
            entry: name.to_owned(),
        }),
        Ok(_) => fs::remove_file(dst).map_err(|source| ExtractError::Io {
            entry: name.to_owned(),
            source,
        }),
        Err(_) => Ok(()),
    }
}

/// Every symlink in the finished tree must resolve, on disk, to something inside it.
fn check_symlinks_on_disk(root: &Path, dir: &Path) -> Result<(), ExtractError> {
    let canonical_root = fs::canonicalize(root).map_err(|source| ExtractError::Io {
        entry: ".".into(),
        source,
    })?;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let shown_dir = d.strip_prefix(root).unwrap_or(&d).to_path_buf();
        let io_err = |source| ExtractError::Io {
            entry: shown_dir.display().to_string(),
            source,
        };
        for item in fs::read_dir(&d).map_err(io_err)? {
            let item = item.map_err(io_err)?;
            let path = item.path();
            let ft = item.file_type().map_err(io_err)?;
            if ft.is_dir() {
                stack.push(path);
            } else if ft.is_symlink() {
                let entry = path
                    .strip_prefix(root)
                    .unwrap_or(&path)
                    .display()
                    .to_string();
                let target = fs::read_link(&path)
                    .map(|t| t.display().to_string())
                    .unwrap_or_default();
                match fs::canonicalize(&path) {
                    Ok(real) if real.starts_with(&canonical_root) => {}
                    Ok(_) => return Err(ExtractError::LinkEscapes { entry, target }),
                    // Missing target or a loop: its real destination cannot be checked.
                    Err(_) => return Err(ExtractError::Dangling { entry, target }),
                }
            }
        }
    }
    Ok(())
}

/// Moves the checked tree into `dst`: directories merge, files and links replace (rename is
/// atomic, so a running reader sees the old binary or the new one, never half of it).
fn merge_into(
    src: &Path,
    dst: &Path,
    rel: &Path,
    installed: &mut Vec<PathBuf>,
) -> Result<(), ExtractError> {
    let io_err = |r: &Path| {
        let entry = r.display().to_string();
        move |source| ExtractError::Io { entry, source }
    };
    let mut names: Vec<OsString> = fs::read_dir(src)
        .map_err(io_err(rel))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(io_err(rel))?;
    names.sort();
    for name in names {
        let (s, d, r) = (src.join(&name), dst.join(&name), rel.join(&name));
        let s_meta = fs::symlink_metadata(&s).map_err(io_err(&r))?;
        let d_meta = fs::symlink_metadata(&d).ok();
        if s_meta.is_dir() {
            match d_meta {
                Some(m) if m.is_dir() => merge_into(&s, &d, &r, installed)?,
                Some(_) => {
                    fs::remove_file(&d).map_err(io_err(&r))?;
                    fs::rename(&s, &d).map_err(io_err(&r))?;
                    list_files(&d, &r, installed).map_err(io_err(&r))?;
                }
                None => {
                    fs::rename(&s, &d).map_err(io_err(&r))?;
                    list_files(&d, &r, installed).map_err(io_err(&r))?;
                }
            }
        } else {
            if d_meta.is_some_and(|m| m.is_dir()) {
                fs::remove_dir_all(&d).map_err(io_err(&r))?;
            }
            fs::rename(&s, &d).map_err(io_err(&r))?;
            installed.push(r);
        }
    }
    Ok(())
}

fn list_files(dir: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    let mut items: Vec<_> = fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    items.sort_by_key(|e| e.file_name());
    for e in items {
        let r = rel.join(e.file_name());
        if e.file_type()?.is_dir() {
            list_files(&e.path(), &r, out)?;
        } else {
            out.push(r);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compression, write::GzEncoder};

    /// One tar member, written with raw header fields so malicious names survive.
    enum M<'a> {
        File(&'a str, u32, &'a [u8]),
        Dir(&'a str),
        Symlink(&'a str, &'a str),
        Hardlink(&'a str, &'a str),
        Fifo(&'a str),
    }

    fn tgz(dir: &Path, members: &[M]) -> PathBuf {
        let path = dir.join("t.tgz");
        let mut b = tar::Builder::new(GzEncoder::new(
            File::create(&path).unwrap(),
            Compression::fast(),
        ));
        for m in members {
            let mut h = tar::Header::new_gnu();
            let (name, link, ty, mode, data): (&str, &str, EntryType, u32, &[u8]) = match *m {
                M::File(n, mode, d) => (n, "", EntryType::Regular, mode, d),
                M::Dir(n) => (n, "", EntryType::Directory, 0o755, b""),
                M::Symlink(n, t) => (n, t, EntryType::Symlink, 0o777, b""),
                M::Hardlink(n, t) => (n, t, EntryType::Link, 0o644, b""),
                M::Fifo(n) => (n, "", EntryType::Fifo, 0o644, b""),
            };
            let old = h.as_old_mut();
            old.name[..name.len()].copy_from_slice(name.as_bytes());
            old.linkname[..link.len()].copy_from_slice(link.as_bytes());
            h.set_entry_type(ty);
            h.set_mode(mode);
            h.set_size(data.len() as u64);
            h.set_cksum();
            b.append(&h, data).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap();
        path
    }

    fn setup() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("deps/0");
        fs::create_dir_all(&dest).unwrap();
        (tmp, dest)
    }

    fn is_empty(dir: &Path) -> bool {
        fs::read_dir(dir).unwrap().next().is_none()
    }

    #[test]
    fn the_binary_lands_in_bin_with_its_mode_and_without_setuid() {
        let (tmp, dest) = setup();
        let t = tgz(
            tmp.path(),
            &[M::Dir("bin/"), M::File("bin/tls-sidecar", 0o4755, b"elf")],
        );
        let installed = install_tgz(&t, &dest).unwrap();
        assert_eq!(installed, [PathBuf::from("bin/tls-sidecar")]);
        let m = fs::metadata(dest.join("bin/tls-sidecar")).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o755);
        // A second install replaces the file in place and leaves no temp dir.
        install_tgz(&t, &dest).unwrap();
        assert_eq!(fs::read_dir(&dest).unwrap().count(), 1);
    }

    #[test]
    fn links_inside_the_tree_are_kept() {
        let (tmp, dest) = setup();
        let t = tgz(
            tmp.path(),
            &[
                M::File("bin/tls-sidecar", 0o755, b"elf"),
                M::Symlink("bin/proxy", "tls-sidecar"),
                M::Symlink("current", "./bin"),
                M::Hardlink("bin/copy", "bin/tls-sidecar"),
            ],
        );
        install_tgz(&t, &dest).unwrap();
        assert_eq!(fs::read(dest.join("bin/proxy")).unwrap(), b"elf");
        assert_eq!(fs::read(dest.join("current/copy")).unwrap(), b"elf");
    }

    #[test]
    fn unsafe_entries_are_refused_and_nothing_is_installed() {
        let cases: Vec<(Vec<M>, &str)> = vec![
            (vec![M::File("../evil", 0o644, b"x")], "ParentDir"),
            (vec![M::File("bin/../../evil", 0o644, b"x")], "ParentDir"),
            (vec![M::File("/tmp/evil", 0o644, b"x")], "Absolute"),
            (vec![M::Symlink("bin/evil", "/etc/passwd")], "AbsoluteLink"),
            (vec![M::Symlink("bin/evil", "../../x")], "LinkEscapes"),
            (vec![M::Hardlink("bin/evil", "/etc/passwd")], "AbsoluteLink"),
            (
                vec![M::Hardlink("bin/evil", "../../../etc/passwd")],
                "LinkEscapes",
            ),
            (vec![M::Fifo("bin/pipe")], "Special"),
            // The text check passes, the on-disk one does not: y is ".", so y/.. is outside.
            (
                vec![
                    M::File("f", 0o644, b"x"),
                    M::Symlink("y", "."),
                    M::Symlink("x", "y/.."),
                ],
                "LinkEscapes",
            ),
            (vec![M::Symlink("bin/none", "missing")], "Dangling"),
            // Writing through a symlink, even one pointing inside, is refused.
            (
                vec![
                    M::Dir("d/"),
                    M::Symlink("l", "d"),
                    M::File("l/f", 0o644, b"x"),
                ],
                "ThroughSymlink",
            ),
        ];
        for (members, want) in cases {
            let (tmp, dest) = setup();
            let mut all = vec![M::File("bin/tls-sidecar", 0o755, b"elf")];
            all.extend(members);
            let t = tgz(tmp.path(), &all);
            let err = install_tgz(&t, &dest).unwrap_err();
            assert!(
                format!("{err:?}").starts_with(want),
                "want {want}, got {err:?}"
            );
            assert!(is_empty(&dest), "{want}: something was installed");
        }
    }

    #[test]
    fn a_file_that_is_not_gzip_is_reported_as_corrupt() {
        let (tmp, dest) = setup();
        let t = tmp.path().join("t.tgz");
        fs::write(&t, b"not a tarball at all").unwrap();
        assert!(matches!(
            install_tgz(&t, &dest),
            Err(ExtractError::Corrupt { .. })
        ));
        assert!(is_empty(&dest));
    }
}
