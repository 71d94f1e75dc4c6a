//! Every message a user reads when something goes wrong, and the exit codes.
//!
//! Modules return the small enums below, which carry data only; this file turns each into a
//! headline (what failed, with the bad value), cause lines (why, what happened to the install)
//! and a fix (the command that repairs it). The matches are exhaustive, so a new variant does
//! not compile until someone writes its message. Warnings live here too: they are advice with
//! a fix, in the same voice.

use crate::output::Output;
use crate::phase::Phase;
use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use tls_sidecar_config::{CONFIG_FILE_NAME, ConfigError, Env, Origin, VcapApplication};

/// Exit codes, one per kind of failure, so a staging log and a CI run can tell them apart
/// (libbuildpack's scaffold uses 9–19 the same way). The builder only looks at zero/non-zero.
pub mod exit_code {
    /// `detect`: this buildpack is never auto-detected (a supply buildpack is named with `-b`).
    pub const NOT_DETECTED: u8 = 1;
    /// Wrong phase, option, number of arguments, or a malformed argument (sysexits `EX_USAGE`).
    pub const USAGE: u8 = 64;
    /// The buildpack's own `manifest.yml` is missing or wrong (a packaging problem).
    pub const BUILDPACK_MANIFEST: u8 = 10;
    /// `CF_STACK` is not a stack this buildpack was packaged for.
    pub const UNSUPPORTED_STACK: u8 = 11;
    /// The app's `tls-sidecar.yml` or a `TLS_SIDECAR_*` variable is invalid.
    pub const APP_CONFIG: u8 = 12;
    /// Fetching, verifying or extracting the `tls-sidecar` dependency failed.
    pub const DEPENDENCY_INSTALL: u8 = 13;
    /// Reading or writing a file in the staging directories failed.
    pub const FILE_IO: u8 = 14;
}

/// Why a phase failed.
#[derive(Debug)]
pub enum Error {
    /// `argv[1]` is not a phase and the binary is not named after one.
    UnknownPhase {
        given: Option<String>,
    },
    /// A `--option` this binary does not have.
    UnknownOption(String),
    /// A `--option` without a value, or with one that does not parse.
    OptionValue {
        option: String,
        value: Option<String>,
    },
    /// The builder passes a fixed number of arguments per phase.
    Usage {
        phase: Phase,
        got: usize,
    },
    /// `DEPS_IDX` must be digits: it becomes a path and part of the sidecar command.
    DepsIdx(String),
    /// `BUILD_DIR` (or another argument) is not an existing directory.
    NotADirectory {
        name: &'static str,
        path: PathBuf,
    },
    /// Neither `--buildpack-dir` nor the executable's location says where the buildpack is.
    NoBuildpackDir,
    Manifest(ManifestError),
    /// `CF_STACK` is not in the manifest's `stack:` / `cf_stacks`.
    UnsupportedStack {
        stack: String,
        supported: Vec<String>,
    },
    /// The app's configuration is invalid (its text names the field, value and place).
    Config(ConfigError),
    /// The declared sidecar memory is not strictly less than the app's (`MEMORY_LIMIT`):
    /// Cloud Controller would refuse the droplet after staging.
    SidecarMemory {
        sidecar_mb: u32,
        limit_mb: u32,
        /// `TLS_SIDECAR_MEMORY` set it rather than the file.
        from_env: bool,
    },
    /// The dependency could not be installed; nothing was.
    Install {
        name: String,
        version: String,
        source: InstallError,
    },
    File(FileError),
}

/// A file in the staging directories that could not be read or written.
#[derive(Debug)]
pub struct FileError {
    pub path: PathBuf,
    pub writing: bool,
    pub source: io::Error,
}

impl FileError {
    /// For `map_err`: reading `path` failed.
    pub fn reading(path: &Path) -> impl Fn(io::Error) -> FileError + Copy {
        move |source| FileError {
            path: path.to_owned(),
            writing: false,
            source,
        }
    }

