//! `tls-sidecar.yml` as the app wrote it: every field optional, unknown keys rejected.

use crate::Env;
use crate::error::{ConfigError, Origin, with_suggestion};
use crate::path::{Method, PathPattern};
use crate::value::{
    CertificateSource, ClientAuth, Fronting, HostPattern, HostPort, LogFormat, MemoryMb, Millis,
    Mode, Selector, Xfcc,
};
use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;
use std::path::Path;

/// Declares the spec sections: every field optional, unknown keys rejected, and unset fields
/// left out when a spec is written back.
macro_rules! specs {
    ($($(#[$meta:meta])* pub struct $name:ident { $($field:tt)* })*) => {$(
        #[skip_serializing_none]
        #[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
        #[serde(default, deny_unknown_fields)]
        $(#[$meta])*
        pub struct $name { $($field)* }
    )*};
}

specs! {
    /// The whole file. Also the schema of the staged file, where every field is present.
    pub struct AppConfig {
        pub listeners: Option<Vec<ListenerSpec>>,
        pub egress: Option<Vec<EgressSpec>>,
        pub egress_proxy: Option<EgressProxySpec>,
        pub certificate: Option<CertificateSpec>,
        pub trust: Option<TrustSpec>,
        pub admin: Option<AdminSpec>,
        pub limits: Option<LimitsSpec>,
        pub sidecar: Option<SidecarSpec>,
        pub log: Option<LogSpec>,
        pub route: Option<RouteSpec>,
    }

    /// The route port (`$PORT`): whether the sidecar fronts it, and where the app moves.
    pub struct RouteSpec {
        /// `auto` (default): on whenever a listener sets `X-Forwarded-Client-Cert`.
        pub fronting: Option<Fronting>,
        /// Where the app listens (its `$PORT`) while the sidecar fronts the route port.
        pub app_port: Option<u16>,
        /// Keep the `X-Forwarded-Client-Cert` Gorouter sends (identity-aware routing, RFC-0055);
        /// other spellings are still stripped. Default false.
        pub trust_gorouter_xfcc: Option<bool>,
    }

    /// One TLS listener (ingress).
    pub struct ListenerSpec {
        /// TLS port, bound on 0.0.0.0. Default 8443.
        pub port: Option<u16>,
        /// Where plaintext goes. Default `127.0.0.1:$PORT`.
        pub upstream: Option<HostPort>,
        pub mode: Option<Mode>,
        pub client_auth: Option<ClientAuth>,
        pub allow: Option<Vec<Selector>>,
        pub xfcc: Option<Xfcc>,
        pub proxy_protocol: Option<bool>,
        /// http mode: request-level rules. The first whose `paths` and `methods` match a request
        /// decides; a request no rule matches gets 403.
        pub rules: Option<Vec<RuleSpec>>,
    }

    /// One request rule (http mode).
    pub struct RuleSpec {
        /// Exact paths, or prefixes ending in `/*`, in normal form. Absent: every path.
        pub paths: Option<Vec<PathPattern>>,
        /// Absent: every method.
        pub methods: Option<Vec<Method>>,
        /// Callers this rule lets in (OR'd); `[]` lets none in. Required.
        pub allow: Option<Vec<Selector>>,
    }

    /// An HTTP proxy on loopback for the app's calls to other apps: absolute-form requests and
    /// CONNECT tunnels, carried over mTLS with this instance's identity.
    pub struct EgressProxySpec {
        /// Loopback only. Default 127.0.0.1:8446.
        pub listen: Option<HostPort>,
        /// The first entry whose hosts and ports match a request decides; a request no entry
        /// matches is refused.
        pub targets: Option<Vec<ProxyTargetSpec>>,
    }

    /// Where the egress proxy may go, and which server identity it accepts there.
    pub struct ProxyTargetSpec {
        pub hosts: Option<Vec<HostPattern>>,
        /// Absent: every port.
        pub ports: Option<Vec<u16>>,
        /// As in `egress`; `dns:*.<domain>` checks the certificate against the requested host.
        pub expect: Option<Vec<Selector>>,
    }

    /// One egress listener: plaintext on loopback, mTLS to `target`.
    pub struct EgressSpec {
        pub name: Option<String>,
        pub listen: Option<HostPort>,
        pub target: Option<HostPort>,
        pub expect: Option<Vec<Selector>>,
        pub unsafe_listen: Option<bool>,
    }

    pub struct CertificateSpec {
        pub source: Option<CertificateSource>,
        /// `files`: PEM certificate chain, relative to the app dir.
        pub cert_file: Option<String>,
        /// `files`: PEM private key, relative to the app dir.
        pub key_file: Option<String>,
        /// `service` and `minted`: the bound service instance's name in `VCAP_SERVICES`.
        pub service: Option<String>,
        /// `minted`: extra DNS names for the minted leaf.
        pub names: Option<Vec<String>>,
        /// `minted`: route domains whose app routes become SANs. Default `[apps.internal]`.
        pub internal_domains: Option<Vec<String>>,
        /// `minted`: leaf lifetime. Default 24h.
        pub validity: Option<Millis>,
    }

    pub struct TrustSpec {
        /// Extra CA files (PEM), relative to the app dir or absolute.
        pub ca_files: Option<Vec<String>>,
        /// Also trust every certificate in `$CF_SYSTEM_CERT_PATH`. Default true; false makes
        /// `ca_files` replace the platform's trust anchors.
        pub system_certs: Option<bool>,
    }

    pub struct AdminSpec {
        /// Loopback address of `/live`, `/ready`, `/metrics`. Default 127.0.0.1:8444.
        pub listen: Option<HostPort>,
        pub enabled: Option<bool>,
    }

    pub struct LimitsSpec {
        pub max_connections: Option<u32>,
        pub handshake_timeout: Option<Millis>,
        pub idle_timeout: Option<Millis>,
        pub drain_timeout: Option<Millis>,
        pub connect_timeout: Option<Millis>,
        /// Connection slots of each TLS listener. Default: an equal share of `max_connections`.
        pub listener_connections: Option<u32>,
        /// Requests in flight to the app per http-mode listener. Default: a quarter of
        /// `max_connections`, at least 16.
        pub app_connections: Option<u32>,
        /// HTTP/2 streams one client connection may have open at once. Default: a quarter of
        /// `app_connections`, between 8 and 100.
        pub streams_per_connection: Option<u32>,
    }

    pub struct SidecarSpec {
        /// `limits.memory` of the sidecar process in launch.yml (MB). Default 32.
        pub memory: Option<MemoryMb>,
        /// The process types the sidecar runs beside. Default `[web]`. `[]`: the buildpack only
        /// installs the binary and the app manifest declares the sidecar.
        pub process_types: Option<Vec<String>>,
    }

    pub struct LogSpec {
        pub format: Option<LogFormat>,
        /// `error`, `warn`, `info` or `debug`. Default `info`.
        pub level: Option<String>,
    }
}

/// The largest config text [`AppConfig::parse`] accepts. A complete configuration is a few KB;
/// the YAML parser takes time quadratic in the nesting depth of flow collections (`[[[...`),
/// so an unbounded file could stall staging for minutes. 64 KiB parses in about 2 s at worst.
pub const MAX_CONFIG_BYTES: usize = 64 * 1024;

impl AppConfig {
    /// Parses YAML text. `file` names the source in errors. An empty file is the empty config.
    pub fn parse(text: &str, file: &str) -> Result<Self, ConfigError> {
        if text.len() > MAX_CONFIG_BYTES {
            return Err(ConfigError::Syntax {
                file: file.to_owned(),
                line: None,
                column: None,
                message: format!(
                    "the file is {} bytes, more than the {MAX_CONFIG_BYTES} allowed (a complete configuration is a few KB)",
                    text.len()
                ),
            });
        }
        if text.trim().is_empty()
            || text
                .lines()
                .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
        {
            return Ok(Self::default());
        }
        serde_yaml_ng::from_str(text).map_err(|e| {
            let message = strip_location(&e.to_string());
            let (line, column, message) = match e.location() {
                Some(l) => {
                    let (line, column, message) = refine(text, l.line(), l.column(), message);
                    (Some(line), Some(column), message)
                }
                None => (None, None, message),
            };
            ConfigError::Syntax {
                file: file.to_owned(),
                line,
                column,
                message: with_suggestion(message),
            }
        })
    }

    /// Reads `path` if it exists; a missing file is the empty config (every field optional).
    pub fn load(path: &Path, display: &str) -> Result<Option<Self>, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, display).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ConfigError::Read {
                path: display.to_owned(),
                source: e,
            }),
        }
    }

    /// Applies the `TLS_SIDECAR_*` overrides from `env` to the first listener (creating it if
    /// the file had none) and to the sidecar process. Returns the names of the variables used.
    pub fn apply_env(&mut self, env: &Env) -> Result<Vec<&'static str>, ConfigError> {
        let mut used = Vec::new();
        let get = |name: &'static str| env.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
        let parse_err = |name: &'static str, e: String| {
            ConfigError::invalid(&Origin::Env(name.into()), name, e)
        };

        let listener_vars: Vec<&'static str> = crate::ENV_OVERRIDES
            .iter()
            .filter(|o| o.is_listener() && get(o.var).is_some())
            .map(|o| o.var)
            .collect();
        if let Some(&var) = listener_vars.first() {
            // Variables refine the listener the configuration declares; they never create one.
            // An absent `listeners` key means the default listener (staging fills it in); an
            // explicit `listeners: []` (egress only) has nothing a variable could refine, and
            // opening a port on 0.0.0.0 from `cf set-env` would widen ingress unseen.
            if self.listeners.as_ref().is_some_and(Vec::is_empty) {
                return Err(ConfigError::invalid(
                    &Origin::Env(var.into()),
                    var,
                    "is set, but the configuration has no TLS listener (listeners: []): a variable cannot create one (declare the listener in tls-sidecar.yml to have one)",
                ));
            }
            let listeners = self.listeners.get_or_insert_with(Vec::new);
            if listeners.is_empty() {
                listeners.push(ListenerSpec::default());
            }
            let first = &mut listeners[0];
            let before = first.effective_client_auth();
            if let Some(v) = get("TLS_SIDECAR_PORT") {
                first.port = Some(parse_port(v).map_err(|e| parse_err("TLS_SIDECAR_PORT", e))?);
                used.push("TLS_SIDECAR_PORT");
            }
            if let Some(v) = get("TLS_SIDECAR_UPSTREAM") {
                first.upstream = Some(
                    v.parse()
                        .map_err(|e| parse_err("TLS_SIDECAR_UPSTREAM", e))?,
                );
                used.push("TLS_SIDECAR_UPSTREAM");
            }
            if let Some(v) = get("TLS_SIDECAR_MODE") {
                first.mode = Some(v.parse().map_err(|e| parse_err("TLS_SIDECAR_MODE", e))?);
                used.push("TLS_SIDECAR_MODE");
            }
            if let Some(v) = get("TLS_SIDECAR_CLIENT_AUTH") {
                first.client_auth = Some(
                    v.parse()
                        .map_err(|e| parse_err("TLS_SIDECAR_CLIENT_AUTH", e))?,
                );
                used.push("TLS_SIDECAR_CLIENT_AUTH");
            }
            if let Some(v) = get("TLS_SIDECAR_ALLOW") {
                let selectors = v
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::parse)
                    .collect::<Result<Vec<Selector>, _>>()
                    .map_err(|e| parse_err("TLS_SIDECAR_ALLOW", e))?;
                // A value like "," names no caller: taken literally it would drop every rule
                // and with them the client certificate requirement.
                if selectors.is_empty() {
                    return Err(parse_err(
                        "TLS_SIDECAR_ALLOW",
                        format!(
                            "\"{v}\" names no caller, and a variable cannot remove access rules (list callers, e.g. cf:app:<guid>,cf:same-space)"
                        ),
                    ));
                }
                first.allow = Some(selectors);
                used.push("TLS_SIDECAR_ALLOW");
                // The variable is the newest intent: unless TLS_SIDECAR_CLIENT_AUTH says
                // otherwise, `allow` implies `required`, whatever the file said.
                if get("TLS_SIDECAR_CLIENT_AUTH").is_none() {
                    first.client_auth = None;
                }
            }
            let after = first.effective_client_auth();
            if rank(after) < rank(before) {
                return Err(parse_err(
                    "TLS_SIDECAR_CLIENT_AUTH",
                    format!(
                        "\"{after}\" would lower client_auth from \"{before}\" set by the configuration: a variable can only tighten it (change client_auth in tls-sidecar.yml to lower it)"
                    ),
                ));
            }
        }
        if let Some(v) = get("TLS_SIDECAR_MEMORY") {
            let mb = v.parse().map_err(|e| parse_err("TLS_SIDECAR_MEMORY", e))?;
            self.sidecar.get_or_insert_with(SidecarSpec::default).memory = Some(mb);
            used.push("TLS_SIDECAR_MEMORY");
        }
        Ok(used)
    }
}

