//! Every message the packager shows a person, in one place.
//!
//! Each message says what failed, why, and what to do. The cause is part of the message (not a
//! `#[source]`), because `main` prints only the top-level `Display`: a cause in both places would
//! print twice.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

/// The fix for every "not a static x86_64 executable" problem: the release build for the musl
/// target is what produces one.
const STATIC_BUILD_FIX: &str = "Build it with `cargo build --release --target \
                                x86_64-unknown-linux-musl` (scripts/package.sh does this), so it \
                                runs on every CF stack without the stack's libc";

/// A binary that cannot go into the buildpack: it is not a static x86_64 ELF executable.
#[derive(Debug, Error)]
#[error("{} {problem}", path.display())]
pub struct ElfError {
    /// The binary that was checked.
    pub path: PathBuf,
    /// What is wrong with it.
    pub problem: ElfProblem,
}

/// Why a file is not a static x86_64 ELF executable.
#[derive(Debug, Error)]
pub enum ElfProblem {
    /// The file could not be read at all.
    #[error("cannot be read: {0}")]
    Unreadable(io::Error),
    /// The file does not start with `\x7fELF`.
    #[error(
        "is not an ELF executable (it does not start with the ELF magic number). {STATIC_BUILD_FIX}"
    )]
    NotElf,
    /// A 32-bit ELF file.
    #[error("is a 32-bit ELF file; CF stacks run 64-bit x86_64 executables. {STATIC_BUILD_FIX}")]
    Not64Bit,
    /// A big-endian ELF file (x86_64 is little-endian).
    #[error("is a big-endian ELF file, so it is not built for x86_64. {STATIC_BUILD_FIX}")]
    BigEndian,
    /// Built for another CPU.
    #[error(
        "is built for another machine (ELF e_machine {0}), not x86_64 (62). {STATIC_BUILD_FIX}"
    )]
    WrongMachine(u16),
    /// A relocatable object, core dump or other non-executable ELF type.
    #[error("is not an executable (ELF e_type {0}, expected 2 EXEC or 3 DYN). {STATIC_BUILD_FIX}")]
    NotExecutable(u16),
    /// An ELF file without an entry point, typically a shared library.
    #[error(
        "has no entry point, so it is a shared library rather than a program. {STATIC_BUILD_FIX}"
    )]
    NoEntryPoint,
    /// Dynamically linked: the kernel would load this interpreter first.
    #[error(
        "is dynamically linked: it asks for the program interpreter {0}, which may be missing or \
         too old on a CF stack. {STATIC_BUILD_FIX}"
    )]
    HasInterpreter(String),
    /// Needs shared libraries at run time (`DT_NEEDED`).
    #[error("needs shared libraries at run time ({0}). {STATIC_BUILD_FIX}")]
    NeedsLibraries(String),
    /// A header points outside the file or has an impossible size.
    #[error("is truncated or malformed: {0}")]
    Malformed(String),
}

/// Why the SBOM cannot be written.
#[derive(Debug, Error)]
pub enum SbomError {
    /// `SOURCE_DATE_EPOCH` is past what an RFC 3339 timestamp can say.
    #[error(
        "SOURCE_DATE_EPOCH {0} is after 9999-12-31, which an RFC 3339 timestamp cannot write. \
         Set it to the time of the last commit (`git log -1 --format=%ct`), or unset it"
    )]
    Timestamp(u64),
    /// cyclonedx-bom could not write the document.
    #[error("Cannot write the SBOM as CycloneDX 1.5 JSON: {0}")]
    Write(String),
}

