//! The sidecar's run-time configuration: a [`StagedConfig`] resolved against this container
//! (`$PORT`, `$HOME`, the instance credential paths, `CF_SYSTEM_CERT_PATH`, `VCAP_APPLICATION`,
//! `VCAP_SERVICES`). Everything the server needs is in [`SidecarConfig`], so tests build one
//! directly and never touch the process environment.

pub use crate::cert::{CertificateConfig, CertificatePaths, MintConfig};
use crate::errors::{StartError, app_name};
use crate::identity::{AccessPolicy, Expectation, RequestPolicy};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tls_sidecar_config::{
    CertificateSource, ClientAuth, DEFAULT_APP_PORT, Env, HostPort, Log, Mode, ProxyTarget,
    ROUTE_PORT_ENV, RequestRule, Selector, StagedConfig, VcapApplication, Xfcc,
};
use tracing::{info, warn};

/// Where Diego puts the instance identity when `CF_INSTANCE_CERT`/`CF_INSTANCE_KEY` are unset.
pub const DEFAULT_CERT_PATH: &str = "/etc/cf-instance-credentials/instance.crt";
/// See [`DEFAULT_CERT_PATH`].
pub const DEFAULT_KEY_PATH: &str = "/etc/cf-instance-credentials/instance.key";
/// How the warning about a missing `CF_SYSTEM_CERT_PATH` starts (`check` reports it as a
/// problem instead).
pub(crate) const SYSTEM_CERT_PATH_UNSET: &str = "CF_SYSTEM_CERT_PATH is not set";
/// The app directory when `$HOME` is unset: where CF puts the app's files.
pub const DEFAULT_APP_DIR: &str = "/home/vcap/app";

/// Everything the running sidecar needs.
#[derive(Debug, Clone)]
pub struct SidecarConfig {
    /// One TLS listener per entry, in config order (index = `listeners[i]`).
    pub listeners: Vec<ListenerConfig>,
    /// One plaintext loopback listener per `egress` entry, in config order: mutual TLS out to
    /// another app with this instance's certificate.
    pub egress: Vec<EgressConfig>,
    /// The HTTP proxy on loopback for every target it lists (`egress_proxy`).
    pub egress_proxy: Option<EgressProxyConfig>,
    /// Where the serving certificate comes from.
    pub certificate: CertificateConfig,
    /// What client certificates are verified against.
    pub trust: TrustConfig,
    /// Where the platform's identity CA is found: which peers can have a CF identity (and so
    /// match `cf:` rules), and which certificate egress presents.
    pub identity_ca: IdentityAnchor,
    /// This app's `VCAP_APPLICATION`: `cf:same-space`/`cf:same-org` resolve against it.
    pub app: VcapApplication,
    /// Address of `/live`, `/ready` and `/metrics`; `None` when `admin.enabled` is false.
    pub admin: Option<SocketAddr>,
    pub limits: Limits,
    pub reload: ReloadTiming,
    pub log: Log,
    /// The route port, served in front of the app while the buildpack's profile script has
    /// moved the app off it (`TLS_SIDECAR_ROUTE_PORT` set); `None`: the app serves it itself.
    pub route: Option<RouteConfig>,
}

/// The plaintext HTTP listener on the route port (see [`crate::route`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    /// `0.0.0.0:$TLS_SIDECAR_ROUTE_PORT` in CF; tests use `127.0.0.1:0`.
    pub bind: SocketAddr,
    /// The app on its moved port: `127.0.0.1:$PORT`.
    pub upstream: HostPort,
    /// `route.trust_gorouter_xfcc`: the one peer address whose canonical
    /// X-Forwarded-Client-Cert is kept: `CF_INSTANCE_INTERNAL_IP`, where Diego's per-container
    /// Envoy connects from when it hands on Gorouter's traffic. `None`: strip it from everyone.
    pub trusted_xfcc_peer: Option<IpAddr>,
}

/// How every run-time warning about an unfronted route port starts (`check` reports them as
/// problems).
pub(crate) const ROUTE_NOT_FRONTED: &str = "the route port is not fronted";

/// One TLS listener.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// `0.0.0.0:<port>` in CF; tests use `127.0.0.1:0`.
    pub bind: SocketAddr,
    /// Where plaintext goes (a name is resolved per connection).
    pub upstream: HostPort,
    pub mode: Mode,
    pub client_auth: ClientAuth,
    /// Who may call (OR'd); empty means anyone who completes the handshake.
    pub allow: Vec<Selector>,
    /// http mode: how the caller's certificate reaches the app.
    pub xfcc: Xfcc,
    /// tcp mode: send a PROXY protocol v2 header to the app first.
    pub proxy_protocol: bool,
    /// http mode: request rules, the first match decides; empty means none.
    pub rules: Vec<RequestRule>,
}

impl ListenerConfig {
    /// A tcp listener without client authentication (what the defaults give).
    pub fn tcp(bind: SocketAddr, upstream: HostPort) -> Self {
        ListenerConfig {
            bind,
            upstream,
            mode: Mode::Tcp,
            client_auth: ClientAuth::None,
            allow: Vec::new(),
            xfcc: Xfcc::Envoy,
            proxy_protocol: false,
            rules: Vec::new(),
        }
    }