    /// For `map_err`: writing `path` (or creating it, or its directory) failed.
    pub fn writing(path: &Path) -> impl Fn(io::Error) -> FileError + Copy {
        move |source| FileError {
            path: path.to_owned(),
            writing: true,
            source,
        }
    }
}

impl From<FileError> for Error {
    fn from(e: FileError) -> Self {
        Error::File(e)
    }
}

impl From<FileError> for InstallError {
    fn from(e: FileError) -> Self {
        InstallError::File(e)
    }
}

/// The buildpack's packaged `manifest.yml` is unusable.
#[derive(Debug)]
pub enum ManifestError {
    Missing {
        path: PathBuf,
    },
    Read {
        path: PathBuf,
        source: io::Error,
    },
    Parse {
        path: PathBuf,
        message: String,
    },
    /// No entry named `name` for the stack (or at all).
    NoDependency {
        name: String,
        stack: Option<String>,
    },
    /// The entry's `sha256` is not 64 hex digits.
    BadSha256 {
        name: String,
        version: String,
        value: String,
    },
    /// The entry is not a `.tgz` / `.tar.gz`, the only format supply extracts.
    UnsupportedFormat {
        name: String,
        version: String,
        file: String,
    },
}

/// Fetching or unpacking the dependency failed.
#[derive(Debug)]
pub enum InstallError {
    /// `file:` names a file the zip does not contain.
    CachedFileMissing {
        path: PathBuf,
    },
    /// The tarball installed, but without `bin/tls-sidecar`.
    NoBinary {
        path: String,
    },
    File(FileError),
    /// The file's sha256 differs from the manifest's. `from` says where it came from.
    Sha256Mismatch {
        expected: String,
        actual: String,
        from: Fetched,
    },
    /// Every attempt failed; `reason` is the last failure. `uri` is already redacted.
    Download {
        uri: String,
        attempts: usize,
        reason: String,
    },
    /// The CA bundle for an https download is unreadable or empty.
    TrustStore {
        path: PathBuf,
        reason: String,
    },
    /// A proxy variable does not hold a proxy URL.
    Proxy {
        var: String,
        value: String,
    },
    Extract(ExtractError),
}

/// Where a dependency file came from (decides the fix for a bad checksum).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetched {
    BuildpackZip,
    Download,
}

/// A tarball entry that would install something unsafe, or an unreadable tarball.
#[derive(Debug)]
pub enum ExtractError {
    Absolute {
        entry: String,
    },
    ParentDir {
        entry: String,
    },
    AbsoluteLink {
        entry: String,
        target: String,
    },
    LinkEscapes {
        entry: String,
        target: String,
    },
    /// A symlink whose target is not in the tarball (its real target cannot be checked).
    Dangling {
        entry: String,
        target: String,
    },
    /// The entry's path goes through a symlink the tarball created earlier.
    ThroughSymlink {
        entry: String,
        link: String,
    },
    Special {
        entry: String,
        kind: &'static str,
    },
    Unsupported {
        entry: String,
        kind: String,
    },
    /// A directory where a file should go, or the other way round.
    Conflict {
        entry: String,
    },
    Corrupt {
        source: io::Error,
    },
    Io {
        entry: String,
        source: io::Error,
    },
    /// The tarball lacks a file it must install (checked before anything is installed).
    Missing {
        path: String,
    },
}

/// Something that works but is probably not what the user wants.
#[derive(Debug)]
pub enum Warning {
    StackUnset {
        supported: Vec<String>,
    },
    /// The builder reads launch.yml from the unpadded index (cf-buildpack-contract.md §2.2).
    PaddedDepsIdx {
        idx: String,
        command: String,
        memory: u32,
        process_types: Vec<String>,
    },
    CacheNotWritable {
        path: PathBuf,
        reason: String,
    },
    VcapApplication(String),
    Config(String),
    NoProcfile,
    /// The sidecar takes more than a quarter of the app's memory.
    SidecarMemoryShare {
        sidecar_mb: u32,
        limit_mb: u32,
    },
}