/// Everything that can stop a packaging run.
#[derive(Debug, Error)]
pub enum PackagerError {
    /// One of the two binaries is not static x86_64.
    #[error(transparent)]
    Elf(#[from] ElfError),

    /// The SBOM cannot be written.
    #[error(transparent)]
    Sbom(#[from] SbomError),

    /// `--version` (or `VERSION`) cannot be used in a file name and a URI.
    #[error(
        "Version {version:?} is not usable: {reason}. Pass a version such as 1.2.3 with \
         --version, or fix the VERSION file"
    )]
    InvalidVersion {
        /// The rejected version.
        version: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// `--stack` names no stack the packager knows.
    #[error("Unknown stack {0:?}: expected one of cflinuxfs3, cflinuxfs4, cflinuxfs5 or any")]
    UnknownStack(String),

    /// `--dependency-uri-base` is not a URL.
    #[error(
        "Dependency URI base {0:?} is not a URL: expected something like \
         https://example.com/releases/v1.0.0 or file:///srv/deps (set with \
         --dependency-uri-base or TLS_SIDECAR_DEPENDENCY_URI_BASE)"
    )]
    InvalidUriBase(String),

    /// An uncached zip without a URL to download the tarball from.
    #[error(
        "An uncached buildpack downloads tls-sidecar-{version}-linux-x64.tgz at staging, and \
         nobody publishes it unless you do: upload it from the output directory to a server \
         the cells reach and give that URL with --dependency-uri-base URL (or \
         TLS_SIDECAR_DEPENDENCY_URI_BASE), or package --cached (the default) instead"
    )]
    UncachedWithoutUriBase {
        /// The version being packaged.
        version: String,
    },

    /// An input file (binary, VERSION, manifest, shim) cannot be read.
    #[error("Cannot read {}: {cause}", path.display())]
    ReadInput {
        /// The file.
        path: PathBuf,
        /// The I/O error, rendered into the message.
        cause: io::Error,
    },

    /// The source manifest is not YAML of the expected shape.
    #[error(
        "{} is not a valid source manifest: {cause}. It follows the libbuildpack schema: \
         language, default_versions, dependencies (name, version, cf_stacks), include_files",
        path.display()
    )]
    ParseManifest {
        /// The manifest.
        path: PathBuf,
        /// The YAML error, rendered into the message.
        cause: serde_yaml_ng::Error,
    },

    /// The manifest was already written by the packager (it carries fields only the packager
    /// fills in). libbuildpack's packager refuses the same, with the same first sentence.
    #[error(
        "Cannot package from already packaged buildpack manifest: {} has `{field}`, which only the \
         packager writes. Package from the repository's source manifest.yml (git checkout \
         manifest.yml)",
        path.display()
    )]
    AlreadyPackaged {
        /// The manifest.
        path: PathBuf,
        /// The field that gave it away.
        field: &'static str,
    },

    /// The source manifest parses but does not describe this buildpack.
    #[error("{}: {problem}", path.display())]
    InvalidManifest {
        /// The manifest.
        path: PathBuf,
        /// What is wrong and how to fix it.
        problem: String,
    },

    /// The requested stack is not among the dependency's `cf_stacks`.
    #[error(
        "Stack `{stack}` not found in manifest: {} lists tls-sidecar for [{listed}]. Package for \
         one of those, or add {stack} to cf_stacks once the sidecar is tested on it",
        path.display()
    )]
    StackNotInManifest {
        /// The requested stack.
        stack: String,
        /// The manifest.
        path: PathBuf,
        /// The stacks it lists.
        listed: String,
    },

    /// `--cargo-metadata` is not usable `cargo metadata --format-version 1` output.
    #[error(
        "{} is not usable cargo metadata: {problem}. Generate it with `cargo metadata \
         --format-version 1 --locked --filter-platform x86_64-unknown-linux-musl` \
         (scripts/package.sh does this)",
        path.display()
    )]
    InvalidCargoMetadata {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },

    /// A file listed in `include_files` is not in the repository.
    #[error(
        "{} is listed in include_files but does not exist. Restore it, or remove it from \
         include_files in manifest.yml",
        path.display()
    )]
    MissingIncludeFile {
        /// The missing file.
        path: PathBuf,
    },

    /// Building the dependency tarball in memory failed.
    #[error("Cannot build the tls-sidecar tarball: {0}")]
    BuildTarball(io::Error),

    /// Building the zip in memory failed.
    #[error("Cannot build the buildpack zip: {0}")]
    BuildZip(zip::result::ZipError),

    /// An output file cannot be written.
    #[error("Cannot write {}: {cause}. Check that the output directory is writable", path.display())]
    WriteOutput {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error, rendered into the message.
        cause: io::Error,
    },
}
