//! `bin/supply BUILD_DIR CACHE_DIR DEPS_DIR DEPS_IDX`: install the sidecar into `deps/<idx>/`
//! and declare it in `deps/<idx>/launch.yml` (docs/DESIGN.md "What supply writes").
//!
//! Everything that can be wrong with the inputs (the buildpack's manifest, the stack, the
//! app's config) is checked before the first byte is written, so a failed staging leaves
//! `deps/<idx>/` as the builder created it.

use crate::cli::Options;
use crate::context::SupplyArgs;
use crate::errors::{self, Error, FileError, InstallError, Warning};
use crate::fetch::{self, Places, Policy};
use crate::formats::{
    self, ConfigYml, LaunchYml, PROFILE_SCRIPT, ROUTE_PROFILE_SCRIPT, SIDECAR_BINARY, SIDECAR_NAME,
};
use crate::fsutil::write_atomic;
use crate::manifest::{DEPENDENCY_NAME, Dependency, Manifest, StackCheck};
use crate::output::Output;
use std::fs::{self, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use tls_sidecar_config::{
    AppConfig, CONFIG_FILE_NAME, ClientAuth, DEFAULT_APP_PORT, EgressProxy, Env, StagedConfig,
    VcapApplication,
};

/// The app's configuration after validation, with where it came from (for the narrative).
struct AppSettings {
    staged: StagedConfig,
    warnings: Vec<String>,
    from_file: bool,
    env_used: Vec<&'static str>,
}

pub fn run<W: Write>(
    args: &SupplyArgs,
    options: &Options,
    env: &Env,
    out: &mut Output<W>,
) -> Result<(), Error> {
    let buildpack_dir = options
        .buildpack_dir
        .as_deref()
        .ok_or(Error::NoBuildpackDir)?;
    out.step(format_args!(
        "TLS Sidecar Buildpack version {}",
        crate::buildpack_version(Some(buildpack_dir))
    ));
    let (vcap, vcap_problem) = VcapApplication::from_env(env);
    let app = errors::app_name(env);

    // 1. Validate everything. Nothing is written in this part.
    let manifest = Manifest::load(buildpack_dir).map_err(Error::Manifest)?;
    let cf_stack = env
        .get("CF_STACK")
        .map(String::as_str)
        .filter(|s| !s.is_empty());
    let stack = manifest.check_stack(cf_stack)?;
    let dep = manifest
        .dependency(DEPENDENCY_NAME, cf_stack)
        .map_err(Error::Manifest)?;
    let settings = app_settings(&args.build_dir, env)?;
    let memory_share = check_memory(&settings, env)?;
    out.debug(format_args!(
        "buildpack dir {}, stack {}",
        buildpack_dir.display(),
        cf_stack.unwrap_or("(unset)")
    ));
    if let StackCheck::Unchecked { supported } = stack {
        errors::warn(&Warning::StackUnset { supported }, &app, out);
    }
    if let Some(problem) = vcap_problem {
        errors::warn(&Warning::VcapApplication(problem), &app, out);
    }
    if let Some(share) = memory_share {
        errors::warn(&share, &app, out);
    }

    // 2. Install the dependency.
    let dep_dir = args.dep_dir();
    fs::create_dir_all(&dep_dir).map_err(FileError::writing(&dep_dir))?;
    out.step(format_args!("Installing {} {}", dep.name, dep.version));
    install(&dep, buildpack_dir, args, options, env, out, &app)?;

    // 3. Describe the sidecar to the platform and to the sidecar itself.
    let staged = &settings.staged;
    let config_path = dep_dir.join(CONFIG_FILE_NAME);
    write_atomic(
        &config_path,
        formats::staged_config_file(staged).as_bytes(),
        0o644,
    )?;
    let launch_path = dep_dir.join("launch.yml");
    if staged.sidecar.declared_by_buildpack() {
        let launch = LaunchYml::sidecar(&args.deps_idx, staged)
            .to_yaml()
            .map_err(|e| FileError::writing(&launch_path)(io::Error::other(e)))?;
        write_atomic(&launch_path, launch.as_bytes(), 0o644)?;
    } else {
        // `process_types: []`: the app manifest declares the sidecar; a launch.yml left by an
        // earlier run on these dirs would start a second one on the same port.
        match fs::remove_file(&launch_path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(FileError::writing(&launch_path)(e).into());
            }
            _ => {}
        }
    }
    let config_yml_path = dep_dir.join("config.yml");
    let config_yml = ConfigYml::new(&crate::buildpack_version(Some(buildpack_dir)))
        .to_yaml()
        .map_err(|e| FileError::writing(&config_yml_path)(io::Error::other(e)))?;
    write_atomic(&config_yml_path, config_yml.as_bytes(), 0o644)?;
    let profile = dep_dir.join("profile.d").join(PROFILE_SCRIPT);
    write_atomic(&profile, formats::profile_script(staged).as_bytes(), 0o755)?;
    route_script(&args.build_dir, staged)?;

    // 4. Tell the user what they got.
    summary(args, &settings, &vcap, &app, out);
    Ok(())
}