/// An error as the user reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub headline: String,
    pub cause: Vec<String>,
    pub fix: Option<String>,
}

/// The app name for fix commands (a placeholder when `VCAP_APPLICATION` names none).
pub fn app_name(env: &Env) -> String {
    tls_sidecar_config::VcapApplication::from_env(env)
        .0
        .app_name()
        .to_owned()
}

/// Prints `err` as `**ERROR** headline`, cause lines and `Fix: ...`.
pub fn print<W: Write>(err: &Error, env: &Env, out: &mut Output<W>) {
    let r = report(err, &app_name(env));
    out.error(&r.headline);
    for c in &r.cause {
        out.info(c);
    }
    if let Some(fix) = &r.fix {
        out.info(format_args!("Fix: {fix}"));
    }
}

/// Prints a warning.
pub fn warn<W: Write>(w: &Warning, app: &str, out: &mut Output<W>) {
    out.warning(w.text(app));
}

pub fn exit_code(err: &Error) -> u8 {
    match err {
        Error::UnknownPhase { .. }
        | Error::UnknownOption(_)
        | Error::OptionValue { .. }
        | Error::Usage { .. }
        | Error::DepsIdx(_)
        | Error::NotADirectory { .. }
        | Error::NoBuildpackDir => exit_code::USAGE,
        Error::Manifest(_) => exit_code::BUILDPACK_MANIFEST,
        Error::UnsupportedStack { .. } => exit_code::UNSUPPORTED_STACK,
        Error::Config(_) | Error::SidecarMemory { .. } => exit_code::APP_CONFIG,
        Error::Install { .. } => exit_code::DEPENDENCY_INSTALL,
        Error::File(_) => exit_code::FILE_IO,
    }
}

const REPACKAGE: &str =
    "package the buildpack again with scripts/package.sh and upload it (cf update-buildpack)";

