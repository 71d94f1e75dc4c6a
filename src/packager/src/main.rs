//! `tls-sidecar-packager`: argument parsing around [`tls_sidecar_packager::package`].
//! Progress goes to stderr; stdout gets exactly one line, the zip's absolute path.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tls_sidecar_packager::{Output, PackageOptions, Stack, package};

/// Builds the tls-sidecar dependency tarball, the packaged manifest.yml and the buildpack zip.
/// Usually run by scripts/package.sh, which builds the static binaries first.
#[derive(Debug, Parser)]
// `--version` takes the version to package (as libbuildpack's packager does), so clap's own
// version flag is off.
#[command(name = "tls-sidecar-packager", disable_version_flag = true)]
struct Args {
    /// The static tls-sidecar binary (goes into the dependency tarball as bin/tls-sidecar)
    #[arg(long, value_name = "PATH")]
    sidecar: PathBuf,

    /// The static tls-sidecar-buildpack binary (goes into the zip as lib/tls-sidecar-buildpack)
    #[arg(long, value_name = "PATH")]
    buildpack_binary: PathBuf,

    /// The repository: source manifest.yml, VERSION, bin/ shims, README.md
    #[arg(long, value_name = "DIR", default_value = ".")]
    repo_root: PathBuf,

    /// Put the dependency tarball into the zip: staging downloads nothing (the default)
    #[arg(long, conflicts_with = "uncached")]
    cached: bool,

    /// Leave the tarball out; supply downloads it from <--dependency-uri-base>/<tarball>, which
    /// is then required
    #[arg(long)]
    uncached: bool,

    /// cflinuxfs3, cflinuxfs4, cflinuxfs5, or any (no stack: one zip for all of them)
    #[arg(long, value_name = "STACK", default_value = "cflinuxfs4", value_parser = parse_stack)]
    stack: Stack,

    /// The version to package [default: contents of <REPO_ROOT>/VERSION]
    #[arg(long, value_name = "VERSION")]
    version: Option<String>,

    /// Where to write the tarball, the zip and their .sha256 files [default: <REPO_ROOT>/out]
    #[arg(long, value_name = "DIR")]
    output: Option<PathBuf>,

    /// URL the tarball is published under; the manifest's uri is <URL>/tls-sidecar-<version>-linux-x64.tgz
    /// (required with --uncached)
    #[arg(long, value_name = "URL", env = "TLS_SIDECAR_DEPENDENCY_URI_BASE")]
    dependency_uri_base: Option<String>,

    /// Output of `cargo metadata --format-version 1` for this repository: the SBOM beside the
    /// zip (<zip>.cdx.json) then lists the crates each binary is built from
    #[arg(long, value_name = "PATH")]
    cargo_metadata: Option<PathBuf>,

    /// Seconds since the epoch for the SBOM's timestamp (reproducible builds); no timestamp
    /// without it
    #[arg(long, value_name = "SECONDS", env = "SOURCE_DATE_EPOCH")]
    source_date_epoch: Option<u64>,
}

fn parse_stack(value: &str) -> Result<Stack, String> {
    value
        .parse()
        .map_err(|err: tls_sidecar_packager::PackagerError| err.to_string())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let options = PackageOptions {
        output_dir: args.output.unwrap_or_else(|| args.repo_root.join("out")),
        repo_root: args.repo_root,
        sidecar_binary: args.sidecar,
        buildpack_binary: args.buildpack_binary,
        stack: args.stack,
        cached: args.cached || !args.uncached,
        version: args.version,
        dependency_uri_base: args.dependency_uri_base,
        cargo_metadata: args.cargo_metadata,
        source_date_epoch: args.source_date_epoch,
    };
    let mut out = Output::new(std::io::stderr().lock());
    match package(&options, &mut out) {
        Ok(packaged) => {
            println!("{}", packaged.zip_path.display());
            ExitCode::SUCCESS
        }
        Err(err) => {
            out.error(err);
            ExitCode::FAILURE
        }
    }
}
