//! The buildpack's safe extraction (`extract::install_tgz`, what supply runs on the verified
//! tarball) over arbitrary bytes, into `deps/0` of a fresh temp dir per input.
//!
//! Inputs that do not start with the gzip magic are gzipped here first, so the fuzzer spends its
//! time on tar headers (names, links, types, modes) rather than on deflate streams; gzip inputs
//! are used as they are, so the decoder is covered too.
//!
//! After every input, whatever happened:
//! - nothing outside `deps/0` was created, changed or removed;
//! - on an error, nothing at all was installed (`deps/0` is empty);
//! - on success, `deps/0` holds only directories, regular files and symlinks; no setuid, setgid
//!   or sticky bit; every symlink resolves inside `deps/0`; every hard-linked file has all its
//!   links inside `deps/0`; and each path reported as installed exists and is not a directory.
#![no_main]

use flate2::{Compression, write::GzEncoder};
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use tls_sidecar_buildpack::extract::install_tgz;

fuzz_target!(|data: &[u8]| {
    let tmp = tempfile::tempdir().expect("temp dir");
    let root = tmp.path();
    let dest = root.join("deps/0");
    fs::create_dir_all(&dest).expect("deps/0");
    // Neighbours an escape would most likely hit: a sibling deps dir and a file beside deps/.
    fs::create_dir_all(root.join("deps/1")).expect("deps/1");
    fs::write(root.join("deps/1/keep"), b"keep").expect("keep");
    let tarball = root.join("t.tgz");
    let bytes = if data.starts_with(&[0x1f, 0x8b]) {
        data.to_vec()
    } else {
        let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
        gz.write_all(data).expect("gzip");
        gz.finish().expect("gzip")
    };
    fs::write(&tarball, &bytes).expect("tarball");
    let before = outside(root, &dest);

    let result = install_tgz(&tarball, &dest);

    assert_eq!(
        outside(root, &dest),
        before,
        "something outside deps/0 changed: {result:?}"
    );
    match result {
        Err(e) => {
            let left: Vec<_> = fs::read_dir(&dest).expect("read deps/0").collect();
            assert!(left.is_empty(), "{e:?} but deps/0 holds {left:?}");
        }
        Ok(installed) => {
            check_tree(&dest);
            for rel in installed {
                let m = fs::symlink_metadata(dest.join(&rel))
                    .unwrap_or_else(|e| panic!("reported {} but: {e}", rel.display()));
                assert!(!m.is_dir(), "reported the directory {}", rel.display());
            }
        }
    }
});

/// Every path under `root` except `dest` and below, with what identifies its content.
fn outside(root: &Path, dest: &Path) -> BTreeMap<PathBuf, (u32, u64, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).expect("read_dir") {
            let path = e.expect("entry").path();
            if path == dest {
                continue;
            }
            let m = fs::symlink_metadata(&path).expect("metadata");
            let content = if m.file_type().is_symlink() {
                fs::read_link(&path)
                    .expect("link")
                    .into_os_string()
                    .into_encoded_bytes()
            } else if m.is_file() {
                fs::read(&path).expect("read")
            } else {
                Vec::new()
            };
            if m.is_dir() {
                stack.push(path.clone());
            }
            out.insert(path, (m.mode(), m.nlink(), content));
        }
    }
    out
}

fn check_tree(dest: &Path) {
    let real_dest = fs::canonicalize(dest).expect("canonical deps/0");
    let mut links: BTreeMap<(u64, u64), (u64, u64)> = BTreeMap::new();
    let mut stack = vec![dest.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).expect("read_dir") {
            let path = e.expect("entry").path();
            let m = fs::symlink_metadata(&path).expect("metadata");
            let ft = m.file_type();
            assert_eq!(
                m.mode() & 0o7000,
                0,
                "{} keeps a special mode bit",
                path.display()
            );
            if ft.is_dir() {
                stack.push(path);
            } else if ft.is_symlink() {
                let real = fs::canonicalize(&path)
                    .unwrap_or_else(|e| panic!("{} does not resolve: {e}", path.display()));
                assert!(
                    real.starts_with(&real_dest),
                    "{} -> {}",
                    path.display(),
                    real.display()
                );
            } else {
                assert!(
                    ft.is_file(),
                    "{} is not a file, directory or symlink",
                    path.display()
                );
                let seen = links.entry((m.dev(), m.ino())).or_insert((m.nlink(), 0));
                seen.1 += 1;
            }
        }
    }
    for ((_, ino), (nlink, found)) in links {
        assert_eq!(nlink, found, "inode {ino} has links outside deps/0");
    }
}