pub fn report(err: &Error, app: &str) -> Report {
    let phases = "detect, supply, finalize or release";
    let r = |headline: String, cause: Vec<String>, fix: Option<String>| Report {
        headline,
        cause,
        fix,
    };
    match err {
        Error::UnknownPhase { given } => r(
            match given {
                Some(g) => format!("\"{g}\" is not a buildpack phase (expected {phases})"),
                None => format!("No buildpack phase given (expected {phases})"),
            },
            vec!["tls-sidecar-buildpack is one binary for every phase: the bin/ scripts run it as lib/tls-sidecar-buildpack <phase> ARGS...".into()],
            Some("run it through bin/<phase>, e.g. bin/supply BUILD_DIR CACHE_DIR DEPS_DIR DEPS_IDX".into()),
        ),
        Error::UnknownOption(o) => r(
            format!("Unknown option {o} (expected --buildpack-dir DIR or --retry-delays-ms LIST)"),
            vec![],
            Some("the bin/ scripts pass no options; run bin/<phase> ARGS...".into()),
        ),
        Error::OptionValue { option, value } => r(
            match value {
                Some(v) => format!("{option} \"{v}\" is not valid"),
                None => format!("{option} needs a value"),
            },
            vec!["--buildpack-dir takes a directory, --retry-delays-ms a comma-separated list of milliseconds (e.g. 1000,2000)".into()],
            None,
        ),
        Error::Usage { phase, got } => {
            let want = phase.usage().split(' ').count();
            r(
                format!("{} takes {want} argument{} ({}), got {got}", phase.name(), if want == 1 { "" } else { "s" }, phase.usage()),
                vec![format!("Usage: bin/{} {} (the Cloud Foundry builder passes these)", phase.name(), phase.usage())],
                None,
            )
        }
        Error::DepsIdx(idx) => r(
            format!("DEPS_IDX \"{idx}\" is not a buildpack index (expected digits, e.g. 0 or 02)"),
            vec![],
            Some("pass the index the Cloud Foundry builder gives: bin/supply BUILD_DIR CACHE_DIR DEPS_DIR 0".into()),
        ),
        Error::NotADirectory { name, path } => r(format!("{name} {} is not a directory", path.display()), vec![], None),
        Error::NoBuildpackDir => r(
            "Cannot tell where the buildpack is: the location of this binary is unknown".into(),
            vec![],
            Some("run it as <buildpack>/lib/tls-sidecar-buildpack, or pass --buildpack-dir DIR".into()),
        ),
        Error::Manifest(m) => manifest_report(m),
        Error::UnsupportedStack { stack, supported } => {
            let first = supported.first().map_or("cflinuxfs4", String::as_str);
            r(
                format!("This buildpack does not support the stack {stack} (it supports: {})", supported.join(", ")),
                vec!["Nothing was installed.".into()],
                Some(format!("cf push {app} -s {first}, or use a tls-sidecar buildpack packaged with --stack any")),
            )
        }
        Error::Config(e) => config_report(e, app),
        Error::SidecarMemory {
            sidecar_mb,
            limit_mb,
            from_env,
        } => r(
            format!(
                "The sidecar's memory ({sidecar_mb} MB, sidecar.memory) is not less than the app's ({limit_mb} MB, MEMORY_LIMIT)"
            ),
            vec![
                "Cloud Controller runs sidecars inside the app's memory and refuses a droplet whose sidecars take as much as the process or more (SidecarMemoryLessThanProcessMemoryPolicy): the push would fail after staging, or the app never start.".into(),
                "Nothing was installed.".into(),
            ],
            Some(format!(
                "{}, or give the app more memory: cf scale {app} -m {}M, then cf push {app}",
                if *from_env {
                    format!("lower it: cf set-env {app} TLS_SIDECAR_MEMORY 32M")
                } else {
                    format!("lower sidecar.memory in {CONFIG_FILE_NAME} (e.g. 32)")
                },
                sidecar_mb.saturating_mul(4)
            )),
        ),
        Error::Install { name, version, source } => install_report(name, version, source, app),
        Error::File(e) => {
            let (what, cause) = file_text(e);
            r(format!("Cannot {what}"), cause.into_iter().collect(), None)
        }
    }
}

fn manifest_report(m: &ManifestError) -> Report {
    let (headline, cause) = match m {
        ManifestError::Missing { path } => (
            format!(
                "This buildpack has no manifest.yml ({} does not exist)",
                path.display()
            ),
            vec![
                "It has not been packaged: the zip made by scripts/package.sh contains it.".into(),
            ],
        ),
        ManifestError::Read { path, source } => (
            format!("Cannot read the buildpack's {}: {source}", path.display()),
            vec![],
        ),
        ManifestError::Parse { path, message } => (
            format!("The buildpack's {} is not valid: {message}", path.display()),
            vec![],
        ),
        ManifestError::NoDependency { name, stack } => (
            match stack {
                Some(s) => format!(
                    "The buildpack's manifest.yml has no {name} dependency for the stack {s}"
                ),
                None => format!("The buildpack's manifest.yml has no {name} dependency"),
            },
            vec![],
        ),
        ManifestError::BadSha256 {
            name,
            version,
            value,
        } => (
            format!(
                "The buildpack's manifest.yml gives {name} {version} the sha256 \"{value}\" (expected 64 hex digits)"
            ),
            vec![],
        ),
        ManifestError::UnsupportedFormat {
            name,
            version,
            file,
        } => (
            format!(
                "The buildpack's manifest.yml gives {name} {version} as {file} (expected a .tgz or .tar.gz)"
            ),
            vec![],
        ),
    };
    Report {
        headline,
        cause,
        fix: Some(REPACKAGE.into()),
    }
}

