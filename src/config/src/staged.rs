//! The validated configuration with every default filled in.

use crate::app::{
    AdminSpec, AppConfig, CertificateSpec, EgressProxySpec, EgressSpec, LimitsSpec, ListenerSpec,
    LogSpec, ProxyTargetSpec, RouteSpec, RuleSpec, SidecarSpec, TrustSpec,
};
use crate::error::{ConfigError, Origin};
use crate::path::{Method, PathPattern};
use crate::value::{
    CertificateSource, ClientAuth, Fronting, HostPattern, HostPort, LogFormat, MemoryMb, Millis,
    Mode, Selector, Xfcc, valid_dns_name,
};

/// CF's default `$PORT` (the first process port); used at staging, where `$PORT` is not set.
pub const DEFAULT_APP_PORT: u16 = 8080;

/// Where the app listens while the sidecar fronts the route port (`route.app_port`). Not a
/// port CF, Diego or the sidecar's own defaults (8443, 8444) use.
pub const DEFAULT_ROUTE_APP_PORT: u16 = 8081;

/// Ports a listener must never take, with the reason: Diego's sshd and Envoy own them.
pub const RESERVED_PORTS: &[(u16, u16, &str)] = &[
    (2222, 2222, "CF's SSH port (cf ssh)"),
    (
        61001,
        61099,
        "Diego's per-container Envoy (route integrity and admin ports)",
    ),
    (61443, 61443, "Diego's container-to-container TLS port"),
    (61445, 61445, "reserved for Diego's proposed egress proxy"),
    (62443, 62443, "reserved for Diego's proposed c2c mTLS port"),
];

#[derive(Debug, Clone, PartialEq)]
pub struct StagedConfig {
    pub listeners: Vec<Listener>,
    pub egress: Vec<Egress>,
    pub egress_proxy: Option<EgressProxy>,
    pub certificate: Certificate,
    pub trust: Trust,
    pub admin: Admin,
    pub limits: Limits,
    pub sidecar: Sidecar,
    pub log: Log,
    pub route: Route,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    pub port: u16,
    /// `None` means `127.0.0.1:$PORT`, resolved at start.
    pub upstream: Option<HostPort>,
    pub mode: Mode,
    pub client_auth: ClientAuth,
    /// Empty means no access rules (anyone who completes the handshake).
    pub allow: Vec<Selector>,
    pub xfcc: Xfcc,
    pub proxy_protocol: bool,
    /// http mode: request rules, first match decides. Empty means none (only `allow`).
    pub rules: Vec<RequestRule>,
}

/// One request rule of an http-mode listener.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestRule {
    /// Empty: every path.
    pub paths: Vec<PathPattern>,
    /// Empty: every method.
    pub methods: Vec<Method>,
    /// Callers the rule lets in (OR'd); empty lets none in.
    pub allow: Vec<Selector>,
}

impl RequestRule {
    /// Whether the rule matches `method` and the normalised `path`.
    pub fn matches(&self, method: &str, path: &str) -> bool {
        (self.methods.is_empty() || self.methods.iter().any(|m| m.as_str() == method))
            && (self.paths.is_empty() || self.paths.iter().any(|p| p.matches(path)))
    }

    /// Matches every request: rules after it can never match.
    fn matches_everything(&self) -> bool {
        self.methods.is_empty()
            && (self.paths.is_empty() || self.paths.iter().any(PathPattern::is_everything))
    }

    /// How `check` and staging print it: `GET,HEAD /api/* -> cf:same-space`.
    pub fn describe(&self) -> String {
        let list = |items: Vec<String>, sep: &str, none: &str| {
            if items.is_empty() {
                none.to_owned()
            } else {
                items.join(sep)
            }
        };
        format!(
            "{} {} -> {}",
            list(
                self.methods.iter().map(Method::to_string).collect(),
                ",",
                "any method"
            ),
            list(
                self.paths.iter().map(PathPattern::to_string).collect(),
                ",",
                "any path"
            ),
            list(
                self.allow.iter().map(Selector::to_string).collect(),
                ", ",
                "nobody"
            ),
        )
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Egress {
    pub name: String,
    pub listen: HostPort,
    pub target: HostPort,
    pub expect: Vec<Selector>,
    pub unsafe_listen: bool,
}

impl Egress {
    /// The variable the profile.d script exports for this entry, e.g.
    /// `TLS_SIDECAR_EGRESS_BACKEND`.
    pub fn env_var(&self) -> String {
        format!(
            "TLS_SIDECAR_EGRESS_{}",
            self.name.to_ascii_uppercase().replace('-', "_")
        )
    }
}

/// The egress proxy: an HTTP proxy on loopback, mTLS to the targets it lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressProxy {
    pub listen: HostPort,
    pub targets: Vec<ProxyTarget>,
}

/// Hosts (and ports) the egress proxy may reach, and the server identity it accepts there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyTarget {
    pub hosts: Vec<HostPattern>,
    /// Empty: every port.
    pub ports: Vec<u16>,
    pub expect: Vec<Selector>,
}

impl ProxyTarget {
    /// Whether this target lists `host` (any case) and `port`.
    pub fn matches(&self, host: &str, port: u16) -> bool {
        (self.ports.is_empty() || self.ports.contains(&port))
            && self.hosts.iter().any(|h| h.matches(host))
    }
}

impl EgressProxy {
    /// The variable the profile.d script exports: the proxy's URL for the app's HTTP clients.
    pub const ENV_VAR: &'static str = "TLS_SIDECAR_PROXY";

    /// The index of the first target listing `host` and `port`.
    pub fn target(&self, host: &str, port: u16) -> Option<usize> {
        self.targets.iter().position(|t| t.matches(host, port))
    }

