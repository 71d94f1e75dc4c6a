//! The buildpack zip, byte-for-byte reproducible.
//!
//! Same inputs, same bytes: entries sorted by name, every parent directory present as its own
//! entry, one timestamp for everything (1980-01-01 00:00, the earliest a zip can store), explicit
//! unix permissions (so nothing depends on the umask or on how the repository was checked out),
//! and deflate at a fixed level with one fixed implementation (miniz_oxide via flate2).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Cursor, Write};

use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, DateTime, ZipWriter};

use crate::stack::Stack;

/// Deflate level: the best flate2 offers. Above 9 the zip crate switches to zopfli, which is
/// minutes slower on a multi-megabyte binary for a few percent.
const DEFLATE_LEVEL: i64 = 9;

/// Mode of every directory entry.
const DIRECTORY_MODE: u32 = 0o755;

/// One file to put into the zip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZipFile {
    /// The content.
    pub data: Vec<u8>,
    /// Unix permission bits, e.g. `0o755`.
    pub mode: u32,
    /// Deflate it (`true`) or store it (`false`, for content that is already compressed).
    pub deflate: bool,
}

/// `<language>_buildpack[-cached][-<stack>]-v<version>.zip`, libbuildpack's naming with the
/// language's `-` turned into `_` (`tls-sidecar` gives `tls_sidecar_buildpack`).
#[must_use]
pub fn zip_name(language: &str, cached: bool, stack: Stack, version: &str) -> String {
    let prefix = language.replace('-', "_");
    let cached = if cached { "-cached" } else { "" };
    let stack = stack
        .manifest_stack()
        .map(|s| format!("-{s}"))
        .unwrap_or_default();
    format!("{prefix}_buildpack{cached}{stack}-v{version}.zip")
}

/// Builds the zip in memory from `files` (keyed by `/`-separated relative path), adding an entry
/// for every parent directory.
///
/// # Errors
/// A [`zip::result::ZipError`] if an entry cannot be written; in memory that means a name the
/// zip format refuses.
pub fn build_zip(files: &BTreeMap<String, ZipFile>) -> zip::result::ZipResult<Vec<u8>> {
    let mut directories = BTreeSet::new();
    for path in files.keys() {
        let mut rest = path.as_str();
        while let Some((parent, _)) = rest.rsplit_once('/') {
            directories.insert(format!("{parent}/"));
            rest = parent;
        }
    }
    // One sorted sequence of directories and files: "bin/" sorts before "bin/detect" because it
    // is a prefix of it, so a parent always precedes its children.
    let mut entries: BTreeMap<&str, Option<&ZipFile>> =
        directories.iter().map(|dir| (dir.as_str(), None)).collect();
    entries.extend(files.iter().map(|(path, file)| (path.as_str(), Some(file))));

    let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
    for (name, file) in entries {
        match file {
            None => zip.add_directory(name, options(DIRECTORY_MODE, false))?,
            Some(file) => {
                zip.start_file(name, options(file.mode, file.deflate))?;
                zip.write_all(&file.data)?;
            }
        }
    }
    Ok(zip.finish()?.into_inner())
}

fn options(mode: u32, deflate: bool) -> SimpleFileOptions {
    let (method, level) = if deflate {
        (CompressionMethod::Deflated, Some(DEFLATE_LEVEL))
    } else {
        (CompressionMethod::Stored, None)
    };
    SimpleFileOptions::default()
        // `DateTime::default()` is 1980-01-01 00:00:00; the crate's own default is "now".
        .last_modified_time(DateTime::default())
        .unix_permissions(mode)
        .compression_method(method)
        .compression_level(level)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn file(data: &[u8], mode: u32) -> ZipFile {
        ZipFile {
            data: data.to_vec(),
            mode,
            deflate: true,
        }
    }

    fn sample() -> BTreeMap<String, ZipFile> {
        BTreeMap::from([
            ("lib/tool".to_owned(), file(b"binary", 0o755)),
            ("VERSION".to_owned(), file(b"1.0.0\n", 0o644)),
            (
                "deps/a/b.tgz".to_owned(),
                ZipFile {
                    data: b"tgz".to_vec(),
                    mode: 0o644,
                    deflate: false,
                },
            ),
        ])
    }

    #[test]
    fn entries_are_sorted_with_every_parent_directory() {
        let bytes = build_zip(&sample()).expect("zip");
        let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).expect("read");
        let names: Vec<String> = (0..archive.len())
            .map(|i| archive.by_index(i).expect("entry").name().to_owned())
            .collect();
        assert_eq!(
            names,
            [
                "VERSION",
                "deps/",
                "deps/a/",
                "deps/a/b.tgz",
                "lib/",
                "lib/tool"
            ]
        );
    }

    #[test]
    fn entries_carry_their_mode_the_fixed_timestamp_and_their_content() {
        let bytes = build_zip(&sample()).expect("zip");
        let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).expect("read");
        let expected = [
            ("VERSION", 0o100_644, CompressionMethod::Deflated),
            ("deps/", 0o040_755, CompressionMethod::Stored),
            ("deps/a/b.tgz", 0o100_644, CompressionMethod::Stored),
            ("lib/tool", 0o100_755, CompressionMethod::Deflated),
        ];
        for (name, mode, method) in expected {
            let mut entry = archive.by_name(name).expect(name);
            assert_eq!(entry.unix_mode(), Some(mode), "{name}");
            assert_eq!(entry.compression(), method, "{name}");
            let time = entry.last_modified().expect("time");
            assert_eq!(
                (time.year(), time.month(), time.day(), time.hour()),
                (1980, 1, 1, 0)
            );
            let mut data = Vec::new();
            entry.read_to_end(&mut data).expect("read");
            if let Some(file) = sample().get(name) {
                assert_eq!(data, file.data);
            }
        }
    }

    #[test]
    fn the_same_files_give_the_same_bytes() {
        assert_eq!(
            build_zip(&sample()).expect("a"),
            build_zip(&sample()).expect("b")
        );
    }

    #[test]
    fn the_zip_name_follows_libbuildpack_for_every_stack() {
        let cases = [
            (
                false,
                Stack::Cflinuxfs3,
                "tls_sidecar_buildpack-cflinuxfs3-v1.2.3.zip",
            ),
            (
                false,
                Stack::Cflinuxfs4,
                "tls_sidecar_buildpack-cflinuxfs4-v1.2.3.zip",
            ),
            (
                true,
                Stack::Cflinuxfs4,
                "tls_sidecar_buildpack-cached-cflinuxfs4-v1.2.3.zip",
            ),
            (
                true,
                Stack::Cflinuxfs5,
                "tls_sidecar_buildpack-cached-cflinuxfs5-v1.2.3.zip",
            ),
            (false, Stack::Any, "tls_sidecar_buildpack-v1.2.3.zip"),
            (true, Stack::Any, "tls_sidecar_buildpack-cached-v1.2.3.zip"),
        ];
        for (cached, stack, expected) in cases {
            assert_eq!(zip_name("tls-sidecar", cached, stack, "1.2.3"), expected);
        }
    }
}