fn config_report(e: &ConfigError, app: &str) -> Report {
    match (e, e.origin()) {
        (ConfigError::Invalid { problem, .. }, Some(Origin::Env(var))) => Report {
            headline: format!("{var} {problem}"),
            cause: vec!["Nothing was installed.".into()],
            fix: Some(format!(
                "cf set-env {app} {var} {}, then cf restage {app} (or cf unset-env {app} {var})",
                env_example(&var)
            )),
        },
        (ConfigError::Read { .. }, _) => Report {
            headline: e.to_string(),
            cause: vec!["Nothing was installed.".into()],
            fix: Some(format!(
                "make {CONFIG_FILE_NAME} in your app's root directory a readable file, then cf push {app}"
            )),
        },
        _ => Report {
            headline: e.to_string(),
            cause: vec!["Nothing was installed.".into()],
            fix: Some(format!(
                "edit {CONFIG_FILE_NAME} in your app's root directory, then cf push {app}"
            )),
        },
    }
}

fn env_example(var: &str) -> &'static str {
    match var {
        "TLS_SIDECAR_PORT" => "8443",
        "TLS_SIDECAR_UPSTREAM" => "127.0.0.1:8080",
        "TLS_SIDECAR_MODE" => "tcp",
        "TLS_SIDECAR_CLIENT_AUTH" => "required",
        "TLS_SIDECAR_ALLOW" => "cf:same-space",
        "TLS_SIDECAR_MEMORY" => "32M",
        _ => "VALUE",
    }
}

fn install_report(name: &str, version: &str, e: &InstallError, app: &str) -> Report {
    let nothing = "Nothing was installed.".to_owned();
    let (what, cause, fix): (String, Vec<String>, Option<String>) = match e {
        InstallError::CachedFileMissing { path } => (
            format!("the buildpack zip has no {}", path.display()),
            vec![nothing, "manifest.yml lists it as a cached dependency (file:), so the zip is incomplete.".into()],
            Some(REPACKAGE.into()),
        ),
        InstallError::NoBinary { path } => (
            format!("the dependency tarball has no {path}"),
            vec!["The dependency tarball is not one the buildpack's packager builds (see docs/DESIGN.md).".into()],
            Some(REPACKAGE.into()),
        ),
        InstallError::File(e) => {
            let (what, cause) = file_text(e);
            (format!("cannot {what}"), [nothing].into_iter().chain(cause).collect(), None)
        }
        InstallError::Sha256Mismatch { expected, actual, from } => (
            format!("dependency sha256 mismatch: expected {expected}, actual {actual}"),
            vec![nothing, match from {
                Fetched::BuildpackZip => "The file in the buildpack zip is not the one manifest.yml describes.".into(),
                Fetched::Download => "The downloaded file is not the one this buildpack was packaged with (a truncated download, a proxy rewriting it, or a changed file at the URL).".into(),
            }],
            Some(match from {
                Fetched::BuildpackZip => REPACKAGE.into(),
                Fetched::Download => format!("cf restage {app} to download it again; if it keeps failing, {REPACKAGE}"),
            }),
        ),
        InstallError::Download { uri, attempts, reason } => (
            format!("could not download {uri} after {attempts} attempt{}: {reason}", if *attempts == 1 { "" } else { "s" }),
            vec![nothing],
            Some(format!(
                "make the URL reachable from staging (set https_proxy in the staging environment if a proxy is needed), or use the cached buildpack zip, which needs no network; then cf restage {app}"
            )),
        ),
        InstallError::TrustStore { path, reason } => (
            format!("cannot load trusted CA certificates from {}: {reason}", path.display()),
            vec![nothing],
            Some(format!("cf set-env {app} SSL_CERT_FILE /etc/ssl/certs/ca-certificates.crt (or another PEM bundle), then cf restage {app}")),
        ),
        InstallError::Proxy { var, value } => (
            format!("{var} \"{value}\" is not a proxy URL (e.g. http://proxy.example.com:3128)"),
            vec![nothing],
            Some(format!("cf set-env {app} {var} http://proxy.example.com:3128 (or fix it in the staging environment variable group), then cf restage {app}")),
        ),
        InstallError::Extract(x) => (
            extract_text(x),
            vec![nothing, "The dependency tarball is not one the buildpack's packager builds (see docs/DESIGN.md).".into()],
            Some(REPACKAGE.into()),
        ),
    };
    Report {
        headline: format!("Could not install {name} {version}: {what}"),
        cause,
        fix,
    }
}