/// Writes the app's `.profile.d/` route script while the sidecar fronts the route port, and
/// removes one an earlier staging on these dirs left otherwise (it would move the app off
/// `$PORT` with no sidecar there to serve it).
fn route_script(build_dir: &Path, staged: &StagedConfig) -> Result<(), Error> {
    let dir = build_dir.join(".profile.d");
    let path = dir.join(ROUTE_PROFILE_SCRIPT);
    if staged.route.fronted {
        fs::create_dir_all(&dir).map_err(FileError::writing(&dir))?;
        return write_atomic(
            &path,
            formats::route_profile_script(staged).as_bytes(),
            0o755,
        );
    }
    match fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(FileError::writing(&path)(e).into()),
        _ => Ok(()),
    }
}

/// `tls-sidecar.yml` from the app root (optional) plus the `TLS_SIDECAR_*` overrides.
/// Cloud Controller's rule for sidecars (`SidecarMemoryLessThanProcessMemoryPolicy`): their
/// memory must be strictly less than the process's, checked only when the droplet is assigned,
/// after staging, where it fails badly. Staging sees `MEMORY_LIMIT`, the staging memory: the
/// app's own, unless that is below Cloud Controller's `minimum_staging_memory_mb` (1024 by
/// default), which then stands in. A sidecar the app manifest declares (`process_types: []`)
/// has the manifest's memory, not ours. A warning when the sidecar takes over a quarter.
fn check_memory(settings: &AppSettings, env: &Env) -> Result<Option<Warning>, Error> {
    let sidecar = &settings.staged.sidecar;
    let limit = env
        .get("MEMORY_LIMIT")
        .and_then(|v| v.parse::<tls_sidecar_config::MemoryMb>().ok());
    let (Some(limit), true) = (limit, sidecar.declared_by_buildpack()) else {
        return Ok(None);
    };
    let (sidecar_mb, limit_mb) = (sidecar.memory.0, limit.0);
    if sidecar_mb >= limit_mb {
        return Err(Error::SidecarMemory {
            sidecar_mb,
            limit_mb,
            from_env: settings.env_used.contains(&"TLS_SIDECAR_MEMORY"),
        });
    }
    Ok(
        (u64::from(sidecar_mb) * 4 > u64::from(limit_mb)).then_some(Warning::SidecarMemoryShare {
            sidecar_mb,
            limit_mb,
        }),
    )
}

fn app_settings(build_dir: &Path, env: &Env) -> Result<AppSettings, Error> {
    let file = AppConfig::load(&build_dir.join(CONFIG_FILE_NAME), CONFIG_FILE_NAME)
        .map_err(Error::Config)?;
    let from_file = file.is_some();
    let mut app = file.unwrap_or_default();
    let env_used = app.apply_env(env).map_err(Error::Config)?;
    // At staging there is no $PORT: CF's default stands in, so a listener on 8080 is caught now.
    let (staged, warnings) =
        StagedConfig::from_app(&app, CONFIG_FILE_NAME, &env_used, DEFAULT_APP_PORT)
            .map_err(Error::Config)?;
    Ok(AppSettings {
        staged,
        warnings,
        from_file,
        env_used,
    })
}

fn install<W: Write>(
    dep: &Dependency,
    buildpack_dir: &Path,
    args: &SupplyArgs,
    options: &Options,
    env: &Env,
    out: &mut Output<W>,
    app: &str,
) -> Result<(), Error> {
    let failed = |source: InstallError| Error::Install {
        name: dep.name.clone(),
        version: dep.version.clone(),
        source,
    };
    let dep_dir = args.dep_dir();
    let places = Places {
        buildpack_dir,
        cache_dir: &args.cache_dir,
        work_dir: &dep_dir,
    };
    let policy = Policy {
        retry_delays: options.retry_delays.clone(),
        ..Policy::default()
    };
    let (tarball, warning) = fetch::fetch(dep, &places, &policy, env, out).map_err(failed)?;
    if let Some(w) = warning {
        errors::warn(&w, app, out);
    }
    let installed =
        crate::extract::install_tgz_requiring(tarball.path(), &dep_dir, Path::new(SIDECAR_BINARY))
            .map_err(|e| failed(e.into()))?;
    for f in &installed {
        out.debug(format_args!("installed {}", f.display()));
    }
    let binary = dep_dir.join(SIDECAR_BINARY);
    if !fs::symlink_metadata(&binary).is_ok_and(|m| m.is_file()) {
        return Err(failed(InstallError::NoBinary {
            path: SIDECAR_BINARY.into(),
        }));
    }
    // The sidecar must be executable whatever mode the tarball recorded.
    fs::set_permissions(&binary, Permissions::from_mode(0o755))
        .map_err(|source| failed(FileError::writing(&binary)(source).into()))?;
    // Installed: what the cache holds for other versions is of no more use.
    fetch::prune_cache(&args.cache_dir, tarball.path(), out);
    Ok(())
}

