//! Packages the TLS sidecar buildpack: the dependency tarball `tls-sidecar-<v>-linux-x64.tgz`
//! (plus `.sha256`), the packaged `manifest.yml`, and the buildpack zip
//! `tls_sidecar_buildpack[-cached][-<stack>]-v<v>.zip` (plus `.sha256`) that operators upload
//! with `cf create-buildpack`.
//!
//! Everything is reproducible: the same binaries, repository files and options give the same
//! bytes, so a zip can be rebuilt and compared, and the manifest's sha256 never churns.
//! `scripts/package.sh` builds the static musl binaries and calls [`package`] through the
//! `tls-sidecar-packager` binary; see `docs/DESIGN.md` for the layouts.

#![warn(missing_docs)]

pub mod archive;
pub mod elf;
pub mod errors;
pub mod manifest;
pub mod output;
pub mod sbom;
pub mod stack;
pub mod tarball;

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub use crate::archive::zip_name;
pub use crate::elf::{check_static_x86_64_executable, ensure_static_x86_64_executable};
pub use crate::errors::{ElfError, ElfProblem, PackagerError, SbomError};
pub use crate::manifest::{PackagedManifest, SourceManifest, cached_dependency_path};
pub use crate::output::Output;
pub use crate::stack::Stack;

use crate::archive::ZipFile;
use crate::manifest::{
    BUILDPACK_BINARY_IN_ZIP, DefaultVersion, MANIFEST_FILE, OPTIONAL_INCLUDE_FILES,
    PackagedDependency,
};
use crate::output::human_size;
use crate::tarball::{DEPENDENCY_NAME, build_tarball, tarball_name};

/// What to package, with every input explicit (no environment is read here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageOptions {
    /// The repository: `manifest.yml` (source), `VERSION`, `bin/` shims, `README.md`.
    pub repo_root: PathBuf,
    /// The static `tls-sidecar` binary, which goes into the dependency tarball.
    pub sidecar_binary: PathBuf,
    /// The static `tls-sidecar-buildpack` multi-call binary, which goes to `lib/` in the zip.
    pub buildpack_binary: PathBuf,
    /// The stack the zip is for.
    pub stack: Stack,
    /// Put the tarball into the zip (for foundations without internet access).
    pub cached: bool,
    /// The version; `None` reads `<repo_root>/VERSION`.
    pub version: Option<String>,
    /// Where the tarball, the zip and their `.sha256` files go; created if missing.
    pub output_dir: PathBuf,
    /// The URL the tarball is published under. Required for an uncached zip (supply downloads
    /// from it); a cached zip without one gets [`manifest::unpublished_dependency_uri_base`].
    pub dependency_uri_base: Option<String>,
    /// `cargo metadata --format-version 1` output for the SBOM's crate lists; `None` writes an
    /// SBOM that names only the zip and the two binaries.
    pub cargo_metadata: Option<PathBuf>,
    /// `SOURCE_DATE_EPOCH`: the SBOM's timestamp; `None` leaves the timestamp out.
    pub source_date_epoch: Option<u64>,
}

/// What a packaging run wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packaged {
    /// The zip, absolute.
    pub zip_path: PathBuf,
    /// The zip's sha256, hex.
    pub zip_sha256: String,
    /// The dependency tarball, absolute.
    pub tarball_path: PathBuf,
    /// The tarball's sha256, hex (also in the manifest).
    pub tarball_sha256: String,
    /// The manifest written into the zip.
    pub manifest: PackagedManifest,
    /// The CycloneDX SBOM beside the zip (`<zip>.cdx.json`), absolute.
    pub sbom_path: PathBuf,
}