    /// Whether this listener asks for client certificates (and so needs trust anchors).
    pub fn verifies_clients(&self) -> bool {
        self.client_auth != ClientAuth::None
    }
}

/// One egress listener: the app connects in plaintext to `bind`, the sidecar connects to
/// `target` over TLS with this instance's certificate and checks the server's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressConfig {
    /// `egress[i].name`: log field, metrics label, and `TLS_SIDECAR_EGRESS_<NAME>`.
    pub name: String,
    /// Where the app connects (loopback unless `unsafe_listen`); tests use `127.0.0.1:0`.
    pub bind: SocketAddr,
    /// Where TLS goes; the host is also the SNI (and the name `dns:` selectors are checked
    /// against is written there).
    pub target: HostPort,
    /// Which server identities are accepted (OR'd).
    pub expect: Vec<Selector>,
    /// `None`: look `target` up for every connection (an internal route resolves to every
    /// instance) and try each address in turn. `Some`: these addresses instead (tests).
    pub addrs: Option<Vec<SocketAddr>>,
}

/// The egress proxy: the app sends HTTP requests in absolute form, or CONNECT, to `bind`;
/// the sidecar carries each over TLS with this instance's certificate to the first target
/// listing the host and port, and checks the server's identity against that target's
/// `expect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressProxyConfig {
    /// Loopback; tests use `127.0.0.1:0`.
    pub bind: SocketAddr,
    pub targets: Vec<ProxyTarget>,
    /// `None`: look each requested host up (an internal route resolves to every instance)
    /// and try each address in turn. `Some`: these addresses for every host instead (tests).
    pub addrs: Option<Vec<SocketAddr>>,
}

/// Where CF identities come from. Only a chain that ends at the trust anchor this instance's
/// own Diego certificate chains to (the platform's instance-identity CA) carries a CF
/// identity: any other trusted CA could sign `OU=app:<guid>` for any app. See
/// [`crate::trust`] for how the anchor is found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityAnchor {
    /// The instance identity at these paths (`CF_INSTANCE_CERT`/`CF_INSTANCE_KEY`): its chain
    /// names the identity CA, and egress presents this pair whatever `certificate.source`
    /// serves.
    FromInstanceCert(CertificatePaths),
    /// Not on Diego (no instance certificate): no peer has a CF identity, so `cf:` rules are
    /// refused at start.
    None,
}

impl IdentityAnchor {
    /// The instance credentials, when there are any.
    pub fn paths(&self) -> Option<&CertificatePaths> {
        match self {
            IdentityAnchor::FromInstanceCert(paths) => Some(paths),
            IdentityAnchor::None => None,
        }
    }
}

/// The trust bundle's sources: every certificate in every file of `system_dir`, then every
/// certificate in each of `ca_files`, then `extra` (a bound service's `ca`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustConfig {
    /// `$CF_SYSTEM_CERT_PATH` when `trust.system_certs` is true and the variable is set.
    pub system_dir: Option<PathBuf>,
    /// `trust.system_certs` (false: `ca_files` replace the platform's CAs).
    pub system_certs: bool,
    /// `trust.ca_files`, resolved against the app directory.
    pub ca_files: Vec<PathBuf>,
    /// PEM bundles from elsewhere, with a name for messages.
    pub extra: Vec<(String, String)>,
}

/// `limits` from the config, as durations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    pub drain_timeout: Duration,
    pub connect_timeout: Duration,
    /// Slots of each TLS listener; `None`: an equal share of `max_connections`.
    pub listener_connections: Option<usize>,
    /// Requests in flight to the app per http-mode listener.
    pub app_connections: usize,
    /// HTTP/2 streams per client connection.
    pub streams_per_connection: u32,
}