impl ListenerSpec {
    /// `client_auth` as the listener would run with it: written, else implied by `allow` and
    /// `rules`.
    fn effective_client_auth(&self) -> ClientAuth {
        self.client_auth.unwrap_or_else(|| {
            ClientAuth::implied_by(
                self.allow.as_ref().is_some_and(|a| !a.is_empty()) || self.rules.is_some(),
            )
        })
    }
}

/// How much a `client_auth` value asks of callers, for "variables never lower it".
fn rank(c: ClientAuth) -> u8 {
    match c {
        ClientAuth::None => 0,
        ClientAuth::Optional => 1,
        ClientAuth::Required => 2,
    }
}

fn parse_port(v: &str) -> Result<u16, String> {
    match v.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("\"{v}\" is not a port number (expected 1-65535)")),
    }
}

/// serde_yaml_ng reports an invalid value at the start of the mapping that holds it, and its
/// path stops at that mapping (`listeners[0]: "tcpp" is not allowed`). Our value errors quote
/// the bad value, so find it at or below the reported line, point at it, and complete the path
/// with the key written on that line. Anything unexpected keeps serde's own place and text.
fn refine(text: &str, line: usize, column: usize, message: String) -> (usize, usize, String) {
    let Some(bad) = message.split('"').nth(1).filter(|b| !b.is_empty()) else {
        return (line, column, message);
    };
    for (i, l) in text.lines().enumerate().skip(line.saturating_sub(1)) {
        let Some(at) = l.find(bad) else { continue };
        let key = l[..at]
            .split(':')
            .next()
            .map(|k| k.trim().trim_start_matches('-').trim())
            .filter(|k| !k.is_empty() && !k.contains(' ') && k.len() < at);
        let message = match (key, message.split_once(": ")) {
            (Some(key), Some((path, rest))) if !path.contains(' ') && !path.ends_with(key) => {
                format!("{path}.{key}: {rest}")
            }
            _ => message,
        };
        return (i + 1, at + 1, message);
    }
    (line, column, message)
}