/// Builds the tarball, the manifest and the zip, and writes them (with `.sha256` files) into
/// `options.output_dir`. Progress goes to `out`.
///
/// Checks everything it can before writing anything: the version, the source manifest, the
/// stack, both binaries and every included file.
///
/// # Errors
/// A [`PackagerError`] saying what is wrong and how to fix it.
pub fn package<W: Write>(
    options: &PackageOptions,
    out: &mut Output<W>,
) -> Result<Packaged, PackagerError> {
    let version = match &options.version {
        Some(version) => version.clone(),
        None => read_version(&options.repo_root.join("VERSION"))?,
    };
    validate_version(&version)?;
    let source = SourceManifest::load(&options.repo_root.join(MANIFEST_FILE))?;
    let cf_stacks = source.cf_stacks_for(options.stack)?;
    let uri_base = match &options.dependency_uri_base {
        Some(base) => base.trim_end_matches('/').to_owned(),
        None if options.cached => manifest::unpublished_dependency_uri_base(&version),
        // Nobody publishes the tarball unless the operator does: an uncached zip pointing at a
        // made-up URL would fail every push after half a minute of retries.
        None => return Err(PackagerError::UncachedWithoutUriBase { version }),
    };
    if !uri_base.contains("://") {
        return Err(PackagerError::InvalidUriBase(uri_base));
    }

    let zip_name = zip_name(&source.language, options.cached, options.stack, &version);
    out.step(format_args!("Packaging {zip_name}"));
    if source.sidecar_version != version {
        out.detail(format_args!(
            "manifest.yml names {DEPENDENCY_NAME} {}; packaging it as {version}, the buildpack \
             version it is built with",
            source.sidecar_version
        ));
    }
    let sidecar = read_static_binary(&options.sidecar_binary, out)?;
    let buildpack = read_static_binary(&options.buildpack_binary, out)?;
    let (sidecar_sha256, buildpack_sha256) = (sha256_hex(&sidecar), sha256_hex(&buildpack));
    let crates = match &options.cargo_metadata {
        Some(path) => Some(read_crates(path)?),
        None => None,
    };

    let tarball_name = tarball_name(&version);
    let tarball = build_tarball(&sidecar).map_err(PackagerError::BuildTarball)?;
    let tarball_sha256 = sha256_hex(&tarball);
    let uri = format!("{uri_base}/{tarball_name}");
    let cached_path = options.cached.then(|| cached_dependency_path(&uri));
    out.step(format_args!("Dependency {DEPENDENCY_NAME} {version}"));
    out.detail(format_args!(
        "{tarball_name} ({}), sha256 {tarball_sha256}",
        human_size(tarball.len())
    ));
    out.detail(format_args!("uri {uri}"));

    let (mut files, included) = collect_include_files(options, &source, &version, buildpack, out)?;

    let packaged = PackagedManifest {
        language: source.language.clone(),
        stack: options.stack.manifest_stack().map(str::to_owned),
        default_versions: vec![DefaultVersion {
            name: DEPENDENCY_NAME.to_owned(),
            version: version.clone(),
        }],
        dependencies: vec![PackagedDependency {
            name: DEPENDENCY_NAME.to_owned(),
            version: version.clone(),
            uri,
            sha256: tarball_sha256.clone(),
            cf_stacks,
            file: cached_path.clone(),
        }],
        include_files: included,
    };
    let manifest_yaml = packaged
        .to_yaml()
        .map_err(|cause| PackagerError::InvalidManifest {
            path: options.repo_root.join(MANIFEST_FILE),
            problem: format!("cannot render the packaged manifest: {cause}"),
        })?;
    files.insert(
        MANIFEST_FILE.to_owned(),
        ZipFile {
            data: manifest_yaml.into_bytes(),
            mode: 0o644,
            deflate: true,
        },
    );
    if let Some(path) = cached_path {
        // Stored, not deflated: it is gzip already, deflating again only costs time.
        files.insert(
            path,
            ZipFile {
                data: tarball.clone(),
                mode: 0o644,
                deflate: false,
            },
        );
    }

    let zip = archive::build_zip(&files).map_err(PackagerError::BuildZip)?;
    let zip_sha256 = sha256_hex(&zip);
    let crate_count = crates.as_ref().map(|c| {
        c.iter()
            .flatten()
            .map(|k| (&k.name, &k.version))
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    });
    let sbom = sbom::render(&sbom::SbomInput {
        zip_name: &zip_name,
        zip_sha256: &zip_sha256,
        version: &version,
        stack: options.stack.as_str(),
        cached: options.cached,
        binaries: vec![
            sbom::Binary {
                package: BUILDPACK_PACKAGE,
                location: BUILDPACK_BINARY_IN_ZIP.to_owned(),
                sha256: &buildpack_sha256,
            },
            sbom::Binary {
                package: DEPENDENCY_NAME,
                location: format!("bin/{DEPENDENCY_NAME} in {tarball_name}"),
                sha256: &sidecar_sha256,
            },
        ],
        crates,
        timestamp: options.source_date_epoch,
    })?;

    let output_dir = create_output_dir(&options.output_dir)?;
    let tarball_path = output_dir.join(&tarball_name);
    write_with_checksum(&tarball_path, &tarball, &tarball_sha256)?;
    let zip_path = output_dir.join(&zip_name);
    write_with_checksum(&zip_path, &zip, &zip_sha256)?;
    let sbom_path = output_dir.join(format!("{zip_name}.cdx.json"));
    write_atomically(&sbom_path, sbom.as_bytes())?;
    out.step(format_args!("Wrote {zip_name}"));
    out.detail(format_args!(
        "{} ({}), sha256 {zip_sha256}",
        zip_path.display(),
        human_size(zip.len())
    ));
    match crate_count {
        Some(n) => out.detail(format_args!(
            "{} (CycloneDX 1.5: the zip, 2 binaries, {n} crates)",
            sbom_path.display()
        )),
        None => out.detail(format_args!(
            "{} (CycloneDX 1.5: the zip and 2 binaries; pass --cargo-metadata to list their crates)",
            sbom_path.display()
        )),
    }

    Ok(Packaged {
        zip_path,
        zip_sha256,
        tarball_path,
        tarball_sha256,
        manifest: packaged,
        sbom_path,
    })
}

