//! `bin/finalize BUILD_DIR CACHE_DIR DEPS_DIR DEPS_IDX PROFILE_DIR`: lets this buildpack be
//! the final one, for apps that bring their own binary and start command (`cf push -c`).
//!
//! The launcher does not put `deps/*/bin` on `PATH` or source `deps/*/profile.d`; a final
//! libbuildpack buildpack does, in `SetLaunchEnvironment` (contract §1.7). Without that, the
//! other supply buildpacks' tools and our profile.d exports would be invisible at run time,
//! so this does the same.

use crate::cli::Options;
use crate::context::FinalizeArgs;
use crate::errors::{self, Error, FileError, Warning};
use crate::formats::{MULTI_SUPPLY_SCRIPT, multi_supply_script};
use crate::fsutil::{copy_atomic, write_atomic};
use crate::output::Output;
use std::fs;
use std::io::Write;
use std::path::Path;
use tls_sidecar_config::Env;

/// The variables libbuildpack's `launchEnvVarDirs` sets, with the deps subdirectory for each.
const LAUNCH_VARS: [(&str, &str); 3] = [
    ("PATH", "bin"),
    ("LD_LIBRARY_PATH", "lib"),
    ("LIBRARY_PATH", "lib"),
];

pub fn run<W: Write>(
    args: &FinalizeArgs,
    options: &Options,
    env: &Env,
    out: &mut Output<W>,
) -> Result<(), Error> {
    // As the final buildpack, supply ran just before in the same staging and printed the
    // header (its config.yml in deps/<idx> says so): once is enough.
    if !args
        .deps_dir
        .join(&args.deps_idx)
        .join("config.yml")
        .is_file()
    {
        out.step(format_args!(
            "TLS Sidecar Buildpack version {}",
            crate::buildpack_version(options.buildpack_dir.as_deref())
        ));
    }
    out.step("Setting up the launch environment");
    let app = errors::app_name(env);
    let deps = deps_dirs(&args.deps_dir)?;

    let vars: Vec<(&str, Vec<String>)> = LAUNCH_VARS
        .iter()
        .map(|(var, sub)| {
            // Highest index first, as libbuildpack's existingDepsDirs prepends while it walks.
            let dirs = deps
                .iter()
                .rev()
                .filter(|d| args.deps_dir.join(d).join(sub).is_dir())
                .map(|d| format!("$DEPS_DIR/{d}/{sub}"))
                .collect();
            (*var, dirs)
        })
        .collect();
    write_atomic(
        &args.profile_dir.join(MULTI_SUPPLY_SCRIPT),
        multi_supply_script(&vars).as_bytes(),
        0o755,
    )?;
    for (var, dirs) in vars.iter().filter(|(_, d)| !d.is_empty()) {
        out.info(format_args!("{var} gets {}", dirs.join(":")));
    }

    for d in &deps {
        let profile_d = args.deps_dir.join(d).join("profile.d");
        for name in regular_files(&profile_d)? {
            let target = format!("{d}_{name}");
            copy_atomic(&profile_d.join(&name), &args.profile_dir.join(&target))?;
            out.info(format_args!(
                "Copied deps/{d}/profile.d/{name} to profile.d/{target}"
            ));
        }
    }

    if !args.build_dir.join("Procfile").is_file() {
        errors::warn(&Warning::NoProcfile, &app, out);
    }
    Ok(())
}

/// The directories in `DEPS_DIR`, in index order (numeric, so `10` follows `9` even unpadded).
fn deps_dirs(deps_dir: &Path) -> Result<Vec<String>, Error> {
    let read_err = FileError::reading(deps_dir);
    let mut names = Vec::new();
    for entry in fs::read_dir(deps_dir).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        if entry.file_type().map_err(read_err)?.is_dir()
            && let Ok(name) = entry.file_name().into_string()
        {
            names.push(name);
        }
    }
    names.sort_by_key(|n| (n.parse::<u64>().unwrap_or(u64::MAX), n.clone()));
    Ok(names)
}

/// Names of the regular files in `dir`, sorted; none if `dir` does not exist.
fn regular_files(dir: &Path) -> Result<Vec<String>, Error> {
    let read_err = FileError::reading(dir);
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(read_err(source).into()),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(read_err)?;
        if entry.file_type().map_err(read_err)?.is_file()
            && let Ok(name) = entry.file_name().into_string()
        {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}
