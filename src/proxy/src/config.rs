//! The sidecar's run-time configuration: a [`StagedConfig`] resolved against this container
//! (`$PORT`, the instance credential paths). Everything the server needs is in
//! [`SidecarConfig`], so tests build one directly and never touch the process environment.

use crate::errors::{StartError, app_name};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tls_sidecar_config::{
    CertificateSource, ClientAuth, DEFAULT_APP_PORT, Env, HostPort, Log, Mode, StagedConfig,
};
use tracing::{info, warn};

/// Where Diego puts the instance identity when `CF_INSTANCE_CERT`/`CF_INSTANCE_KEY` are unset.
pub const DEFAULT_CERT_PATH: &str = "/etc/cf-instance-credentials/instance.crt";
/// See [`DEFAULT_CERT_PATH`].
pub const DEFAULT_KEY_PATH: &str = "/etc/cf-instance-credentials/instance.key";

/// Everything the running sidecar needs.
#[derive(Debug, Clone)]
pub struct SidecarConfig {
    /// One TLS listener per entry, in config order (index = `listeners[i]`).
    pub listeners: Vec<ListenerConfig>,
    pub certificate: CertificatePaths,
    /// Address of `/live` and `/ready`; `None` when `admin.enabled` is false.
    pub admin: Option<SocketAddr>,
    pub limits: Limits,
    pub reload: ReloadTiming,
    pub log: Log,
}

/// One TLS listener.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// `0.0.0.0:<port>` in CF; tests use `127.0.0.1:0`.
    pub bind: SocketAddr,
    /// Where plaintext goes (a name is resolved per connection).
    pub upstream: HostPort,
}

/// The key/cert pair to serve, read together on every (re)load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificatePaths {
    /// PEM chain: leaf first, then the intermediate(s).
    pub cert: PathBuf,
    /// PEM private key: PKCS#1 (`RSA PRIVATE KEY`, Diego's), PKCS#8 or SEC1.
    pub key: PathBuf,
}

/// `limits` from the config, as durations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    pub drain_timeout: Duration,
    pub connect_timeout: Duration,
}

impl From<&tls_sidecar_config::Limits> for Limits {
    fn from(l: &tls_sidecar_config::Limits) -> Self {
        Limits {
            max_connections: usize::try_from(l.max_connections).unwrap_or(usize::MAX),
            handshake_timeout: l.handshake_timeout.duration(),
            idle_timeout: l.idle_timeout.duration(),
            drain_timeout: l.drain_timeout.duration(),
            connect_timeout: l.connect_timeout.duration(),
        }
    }
}

/// How certificate rotation is noticed. Not user configuration: tests shorten it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReloadTiming {
    /// Quiet time after a directory event before reading: Diego writes two `.tmp` files and
    /// renames them one after the other, so one rotation is a burst of events.
    pub debounce: Duration,
    /// Re-read even without events, because inotify is not guaranteed (the directory may not
    /// exist yet, or events can be lost); ghostunnel dropped inotify for this reason.
    pub recheck: Duration,
    /// First retry after a failed load (e.g. the new key beside the old cert); doubles up to
    /// `retry_max`.
    pub retry_min: Duration,
    pub retry_max: Duration,
}

impl Default for ReloadTiming {
    fn default() -> Self {
        ReloadTiming {
            debounce: Duration::from_millis(150),
            recheck: Duration::from_secs(30),
            retry_min: Duration::from_millis(250),
            retry_max: Duration::from_secs(5),
        }
    }
}

/// A resolved configuration plus what start-up should report about it.
#[derive(Debug)]
pub struct Loaded {
    pub config: SidecarConfig,
    /// Where the configuration came from: a file path or "built-in defaults".
    pub source: String,
    /// `TLS_SIDECAR_*` variables that overrode the file.
    pub overrides: Vec<&'static str>,
    /// Things that work but are probably not what the user meant.
    pub warnings: Vec<String>,
}