/// The Cargo package of the multi-call buildpack binary.
const BUILDPACK_PACKAGE: &str = "tls-sidecar-buildpack";

/// The crate closures of the buildpack binary and the sidecar, in that order, from a
/// `cargo metadata --format-version 1` file.
fn read_crates(path: &Path) -> Result<Vec<Vec<sbom::Crate>>, PackagerError> {
    let invalid = |problem: String| PackagerError::InvalidCargoMetadata {
        path: path.to_path_buf(),
        problem,
    };
    let text = fs::read_to_string(path).map_err(|cause| PackagerError::ReadInput {
        path: path.to_path_buf(),
        cause,
    })?;
    let metadata = sbom::CargoMetadata::parse(&text).map_err(|e| invalid(e.to_string()))?;
    [BUILDPACK_PACKAGE, DEPENDENCY_NAME]
        .iter()
        .map(|package| {
            metadata.closure(package).ok_or_else(|| {
                invalid(format!(
                    "it has no resolved package {package} (is it the output of cargo metadata in this repository, without --no-deps?)"
                ))
            })
        })
        .collect()
}

/// Reads every `include_files` entry (the repository's files, the buildpack binary, `VERSION`),
/// with the mode it gets in the zip. Returns the files and, in order, the names actually included.
fn collect_include_files<W: Write>(
    options: &PackageOptions,
    source: &SourceManifest,
    version: &str,
    mut buildpack: Vec<u8>,
    out: &mut Output<W>,
) -> Result<(BTreeMap<String, ZipFile>, Vec<String>), PackagerError> {
    let mut files = BTreeMap::new();
    let mut included = Vec::new();
    for name in &source.include_files {
        let data = match name.as_str() {
            // Written below, once the list of included files is final.
            MANIFEST_FILE => Vec::new(),
            // Written from the packaging version, as libbuildpack does, so the zip always agrees
            // with its own name and manifest.
            "VERSION" => format!("{version}\n").into_bytes(),
            BUILDPACK_BINARY_IN_ZIP => std::mem::take(&mut buildpack),
            _ => match fs::read(options.repo_root.join(name)) {
                Ok(data) => data,
                Err(err)
                    if err.kind() == io::ErrorKind::NotFound
                        && OPTIONAL_INCLUDE_FILES.contains(&name.as_str()) =>
                {
                    out.detail(format_args!("{name} not found in the repository, left out"));
                    continue;
                }
                Err(err) if err.kind() == io::ErrorKind::NotFound => {
                    return Err(PackagerError::MissingIncludeFile {
                        path: options.repo_root.join(name),
                    });
                }
                Err(cause) => {
                    return Err(PackagerError::ReadInput {
                        path: options.repo_root.join(name),
                        cause,
                    });
                }
            },
        };
        // The shims and the binary they run must be executable whatever the checkout's modes.
        let mode = if name.starts_with("bin/") || name.starts_with("lib/") {
            0o755
        } else {
            0o644
        };
        files.insert(
            name.clone(),
            ZipFile {
                data,
                mode,
                deflate: true,
            },
        );
        included.push(name.clone());
    }

    Ok((files, included))
}