    /// `http://127.0.0.1:8446`, what `TLS_SIDECAR_PROXY` holds.
    pub fn url(&self) -> String {
        format!("http://{}", self.listen)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Certificate {
    pub source: CertificateSource,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    pub service: Option<String>,
    pub names: Vec<String>,
    pub internal_domains: Vec<String>,
    pub validity: Millis,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Trust {
    pub ca_files: Vec<String>,
    pub system_certs: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Admin {
    pub listen: HostPort,
    pub enabled: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub max_connections: u32,
    pub handshake_timeout: Millis,
    pub idle_timeout: Millis,
    pub drain_timeout: Millis,
    pub connect_timeout: Millis,
    /// `None`: each TLS listener gets an equal share of `max_connections`.
    pub listener_connections: Option<u32>,
    pub app_connections: u32,
    pub streams_per_connection: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sidecar {
    pub memory: MemoryMb,
    /// Empty means the buildpack only installs the binary and the app manifest declares the
    /// sidecar itself (`sidecars:`), so the two never run twice on one port.
    pub process_types: Vec<String>,
}

impl Sidecar {
    /// Whether the buildpack declares the sidecar in `launch.yml`.
    pub fn declared_by_buildpack(&self) -> bool {
        !self.process_types.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Log {
    pub format: LogFormat,
    pub level: String,
}

/// The route port: Gorouter (through Diego's Envoy, a plain TCP proxy) and container-to-container
/// callers with a policy for `$PORT` reach the app there, with whatever headers they chose. While
/// fronted, the buildpack's profile script moves the app to `app_port` and the sidecar serves
/// `$PORT`, stripping identity headers.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// As written (`auto` stays `auto` in the staged file, so a run-time mode override is
    /// judged again at start).
    pub fronting: Fronting,
    pub app_port: u16,
    /// `fronting` resolved: `on`, or `auto` and some listener sets X-Forwarded-Client-Cert.
    pub fronted: bool,
    /// Keep the canonical `X-Forwarded-Client-Cert` on the route port: what Gorouter sets on
    /// an identity-aware (RFC-0055) domain with `forwarded_client_cert: sanitize_set`. Any
    /// other spelling (`_` for `-`) is still stripped: Gorouter's sanitizing does not touch it.
    pub trust_gorouter_xfcc: bool,
}

impl Route {
    /// The staging line and `check` line for this decision, in CF's voice.
    pub fn describe(&self) -> String {
        if self.fronted && self.trust_gorouter_xfcc {
            format!(
                "Route port $PORT: fronted by the sidecar (Gorouter's X-Forwarded-Client-Cert kept from Diego's Envoy only, other spellings and peers stripped); the app listens on {}",
                self.app_port
            )
        } else if self.fronted {
            format!(
                "Route port $PORT: fronted by the sidecar (identity headers stripped); the app listens on {}",
                self.app_port
            )
        } else {
            "Route port $PORT: not fronted; the app listens on $PORT".to_owned()
        }
    }
}

/// What staging and `check` say when a listener sets X-Forwarded-Client-Cert but the route
/// port is not fronted: whoever calls the route can send the header themselves.
pub const UNFRONTED_XFCC_WARNING: &str = "a listener sets X-Forwarded-Client-Cert but the sidecar does not front the route port (route.fronting: off, or sidecar.process_types: []): anyone who reaches $PORT can send a forged X-Forwarded-Client-Cert (Gorouter passes it through by default), so the app cannot trust that header (remove route.fronting: off, or set xfcc: off on every listener)";

/// Resolves which source a listener field came from, for error messages.
struct Origins<'a> {
    file: Origin,
    env_used: &'a [&'static str],
}

impl Origins<'_> {
    fn of(&self, field: &str) -> Origin {
        let Some(var) = crate::ENV_OVERRIDES
            .iter()
            .find(|o| o.field == field)
            .map(|o| o.var)
        else {
            return self.file.clone();
        };
        if self.env_used.contains(&var) {
            Origin::Env(var.to_owned())
        } else {
            self.file.clone()
        }
    }
}

impl StagedConfig {
    /// Validates `app` and fills defaults. `file` names the YAML source in errors; `env_used`
    /// (from [`AppConfig::apply_env`]) attributes overridden fields to their variables;
    /// `app_port` is `$PORT` (or [`DEFAULT_APP_PORT`] at staging). Returns warnings beside the
    /// config: things that work but probably are not what the user meant.
    pub fn from_app(
        app: &AppConfig,
        file: &str,
        env_used: &[&'static str],
        app_port: u16,
    ) -> Result<(StagedConfig, Vec<String>), ConfigError> {
        let o = Origins {
            file: Origin::File(file.to_owned()),
            env_used,
        };
        let mut warnings = Vec::new();

        let admin_spec = app.admin.clone().unwrap_or_default();
        let admin = Admin {
            listen: admin_spec.listen.unwrap_or(HostPort {
                host: "127.0.0.1".into(),
                port: 8444,
            }),
            enabled: admin_spec.enabled.unwrap_or(true),
        };
        if !admin.listen.is_loopback() {
            return Err(ConfigError::invalid(
                &o.of("admin.listen"),
                "admin.listen",
                format!(
                    "\"{}\" is not a loopback address (the admin endpoint must stay inside the container, e.g. 127.0.0.1:8444)",
                    admin.listen
                ),
            ));
        }

        let specs = match &app.listeners {
            None => vec![ListenerSpec::default()],
            Some(l) => l.clone(),
        };
        let mut listeners = Vec::with_capacity(specs.len());
        for (i, spec) in specs.iter().enumerate() {
            listeners.push(listener(spec, i, &o, &mut warnings)?);
        }

        let mut egress = Vec::new();
        for (i, spec) in app.egress.clone().unwrap_or_default().iter().enumerate() {
            egress.push(egress_entry(spec, i, &o)?);
        }
        let egress_proxy = app
            .egress_proxy
            .as_ref()
            .map(|spec| egress_proxy(spec, &o))
            .transpose()?;
        if listeners.is_empty() && egress.is_empty() && egress_proxy.is_none() {
            return Err(ConfigError::invalid(
                &o.file,
                "listeners",
                "is empty and there is no egress entry: the sidecar would do nothing (remove `listeners: []` to get the default TLS listener on 8443)",
            ));
        }

        check_ports(
            &listeners,
            &egress,
            egress_proxy.as_ref(),
            &admin,
            app_port,
            &o,
        )?;

        let certificate = certificate(app.certificate.clone().unwrap_or_default(), &o)?;
        let trust_spec = app.trust.clone().unwrap_or_default();
        let trust = Trust {
            ca_files: trust_spec.ca_files.unwrap_or_default(),
            system_certs: trust_spec.system_certs.unwrap_or(true),
        };
        let verifies_peers = !egress.is_empty()
            || egress_proxy.is_some()
            || listeners.iter().any(|l| l.client_auth != ClientAuth::None);
        if verifies_peers && !trust.system_certs && trust.ca_files.is_empty() {
            return Err(ConfigError::invalid(
                &o.file,
                "trust",
                "system_certs is false and ca_files is empty, so no peer certificate can be verified (list CA files in trust.ca_files)",
            ));
        }

        let sidecar = sidecar(app.sidecar.clone().unwrap_or_default(), &o)?;
        let limits = limits(
            app.limits.clone().unwrap_or_default(),
            sidecar.memory,
            &o,
            &mut warnings,
        )?;
        let log = log(app.log.clone().unwrap_or_default(), &o)?;
        let taken = ports_in_use(&listeners, &egress, egress_proxy.as_ref(), &admin);
        let route = route(
            app.route.clone().unwrap_or_default(),
            &listeners,
            &taken,
            &sidecar,
            &o,
            &mut warnings,
        )?;

        Ok((
            StagedConfig {
                listeners,
                egress,
                egress_proxy,
                certificate,
                trust,
                admin,
                limits,
                sidecar,
                log,
                route,
            },
            warnings,
        ))
    }

    /// Parses a staged (or any) `tls-sidecar.yml`, applies run-time env overrides and validates.
    pub fn load_with_env(
        text: &str,
        file: &str,
        env: &crate::Env,
        app_port: u16,
    ) -> Result<(StagedConfig, Vec<String>, Vec<&'static str>), ConfigError> {
        let mut app = AppConfig::parse(text, file)?;
        let used = app.apply_env(env)?;
        let (staged, warnings) = StagedConfig::from_app(&app, file, &used, app_port)?;
        Ok((staged, warnings, used))
    }

    /// The file form: the same schema as an app's `tls-sidecar.yml`, every field explicit.
    pub fn to_app(&self) -> AppConfig {
        AppConfig {
            listeners: Some(
                self.listeners
                    .iter()
                    .map(|l| ListenerSpec {
                        port: Some(l.port),
                        upstream: l.upstream.clone(),
                        mode: Some(l.mode),
                        // Only when it is not what `allow` implies: a pinned `none` would contradict an
                        // `allow` added at run time with TLS_SIDECAR_ALLOW (cf set-env + restart).
                        client_auth: (l.client_auth
                            != ClientAuth::implied_by(!l.allow.is_empty() || !l.rules.is_empty()))
                        .then_some(l.client_auth),
                        allow: Some(l.allow.clone()),
                        // Only the field the mode uses: the other would read back as "set" and warn at
                        // every start that it is ignored.
                        xfcc: (l.mode == Mode::Http).then_some(l.xfcc),
                        proxy_protocol: (l.mode == Mode::Tcp).then_some(l.proxy_protocol),
                        rules: (!l.rules.is_empty()).then(|| {
                            l.rules
                                .iter()
                                .map(|r| RuleSpec {
                                    paths: (!r.paths.is_empty()).then(|| r.paths.clone()),
                                    methods: (!r.methods.is_empty()).then(|| r.methods.clone()),
                                    allow: Some(r.allow.clone()),
                                })
                                .collect()
                        }),
                    })
                    .collect(),
            ),
            egress: Some(
                self.egress
                    .iter()
                    .map(|e| EgressSpec {
                        name: Some(e.name.clone()),
                        listen: Some(e.listen.clone()),
                        target: Some(e.target.clone()),
                        expect: Some(e.expect.clone()),
                        unsafe_listen: Some(e.unsafe_listen),
                    })
                    .collect(),
            ),
            egress_proxy: self.egress_proxy.as_ref().map(|p| EgressProxySpec {
                listen: Some(p.listen.clone()),
                targets: Some(
                    p.targets
                        .iter()
                        .map(|t| ProxyTargetSpec {
                            hosts: Some(t.hosts.clone()),
                            ports: (!t.ports.is_empty()).then(|| t.ports.clone()),
                            expect: Some(t.expect.clone()),
                        })
                        .collect(),
                ),
            }),
            certificate: Some(CertificateSpec {
                source: Some(self.certificate.source),
                cert_file: self.certificate.cert_file.clone(),
                key_file: self.certificate.key_file.clone(),
                service: self.certificate.service.clone(),
                names: Some(self.certificate.names.clone()),
                internal_domains: Some(self.certificate.internal_domains.clone()),
                validity: Some(self.certificate.validity),
            }),
            trust: Some(TrustSpec {
                ca_files: Some(self.trust.ca_files.clone()),
                system_certs: Some(self.trust.system_certs),
            }),
            admin: Some(AdminSpec {
                listen: Some(self.admin.listen.clone()),
                enabled: Some(self.admin.enabled),
            }),
            limits: Some(LimitsSpec {
                max_connections: Some(self.limits.max_connections),
                handshake_timeout: Some(self.limits.handshake_timeout),
                idle_timeout: Some(self.limits.idle_timeout),
                drain_timeout: Some(self.limits.drain_timeout),
                connect_timeout: Some(self.limits.connect_timeout),
                listener_connections: self.limits.listener_connections,
                app_connections: Some(self.limits.app_connections),
                streams_per_connection: Some(self.limits.streams_per_connection),
            }),
            sidecar: Some(SidecarSpec {
                memory: Some(self.sidecar.memory),
                process_types: Some(self.sidecar.process_types.clone()),
            }),
            log: Some(LogSpec {
                format: Some(self.log.format),
                level: Some(self.log.level.clone()),
            }),
            route: Some(RouteSpec {
                fronting: Some(self.route.fronting),
                app_port: Some(self.route.app_port),
                trust_gorouter_xfcc: Some(self.route.trust_gorouter_xfcc),
            }),
        }
    }

    /// YAML text of [`Self::to_app`].
    pub fn to_yaml(&self) -> String {
        // Serializing plain structs of strings, numbers and lists cannot fail.
        serde_yaml_ng::to_string(&self.to_app()).unwrap_or_default()
    }
}

fn listener(
    spec: &ListenerSpec,
    i: usize,
    o: &Origins,
    warnings: &mut Vec<String>,
) -> Result<Listener, ConfigError> {
    let field = |f: &str| format!("listeners[{i}].{f}");
    let port = spec.port.unwrap_or(8443);
    if port == 0 {
        return Err(ConfigError::invalid(
            &o.of(&field("port")),
            field("port"),
            "0 is not a port number (expected 1-65535)",
        ));
    }
    let mode = spec.mode.unwrap_or(Mode::Tcp);
    let allow = spec.allow.clone().unwrap_or_default();
    if let Some(dns) = allow.iter().find(|s| matches!(s, Selector::Dns(_))) {
        return Err(ConfigError::invalid(
            &o.of(&field("allow")),
            field("allow"),
            format!(
                "\"{dns}\" is an egress selector; callers are identified by cf:app:<guid>, cf:space:<guid>, cf:org:<guid>, cf:same-space, cf:same-org or cf:any"
            ),
        ));
    }
    let rules = request_rules(spec, mode, &field, o, warnings)?;
    let access_rules = !allow.is_empty() || !rules.is_empty();
    let client_auth = match (spec.client_auth, access_rules) {
        (None, _) => ClientAuth::implied_by(access_rules),
        (Some(ClientAuth::Required), _) => ClientAuth::Required,
        (Some(other), true) => {
            return Err(ConfigError::invalid(
                &o.of(&field("client_auth")),
                field("client_auth"),
                format!(
                    "\"{other}\" contradicts `allow` or `rules`: access rules need a verified caller (use client_auth: required, or leave it out)"
                ),
            ));
        }
        (Some(other), false) => other,
    };
    if mode == Mode::Tcp && spec.xfcc.is_some() {
        warnings.push(format!(
            "{} is ignored in tcp mode: only http mode can add the X-Forwarded-Client-Cert header",
            field("xfcc")
        ));
    }
    if mode == Mode::Http && spec.proxy_protocol == Some(true) {
        warnings.push(format!(
            "{} is ignored in http mode: the caller's address goes in X-Forwarded-For",
            field("proxy_protocol")
        ));
    }
    Ok(Listener {
        port,
        upstream: spec.upstream.clone(),
        mode,
        client_auth,
        allow,
        xfcc: spec.xfcc.unwrap_or(Xfcc::Envoy),
        proxy_protocol: spec.proxy_protocol.unwrap_or(false),
        rules,
    })
}

/// A listener's `rules`: only in http mode, no empty lists, `allow` in every rule; a rule that
/// an earlier catch-all hides is a warning.
fn request_rules(
    spec: &ListenerSpec,
    mode: Mode,
    field: &dyn Fn(&str) -> String,
    o: &Origins,
    warnings: &mut Vec<String>,
) -> Result<Vec<RequestRule>, ConfigError> {
    let Some(specs) = &spec.rules else {
        return Ok(Vec::new());
    };
    let invalid = |f: String, why: String| ConfigError::invalid(&o.file, f, why);
    if mode != Mode::Http {
        return Err(invalid(
            field("rules"),
            "needs mode: http (a tcp-mode listener sees no requests; use allow for the whole connection)".to_owned(),
        ));
    }
    if specs.is_empty() {
        return Err(invalid(
            field("rules"),
            "is empty, which would refuse every request (leave it out, or add a rule)".to_owned(),
        ));
    }
    let mut rules = Vec::with_capacity(specs.len());
    let mut catch_all = None;
    for (j, r) in specs.iter().enumerate() {
        let f = |name: &str| field(&format!("rules[{j}].{name}"));
        for (name, empty) in [
            ("paths", r.paths.as_ref().is_some_and(Vec::is_empty)),
            ("methods", r.methods.as_ref().is_some_and(Vec::is_empty)),
        ] {
            if empty {
                return Err(invalid(
                    f(name),
                    format!(
                        "is empty, so the rule matches nothing (leave {name} out to match every one)"
                    ),
                ));
            }
        }
        let Some(allow) = r.allow.clone() else {
            return Err(invalid(
                f("allow"),
                "is required (e.g. allow: [cf:same-space]; [] lets nobody in)".to_owned(),
            ));
        };
        if let Some(dns) = allow.iter().find(|s| matches!(s, Selector::Dns(_))) {
            return Err(invalid(
                f("allow"),
                format!("\"{dns}\" is an egress selector; callers are identified by cf: selectors"),
            ));
        }
        let rule = RequestRule {
            paths: r.paths.clone().unwrap_or_default(),
            methods: r.methods.clone().unwrap_or_default(),
            allow,
        };
        if let Some(earlier) = catch_all {
            warnings.push(format!(
                "{} can never match: {} before it matches every request",
                field(&format!("rules[{j}]")),
                field(&format!("rules[{earlier}]"))
            ));
        } else if rule.matches_everything() {
            catch_all = Some(j);
        }
        rules.push(rule);
    }
    Ok(rules)
}

/// `egress_proxy`: loopback only, at least one target, each with hosts and `expect`.
fn egress_proxy(spec: &EgressProxySpec, o: &Origins) -> Result<EgressProxy, ConfigError> {
    let invalid = |field: String, why: String| ConfigError::invalid(&o.file, field, why);
    let listen = spec.listen.clone().unwrap_or(HostPort {
        host: "127.0.0.1".into(),
        port: 8446,
    });
    if !listen.is_loopback() {
        return Err(invalid(
            "egress_proxy.listen".to_owned(),
            format!(
                "\"{listen}\" is not a loopback address: anyone who can reach it would call other apps with this app's identity (use 127.0.0.1:<port>)"
            ),
        ));
    }
    let specs = spec.targets.clone().unwrap_or_default();
    if specs.is_empty() {
        return Err(invalid(
            "egress_proxy.targets".to_owned(),
            "is required: list the hosts the app may call through the proxy (e.g. targets: [{hosts: [\"*.apps.internal\"], ports: [8443], expect: [cf:same-space]}])".to_owned(),
        ));
    }
    let mut targets = Vec::with_capacity(specs.len());
    for (i, t) in specs.iter().enumerate() {
        let field = |f: &str| format!("egress_proxy.targets[{i}].{f}");
        let hosts = t.hosts.clone().unwrap_or_default();
        if hosts.is_empty() {
            return Err(invalid(
                field("hosts"),
                "is required (e.g. hosts: [\"*.apps.internal\"])".to_owned(),
            ));
        }
        let ports = t.ports.clone().unwrap_or_default();
        if t.ports.is_some() && ports.is_empty() {
            return Err(invalid(
                field("ports"),
                "is empty, so the entry matches nothing (leave ports out to match every port)"
                    .to_owned(),
            ));
        }
        if ports.contains(&0) {
            return Err(invalid(
                field("ports"),
                "0 is not a port number (expected 1-65535)".to_owned(),
            ));
        }
        let expect = t.expect.clone().unwrap_or_default();
        if expect.is_empty() {
            return Err(invalid(
                field("expect"),
                "is required: say which server identity to accept (e.g. expect: [cf:same-space], or [dns:*.apps.identity] to check the certificate against the requested host)".to_owned(),
            ));
        }
        targets.push(ProxyTarget {
            hosts,
            ports,
            expect,
        });
    }
    Ok(EgressProxy { listen, targets })
}

fn egress_entry(spec: &EgressSpec, i: usize, o: &Origins) -> Result<Egress, ConfigError> {
    let field = |f: &str| format!("egress[{i}].{f}");
    let missing = |f: &str, example: &str| {
        ConfigError::invalid(
            &o.file,
            field(f),
            format!("is required (e.g. {f}: {example})"),
        )
    };
    let name = spec
        .name
        .clone()
        .ok_or_else(|| missing("name", "backend"))?;
    let name_ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !name_ok {
        return Err(ConfigError::invalid(
            &o.file,
            field("name"),
            format!(
                "\"{name}\" is not allowed (lower-case letters, digits, '-' and '_', starting with a letter; it names the TLS_SIDECAR_EGRESS_<NAME> variable)"
            ),
        ));
    }
    let listen = spec
        .listen
        .clone()
        .ok_or_else(|| missing("listen", "127.0.0.1:9001"))?;
    let unsafe_listen = spec.unsafe_listen.unwrap_or(false);
    if !listen.is_loopback() && !unsafe_listen {
        return Err(ConfigError::invalid(
            &o.file,
            field("listen"),
            format!(
                "\"{listen}\" is not a loopback address: anyone who can reach it would borrow this app's identity (use 127.0.0.1:<port>, or set unsafe_listen: true)"
            ),
        ));
    }
    let target = spec
        .target
        .clone()
        .ok_or_else(|| missing("target", "backend.apps.internal:8443"))?;
    let expect = spec.expect.clone().unwrap_or_default();
    if expect.is_empty() {
        return Err(ConfigError::invalid(
            &o.file,
            field("expect"),
            "is required: say which server identity to accept (e.g. expect: [cf:app:<guid>] or [dns:backend.apps.internal])",
        ));
    }
    Ok(Egress {
        name,
        listen,
        target,
        expect,
        unsafe_listen,
    })
}

fn reserved(port: u16) -> Option<&'static str> {
    RESERVED_PORTS
        .iter()
        .find(|(lo, hi, _)| (*lo..=*hi).contains(&port))
        .map(|(_, _, why)| *why)
}

fn check_ports(
    listeners: &[Listener],
    egress: &[Egress],
    proxy: Option<&EgressProxy>,
    admin: &Admin,
    app_port: u16,
    o: &Origins,
) -> Result<(), ConfigError> {
    let mut taken: Vec<(u16, String)> = Vec::new();
    if admin.enabled {
        taken.push((admin.listen.port, "admin.listen".to_owned()));
    }
    for (i, l) in listeners.iter().enumerate() {
        let field = format!("listeners[{i}].port");
        let origin = o.of(&field);
        if let Some(why) = reserved(l.port) {
            return Err(ConfigError::invalid(
                &origin,
                field,
                format!("{} is reserved: {why} (pick another, e.g. 8443)", l.port),
            ));
        }
        if l.port == app_port {
            return Err(ConfigError::invalid(
                &origin,
                field,
                format!(
                    "{} is the app's own $PORT: the sidecar forwards to it and cannot also listen on it (pick another, e.g. 8443)",
                    l.port
                ),
            ));
        }
        if let Some((_, other)) = taken.iter().find(|(p, _)| *p == l.port) {
            return Err(ConfigError::invalid(
                &origin,
                field,
                format!("{} is already used by {other}", l.port),
            ));
        }
        taken.push((l.port, field));
    }
    if admin.enabled
        && let Some(why) = reserved(admin.listen.port)
    {
        return Err(ConfigError::invalid(
            &o.file,
            "admin.listen",
            format!(
                "port {} is reserved: {why} (pick another, e.g. 127.0.0.1:8444)",
                admin.listen.port
            ),
        ));
    }
    // Loopback listeners: each egress entry, then the egress proxy.
    let loopback = egress
        .iter()
        .enumerate()
        .map(|(i, e)| (e.listen.port, format!("egress[{i}].listen")))
        .chain(proxy.map(|p| (p.listen.port, "egress_proxy.listen".to_owned())));
    for (port, field) in loopback {
        if let Some(why) = reserved(port) {
            return Err(ConfigError::invalid(
                &o.file,
                field,
                format!("port {port} is reserved: {why} (pick another, e.g. 127.0.0.1:9001)"),
            ));
        }
        if port == app_port {
            return Err(ConfigError::invalid(
                &o.file,
                field,
                format!("port {port} is the app's own $PORT"),
            ));
        }
        if let Some((_, other)) = taken.iter().find(|(p, _)| *p == port) {
            return Err(ConfigError::invalid(
                &o.file,
                field,
                format!("port {port} is already used by {other}"),
            ));
        }
        taken.push((port, field));
    }
    for (i, e) in egress.iter().enumerate() {
        if let Some((j, p)) = egress[..i]
            .iter()
            .enumerate()
            .find(|(_, p)| p.env_var() == e.env_var())
        {
            // `a-b` and `a_b` export the same variable: the app would see only one of them.
            let problem = if p.name == e.name {
                format!("\"{}\" is used twice", e.name)
            } else {
                format!(
                    "\"{}\" and egress[{j}].name \"{}\" both export {} (names differing only in '-' and '_' collide); rename one",
                    e.name,
                    p.name,
                    e.env_var()
                )
            };
            return Err(ConfigError::invalid(
                &o.file,
                format!("egress[{i}].name"),
                problem,
            ));
        }
    }
    if admin.enabled && admin.listen.port == app_port {
        return Err(ConfigError::invalid(
            &o.file,
            "admin.listen",
            format!("port {} is the app's own $PORT", app_port),
        ));
    }
    Ok(())
}

fn certificate(spec: CertificateSpec, o: &Origins) -> Result<Certificate, ConfigError> {
    let source = spec.source.unwrap_or(CertificateSource::Instance);
    let need = |v: &Option<String>, f: &str, why: &str| -> Result<(), ConfigError> {
        if v.as_deref().is_none_or(|s| s.trim().is_empty()) {
            Err(ConfigError::invalid(
                &o.file,
                format!("certificate.{f}"),
                format!("is required when source is {source}: {why}"),
            ))
        } else {
            Ok(())
        }
    };
    match source {
        CertificateSource::Instance => {}
        CertificateSource::Files => {
            need(
                &spec.cert_file,
                "cert_file",
                "the PEM certificate chain, relative to the app dir",
            )?;
            need(
                &spec.key_file,
                "key_file",
                "the PEM private key, relative to the app dir",
            )?;
        }
        CertificateSource::Service | CertificateSource::Minted => {
            need(
                &spec.service,
                "service",
                "the name of a bound service instance (cf bind-service)",
            )?;
        }
    }
    let names = spec.names.unwrap_or_default();
    if let Some(bad) = names.iter().find(|n| !valid_dns_name(n)) {
        return Err(ConfigError::invalid(
            &o.file,
            "certificate.names",
            format!("\"{bad}\" is not a DNS name"),
        ));
    }
    let internal_domains = spec
        .internal_domains
        .unwrap_or_else(|| vec!["apps.internal".to_owned()]);
    if let Some(bad) = internal_domains.iter().find(|n| !valid_dns_name(n)) {
        return Err(ConfigError::invalid(
            &o.file,
            "certificate.internal_domains",
            format!("\"{bad}\" is not a DNS domain"),
        ));
    }
    let validity = spec.validity.unwrap_or(Millis::secs(24 * 3600));
    if validity < Millis::secs(3600) {
        return Err(ConfigError::invalid(
            &o.file,
            "certificate.validity",
            format!("\"{validity}\" is too short (at least 1h)"),
        ));
    }
    Ok(Certificate {
        source,
        cert_file: spec.cert_file,
        key_file: spec.key_file,
        service: spec.service,
        names,
        internal_domains,
        validity,
    })
}

/// Memory the sidecar process needs before its first connection: code, runtime, certificates
/// (6.7 MB measured idle for the static build, docs/benchmarks.md), with room to spare.
const BASE_MEMORY_MB: u32 = 8;

/// Memory budgeted per connection: measured 19 KiB per idle TLS connection in tcp mode and
/// 30 KiB in http mode, plus the buffers of one that is moving data.
const CONNECTION_MEMORY_KIB: u32 = 32;

/// The default `limits.max_connections`: as many connections as `sidecar.memory` covers. CF
/// gives the app what is left after the sidecar's memory (its `MEMORY_LIMIT` shrinks by it) in
/// one shared container limit, so a sidecar that outgrows its share under a connection flood
/// takes memory the app was promised, and can get the whole instance killed.
fn default_max_connections(memory: MemoryMb) -> u32 {
    // In u64: a memory of a few TB in KiB does not fit in u32 (the fuzzer found that).
    let usable_kib = u64::from(memory.0.saturating_sub(BASE_MEMORY_MB).max(1)) * 1024;
    u32::try_from(usable_kib / u64::from(CONNECTION_MEMORY_KIB))
        .unwrap_or(u32::MAX)
        .max(32)
}

fn limits(
    spec: LimitsSpec,
    memory: MemoryMb,
    o: &Origins,
    warnings: &mut Vec<String>,
) -> Result<Limits, ConfigError> {
    let positive = |v: Millis, f: &str| -> Result<Millis, ConfigError> {
        if v.0 == 0 {
            Err(ConfigError::invalid(
                &o.file,
                format!("limits.{f}"),
                "0 is not allowed (use a positive duration, e.g. 10s)",
            ))
        } else {
            Ok(v)
        }
    };
    let covered = default_max_connections(memory);
    let max_connections = spec.max_connections.unwrap_or(covered);
    if max_connections == 0 {
        return Err(ConfigError::invalid(
            &o.file,
            "limits.max_connections",
            format!("0 would refuse every connection (e.g. {covered})"),
        ));
    }
    if max_connections > covered {
        let needs = BASE_MEMORY_MB + max_connections.div_ceil(1024 / CONNECTION_MEMORY_KIB);
        warnings.push(format!(
            "limits.max_connections {max_connections} can take about {needs} MB ({CONNECTION_MEMORY_KIB} KiB per connection), more than sidecar.memory ({memory} MB) covers: set sidecar.memory: {needs}M, or leave max_connections out to get the {covered} that {memory} MB covers"
        ));
    }
    let drain_timeout = positive(
        spec.drain_timeout.unwrap_or(Millis::secs(8)),
        "drain_timeout",
    )?;
    let at_least_one = |v: Option<u32>, f: &str| -> Result<Option<u32>, ConfigError> {
        match v {
            Some(0) => Err(ConfigError::invalid(
                &o.file,
                format!("limits.{f}"),
                "0 would refuse everything (leave it out for the default)",
            )),
            v => Ok(v),
        }
    };
    let listener_connections = at_least_one(spec.listener_connections, "listener_connections")?;
    // In flight to the app, a request holds its client connection and an app connection:
    // a quarter of the connections the memory covers keeps that within it.
    let app_connections = at_least_one(spec.app_connections, "app_connections")?
        .unwrap_or_else(|| (max_connections / 4).max(16));
    let streams_per_connection =
        at_least_one(spec.streams_per_connection, "streams_per_connection")?
            .unwrap_or_else(|| (app_connections / 4).clamp(8, 100));
    if drain_timeout >= Millis::secs(10) {
        warnings.push(format!("limits.drain_timeout {drain_timeout} is not below CF's 10 s stop timeout: CF kills the instance before the drain can finish"));
    }
    Ok(Limits {
        max_connections,
        handshake_timeout: positive(
            spec.handshake_timeout.unwrap_or(Millis::secs(10)),
            "handshake_timeout",
        )?,
        idle_timeout: positive(
            spec.idle_timeout.unwrap_or(Millis::secs(300)),
            "idle_timeout",
        )?,
        drain_timeout,
        connect_timeout: positive(
            spec.connect_timeout.unwrap_or(Millis::secs(5)),
            "connect_timeout",
        )?,
        listener_connections,
        app_connections,
        streams_per_connection,
    })
}

fn sidecar(spec: SidecarSpec, o: &Origins) -> Result<Sidecar, ConfigError> {
    let process_types = spec.process_types.unwrap_or_else(|| vec!["web".to_owned()]);
    if let Some(bad) = process_types.iter().find(|t| {
        t.is_empty()
            || !t
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    }) {
        return Err(ConfigError::invalid(
            &o.file,
            "sidecar.process_types",
            format!("\"{bad}\" is not a process type name (e.g. web, worker)"),
        ));
    }
    Ok(Sidecar {
        memory: spec.memory.unwrap_or(MemoryMb(32)),
        process_types,
    })
}

/// Whether some listener tells the app who called (the header a forger would send too).
fn sets_xfcc(listeners: &[Listener]) -> bool {
    listeners
        .iter()
        .any(|l| l.mode == Mode::Http && l.xfcc != Xfcc::Off)
}

/// Every port the sidecar binds, with the field that sets it.
fn ports_in_use(
    listeners: &[Listener],
    egress: &[Egress],
    proxy: Option<&EgressProxy>,
    admin: &Admin,
) -> Vec<(u16, String)> {
    let mut taken: Vec<(u16, String)> = listeners
        .iter()
        .enumerate()
        .map(|(i, l)| (l.port, format!("listeners[{i}].port")))
        .collect();
    taken.extend(
        egress
            .iter()
            .enumerate()
            .map(|(i, e)| (e.listen.port, format!("egress[{i}].listen"))),
    );
    taken.extend(proxy.map(|p| (p.listen.port, "egress_proxy.listen".to_owned())));
    if admin.enabled {
        taken.push((admin.listen.port, "admin.listen".to_owned()));
    }
    taken
}

fn route(
    spec: RouteSpec,
    listeners: &[Listener],
    taken: &[(u16, String)],
    sidecar: &Sidecar,
    o: &Origins,
    warnings: &mut Vec<String>,
) -> Result<Route, ConfigError> {
    let fronting = spec.fronting.unwrap_or(Fronting::Auto);
    let app_port = spec.app_port.unwrap_or(DEFAULT_ROUTE_APP_PORT);
    let invalid = |field: &str, text: String| ConfigError::invalid(&o.file, field, text);
    if app_port == 0 {
        return Err(invalid(
            "route.app_port",
            "0 is not a port number (expected 1-65535)".to_owned(),
        ));
    }
    if let Some(why) = reserved(app_port) {
        return Err(invalid(
            "route.app_port",
            format!("{app_port} is reserved: {why} (pick another, e.g. {DEFAULT_ROUTE_APP_PORT})"),
        ));
    }
    if app_port == DEFAULT_APP_PORT {
        return Err(invalid(
            "route.app_port",
            format!(
                "{app_port} is CF's route port $PORT, which the sidecar serves while fronting (pick another, e.g. {DEFAULT_ROUTE_APP_PORT})"
            ),
        ));
    }
    // The profile script that moves the app runs only for the process types the sidecar runs
    // beside: with none declared here, nothing would serve the route port.
    if fronting == Fronting::On && !sidecar.declared_by_buildpack() {
        return Err(invalid(
            "route.fronting",
            "\"on\" needs the sidecar declared by the buildpack, but sidecar.process_types is empty (list the process types, or set route.fronting: off)".to_owned(),
        ));
    }
    let fronted = match fronting {
        Fronting::On => true,
        Fronting::Off => false,
        Fronting::Auto => sidecar.declared_by_buildpack() && sets_xfcc(listeners),
    };
    if fronted {
        if let Some((_, other)) = taken.iter().find(|(p, _)| *p == app_port) {
            return Err(invalid(
                "route.app_port",
                format!("{app_port} is already used by {other}"),
            ));
        }
    } else if sets_xfcc(listeners) {
        warnings.push(UNFRONTED_XFCC_WARNING.to_owned());
    }
    let trust_gorouter_xfcc = spec.trust_gorouter_xfcc.unwrap_or(false);
    if trust_gorouter_xfcc && !fronted {
        warnings.push(
            "route.trust_gorouter_xfcc is ignored: the sidecar does not front the route port, so the app gets every header sent there".to_owned(),
        );
    }
    Ok(Route {
        fronting,
        app_port,
        fronted,
        trust_gorouter_xfcc,
    })
}

fn log(spec: LogSpec, o: &Origins) -> Result<Log, ConfigError> {
    let level = spec
        .level
        .unwrap_or_else(|| "info".to_owned())
        .to_ascii_lowercase();
    if !["error", "warn", "info", "debug", "trace"].contains(&level.as_str()) {
        return Err(ConfigError::invalid(
            &o.file,
            "log.level",
            format!(
                "\"{level}\" is not allowed (expected one of: error, warn, info, debug, trace)"
            ),
        ));
    }
    Ok(Log {
        format: spec.format.unwrap_or(LogFormat::Logfmt),
        level,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Env;

    fn stage(yaml: &str) -> Result<StagedConfig, ConfigError> {
        let app = AppConfig::parse(yaml, "tls-sidecar.yml")?;
        StagedConfig::from_app(&app, "tls-sidecar.yml", &[], DEFAULT_APP_PORT).map(|(s, _)| s)
    }

    #[test]
    fn the_egress_proxy_stages_on_loopback_picks_the_first_target_and_survives_the_staged_file() {
        let s = stage(
            "listeners: []\negress_proxy:\n  targets:\n    \
             - {hosts: [\"*.apps.internal\"], ports: [8443], expect: [cf:same-space]}\n    \
             - {hosts: [\"*.apps.identity\", billing.example.com], expect: [\"dns:*.apps.identity\"]}\n",
        )
        .unwrap();
        let proxy = s.egress_proxy.as_ref().unwrap();
        assert_eq!(proxy.listen.to_string(), "127.0.0.1:8446");
        assert_eq!(proxy.url(), "http://127.0.0.1:8446");
        assert_eq!(proxy.target("backend.apps.internal", 8443), Some(0));
        assert_eq!(proxy.target("0.backend.apps.internal", 8443), Some(0));
        assert_eq!(proxy.target("backend.apps.internal", 8080), None);
        assert_eq!(proxy.target("shop.apps.identity", 443), Some(1));
        assert_eq!(proxy.target("Billing.Example.com", 8443), Some(1));
        assert_eq!(proxy.target("example.com", 443), None);
        let again = stage(&s.to_yaml()).unwrap();
        assert_eq!(again.egress_proxy, s.egress_proxy);
    }

    #[test]
    fn a_bad_egress_proxy_is_refused_with_the_field_and_the_fix() {
        let target = "{hosts: [\"*.apps.internal\"], expect: [cf:any]}";
        for (yaml, field, says) in [
            (format!("egress_proxy:\n  listen: 0.0.0.0:8446\n  targets: [{target}]\n"), "egress_proxy.listen", "not a loopback address"),
            ("egress_proxy: {}\n".to_owned(), "egress_proxy.targets", "is required"),
            ("egress_proxy:\n  targets: [{expect: [cf:any]}]\n".to_owned(), "egress_proxy.targets[0].hosts", "is required"),
            ("egress_proxy:\n  targets: [{hosts: [a.apps.internal]}]\n".to_owned(), "egress_proxy.targets[0].expect", "is required"),
            ("egress_proxy:\n  targets: [{hosts: [a.apps.internal], ports: [], expect: [cf:any]}]\n".to_owned(), "egress_proxy.targets[0].ports", "is empty"),
            ("egress_proxy:\n  targets: [{hosts: [\"*\"], expect: [cf:any]}]\n".to_owned(), "egress_proxy.targets[0].hosts", "not a host name"),
            (format!("admin:\n  listen: 127.0.0.1:8446\negress_proxy:\n  targets: [{target}]\n"), "egress_proxy.listen", "already used by admin.listen"),
            (format!("egress_proxy:\n  listen: 127.0.0.1:61001\n  targets: [{target}]\n"), "egress_proxy.listen", "reserved"),
        ] {
            let e = stage(&yaml).unwrap_err().to_string();
            assert!(e.contains(field) && e.contains(says), "{yaml}: {e}");
        }
    }

    #[test]
    fn request_rules_stage_in_order_imply_client_auth_and_survive_the_staged_file() {
        let yaml = "listeners:\n  - mode: http\n    rules:\n      \
            - {paths: [/admin/*], methods: [POST, PUT, DELETE], allow: [cf:app:6e8e1d8a-0b5a-4c56-9e5b-4f1c2d3e4f50]}\n      \
            - {paths: [/api/*, /health], allow: [cf:same-space]}\n      \
            - {allow: []}\n";
        let (s, warnings) = StagedConfig::from_app(
            &AppConfig::parse(yaml, "f").unwrap(),
            "f",
            &[],
            DEFAULT_APP_PORT,
        )
        .unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        let l = &s.listeners[0];
        assert_eq!(l.client_auth, ClientAuth::Required);
        let described: Vec<String> = l.rules.iter().map(RequestRule::describe).collect();
        assert_eq!(
            described,
            [
                "POST,PUT,DELETE /admin/* -> cf:app:6e8e1d8a-0b5a-4c56-9e5b-4f1c2d3e4f50",
                "any method /api/*,/health -> cf:same-space",
                "any method any path -> nobody",
            ]
        );
        assert!(
            l.rules[0].matches("POST", "/admin/users")
                && !l.rules[0].matches("GET", "/admin/users")
        );
        assert!(l.rules[1].matches("GET", "/api") && !l.rules[1].matches("GET", "/apis"));
        let again = stage(&s.to_yaml()).unwrap();
        assert_eq!(again.listeners[0].rules, l.rules);
        assert_eq!(again.listeners[0].client_auth, ClientAuth::Required);
    }

    #[test]
    fn bad_request_rules_are_refused_with_the_field_and_the_fix() {
        for (yaml, field, says) in [
            (
                "listeners:\n  - rules: [{allow: [cf:any]}]\n",
                "listeners[0].rules",
                "needs mode: http",
            ),
            (
                "listeners:\n  - mode: http\n    rules: []\n",
                "listeners[0].rules",
                "is empty",
            ),
            (
                "listeners:\n  - mode: http\n    rules: [{paths: [], allow: [cf:any]}]\n",
                "listeners[0].rules[0].paths",
                "leave paths out",
            ),
            (
                "listeners:\n  - mode: http\n    rules: [{methods: [], allow: [cf:any]}]\n",
                "listeners[0].rules[0].methods",
                "leave methods out",
            ),
            (
                "listeners:\n  - mode: http\n    rules: [{paths: [/x]}]\n",
                "listeners[0].rules[0].allow",
                "is required",
            ),
            (
                "listeners:\n  - mode: http\n    rules: [{allow: [dns:x.example.com]}]\n",
                "listeners[0].rules[0].allow",
                "egress selector",
            ),
            (
                "listeners:\n  - mode: http\n    rules: [{paths: [api/*], allow: [cf:any]}]\n",
                "listeners[0].rules[0].paths",
                "does not start with /",
            ),
            (
                "listeners:\n  - mode: http\n    rules: [{paths: [/a/../b], allow: [cf:any]}]\n",
                "listeners[0].rules[0].paths",
                "write /b",
            ),
            (
                "listeners:\n  - mode: http\n    rules: [{methods: [FETCH], allow: [cf:any]}]\n",
                "listeners[0].rules[0].methods",
                "not an HTTP method",
            ),
            (
                "listeners:\n  - mode: http\n    client_auth: optional\n    rules: [{allow: [cf:any]}]\n",
                "listeners[0].client_auth",
                "contradicts",
            ),
        ] {
            let e = stage(yaml).unwrap_err().to_string();
            assert!(e.contains(field) && e.contains(says), "{yaml}: {e}");
        }
    }

    #[test]
    fn a_rule_after_a_catch_all_is_a_warning() {
        let yaml = "listeners:\n  - mode: http\n    rules:\n      - {paths: [/*], allow: [cf:any]}\n      - {paths: [/admin/*], allow: []}\n";
        let (_, warnings) = StagedConfig::from_app(
            &AppConfig::parse(yaml, "f").unwrap(),
            "f",
            &[],
            DEFAULT_APP_PORT,
        )
        .unwrap();
        assert_eq!(
            warnings,
            [
                "listeners[0].rules[1] can never match: listeners[0].rules[0] before it matches every request"
            ]
        );
    }

    #[test]
    fn no_file_gives_one_tcp_listener_on_8443_without_client_auth() {
        let s = stage("").unwrap();
        assert_eq!(s.listeners.len(), 1);
        let l = &s.listeners[0];
        assert_eq!(
            (l.port, l.mode, l.client_auth, l.upstream.clone()),
            (8443, Mode::Tcp, ClientAuth::None, None)
        );
        assert_eq!(s.sidecar.memory, MemoryMb(32));
        assert_eq!(s.sidecar.process_types, ["web"]);
        assert_eq!(s.admin.listen.to_string(), "127.0.0.1:8444");
        assert_eq!(s.limits.drain_timeout, Millis::secs(8));
    }

    #[test]
    fn allow_implies_required_client_auth_and_contradictions_are_rejected() {
        let s = stage("listeners:\n  - allow: [cf:same-space]\n").unwrap();
        assert_eq!(s.listeners[0].client_auth, ClientAuth::Required);
        let e = stage("listeners:\n  - allow: [cf:any]\n    client_auth: optional\n").unwrap_err();
        assert!(
            e.to_string().contains("listeners[0].client_auth")
                && e.to_string().contains("contradicts"),
            "{e}"
        );
    }

    #[test]
    fn reserved_duplicate_and_app_ports_are_rejected_with_the_reason() {
        for (yaml, want) in [
            (
                "listeners:\n  - port: 61443\n",
                "61443 is reserved: Diego's container-to-container TLS port",
            ),
            ("listeners:\n  - port: 2222\n", "CF's SSH port"),
            (
                "listeners:\n  - port: 61050\n",
                "Diego's per-container Envoy",
            ),
            ("listeners:\n  - port: 8080\n", "the app's own $PORT"),
            (
                "listeners:\n  - port: 9443\n  - port: 9443\n",
                "listeners[1].port: 9443 is already used by listeners[0].port",
            ),
            (
                "listeners:\n  - port: 8444\n",
                "already used by admin.listen",
            ),
        ] {
            let e = stage(yaml).unwrap_err().to_string();
            assert!(e.contains(want), "{yaml}: {e}");
        }
    }

    #[test]
    fn an_env_override_error_is_attributed_to_the_variable() {
        let env: Env = [("TLS_SIDECAR_PORT".to_owned(), "61443".to_owned())].into();
        let e = StagedConfig::load_with_env("", "tls-sidecar.yml", &env, 8080).unwrap_err();
        assert_eq!(e.origin(), Some(Origin::Env("TLS_SIDECAR_PORT".into())));
    }

    #[test]
    fn egress_needs_loopback_listen_and_an_expected_identity() {
        let e = stage("egress:\n  - name: backend\n    listen: 0.0.0.0:9001\n    target: b.apps.internal:8443\n    expect: [cf:any]\n").unwrap_err();
        assert!(e.to_string().contains("not a loopback address"), "{e}");
        let e = stage("egress:\n  - name: backend\n    listen: 127.0.0.1:9001\n    target: b.apps.internal:8443\n").unwrap_err();
        assert!(
            e.to_string().contains("egress[0].expect: is required"),
            "{e}"
        );
        let s = stage("egress:\n  - name: my-backend\n    listen: 127.0.0.1:9001\n    target: b.apps.internal:8443\n    expect: [dns:b.apps.internal]\n").unwrap();
        assert_eq!(s.egress[0].env_var(), "TLS_SIDECAR_EGRESS_MY_BACKEND");
    }

    #[test]
    fn the_staged_file_reads_back_to_the_same_config() {
        let s = stage(
            "listeners:\n  - port: 9443\n    mode: http\n    allow: [cf:same-space]\n    upstream: 127.0.0.1:3000\n\
             certificate:\n  source: files\n  cert_file: c.pem\n  key_file: k.pem\n\
             limits:\n  idle_timeout: 90s\nsidecar:\n  memory: 48M\n",
        )
        .unwrap();
        let text = s.to_yaml();
        let back = stage(&text).unwrap();
        assert_eq!(back, s, "{text}");
        assert!(text.contains("memory: 48\n"), "{text}");
    }

    #[test]
    fn an_empty_process_type_list_leaves_the_declaration_to_the_app_manifest() {
        let s = stage("sidecar:\n  process_types: []\n").unwrap();
        assert!(!s.sidecar.declared_by_buildpack());
        assert!(stage("").unwrap().sidecar.declared_by_buildpack());
    }

    #[test]
    fn a_staged_default_config_reads_back_without_warnings() {
        let s = stage("listeners:\n  - port: 9443\n  - port: 9444\n    mode: http\n").unwrap();
        let app = AppConfig::parse(&s.to_yaml(), "staged").unwrap();
        let (back, warnings) =
            StagedConfig::from_app(&app, "staged", &[], DEFAULT_APP_PORT).unwrap();
        assert_eq!(back, s);
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn no_variable_changes_or_drops_request_rules() {
        let staged = stage(
            "listeners:\n  - mode: http\n    rules: [{paths: [/admin/*], allow: [cf:same-space]}]\n",
        )
        .unwrap();
        let env = |pairs: &[(&str, &str)]| -> Env {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let yaml = staged.to_yaml();
        let (s, _, _) = StagedConfig::load_with_env(
            &yaml,
            "staged",
            &env(&[
                ("TLS_SIDECAR_ALLOW", "cf:any"),
                ("TLS_SIDECAR_CLIENT_AUTH", "required"),
            ]),
            8080,
        )
        .unwrap();
        assert_eq!(s.listeners[0].rules, staged.listeners[0].rules);
        // Switching the listener to tcp would silently drop them: refused instead.
        let e = StagedConfig::load_with_env(
            &yaml,
            "staged",
            &env(&[("TLS_SIDECAR_MODE", "tcp")]),
            8080,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("listeners[0].rules: needs mode: http"),
            "{e}"
        );
        // And client_auth cannot be lowered below what rules need.
        let e = StagedConfig::load_with_env(
            &yaml,
            "staged",
            &env(&[("TLS_SIDECAR_CLIENT_AUTH", "optional")]),
            8080,
        )
        .unwrap_err();
        assert!(e.to_string().contains("TLS_SIDECAR_CLIENT_AUTH"), "{e}");
    }

    #[test]
    fn tls_sidecar_allow_at_run_time_turns_on_client_auth_in_a_staged_file() {
        for file in [
            "listeners:\n  - port: 8443\n",
            "listeners:\n  - port: 8443\n    client_auth: optional\n",
        ] {
            let staged = stage(file).unwrap().to_yaml();
            let env: Env = [("TLS_SIDECAR_ALLOW".to_owned(), "cf:same-space".to_owned())].into();
            let (s, _, used) = StagedConfig::load_with_env(&staged, "staged", &env, 8080).unwrap();
            assert_eq!(used, ["TLS_SIDECAR_ALLOW"]);
            assert_eq!(s.listeners[0].client_auth, ClientAuth::Required, "{file}");
            assert_eq!(s.listeners[0].allow, [Selector::SameSpace]);
        }
        // An explicit TLS_SIDECAR_CLIENT_AUTH still contradicts and is reported.
        let env: Env = [
            ("TLS_SIDECAR_ALLOW", "cf:any"),
            ("TLS_SIDECAR_CLIENT_AUTH", "optional"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let e = StagedConfig::load_with_env("", "staged", &env, 8080).unwrap_err();
        assert_eq!(
            e.origin(),
            Some(Origin::Env("TLS_SIDECAR_CLIENT_AUTH".into())),
            "{e}"
        );
    }

    #[test]
    fn a_drain_timeout_past_cf_kill_time_warns() {
        let app = AppConfig::parse("limits:\n  drain_timeout: 12s\n", "f").unwrap();
        let (_, warnings) = StagedConfig::from_app(&app, "f", &[], 8080).unwrap();
        assert!(warnings[0].contains("10 s"), "{warnings:?}");
    }

    #[test]
    fn max_connections_defaults_to_what_the_declared_sidecar_memory_covers() {
        // (memory - 8 MB) at 32 KiB per connection.
        assert_eq!(stage("").unwrap().limits.max_connections, 768);
        let big = stage("sidecar:\n  memory: 264M\n").unwrap();
        assert_eq!(big.limits.max_connections, 8192);
        // Below the base memory, still a usable floor.
        let tiny = stage("sidecar:\n  memory: 4\n").unwrap();
        assert_eq!(tiny.limits.max_connections, 32);
        // The largest memory a config can say does not overflow.
        let huge = stage("sidecar:\n  memory: 4194303G\n").unwrap();
        assert_eq!(huge.limits.max_connections, u32::MAX);
        // An explicit value wins, whatever the memory.
        let explicit = stage("limits:\n  max_connections: 100\n").unwrap();
        assert_eq!(explicit.limits.max_connections, 100);
    }

    fn stage_warned(yaml: &str) -> (StagedConfig, Vec<String>) {
        let app = AppConfig::parse(yaml, "tls-sidecar.yml").unwrap();
        StagedConfig::from_app(&app, "tls-sidecar.yml", &[], DEFAULT_APP_PORT).unwrap()
    }

    #[test]
    fn the_route_port_is_fronted_by_default_exactly_when_a_listener_sets_xfcc() {
        // http mode sets XFCC (envoy) by default: a forged one on $PORT must not reach the app.
        let (s, warnings) = stage_warned("listeners:\n  - mode: http\n");
        assert_eq!(
            s.route,
            Route {
                fronting: Fronting::Auto,
                app_port: DEFAULT_ROUTE_APP_PORT,
                fronted: true,
                trust_gorouter_xfcc: false,
            }
        );
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(
            s.route.describe(),
            "Route port $PORT: fronted by the sidecar (identity headers stripped); the app listens on 8081"
        );
        // Nothing tells the app who called: the app keeps $PORT.
        for yaml in [
            "",
            "listeners:\n  - mode: http\n    xfcc: off\n",
            "listeners:\n  - mode: tcp\n",
        ] {
            let (s, warnings) = stage_warned(yaml);
            assert!(!s.route.fronted, "{yaml}");
            assert!(warnings.is_empty(), "{yaml}: {warnings:?}");
        }
        let (s, _) = stage_warned("route:\n  fronting: on\n  app_port: 9090\n");
        assert!(s.route.fronted);
        assert_eq!(s.route.app_port, 9090);
        let (s, warnings) =
            stage_warned("listeners:\n  - mode: http\nroute:\n  trust_gorouter_xfcc: true\n");
        assert!(s.route.fronted && s.route.trust_gorouter_xfcc && warnings.is_empty());
        assert_eq!(
            s.route.describe(),
            "Route port $PORT: fronted by the sidecar (Gorouter's X-Forwarded-Client-Cert kept from Diego's Envoy only, other spellings and peers stripped); the app listens on 8081"
        );
        let (_, warnings) = stage_warned("route:\n  trust_gorouter_xfcc: true\n");
        assert!(
            warnings[0].starts_with("route.trust_gorouter_xfcc is ignored"),
            "{warnings:?}"
        );
    }

    #[test]
    fn an_unfronted_route_port_beside_an_xfcc_listener_warns_that_xfcc_can_be_forged() {
        for yaml in [
            "listeners:\n  - mode: http\nroute:\n  fronting: off\n",
            "listeners:\n  - mode: http\n    xfcc: raw\nsidecar:\n  process_types: []\n",
        ] {
            let (s, warnings) = stage_warned(yaml);
            assert!(!s.route.fronted, "{yaml}");
            assert_eq!(warnings, [UNFRONTED_XFCC_WARNING], "{yaml}");
        }
        assert!(UNFRONTED_XFCC_WARNING.contains("forged X-Forwarded-Client-Cert"));
    }

    #[test]
    fn a_route_app_port_that_collides_or_is_reserved_is_rejected() {
        for (yaml, want) in [
            (
                "route:\n  fronting: on\n  app_port: 8080\n",
                "route.app_port: 8080 is CF's route port $PORT",
            ),
            (
                "route:\n  fronting: on\n  app_port: 61001\n",
                "route.app_port: 61001 is reserved: Diego's per-container Envoy",
            ),
            (
                "route:\n  fronting: on\n  app_port: 2222\n",
                "2222 is reserved: CF's SSH port",
            ),
            (
                "route:\n  fronting: on\n  app_port: 8443\n",
                "route.app_port: 8443 is already used by listeners[0].port",
            ),
            (
                "route:\n  fronting: on\n  app_port: 8444\n",
                "route.app_port: 8444 is already used by admin.listen",
            ),
            (
                "route:\n  fronting: on\n  app_port: 9001\negress:\n  - name: b\n    listen: 127.0.0.1:9001\n    target: b.apps.internal:8443\n    expect: [cf:any]\n",
                "route.app_port: 9001 is already used by egress[0].listen",
            ),
            (
                "route:\n  app_port: 0\n",
                "route.app_port: 0 is not a port number",
            ),
            (
                "route:\n  fronting: on\nsidecar:\n  process_types: []\n",
                "route.fronting: \"on\" needs the sidecar declared by the buildpack",
            ),
        ] {
            let e = stage(yaml).unwrap_err().to_string();
            assert!(e.contains(want), "{yaml}: {e}");
        }
        // Unfronted, the port is never bound, so it collides with nothing.
        assert!(stage("route:\n  fronting: off\n  app_port: 8443\n").is_ok());
        let e = AppConfig::parse("route:\n  fronting: maybe\n", "f").unwrap_err();
        assert!(e.to_string().contains("auto, on, off"), "{e}");
    }

    #[test]
    fn the_staged_route_keeps_auto_so_a_run_time_mode_override_is_judged_again() {
        let staged = stage("listeners:\n  - mode: http\n").unwrap();
        let text = staged.to_yaml();
        assert!(
            text.contains(
                "route:\n  fronting: auto\n  app_port: 8081\n  trust_gorouter_xfcc: false\n"
            ),
            "{text}"
        );
        let env: Env = [("TLS_SIDECAR_MODE".to_owned(), "tcp".to_owned())].into();
        let (s, _, _) = StagedConfig::load_with_env(&text, "staged", &env, 8081).unwrap();
        assert!(!s.route.fronted);
        // At start $PORT is the moved port: that is not a collision.
        let (s, warnings, _) =
            StagedConfig::load_with_env(&text, "staged", &Env::new(), 8081).unwrap();
        assert!(s.route.fronted && warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn app_concurrency_limits_follow_the_declared_sidecar_memory_and_refuse_zero() {
        let d = stage("").unwrap().limits;
        // A quarter of the 768 connections, and a quarter of that per HTTP/2 connection.
        assert_eq!((d.app_connections, d.streams_per_connection), (192, 48));
        assert_eq!(d.listener_connections, None);
        let big = stage("sidecar:\n  memory: 264M\n").unwrap().limits;
        assert_eq!(
            (big.app_connections, big.streams_per_connection),
            (2048, 100)
        );
        let tiny = stage("sidecar:\n  memory: 4\n").unwrap().limits;
        assert_eq!((tiny.app_connections, tiny.streams_per_connection), (16, 8));
        let set = stage("limits:\n  listener_connections: 10\n  app_connections: 3\n")
            .unwrap()
            .limits;
        assert_eq!(set.listener_connections, Some(10));
        assert_eq!((set.app_connections, set.streams_per_connection), (3, 8));
        for field in [
            "listener_connections",
            "app_connections",
            "streams_per_connection",
        ] {
            let e = stage(&format!("limits:\n  {field}: 0\n")).unwrap_err();
            assert!(e.to_string().contains(&format!("limits.{field}")), "{e}");
        }
    }

    #[test]
    fn max_connections_beyond_the_declared_memory_warns_with_the_memory_it_needs() {
        let app = AppConfig::parse("limits:\n  max_connections: 10000\n", "f").unwrap();
        let (s, warnings) = StagedConfig::from_app(&app, "f", &[], 8080).unwrap();
        assert_eq!(s.limits.max_connections, 10_000);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("about 321 MB") && warnings[0].contains("sidecar.memory: 321M"),
            "{warnings:?}"
        );
        let app = AppConfig::parse(
            "limits:\n  max_connections: 10000\nsidecar:\n  memory: 321M\n",
            "f",
        )
        .unwrap();
        let (_, warnings) = StagedConfig::from_app(&app, "f", &[], 8080).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn egress_names_that_export_the_same_variable_are_refused() {
        let e = stage("egress:\n  - name: a-b\n    listen: 127.0.0.1:9001\n    target: b.apps.internal:8443\n    expect: [cf:any]\n  - name: a_b\n    listen: 127.0.0.1:9002\n    target: c.apps.internal:8443\n    expect: [cf:any]\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "tls-sidecar.yml: egress[1].name: \"a_b\" and egress[0].name \"a-b\" both export TLS_SIDECAR_EGRESS_A_B (names differing only in '-' and '_' collide); rename one"
        );
    }

    #[test]
    fn egress_and_admin_addresses_cannot_take_cf_reserved_ports() {
        for port in [2222, 61001, 61050, 61443, 61445, 62443] {
            let e = stage(&format!("egress:\n  - name: b\n    listen: 127.0.0.1:{port}\n    target: b.apps.internal:8443\n    expect: [cf:any]\n")).unwrap_err();
            let text = e.to_string();
            assert!(
                text.contains(&format!("egress[0].listen: port {port} is reserved")),
                "{text}"
            );
            let e = stage(&format!("admin:\n  listen: 127.0.0.1:{port}\n")).unwrap_err();
            let text = e.to_string();
            assert!(
                text.contains(&format!("admin.listen: port {port} is reserved")),
                "{text}"
            );
        }
        // A disabled admin endpoint binds nothing, so its address does not matter.
        stage("admin:\n  listen: 127.0.0.1:2222\n  enabled: false\n").unwrap();
    }
}

/// The published JSON Schema (`docs/tls-sidecar.schema.json`) must describe exactly the fields,
/// enum values and defaults of these types; editors complete from it.
#[cfg(test)]
mod schema_tests {
    use super::*;
    use serde_json::Value;
    use std::collections::BTreeSet;

    fn schema() -> Value {
        let text = include_str!("../../../docs/tls-sidecar.schema.json");
        serde_json::from_str(text).unwrap()
    }

    /// Every key a fully populated config serializes, as dotted paths (`listeners[].port`).
    fn rust_paths(v: &serde_yaml_ng::Value, prefix: &str, out: &mut BTreeSet<String>) {
        match v {
            serde_yaml_ng::Value::Mapping(m) => {
                for (k, v) in m {
                    let k = k.as_str().unwrap();
                    let p = if prefix.is_empty() {
                        k.to_owned()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    out.insert(p.clone());
                    rust_paths(v, &p, out);
                }
            }
            serde_yaml_ng::Value::Sequence(items) => {
                for item in items.iter().filter(|i| i.is_mapping()) {
                    rust_paths(item, &format!("{prefix}[]"), out);
                }
            }
            _ => {}
        }
    }

    fn schema_paths(v: &Value, prefix: &str, out: &mut BTreeSet<String>) {
        if let Some(props) = v.get("properties").and_then(Value::as_object) {
            for (k, sub) in props {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                out.insert(p.clone());
                schema_paths(sub, &p, out);
            }
        }
        if let Some(items) = v.get("items").filter(|i| i.get("properties").is_some()) {
            schema_paths(items, &format!("{prefix}[]"), out);
        }
    }

    fn full_config() -> StagedConfig {
        let yaml = "listeners: [{port: 9443, upstream: 127.0.0.1:3000}, {port: 9444, mode: http, client_auth: optional}, {port: 9445, mode: http, rules: [{paths: [/x/*], methods: [GET], allow: [cf:any]}]}]\n\
            egress: [{name: b, listen: 127.0.0.1:9001, target: b.apps.internal:8443, expect: [cf:any]}]\n\
            egress_proxy: {targets: [{hosts: [\"*.apps.internal\"], ports: [8443], expect: [cf:any]}]}\n\
            certificate: {source: files, cert_file: c, key_file: k, service: s}\n\
            limits: {listener_connections: 100}\n";
        let app = AppConfig::parse(yaml, "f").unwrap();
        StagedConfig::from_app(&app, "f", &[], DEFAULT_APP_PORT)
            .unwrap()
            .0
    }

    #[test]
    fn the_json_schema_has_exactly_the_fields_of_the_config_types() {
        let yaml: serde_yaml_ng::Value = serde_yaml_ng::from_str(&full_config().to_yaml()).unwrap();
        let mut from_rust = BTreeSet::new();
        rust_paths(&yaml, "", &mut from_rust);
        let mut from_schema = BTreeSet::new();
        schema_paths(&schema(), "", &mut from_schema);
        assert_eq!(
            from_schema, from_rust,
            "docs/tls-sidecar.schema.json is out of step with src/config"
        );
    }

    #[test]
    fn the_json_schema_lists_the_allowed_values_and_defaults_of_the_config_types() {
        let s = schema();
        let l = &s["properties"]["listeners"]["items"]["properties"];
        let enum_of = |v: &Value| -> Vec<String> {
            v["enum"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(enum_of(&l["mode"]), Mode::ALLOWED);
        assert_eq!(enum_of(&l["client_auth"]), ClientAuth::ALLOWED);
        assert_eq!(enum_of(&l["xfcc"]), Xfcc::ALLOWED);
        assert_eq!(
            enum_of(&l["rules"]["items"]["properties"]["methods"]["items"]),
            Method::ALLOWED
        );
        assert_eq!(
            enum_of(&s["properties"]["certificate"]["properties"]["source"]),
            CertificateSource::ALLOWED
        );
        assert_eq!(
            enum_of(&s["properties"]["log"]["properties"]["format"]),
            LogFormat::ALLOWED
        );

        // Defaults in the schema are what an empty file stages to.
        let d = StagedConfig::from_app(&AppConfig::default(), "f", &[], DEFAULT_APP_PORT)
            .unwrap()
            .0;
        let lim = &s["properties"]["limits"]["properties"];
        let dur = |v: &Value| v["default"].as_str().unwrap().parse::<Millis>().unwrap();
        assert_eq!(dur(&lim["handshake_timeout"]), d.limits.handshake_timeout);
        assert_eq!(dur(&lim["idle_timeout"]), d.limits.idle_timeout);
        assert_eq!(dur(&lim["drain_timeout"]), d.limits.drain_timeout);
        assert_eq!(dur(&lim["connect_timeout"]), d.limits.connect_timeout);
        assert_eq!(lim["max_connections"]["default"], d.limits.max_connections);
        assert_eq!(lim["app_connections"]["default"], d.limits.app_connections);
        assert_eq!(
            lim["streams_per_connection"]["default"],
            d.limits.streams_per_connection
        );
        assert_eq!(l["port"]["default"], d.listeners[0].port);
        assert_eq!(l["mode"]["default"], d.listeners[0].mode.as_str());
        assert_eq!(
            l["client_auth"]["default"],
            d.listeners[0].client_auth.as_str()
        );
        assert_eq!(l["xfcc"]["default"], d.listeners[0].xfcc.as_str());
        assert_eq!(
            s["properties"]["admin"]["properties"]["listen"]["default"],
            d.admin.listen.to_string()
        );
        assert_eq!(
            s["properties"]["sidecar"]["properties"]["memory"]["default"],
            d.sidecar.memory.0
        );
        let route = &s["properties"]["route"]["properties"];
        assert_eq!(enum_of(&route["fronting"]), Fronting::ALLOWED);
        assert_eq!(route["fronting"]["default"], d.route.fronting.as_str());
        assert_eq!(route["app_port"]["default"], d.route.app_port);
        let proxy_app = AppConfig::parse(
            "egress_proxy: {targets: [{hosts: [x.apps.internal], expect: [cf:any]}]}\n",
            "f",
        )
        .unwrap();
        let with_proxy = StagedConfig::from_app(&proxy_app, "f", &[], DEFAULT_APP_PORT)
            .unwrap()
            .0;
        assert_eq!(
            s["properties"]["egress_proxy"]["properties"]["listen"]["default"],
            with_proxy.egress_proxy.unwrap().listen.to_string()
        );
        assert_eq!(
            route["trust_gorouter_xfcc"]["default"],
            d.route.trust_gorouter_xfcc
        );
    }
}