impl Loaded {
    /// Logs where the configuration came from and every warning.
    pub fn log_summary(&self) {
        info!(
            version = env!("CARGO_PKG_VERSION"),
            config = %self.source,
            overrides = (!self.overrides.is_empty()).then(|| self.overrides.join(",")).as_deref(),
            "tls-sidecar starting"
        );
        for warning in &self.warnings {
            warn!("{warning}");
        }
    }
}

/// Reads and resolves the configuration: `cli_path`, else `$TLS_SIDECAR_CONFIG`, else
/// `<dir of exe>/../tls-sidecar.yml` if it exists, else built-in defaults; then the
/// `TLS_SIDECAR_*` overrides from `env`.
pub fn load(cli_path: Option<&Path>, env: &Env, exe: Option<&Path>) -> Result<Loaded, StartError> {
    let app_port = app_port(env)?;
    let (text, source) = match config_file(cli_path, env, exe) {
        Some((path, named_by)) => match std::fs::read_to_string(&path) {
            Ok(text) => (text, path.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match named_by {
                Some(named_by) => return Err(StartError::ConfigFileMissing { path, named_by }),
                // Deleted between the existence check and the read: same as never there.
                None => (String::new(), "built-in defaults".to_owned()),
            },
            Err(cause) => return Err(StartError::ConfigFileUnreadable { path, cause }),
        },
        None => (String::new(), "built-in defaults".to_owned()),
    };
    let (staged, mut warnings, overrides) =
        StagedConfig::load_with_env(&text, &source, env, app_port).map_err(|error| {
            StartError::Config {
                error,
                app: app_name(env),
            }
        })?;
    let (config, more) = SidecarConfig::resolve(&staged, env)?;
    warnings.extend(more);
    Ok(Loaded {
        config,
        source,
        overrides,
        warnings,
    })
}

/// The file to read and, when the user named it explicitly, by what (so a missing file is an
/// error only then).
fn config_file(
    cli_path: Option<&Path>,
    env: &Env,
    exe: Option<&Path>,
) -> Option<(PathBuf, Option<&'static str>)> {
    if let Some(path) = cli_path {
        return Some((path.to_owned(), Some("--config")));
    }
    if let Some(path) = env
        .get("TLS_SIDECAR_CONFIG")
        .filter(|p| !p.trim().is_empty())
    {
        return Some((PathBuf::from(path), Some("TLS_SIDECAR_CONFIG")));
    }
    // Supply installs the binary at deps/<idx>/bin/ and the staged file at deps/<idx>/.
    let beside = exe?
        .parent()?
        .parent()?
        .join(tls_sidecar_config::CONFIG_FILE_NAME);
    beside.is_file().then_some((beside, None))
}

/// `$PORT`, CF's port for the app process, or 8080 when unset.
pub fn app_port(env: &Env) -> Result<u16, StartError> {
    match env.get("PORT").map(|p| p.trim()).filter(|p| !p.is_empty()) {
        None => Ok(DEFAULT_APP_PORT),
        Some(value) => match value.parse::<u16>() {
            Ok(port) if port > 0 => Ok(port),
            _ => Err(StartError::AppPort {
                value: value.to_owned(),
                app: app_name(env),
            }),
        },
    }
}

impl SidecarConfig {
    /// Resolves `staged` for this container. Returns warnings beside the config.
    pub fn resolve(staged: &StagedConfig, env: &Env) -> Result<(Self, Vec<String>), StartError> {
        refuse_unsupported(staged, env)?;
        let app_port = app_port(env)?;
        let mut warnings = Vec::new();

        let listeners = staged
            .listeners
            .iter()
            .map(|l| ListenerConfig {
                bind: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), l.port),
                upstream: l.upstream.clone().unwrap_or_else(|| HostPort {
                    host: "127.0.0.1".to_owned(),
                    port: app_port,
                }),
            })
            .collect();

        let mut path_from = |var: &str, default: &str| match env.get(var).map(|v| v.trim()) {
            Some(v) if !v.is_empty() => PathBuf::from(v),
            _ => {
                warnings.push(format!(
                    "{var} is not set (not running on Diego?); using {default}"
                ));
                PathBuf::from(default)
            }
        };
        let certificate = CertificatePaths {
            cert: path_from("CF_INSTANCE_CERT", DEFAULT_CERT_PATH),
            key: path_from("CF_INSTANCE_KEY", DEFAULT_KEY_PATH),
        };

        let admin = staged
            .admin
            .enabled
            .then(|| admin_addr(&staged.admin.listen));

        let config = SidecarConfig {
            listeners,
            certificate,
            admin,
            limits: Limits::from(&staged.limits),
            reload: ReloadTiming::default(),
            log: staged.log.clone(),
        };
        Ok((config, warnings))
    }
}