/// "read|write <path>: <why>" (after "cannot"), and what to do if a write found the disk full.
fn file_text(e: &FileError) -> (String, Option<String>) {
    let verb = if e.writing { "write" } else { "read" };
    let what = format!("{verb} {}: {}", e.path.display(), e.source);
    let full = e
        .writing
        .then(|| "If the disk is full, give staging more room: cf push -k 2G".to_owned());
    (what, full)
}

fn extract_text(e: &ExtractError) -> String {
    let (entry, why) = match e {
        ExtractError::Corrupt { source } => {
            return format!("the tarball is not a valid .tgz: {source}");
        }
        ExtractError::Io { entry, source } => {
            return format!("cannot write tarball entry \"{entry}\": {source}");
        }
        ExtractError::Missing { path } => return format!("the dependency tarball has no {path}"),
        ExtractError::Absolute { entry } => (entry, "it has an absolute path".to_owned()),
        ExtractError::ParentDir { entry } => (entry, "it has a \"..\" component".to_owned()),
        ExtractError::AbsoluteLink { entry, target } => {
            (entry, format!("it links to the absolute path \"{target}\""))
        }
        ExtractError::LinkEscapes { entry, target } => (
            entry,
            format!("it links to \"{target}\", outside the install directory"),
        ),
        ExtractError::Dangling { entry, target } => (
            entry,
            format!("it links to \"{target}\", which the tarball does not contain"),
        ),
        ExtractError::ThroughSymlink { entry, link } => (
            entry,
            format!("it would be written through the symlink \"{link}\""),
        ),
        ExtractError::Special { entry, kind } => (
            entry,
            format!("it is a {kind} (only files, directories and links are installed)"),
        ),
        ExtractError::Unsupported { entry, kind } => {
            (entry, format!("unsupported entry type {kind}"))
        }
        ExtractError::Conflict { entry } => (
            entry,
            "it clashes with an earlier entry of another type".to_owned(),
        ),
    };
    format!("refusing tarball entry \"{entry}\": {why}")
}

impl Warning {
    pub fn text(&self, app: &str) -> String {
        match self {
            Warning::StackUnset { supported } => format!(
                "CF_STACK is not set, so the stack cannot be checked (this buildpack supports: {}); continuing",
                supported.join(", ")
            ),
            Warning::PaddedDepsIdx {
                idx,
                command,
                memory,
                process_types,
            } => format!(
                "DEPS_IDX is zero-padded (\"{idx}\"): with 10 or more buildpacks the Cloud Foundry builder looks for launch.yml under the unpadded index and will not start the tls-sidecar sidecar.\n\
                 Fix: push with fewer than 10 buildpacks, or declare the sidecar in your app manifest and cf push {app}:\n\
                 sidecars: [{{name: tls-sidecar-manifest, process_types: [{}], command: \"{command}\", memory: {memory}M}}]\n\
                 (any name but tls-sidecar, the buildpack's own: Cloud Controller refuses two sidecars of one name)",
                process_types.join(", ")
            ),
            Warning::CacheNotWritable { path, reason } => format!(
                "Cannot keep the download in the cache ({}: {reason}); continuing, the next staging downloads it again",
                path.display()
            ),
            Warning::VcapApplication(problem) => {
                format!(
                    "{problem}; commands below use {} for the app name",
                    VcapApplication::APP_NAME_PLACEHOLDER
                )
            }
            Warning::Config(text) => format!("{CONFIG_FILE_NAME}: {text}"),
            Warning::SidecarMemoryShare {
                sidecar_mb,
                limit_mb,
            } => format!(
                "The sidecar takes {sidecar_mb} MB of the app's {limit_mb} MB (MEMORY_LIMIT), more than a quarter: the app's own MEMORY_LIMIT shrinks to {} MB.\n\
                 Fix: lower sidecar.memory in {CONFIG_FILE_NAME} (32 covers 768 connections), or give the app more memory: cf scale {app} -m {}M",
                limit_mb - sidecar_mb,
                sidecar_mb.saturating_mul(4)
            ),
            Warning::NoProcfile => format!(
                "The app has no Procfile: unless you pushed with -c, it has no start command (this buildpack starts only the tls-sidecar sidecar).\n\
                 Fix: cf push {app} -c '<command>', or add a Procfile with a line \"web: <command>\""
            ),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&report(self, VcapApplication::APP_NAME_PLACEHOLDER).headline)
    }
}