impl From<&tls_sidecar_config::Limits> for Limits {
    fn from(l: &tls_sidecar_config::Limits) -> Self {
        Limits {
            max_connections: usize::try_from(l.max_connections).unwrap_or(usize::MAX),
            handshake_timeout: l.handshake_timeout.duration(),
            idle_timeout: l.idle_timeout.duration(),
            drain_timeout: l.drain_timeout.duration(),
            connect_timeout: l.connect_timeout.duration(),
            listener_connections: l
                .listener_connections
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
            app_connections: usize::try_from(l.app_connections).unwrap_or(usize::MAX),
            streams_per_connection: l.streams_per_connection,
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

/// What the server runs with: the configuration and its `allow`/`expect` rules, resolved once
/// for this container. [`load`] makes it for the sidecar; [`Plan::new`] for a configuration
/// built in code.
#[derive(Debug)]
pub struct Plan {
    pub config: SidecarConfig,
    /// Each listener's `allow` rules, in listener order.
    pub(crate) policies: Vec<AccessPolicy>,
    /// Each listener's request rules, in listener order.
    pub(crate) requests: Vec<RequestPolicy>,
    /// Each egress entry's `expect` rules, in config order.
    pub(crate) expectations: Vec<Expectation>,
    /// Each egress proxy target's `expect` rules, in config order.
    pub(crate) proxy_expectations: Vec<Expectation>,
}

impl Plan {
    /// Resolves `config`'s rules; fails (exit 64) on the first one that cannot be resolved
    /// here, e.g. `cf:same-space` without `VCAP_APPLICATION.space_id`.
    pub fn new(config: SidecarConfig) -> Result<Self, StartError> {
        let Rules {
            policies,
            requests,
            expectations,
            proxy_expectations,
            problems,
        } = config.rules();
        match problems.into_iter().next() {
            Some(first) => Err(first),
            None => Ok(Plan {
                config,
                policies,
                requests,
                expectations,
                proxy_expectations,
            }),
        }
    }
}

/// Every `allow` and `expect` rule resolved against this app's `VCAP_APPLICATION`, and every
/// one that cannot be, in config order: `check` reports the problems, [`Plan::new`] refuses
/// them. With problems, the resolved lists lack the rules that failed.
#[derive(Debug)]
pub(crate) struct Rules {
    pub(crate) policies: Vec<AccessPolicy>,
    pub(crate) requests: Vec<RequestPolicy>,
    pub(crate) expectations: Vec<Expectation>,
    pub(crate) proxy_expectations: Vec<Expectation>,
    /// [`StartError::IdentityOutsideCf`] and [`StartError::AccessRule`], each naming its field.
    pub(crate) problems: Vec<StartError>,
}

/// Where the configuration came from and what start-up should report about it.
#[derive(Debug)]
pub struct Origin {
    /// A file path or "built-in defaults".
    pub source: String,
    /// `TLS_SIDECAR_*` variables that overrode the file.
    pub overrides: Vec<&'static str>,
    /// Things that work but are probably not what the user meant.
    pub warnings: Vec<String>,
}

impl Origin {
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

/// The sidecar's plan and where its configuration came from.
#[derive(Debug)]
pub struct Loaded {
    pub plan: Plan,
    pub origin: Origin,
}

/// Reads and resolves the configuration: `cli_path`, else `$TLS_SIDECAR_CONFIG`, else
/// `<dir of exe>/../tls-sidecar.yml` if it exists, else built-in defaults; then the
/// `TLS_SIDECAR_*` overrides from `env`; then the rules.
pub fn load(cli_path: Option<&Path>, env: &Env, exe: Option<&Path>) -> Result<Loaded, StartError> {
    let (config, origin) = read(cli_path, env, exe)?;
    Ok(Loaded {
        plan: Plan::new(config)?,
        origin,
    })
}

/// [`load`] up to the rules, which `check` resolves itself to report every problem.
pub(crate) fn read(
    cli_path: Option<&Path>,
    env: &Env,
    exe: Option<&Path>,
) -> Result<(SidecarConfig, Origin), StartError> {
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
    let origin = Origin {
        source,
        overrides,
        warnings,
    };
    Ok((config, origin))
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

/// Whose X-Forwarded-Client-Cert the route port keeps with `route.trust_gorouter_xfcc`: only
/// the per-container Envoy's. With route integrity (cf-deployment's default) Gorouter reaches
/// the app only through that Envoy, which runs in this container's network namespace and
/// connects from `CF_INSTANCE_INTERNAL_IP`; a c2c peer with a policy for `$PORT` connects from
/// its own address, so its header is still stripped. Without the variable nothing is trusted.
fn trusted_xfcc_peer(
    staged: &StagedConfig,
    env: &Env,
    warnings: &mut Vec<String>,
) -> Option<IpAddr> {
    if !staged.route.trust_gorouter_xfcc {
        return None;
    }
    let ip = env
        .get("CF_INSTANCE_INTERNAL_IP")
        .and_then(|v| v.trim().parse::<IpAddr>().ok());
    if ip.is_none() {
        warnings.push(
            "route.trust_gorouter_xfcc: CF_INSTANCE_INTERNAL_IP is not set, so Gorouter's connections cannot be told apart: X-Forwarded-Client-Cert is stripped from every route request".to_owned(),
        );
    }
    ip
}

/// The route listener, when the profile script moved the app: it set `TLS_SIDECAR_ROUTE_PORT`
/// to CF's `$PORT` and `$PORT` to `route.app_port`. Whatever the staged `route.fronting` says
/// now (a run-time mode override can change `auto`), an app that was moved needs the route
/// port served, and one that was not must keep it.
fn route(
    staged: &StagedConfig,
    env: &Env,
    app_port: u16,
    warnings: &mut Vec<String>,
) -> Option<RouteConfig> {
    let value = env
        .get(ROUTE_PORT_ENV)
        .map(|v| v.trim())
        .filter(|v| !v.is_empty());
    let Some(value) = value else {
        if staged.route.fronted {
            warnings.push(format!(
                "{ROUTE_NOT_FRONTED}: {ROUTE_PORT_ENV} is not set, so the app's .profile.d/00-tls-sidecar-route.sh did not run for this process (or something removed it) and the app serves $PORT itself: X-Forwarded-Client-Cert sent to the route port reaches the app unchecked"
            ));
        }
        return None;
    };
    match value.parse::<u16>() {
        Ok(port) if port > 0 && port != app_port => Some(RouteConfig {
            bind: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
            upstream: HostPort {
                host: "127.0.0.1".to_owned(),
                port: app_port,
            },
            trusted_xfcc_peer: trusted_xfcc_peer(staged, env, warnings),
        }),
        Ok(port) if port == app_port => {
            warnings.push(format!(
                "{ROUTE_NOT_FRONTED}: {ROUTE_PORT_ENV} and $PORT are both {port} (CF gave this process route.app_port as its port), so the app serves the route port itself: pick another route.app_port"
            ));
            None
        }
        _ => {
            warnings.push(format!(
                "{ROUTE_NOT_FRONTED}: {ROUTE_PORT_ENV}=\"{value}\" is not a port number"
            ));
            None
        }
    }
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
    /// Resolves `staged` for this container. Returns warnings beside the config. The `allow`
    /// and `expect` rules are resolved after this, by [`Plan::new`] (or [`SidecarConfig::rules`]
    /// for `check`), so tests can change them on the result first.
    pub fn resolve(staged: &StagedConfig, env: &Env) -> Result<(Self, Vec<String>), StartError> {
        let app_port = app_port(env)?;
        let mut warnings = Vec::new();
        let set = |var: &str| {
            env.get(var)
                .map(|v| v.trim())
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let app_dir = set("HOME").unwrap_or_else(|| PathBuf::from(DEFAULT_APP_DIR));

        let listeners: Vec<ListenerConfig> = staged
            .listeners
            .iter()
            .map(|l| ListenerConfig {
                bind: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), l.port),
                upstream: l.upstream.clone().unwrap_or_else(|| HostPort {
                    host: "127.0.0.1".to_owned(),
                    port: app_port,
                }),
                mode: l.mode,
                client_auth: l.client_auth,
                allow: l.allow.clone(),
                xfcc: l.xfcc,
                proxy_protocol: l.proxy_protocol && l.mode == Mode::Tcp,
                rules: l.rules.clone(),
            })
            .collect();

        let (app, vcap_problem) = VcapApplication::from_env(env);
        warnings.extend(vcap_problem);

        let mut egress = Vec::with_capacity(staged.egress.len());
        for (i, e) in staged.egress.iter().enumerate() {
            egress.push(EgressConfig {
                name: e.name.clone(),
                bind: listen_addr(&e.listen).ok_or_else(|| StartError::EgressListen {
                    field: format!("egress[{i}].listen"),
                    value: e.listen.to_string(),
                    app: app_name(env),
                })?,
                target: e.target.clone(),
                expect: e.expect.clone(),
                addrs: None,
            });
        }

        let c = &staged.certificate;
        let certificate = match c.source {
            CertificateSource::Minted => {
                CertificateConfig::Minted(mint_config(c, env, &app, &mut warnings))
            }
            CertificateSource::Service => CertificateConfig::Service {
                name: c.service.clone().unwrap_or_default(),
                vcap_services: env.get("VCAP_SERVICES").cloned(),
            },
            CertificateSource::Files => CertificateConfig::Files {
                source: CertificateSource::Files,
                paths: CertificatePaths {
                    cert: in_app_dir(&app_dir, c.cert_file.as_deref().unwrap_or_default()),
                    key: in_app_dir(&app_dir, c.key_file.as_deref().unwrap_or_default()),
                },
            },
            CertificateSource::Instance => {
                let mut path_from = |var: &str, default: &str| {
                    set(var).unwrap_or_else(|| {
                        warnings.push(format!(
                            "{var} is not set (not running on Diego?); using {default}"
                        ));
                        PathBuf::from(default)
                    })
                };
                CertificateConfig::instance(CertificatePaths {
                    cert: path_from("CF_INSTANCE_CERT", DEFAULT_CERT_PATH),
                    key: path_from("CF_INSTANCE_KEY", DEFAULT_KEY_PATH),
                })
            }
        };

        // `source: instance` serves the instance identity itself (waited for if missing). Any
        // other source runs on Diego only if Diego's certificate is actually there.
        let identity_ca = match certificate.instance_paths() {
            Some(paths) => IdentityAnchor::FromInstanceCert(paths.clone()),
            None => match set("CF_INSTANCE_CERT").filter(|cert| cert.is_file()) {
                Some(cert) => IdentityAnchor::FromInstanceCert(CertificatePaths {
                    cert,
                    key: set("CF_INSTANCE_KEY").unwrap_or_else(|| PathBuf::from(DEFAULT_KEY_PATH)),
                }),
                None => IdentityAnchor::None,
            },
        };

        let mut trust = TrustConfig {
            system_dir: None,
            system_certs: staged.trust.system_certs,
            ca_files: staged
                .trust
                .ca_files
                .iter()
                .map(|f| in_app_dir(&app_dir, f))
                .collect(),
            extra: Vec::new(),
        };
        if staged.trust.system_certs {
            trust.system_dir = set("CF_SYSTEM_CERT_PATH");
        }
        trust.extra.extend(certificate.trust_extra());
        let mut verifying: Vec<String> = listeners
            .iter()
            .enumerate()
            .filter(|(_, l)| l.verifies_clients())
            .map(|(i, _)| format!("listeners[{i}]"))
            .collect();
        verifying.extend((0..egress.len()).map(|i| format!("egress[{i}]")));
        verifying.extend(
            staged
                .egress_proxy
                .iter()
                .map(|_| "egress_proxy".to_owned()),
        );
        if !verifying.is_empty() && staged.trust.system_certs && trust.system_dir.is_none() {
            let without = match (
                trust.ca_files.is_empty() && trust.extra.is_empty(),
                egress.is_empty() && staged.egress_proxy.is_none(),
            ) {
                (true, true) => "no client certificate can be verified",
                (true, false) => "no peer certificate can be verified",
                (false, _) => "only trust.ca_files are trusted",
            };
            warnings.push(format!(
                "{SYSTEM_CERT_PATH_UNSET}, so the platform's CAs are not trusted and {without} on {}",
                verifying.join(", ")
            ));
        }

        let egress_proxy = match &staged.egress_proxy {
            None => None,
            Some(p) => Some(EgressProxyConfig {
                bind: listen_addr(&p.listen).ok_or_else(|| StartError::EgressListen {
                    field: "egress_proxy.listen".to_owned(),
                    value: p.listen.to_string(),
                    app: app_name(env),
                })?,
                targets: p.targets.clone(),
                addrs: None,
            }),
        };
        let admin = staged
            .admin
            .enabled
            .then(|| admin_addr(&staged.admin.listen));
        let route = route(staged, env, app_port, &mut warnings);

        let config = SidecarConfig {
            listeners,
            egress,
            egress_proxy,
            certificate,
            trust,
            identity_ca,
            app,
            admin,
            limits: Limits::from(&staged.limits),
            reload: ReloadTiming::default(),
            log: staged.log.clone(),
            route,
        };
        Ok((config, warnings))
    }

    /// The app's name for `cf` commands in fix texts, or a placeholder outside CF.
    pub(crate) fn app_name(&self) -> String {
        self.app.app_name().to_owned()
    }

    /// Every `allow` and `expect` rule resolved against this app, once; see [`Rules`].
    pub(crate) fn rules(&self) -> Rules {
        let mut rules = Rules {
            policies: Vec::with_capacity(self.listeners.len()),
            requests: Vec::with_capacity(self.listeners.len()),
            expectations: Vec::with_capacity(self.egress.len()),
            proxy_expectations: Vec::new(),
            problems: Vec::new(),
        };
        for (i, l) in self.listeners.iter().enumerate() {
            let field = format!("listeners[{i}].allow");
            if let Some(policy) =
                self.resolve_rules(&l.allow, field, AccessPolicy::resolve, &mut rules.problems)
            {
                rules.policies.push(policy);
            }
            let mut resolved = Vec::with_capacity(l.rules.len());
            for (j, rule) in l.rules.iter().enumerate() {
                let field = format!("listeners[{i}].rules[{j}].allow");
                if let Some(policy) = self.resolve_rules(
                    &rule.allow,
                    field,
                    AccessPolicy::resolve,
                    &mut rules.problems,
                ) {
                    resolved.push((rule.clone(), policy));
                }
            }
            rules.requests.push(RequestPolicy::new(resolved));
        }
        for (i, e) in self.egress.iter().enumerate() {
            let field = format!("egress[{i}].expect");
            if let Some(expectation) =
                self.resolve_rules(&e.expect, field, Expectation::resolve, &mut rules.problems)
            {
                rules.expectations.push(expectation);
            }
        }
        let targets = self.egress_proxy.iter().flat_map(|p| p.targets.iter());
        for (i, t) in targets.enumerate() {
            let field = format!("egress_proxy.targets[{i}].expect");
            if let Some(expectation) =
                self.resolve_rules(&t.expect, field, Expectation::resolve, &mut rules.problems)
            {
                rules.proxy_expectations.push(expectation);
            }
        }
        rules
    }

    /// One rule list resolved by `resolve`, or `None` with its problems added: a `cf:` rule
    /// where there is no platform identity (it could only ever match certificates from CAs
    /// that are not the platform's, which is exactly what it must never match), and a rule
    /// that cannot be resolved against `VCAP_APPLICATION`.
    fn resolve_rules<T>(
        &self,
        rules: &[Selector],
        field: String,
        resolve: fn(&[Selector], &VcapApplication) -> Result<T, String>,
        problems: &mut Vec<StartError>,
    ) -> Option<T> {
        let cf_rule = rules.iter().find(|s| !matches!(s, Selector::Dns(_)));
        let outside_cf = match cf_rule {
            Some(selector) if self.identity_ca == IdentityAnchor::None => {
                problems.push(StartError::IdentityOutsideCf {
                    field: field.clone(),
                    selector: selector.to_string(),
                    cert_source: self.certificate.source(),
                    app: self.app_name(),
                });
                true
            }
            _ => false,
        };
        match resolve(rules, &self.app) {
            Ok(resolved) => (!outside_cf).then_some(resolved),
            Err(problem) => {
                problems.push(StartError::AccessRule {
                    field,
                    problem,
                    app: self.app_name(),
                });
                None
            }
        }
    }

    /// Whether any `allow` or `expect` rule is a `cf:` rule (needs the platform identity CA).
    pub(crate) fn identity_rules_written(&self) -> bool {
        let cf = |rules: &[Selector]| rules.iter().any(|s| !matches!(s, Selector::Dns(_)));
        self.listeners
            .iter()
            .any(|l| cf(&l.allow) || l.rules.iter().any(|r| cf(&r.allow)))
            || self.egress.iter().any(|e| cf(&e.expect))
            || self
                .egress_proxy
                .iter()
                .any(|p| p.targets.iter().any(|t| cf(&t.expect)))
    }

    /// Whether any listener verifies client certificates.
    pub fn verifies_clients(&self) -> bool {
        self.listeners.iter().any(ListenerConfig::verifies_clients)
    }

    /// Whether anything verifies peer certificates (and so needs the trust bundle): a listener
    /// asking for client certificates, or an egress entry.
    pub fn verifies_peers(&self) -> bool {
        self.verifies_clients() || !self.egress.is_empty() || self.egress_proxy.is_some()
    }
}

/// `path` as written in tls-sidecar.yml: absolute, or relative to the app directory.
pub(crate) fn in_app_dir(app_dir: &Path, path: &str) -> PathBuf {
    let path = Path::new(path.trim());
    if path.is_absolute() {
        path.to_owned()
    } else {
        app_dir.join(path)
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

/// An egress listen address: an IP (the staged config allows only loopback ones unless
/// `unsafe_listen`), or `localhost`.
fn listen_addr(listen: &HostPort) -> Option<SocketAddr> {
    let ip = if listen.host.eq_ignore_ascii_case("localhost") {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        listen.host.parse::<IpAddr>().ok()?
    };
    Some(SocketAddr::new(ip, listen.port))
}

/// The minted leaf's names and subject, from `VCAP_APPLICATION` and Diego's variables.
fn mint_config(
    c: &tls_sidecar_config::Certificate,
    env: &Env,
    app: &VcapApplication,
    warnings: &mut Vec<String>,
) -> MintConfig {
    let var = |name: &str| {
        env.get(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    let mut dns_names: Vec<String> = Vec::new();
    let mut add = |name: String| {
        let name = name.to_ascii_lowercase();
        if !dns_names.contains(&name) {
            dns_names.push(name);
        }
    };
    let routes = internal_routes(&app.application_uris, &c.internal_domains);
    let index = app
        .instance_index
        .or_else(|| var("CF_INSTANCE_INDEX").and_then(|i| i.parse().ok()));
    for route in &routes {
        add(route.clone());
    }
    if let Some(index) = index {
        for route in &routes {
            add(format!("{index}.{route}"));
        }
    }
    let instance = var("CF_INSTANCE_GUID");
    if let Some(guid) = &instance {
        add(guid.clone());
    }
    for name in &c.names {
        add(name.clone());
    }
    if routes.is_empty() {
        warnings.push(format!(
            "certificate.source minted: no route of this app (VCAP_APPLICATION.application_uris) is under {}; the minted certificate names only {} (map one: cf map-route APP {} --hostname APP)",
            c.internal_domains.join(", "),
            if dns_names.is_empty() { "its IP".to_owned() } else { dns_names.join(", ") },
            c.internal_domains.first().map_or("apps.internal", String::as_str),
        ));
    }
    let ips: Vec<IpAddr> = var("CF_INSTANCE_INTERNAL_IP")
        .and_then(|ip| ip.parse().ok())
        .into_iter()
        .collect();
    let common_name = instance.unwrap_or_else(|| {
        warnings.push(
            "CF_INSTANCE_GUID is not set (not running on Diego?); the minted certificate's CN is \"tls-sidecar\"".to_owned(),
        );
        "tls-sidecar".to_owned()
    });
    let mut organizational_units = Vec::new();
    for (prefix, value, field) in [
        ("app", &app.application_id, "application_id"),
        ("space", &app.space_id, "space_id"),
        ("organization", &app.organization_id, "organization_id"),
    ] {
        match value {
            Some(guid) => organizational_units.push(format!("{prefix}:{guid}")),
            None => warnings.push(format!(
                "VCAP_APPLICATION.{field} is not set: the minted certificate carries no OU={prefix}:<guid>, so peers cannot match it with cf: rules"
            )),
        }
    }
    MintConfig {
        service: c.service.clone().unwrap_or_default(),
        vcap_services: env.get("VCAP_SERVICES").cloned(),
        common_name,
        organizational_units,
        dns_names,
        ips,
        validity: c.validity.duration(),
    }
}

/// The host names in `uris` (`host.domain[/path]`) under one of `domains`, lower-cased, in
/// order, without duplicates.
pub(crate) fn internal_routes(uris: &[String], domains: &[String]) -> Vec<String> {
    let mut routes: Vec<String> = Vec::new();
    for uri in uris {
        let host = uri.split('/').next().unwrap_or_default();
        let host = host
            .split(':')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        let under = domains.iter().any(|d| {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            host.len() > d.len() + 1
                && host.ends_with(&d)
                && host.as_bytes()[host.len() - d.len() - 1] == b'.'
        });
        if under && !routes.contains(&host) {
            routes.push(host);
        }
    }
    routes
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
        let (config, warnings) = SidecarConfig::resolve(&staged, env)?;
        Ok((Plan::new(config)?.config, warnings))
    }

    fn paths(c: &SidecarConfig) -> &CertificatePaths {
        match &c.certificate {
            CertificateConfig::Files { paths, .. } => paths,
            other => panic!("not files: {other:?}"),
        }
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
        assert_eq!(c.listeners[0].mode, Mode::Tcp);
        assert_eq!(c.listeners[0].client_auth, ClientAuth::None);
        assert_eq!(paths(&c).cert, Path::new("/creds/instance.crt"));
        assert_eq!(paths(&c).key, Path::new("/creds/instance.key"));
        assert_eq!(c.admin.unwrap().to_string(), "127.0.0.1:8444");
        assert_eq!(c.limits.drain_timeout, Duration::from_secs(8));
    }

    #[test]
    fn missing_credential_variables_fall_back_to_diegos_paths_with_a_warning() {
        let (c, warnings) = resolve("", &Env::new()).unwrap();
        assert_eq!(paths(&c).cert, Path::new(DEFAULT_CERT_PATH));
        assert_eq!(c.listeners[0].upstream.to_string(), "127.0.0.1:8080");
        assert!(
            warnings.iter().any(|w| w.contains("CF_INSTANCE_KEY")),
            "{warnings:?}"
        );
    }

    #[test]
    fn files_and_trust_paths_are_relative_to_the_app_directory_unless_absolute() {
        let yaml = "certificate:\n  source: files\n  cert_file: certs/c.pem\n  key_file: /keys/k.pem\n\
                    listeners:\n  - client_auth: required\ntrust:\n  ca_files: [ca/clients.pem]\n";
        let env = env(&[
            ("HOME", "/home/vcap/app"),
            ("CF_SYSTEM_CERT_PATH", "/etc/cf-system-certificates"),
        ]);
        let (c, warnings) = resolve(yaml, &env).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(paths(&c).cert, Path::new("/home/vcap/app/certs/c.pem"));
        assert_eq!(paths(&c).key, Path::new("/keys/k.pem"));
        assert_eq!(
            c.trust.ca_files,
            [PathBuf::from("/home/vcap/app/ca/clients.pem")]
        );
        assert_eq!(
            c.trust.system_dir.as_deref(),
            Some(Path::new("/etc/cf-system-certificates"))
        );

        let yaml = format!("{yaml}  system_certs: false\n");
        let (c, _) = resolve(&yaml, &env).unwrap();
        assert_eq!(c.trust.system_dir, None, "ca_files replace the system CAs");
    }

    #[test]
    fn verifying_clients_without_cf_system_cert_path_warns() {
        let (_, warnings) =
            resolve("listeners:\n  - client_auth: optional\n", &Env::new()).unwrap();
        assert!(
            warnings
                .iter()
                .any(|w| w.starts_with(SYSTEM_CERT_PATH_UNSET)
                    && w.contains("no client certificate can be verified on listeners[0]")),
            "{warnings:?}"
        );
    }

    #[test]
    fn the_service_source_reads_vcap_services_and_adds_its_ca_to_the_trust_bundle() {
        let yaml = "certificate:\n  source: service\n  service: my-tls\n";
        let vcap = r#"{"user-provided":[{"name":"my-tls","credentials":{"cert":"C","key":"K","ca":"CA"}}]}"#;
        let (c, _) = resolve(yaml, &env(&[("VCAP_SERVICES", vcap)])).unwrap();
        assert_eq!(
            c.certificate,
            CertificateConfig::Service {
                name: "my-tls".into(),
                vcap_services: Some(vcap.into())
            }
        );
        assert_eq!(
            c.trust.extra,
            [(
                "service \"my-tls\" credentials.ca".to_owned(),
                "CA".to_owned()
            )]
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

    const ORG: &str = "0f8a4d6e-6c61-4c39-a6d0-2b0d6c1f8b11";
    const SPACE: &str = "5c4d1b0e-2a3f-4e5d-9c8b-7a6f5e4d3c2b";
    const APP: &str = "9e8d7c6b-5a4f-4e3d-8c2b-1a0f9e8d7c6b";

    #[test]
    fn egress_entries_resolve_their_listen_address_target_and_expectations() {
        let yaml = "egress:\n  - name: backend\n    listen: localhost:9001\n    target: b.apps.internal:8443\n    expect: [cf:same-space, dns:b.apps.internal]\n";
        let vcap = format!(r#"{{"space_id":"{SPACE}"}}"#);
        let (c, _) = resolve(yaml, &env(&[("VCAP_APPLICATION", &vcap)])).unwrap();
        assert_eq!(c.egress.len(), 1);
        let e = &c.egress[0];
        assert_eq!(
            (e.name.as_str(), e.bind.to_string()),
            ("backend", "127.0.0.1:9001".to_owned())
        );
        assert_eq!(e.target.to_string(), "b.apps.internal:8443");
        assert_eq!(e.addrs, None);
        assert_eq!(c.rules().expectations.len(), 1);
        assert!(c.verifies_peers());

        let e = resolve(yaml, &Env::new()).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("egress[0].expect: cf:same-space needs VCAP_APPLICATION.space_id"),
            "{e}"
        );
        assert_eq!(e.exit_code(), crate::EX_USAGE);
    }

    #[test]
    fn a_minted_source_names_the_internal_routes_their_index_forms_the_guid_and_the_ip() {
        let yaml = "certificate:\n  source: minted\n  service: ca\n  names: [extra.example.com]\n  validity: 2h\n";
        let vcap = format!(
            r#"{{"application_id":"{APP}","space_id":"{SPACE}","organization_id":"{ORG}","instance_index":2,
                "application_uris":["web.example.com","backend.apps.internal","Backend.apps.internal","x.internal.example/path"]}}"#
        );
        let services = r#"{"user-provided":[{"name":"ca","credentials":{"ca_certificate":"CA PEM","ca_private_key":"K"}}]}"#;
        let (c, warnings) = resolve(
            yaml,
            &env(&[
                ("VCAP_APPLICATION", &vcap),
                ("VCAP_SERVICES", services),
                ("CF_INSTANCE_GUID", "4e0a8b9c-1d2e-4f3a-5b6c-7d8e"),
                ("CF_INSTANCE_INTERNAL_IP", "10.255.0.7"),
            ]),
        )
        .unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        let CertificateConfig::Minted(m) = &c.certificate else {
            panic!("not minted: {:?}", c.certificate);
        };
        assert_eq!(
            m.dns_names,
            [
                "backend.apps.internal",
                "2.backend.apps.internal",
                "4e0a8b9c-1d2e-4f3a-5b6c-7d8e",
                "extra.example.com"
            ]
        );
        assert_eq!(m.ips, ["10.255.0.7".parse::<IpAddr>().unwrap()]);
        assert_eq!(m.common_name, "4e0a8b9c-1d2e-4f3a-5b6c-7d8e");
        assert_eq!(
            m.organizational_units,
            [
                format!("app:{APP}"),
                format!("space:{SPACE}"),
                format!("organization:{ORG}")
            ]
        );
        assert_eq!(m.validity, Duration::from_secs(7200));
        assert_eq!(
            c.trust.extra,
            [(
                "service \"ca\" credentials.ca_certificate".to_owned(),
                "CA PEM".to_owned()
            )]
        );

        let (_, warnings) = resolve(yaml, &Env::new()).unwrap();
        assert!(
            warnings.iter().any(|w| w.contains("no route of this app")),
            "{warnings:?}"
        );
    }

    #[test]
    fn client_auth_allow_http_and_proxy_protocol_are_accepted() {
        let yaml = "listeners:\n  - port: 9443\n    allow: [cf:any]\n    proxy_protocol: true\n  - port: 9444\n    mode: http\n    client_auth: optional\n";
        let (c, _) = resolve(yaml, &Env::new()).unwrap();
        assert_eq!(c.listeners[0].client_auth, ClientAuth::Required);
        assert!(c.listeners[0].proxy_protocol);
        assert_eq!(c.listeners[1].mode, Mode::Http);
        assert_eq!(c.listeners[1].client_auth, ClientAuth::Optional);
    }

    #[test]
    fn a_relative_allow_rule_without_vcap_application_is_a_usage_error() {
        let e = resolve("listeners:\n  - allow: [cf:same-space]\n", &Env::new()).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("listeners[0].allow: cf:same-space needs VCAP_APPLICATION.space_id"),
            "{e}"
        );
        assert_eq!(e.exit_code(), crate::EX_USAGE);
        let vcap = r#"{"space_id":"5c4d1b0e-2a3f-4e5d-9c8b-7a6f5e4d3c2b"}"#;
        let (c, _) = resolve(
            "listeners:\n  - allow: [cf:same-space]\n",
            &env(&[("VCAP_APPLICATION", vcap)]),
        )
        .unwrap();
        assert!(c.rules().policies[0].has_rules());
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
        assert_eq!(loaded.origin.source, "built-in defaults");
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
        assert_eq!(loaded.plan.config.listeners[0].bind.port(), 9443);
        assert!(
            loaded.origin.source.ends_with("tls-sidecar.yml"),
            "{}",
            loaded.origin.source
        );

        let loaded = load(None, &env(&[("TLS_SIDECAR_PORT", "7443")]), Some(&exe)).unwrap();
        assert_eq!(loaded.plan.config.listeners[0].bind.port(), 7443);
        assert_eq!(loaded.origin.overrides, ["TLS_SIDECAR_PORT"]);
    }
}