/// The staged config only allows loopback admin addresses: an IP or `localhost`.
fn admin_addr(listen: &HostPort) -> SocketAddr {
    let ip = listen
        .host
        .parse::<IpAddr>()
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    SocketAddr::new(ip, listen.port)
}

/// Parts of the configuration contract that a later version implements. Serving without them
/// would silently weaken what the app asked for, so the sidecar refuses to start instead.
fn refuse_unsupported(staged: &StagedConfig, env: &Env) -> Result<(), StartError> {
    let app = || app_name(env);
    if staged.certificate.source != CertificateSource::Instance {
        return Err(StartError::UnsupportedCertificateSource {
            configured: staged.certificate.source,
            app: app(),
        });
    }
    let unsupported = |field: String, what: String| StartError::Unsupported {
        field,
        what,
        app: app(),
    };
    for (i, l) in staged.listeners.iter().enumerate() {
        if l.client_auth != ClientAuth::None {
            let what = if l.allow.is_empty() {
                format!("\"{}\" (client certificates)", l.client_auth)
            } else {
                "access rules (allow) with client certificates".to_owned()
            };
            let field = if l.allow.is_empty() {
                "client_auth"
            } else {
                "allow"
            };
            return Err(unsupported(format!("listeners[{i}].{field}"), what));
        }
        if l.mode == Mode::Http {
            return Err(unsupported(
                format!("listeners[{i}].mode"),
                "\"http\"".to_owned(),
            ));
        }
        if l.proxy_protocol {
            return Err(unsupported(
                format!("listeners[{i}].proxy_protocol"),
                "the PROXY protocol".to_owned(),
            ));
        }
    }
    if !staged.egress.is_empty() {
        return Err(unsupported(
            "egress".to_owned(),
            "egress (mTLS to other apps)".to_owned(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn resolve(yaml: &str, env: &Env) -> Result<(SidecarConfig, Vec<String>), StartError> {
        let port = app_port(env)?;
        let (staged, _, _) = StagedConfig::load_with_env(yaml, "tls-sidecar.yml", env, port)
            .map_err(|error| StartError::Config {
                error,
                app: "a".into(),
            })?;
        SidecarConfig::resolve(&staged, env)
    }

    #[test]
    fn defaults_forward_8443_to_the_app_port_with_the_instance_credentials() {
        let env = env(&[
            ("PORT", "3000"),
            ("CF_INSTANCE_CERT", "/creds/instance.crt"),
            ("CF_INSTANCE_KEY", "/creds/instance.key"),
        ]);
        let (c, warnings) = resolve("", &env).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(c.listeners.len(), 1);
        assert_eq!(c.listeners[0].bind.to_string(), "0.0.0.0:8443");
        assert_eq!(c.listeners[0].upstream.to_string(), "127.0.0.1:3000");
        assert_eq!(c.certificate.cert, Path::new("/creds/instance.crt"));
        assert_eq!(c.certificate.key, Path::new("/creds/instance.key"));
        assert_eq!(c.admin.unwrap().to_string(), "127.0.0.1:8444");
        assert_eq!(c.limits.drain_timeout, Duration::from_secs(8));
    }

    #[test]
    fn missing_credential_variables_fall_back_to_diegos_paths_with_a_warning() {
        let (c, warnings) = resolve("", &Env::new()).unwrap();
        assert_eq!(c.certificate.cert, Path::new(DEFAULT_CERT_PATH));
        assert_eq!(c.listeners[0].upstream.to_string(), "127.0.0.1:8080");
        assert!(
            warnings.iter().any(|w| w.contains("CF_INSTANCE_KEY")),
            "{warnings:?}"
        );
    }

    #[test]
    fn admin_can_be_moved_or_disabled() {
        let (c, _) = resolve("admin:\n  listen: localhost:9444\n", &Env::new()).unwrap();
        assert_eq!(c.admin.unwrap().to_string(), "127.0.0.1:9444");
        let (c, _) = resolve("admin:\n  enabled: false\n", &Env::new()).unwrap();
        assert!(c.admin.is_none());
    }

    #[test]
    fn a_port_that_is_not_a_number_is_a_usage_error() {
        let e = resolve("", &env(&[("PORT", "http")])).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("PORT \"http\" is not a port number"),
            "{e}"
        );
        assert_eq!(e.exit_code(), crate::EX_USAGE);
    }

    #[test]
    fn certificate_sources_other_than_instance_are_refused() {
        let yaml = "certificate:\n  source: files\n  cert_file: c.pem\n  key_file: k.pem\n";
        let e = resolve(yaml, &Env::new()).unwrap_err();
        assert!(
            matches!(e, StartError::UnsupportedCertificateSource { .. }),
            "{e:?}"
        );
        assert!(e.to_string().contains("source: instance"), "{e}");
        assert_eq!(e.exit_code(), crate::EX_USAGE);
    }

    #[test]
    fn features_of_a_later_version_are_refused_naming_the_field() {
        for (yaml, field) in [
            (
                "listeners:\n  - client_auth: optional\n",
                "listeners[0].client_auth",
            ),
            ("listeners:\n  - allow: [cf:any]\n", "listeners[0].allow"),
            (
                "listeners:\n  - port: 9443\n  - port: 9444\n    mode: http\n",
                "listeners[1].mode",
            ),
            (
                "listeners:\n  - proxy_protocol: true\n",
                "listeners[0].proxy_protocol",
            ),
        ] {
            let e = resolve(yaml, &Env::new()).unwrap_err();
            assert!(
                e.to_string().starts_with(&format!("{field}: ")),
                "{yaml}: {e}"
            );
            assert_eq!(e.exit_code(), crate::EX_USAGE);
        }
    }

    #[test]
    fn an_explicit_config_file_that_is_missing_is_an_error_but_a_missing_staged_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.yml");
        let e = load(Some(&missing), &Env::new(), None).unwrap_err();
        assert!(
            matches!(
                e,
                StartError::ConfigFileMissing {
                    named_by: "--config",
                    ..
                }
            ),
            "{e}"
        );
        let e = load(
            None,
            &env(&[("TLS_SIDECAR_CONFIG", missing.to_str().unwrap())]),
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("named by TLS_SIDECAR_CONFIG"), "{e}");

        let exe = dir.path().join("bin/tls-sidecar");
        let loaded = load(None, &Env::new(), Some(&exe)).unwrap();
        assert_eq!(loaded.source, "built-in defaults");
    }

    #[test]
    fn the_staged_file_beside_the_binary_is_found_and_env_overrides_apply() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("tls-sidecar.yml"),
            "listeners:\n  - port: 9443\n",
        )
        .unwrap();
        let exe = dir.path().join("bin/tls-sidecar");
        let loaded = load(None, &Env::new(), Some(&exe)).unwrap();
        assert_eq!(loaded.config.listeners[0].bind.port(), 9443);
        assert!(
            loaded.source.ends_with("tls-sidecar.yml"),
            "{}",
            loaded.source
        );

        let loaded = load(None, &env(&[("TLS_SIDECAR_PORT", "7443")]), Some(&exe)).unwrap();
        assert_eq!(loaded.config.listeners[0].bind.port(), 7443);
        assert_eq!(loaded.overrides, ["TLS_SIDECAR_PORT"]);
    }
}