impl std::error::Error for Error {}

impl From<ExtractError> for InstallError {
    fn from(e: ExtractError) -> Self {
        InstallError::Extract(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_env as env;
    use tls_sidecar_config::AppConfig;

    #[test]
    fn a_bad_port_variable_is_named_with_its_value_and_the_set_env_fix() {
        let e = AppConfig::default()
            .apply_env(&env(&[("TLS_SIDECAR_PORT", "84x3")]))
            .unwrap_err();
        let r = report(&Error::Config(e), "myapp");
        assert_eq!(
            r.headline,
            "TLS_SIDECAR_PORT \"84x3\" is not a port number (expected 1-65535)"
        );
        assert_eq!(
            r.fix.as_deref(),
            Some(
                "cf set-env myapp TLS_SIDECAR_PORT 8443, then cf restage myapp (or cf unset-env myapp TLS_SIDECAR_PORT)"
            )
        );
    }

    #[test]
    fn a_bad_file_value_keeps_line_and_column_and_points_at_cf_push() {
        let e = AppConfig::parse("listeners:\n  - mode: tcpp\n", "tls-sidecar.yml").unwrap_err();
        let r = report(&Error::Config(e), "myapp");
        assert!(
            r.headline
                .starts_with("tls-sidecar.yml line 2 column 11: listeners[0].mode: \"tcpp\""),
            "{}",
            r.headline
        );
        assert_eq!(
            r.fix.as_deref(),
            Some("edit tls-sidecar.yml in your app's root directory, then cf push myapp")
        );
    }

    #[test]
    fn the_app_name_comes_from_vcap_application_or_a_placeholder() {
        assert_eq!(
            app_name(&env(&[(
                "VCAP_APPLICATION",
                r#"{"application_name":"shop"}"#
            )])),
            "shop"
        );
        assert_eq!(
            app_name(&env(&[("VCAP_APPLICATION", "not json")])),
            "APP_NAME"
        );
        assert_eq!(app_name(&Env::new()), "APP_NAME");
    }

    #[test]
    fn every_kind_of_failure_has_its_own_exit_code() {
        assert_eq!(
            exit_code(&Error::Usage {
                phase: Phase::Supply,
                got: 1
            }),
            64
        );
        assert_eq!(
            exit_code(&Error::UnsupportedStack {
                stack: "x".into(),
                supported: vec![]
            }),
            11
        );
        let usage = report(
            &Error::Usage {
                phase: Phase::Supply,
                got: 2,
            },
            "a",
        );
        assert_eq!(
            usage.headline,
            "supply takes 4 arguments (BUILD_DIR CACHE_DIR DEPS_DIR DEPS_IDX), got 2"
        );
    }
}