fn read_version(path: &Path) -> Result<String, PackagerError> {
    fs::read_to_string(path)
        .map(|text| text.trim().to_owned())
        .map_err(|cause| PackagerError::ReadInput {
            path: path.to_path_buf(),
            cause,
        })
}

/// The version lands in file names and a URI, so it is held to a conservative alphabet.
fn validate_version(version: &str) -> Result<(), PackagerError> {
    let reason = if version.is_empty() {
        Some("it is empty")
    } else if version.starts_with('v') {
        Some("it starts with `v`, which the zip name adds itself (…-v1.2.3.zip)")
    } else if !version
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b".-+_".contains(&b))
    {
        Some("only letters, digits and . - + _ can go into a file name and a URI")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(PackagerError::InvalidVersion {
            version: version.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

fn read_static_binary<W: Write>(
    path: &Path,
    out: &mut Output<W>,
) -> Result<Vec<u8>, PackagerError> {
    let bytes = fs::read(path).map_err(|cause| PackagerError::ReadInput {
        path: path.to_path_buf(),
        cause,
    })?;
    check_static_x86_64_executable(&bytes).map_err(|problem| ElfError {
        path: path.to_path_buf(),
        problem,
    })?;
    out.detail(format_args!(
        "{}: static x86_64 executable, {}",
        path.display(),
        human_size(bytes.len())
    ));
    Ok(bytes)
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn create_output_dir(dir: &Path) -> Result<PathBuf, PackagerError> {
    let write_error = |cause| PackagerError::WriteOutput {
        path: dir.to_path_buf(),
        cause,
    };
    fs::create_dir_all(dir).map_err(write_error)?;
    // Absolute, because the path printed on stdout is read by scripts running elsewhere.
    fs::canonicalize(dir).map_err(write_error)
}

/// Writes `path` and `path.sha256` (`<hex>  <file name>`, as `sha256sum` prints it when run in
/// the output directory, so `sha256sum -c` works there).
fn write_with_checksum(path: &Path, data: &[u8], sha256: &str) -> Result<(), PackagerError> {
    write_atomically(path, data)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut checksum_path = path.as_os_str().to_owned();
    checksum_path.push(".sha256");
    write_atomically(
        Path::new(&checksum_path),
        format!("{sha256}  {name}\n").as_bytes(),
    )
}

/// Writes a temporary file beside `path`, then renames it into place: a reader (or an upload
/// script polling the directory) never sees a half-written zip, and a failed run leaves the
/// previous file intact.
fn write_atomically(path: &Path, data: &[u8]) -> Result<(), PackagerError> {
    let write_error = |cause| PackagerError::WriteOutput {
        path: path.to_path_buf(),
        cause,
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let result = fs::File::create(&temporary)
        .and_then(|mut file| {
            file.write_all(data)?;
            file.sync_all()
        })
        .and_then(|()| fs::rename(&temporary, path));
    if result.is_err() {
        // Best effort: the error that matters is the write's, reported below.
        let _ = fs::remove_file(&temporary);
    }
    result.map_err(write_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_that_cannot_name_a_file_are_refused() {
        for bad in ["", "v1.0.0", "1.0 beta", "1/0", "1.0.0\n"] {
            assert!(validate_version(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["1.0.0", "1.2.3-rc.1", "1.2.3+build.5", "0.0.1_dev"] {
            assert!(validate_version(good).is_ok(), "{good:?} refused");
        }
    }

    #[test]
    fn a_checksum_file_reads_like_sha256sum_output() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.zip");
        write_with_checksum(&path, b"abc", &sha256_hex(b"abc")).expect("write");
        assert_eq!(
            fs::read_to_string(dir.path().join("a.zip.sha256")).expect("read"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad  a.zip\n"
        );
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    }
}