/// serde_yaml_ng appends " at line L column C"; the error carries the location separately.
fn strip_location(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_owned(),
        None => msg.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Line, column and message of a syntax error.
    fn syntax(e: &ConfigError) -> (Option<usize>, Option<usize>, &str) {
        let ConfigError::Syntax {
            line,
            column,
            message,
            ..
        } = e
        else {
            panic!("{e:?}")
        };
        (*line, *column, message)
    }

    #[test]
    fn a_type_error_names_the_field_line_and_column() {
        let e = AppConfig::parse(
            "listeners:\n  - port: 8443\n    mode: tcpp\n",
            "tls-sidecar.yml",
        )
        .unwrap_err();
        let (line, column, message) = syntax(&e);
        assert_eq!((line, column), (Some(3), Some(11)));
        assert!(
            message.contains("listeners[0].mode")
                && message.contains("tcpp")
                && message.contains("tcp, http"),
            "{message}"
        );
        assert!(
            e.to_string()
                .starts_with("tls-sidecar.yml line 3 column 11: "),
            "{e}"
        );
    }

    #[test]
    fn a_bad_selector_in_a_flow_list_points_at_the_selector() {
        let e = AppConfig::parse(
            "listeners:\n  - port: 8443\n    allow: [cf:same-space, cf:app:nope]\n",
            "f",
        )
        .unwrap_err();
        let (line, column, message) = syntax(&e);
        assert_eq!((line, column), (Some(3), Some(28)), "{message}");
        assert!(message.starts_with("listeners[0].allow: "), "{message}");
    }

    #[test]
    fn an_unknown_key_is_rejected_with_a_suggestion() {
        let e = AppConfig::parse("listners: []\n", "tls-sidecar.yml").unwrap_err();
        assert!(e.to_string().contains("did you mean `listeners`?"), "{e}");
    }

    #[test]
    fn a_file_larger_than_the_limit_is_refused_before_it_is_parsed() {
        let nested = format!("listeners: {}{}\n", "[".repeat(50_000), "]".repeat(50_000));
        let e = AppConfig::parse(&nested, "tls-sidecar.yml").unwrap_err();
        assert_eq!(
            e.to_string(),
            "tls-sidecar.yml: the file is 100012 bytes, more than the 65536 allowed (a complete configuration is a few KB)"
        );
        let padded = format!(
            "{}\nlog: {{level: info}}\n",
            "#".repeat(MAX_CONFIG_BYTES - 20)
        );
        assert!(AppConfig::parse(&padded, "f").is_ok());
    }

    #[test]
    fn an_empty_or_comment_only_file_is_the_empty_config() {
        assert_eq!(AppConfig::parse("", "f").unwrap(), AppConfig::default());
        assert_eq!(
            AppConfig::parse("# nothing\n\n", "f").unwrap(),
            AppConfig::default()
        );
    }

    #[test]
    fn env_overrides_apply_to_the_first_listener_and_name_the_variable_on_error() {
        let mut cfg =
            AppConfig::parse("listeners:\n  - port: 9443\n  - port: 9444\n", "f").unwrap();
        let env: Env = [
            ("TLS_SIDECAR_PORT", "7443"),
            ("TLS_SIDECAR_ALLOW", "cf:same-space, cf:any"),
            ("TLS_SIDECAR_MEMORY", "64M"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let used = cfg.apply_env(&env).unwrap();
        assert_eq!(
            used,
            [
                "TLS_SIDECAR_PORT",
                "TLS_SIDECAR_ALLOW",
                "TLS_SIDECAR_MEMORY"
            ]
        );
        let l = cfg.listeners.as_ref().unwrap();
        assert_eq!(l[0].port, Some(7443));
        assert_eq!(l[1].port, Some(9444));
        assert_eq!(
            l[0].allow.as_ref().unwrap(),
            &[Selector::SameSpace, Selector::Any]
        );
        assert_eq!(cfg.sidecar.unwrap().memory, Some(MemoryMb(64)));

        let bad: Env = [("TLS_SIDECAR_PORT".to_owned(), "84x3".to_owned())].into();
        let e = AppConfig::default().apply_env(&bad).unwrap_err();
        assert_eq!(
            e.to_string(),
            "TLS_SIDECAR_PORT: \"84x3\" is not a port number (expected 1-65535)"
        );
    }

    fn env(pairs: &[(&str, &str)]) -> Env {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_listener_variable_cannot_create_a_listener_in_an_egress_only_config() {
        let text = "listeners: []\negress:\n  - name: b\n    listen: 127.0.0.1:9001\n    target: b.apps.internal:8443\n    expect: [cf:any]\n";
        for var in [
            "TLS_SIDECAR_PORT",
            "TLS_SIDECAR_UPSTREAM",
            "TLS_SIDECAR_MODE",
            "TLS_SIDECAR_CLIENT_AUTH",
            "TLS_SIDECAR_ALLOW",
        ] {
            let value = match var {
                "TLS_SIDECAR_PORT" => "8443",
                "TLS_SIDECAR_UPSTREAM" => "127.0.0.1:8080",
                "TLS_SIDECAR_MODE" => "http",
                "TLS_SIDECAR_CLIENT_AUTH" => "required",
                _ => "cf:any",
            };
            let mut cfg = AppConfig::parse(text, "f").unwrap();
            let e = cfg.apply_env(&env(&[(var, value)])).unwrap_err();
            assert_eq!(e.origin(), Some(Origin::Env(var.to_owned())), "{e}");
            let text = e.to_string();
            assert!(text.contains("cannot create one"), "{text}");
            assert_eq!(cfg.listeners.as_deref().map(<[_]>::len), Some(0));
        }
        // The memory variable is not a listener's: it still applies.
        let mut cfg = AppConfig::parse(text, "f").unwrap();
        assert_eq!(
            cfg.apply_env(&env(&[("TLS_SIDECAR_MEMORY", "64")]))
                .unwrap(),
            ["TLS_SIDECAR_MEMORY"]
        );
    }

    #[test]
    fn an_allow_variable_that_names_no_caller_is_refused_not_read_as_no_rules() {
        for value in [",", " , ,", ",,"] {
            let mut cfg =
                AppConfig::parse("listeners:\n  - port: 8443\n    client_auth: required\n    allow: [cf:same-space]\n", "f")
                    .unwrap();
            let e = cfg
                .apply_env(&env(&[("TLS_SIDECAR_ALLOW", value)]))
                .unwrap_err();
            assert!(e.to_string().contains("names no caller"), "{e}");
            let l = &cfg.listeners.unwrap()[0];
            assert_eq!(l.allow.as_deref(), Some(&[Selector::SameSpace][..]));
            assert_eq!(l.client_auth, Some(ClientAuth::Required));
        }
    }

    #[test]
    fn a_client_auth_variable_can_tighten_but_never_lower_the_files_setting() {
        let required = "listeners:\n  - port: 8443\n    allow: [cf:same-space]\n";
        for lower in ["none", "optional"] {
            let mut cfg = AppConfig::parse(required, "f").unwrap();
            let e = cfg
                .apply_env(&env(&[("TLS_SIDECAR_CLIENT_AUTH", lower)]))
                .unwrap_err();
            assert_eq!(
                e.to_string(),
                format!(
                    "TLS_SIDECAR_CLIENT_AUTH: \"{lower}\" would lower client_auth from \"required\" set by the configuration: a variable can only tighten it (change client_auth in tls-sidecar.yml to lower it)"
                )
            );
        }
        let optional = "listeners:\n  - port: 8443\n    client_auth: optional\n";
        let mut cfg = AppConfig::parse(optional, "f").unwrap();
        assert!(
            cfg.apply_env(&env(&[("TLS_SIDECAR_CLIENT_AUTH", "none")]))
                .is_err()
        );
        let mut cfg = AppConfig::parse(optional, "f").unwrap();
        cfg.apply_env(&env(&[("TLS_SIDECAR_CLIENT_AUTH", "required")]))
            .unwrap();
        assert_eq!(
            cfg.listeners.unwrap()[0].client_auth,
            Some(ClientAuth::Required)
        );
        // No file: the default listener gets what the variables say (they narrow it).
        let mut cfg = AppConfig::default();
        cfg.apply_env(&env(&[("TLS_SIDECAR_ALLOW", "cf:any")]))
            .unwrap();
        assert_eq!(
            cfg.listeners.unwrap()[0].effective_client_auth(),
            ClientAuth::Required
        );
    }
}