fn summary<W: Write>(
    args: &SupplyArgs,
    s: &AppSettings,
    vcap: &VcapApplication,
    app: &str,
    out: &mut Output<W>,
) {
    let staged = &s.staged;
    out.step(format_args!("Configuring the {SIDECAR_NAME} sidecar"));
    if s.from_file {
        out.info(format_args!("Using {CONFIG_FILE_NAME} from the app"));
    } else {
        out.info(format_args!(
            "No {CONFIG_FILE_NAME} in the app: using the defaults"
        ));
    }
    if !s.env_used.is_empty() {
        out.info(format_args!(
            "Overridden by the environment: {}",
            s.env_used.join(", ")
        ));
    }
    for w in &s.warnings {
        errors::warn(&Warning::Config(w.clone()), app, out);
    }
    for l in &staged.listeners {
        let upstream = l
            .upstream
            .as_ref()
            .map_or_else(|| "127.0.0.1:$PORT".to_owned(), ToString::to_string);
        let mut line = format!(
            "Listener {}: TLS → {upstream}, mode {}, client certificates: {}",
            l.port, l.mode, l.client_auth
        );
        if !l.allow.is_empty() {
            let rules: Vec<String> = l.allow.iter().map(ToString::to_string).collect();
            line.push_str(&format!(", allow: {}", rules.join(", ")));
        } else if l.client_auth != ClientAuth::None {
            line.push_str(", allow: any verified caller");
        }
        out.info(line);
        for (j, rule) in l.rules.iter().enumerate() {
            out.info(format_args!("  rules[{j}]: {}", rule.describe()));
        }
    }
    for e in &staged.egress {
        let expect: Vec<String> = e.expect.iter().map(ToString::to_string).collect();
        out.info(format_args!(
            "Egress {}: {} → TLS to {}, expecting {} (the app finds it in ${})",
            e.name,
            e.listen,
            e.target,
            expect.join(", "),
            e.env_var()
        ));
    }
    if let Some(proxy) = &staged.egress_proxy {
        out.info(format_args!(
            "Egress proxy on {} (the app finds it in ${} as {})",
            proxy.listen,
            EgressProxy::ENV_VAR,
            proxy.url()
        ));
        for (i, t) in proxy.targets.iter().enumerate() {
            let hosts: Vec<String> = t.hosts.iter().map(ToString::to_string).collect();
            let ports: Vec<String> = t.ports.iter().map(ToString::to_string).collect();
            let expect: Vec<String> = t.expect.iter().map(ToString::to_string).collect();
            out.info(format_args!(
                "  targets[{i}]: {} on {}, expecting {}",
                hosts.join(", "),
                if ports.is_empty() {
                    "any port".to_owned()
                } else {
                    format!("port {}", ports.join(", "))
                },
                expect.join(", ")
            ));
        }
    }
    if staged.sidecar.declared_by_buildpack() {
        out.info(format_args!(
            "Sidecar memory: {} MB, runs beside: {}",
            staged.sidecar.memory,
            staged.sidecar.process_types.join(", ")
        ));
    } else {
        out.info("Not declaring the sidecar (sidecar.process_types is []): declare it in the app manifest:");
        out.info(format_args!(
            "  sidecars: [{{name: tls, process_types: [web], command: \"{}\", memory: {}M}}]",
            formats::sidecar_command(&args.deps_idx),
            staged.sidecar.memory
        ));
    }
    if staged.route.fronted {
        out.info(staged.route.describe());
    }
    if let Some(first) = staged.listeners.first() {
        let name = vcap.app_name();
        out.info(format_args!(
            "Allow callers with: cf add-network-policy SOURCE_APP {name} --port {} --protocol tcp",
            first.port
        ));
    }
    if args.deps_idx.len() > 1 && args.deps_idx.starts_with('0') {
        let w = Warning::PaddedDepsIdx {
            idx: args.deps_idx.clone(),
            command: formats::sidecar_command(&args.deps_idx),
            memory: staged.sidecar.memory.0,
            process_types: staged.sidecar.process_types.clone(),
        };
        errors::warn(&w, app, out);
    }
}
