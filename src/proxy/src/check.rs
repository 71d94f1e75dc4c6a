//! `tls-sidecar check`: loads the configuration, the serving certificate and the trust bundle
//! through the same code as the running sidecar, binds nothing, and reports in words: this
//! instance's identity, the certificate's names and expiry, each listener, the trust anchors,
//! the admin address, and every problem with its fix.
//!
//! Meant for `cf ssh APP -c '/home/vcap/deps/0/bin/tls-sidecar check'`: the default
//! configuration is the staged one beside the binary and the environment is the app's.

use crate::cert::{self, CertificateConfig, Material, MintConfig, unix_now};
use crate::config::{self, Rules, SidecarConfig};
use crate::errors::{StartError, app_name};
use crate::identity::CfIdentity;
use crate::logging::rfc3339;
use crate::tls;
use crate::trust::{self, TrustError};
use crate::{EX_USAGE, Env};
use std::fmt::Write as _;
use std::path::Path;
use tls_sidecar_config::{ClientAuth, Mode, Selector};

/// Exit code when the report lists problems.
pub const EX_PROBLEMS: u8 = 1;

/// Something that stops the sidecar from serving as configured, and how to fix it.
struct Problem {
    what: String,
    fix: String,
}

impl Problem {
    /// A certificate that cannot be loaded, with the fix a failed reload logs too.
    fn load(source: &CertificateConfig, e: &cert::LoadError, app: &str) -> Self {
        Problem {
            what: e.to_string(),
            fix: source.fix(e, app),
        }
    }
}

/// Runs the check; returns the exit code (0, [`EX_PROBLEMS`] or 64) and the report.
pub fn run(cli_path: Option<&Path>, env: &Env, exe: Option<&Path>) -> (u8, String) {
    let (ref config, origin) = match config::read(cli_path, env, exe) {
        Ok(read) => read,
        Err(e) => {
            let code = e.exit_code();
            let verdict = if code == EX_USAGE {
                "the sidecar would refuse to start (exit 64)"
            } else {
                "the sidecar could not start"
            };
            return (code, format!("tls-sidecar check: {verdict}:\n  {e}\n"));
        }
    };
    let app = app_name(env);
    let rules = config.rules();
    let mut out = String::new();
    let mut problems = Vec::new();
    let _ = writeln!(
        out,
        "tls-sidecar {} check\nConfiguration: {}{}",
        env!("CARGO_PKG_VERSION"),
        origin.source,
        if origin.overrides.is_empty() {
            String::new()
        } else {
            format!(" (overridden by {})", origin.overrides.join(", "))
        }
    );
    for warning in &origin.warnings {
        // Reported as a problem below, with its fix.
        if !warning.starts_with(config::SYSTEM_CERT_PATH_UNSET) && !route_warning(warning) {
            let _ = writeln!(out, "Warning: {warning}");
        }
    }

    certificate(&mut out, &mut problems, config, &app);
    listeners(&mut out, &mut problems, config, &rules, &app);
    egress(&mut out, &mut problems, config, &rules, &app);
    egress_proxy(&mut out, &mut problems, config, &rules, &app);
    route(&mut out, &mut problems, config, &origin.warnings, &app);
    trust_anchors(&mut out, &mut problems, config, &app);

    let _ = writeln!(out, "\nAdmin");
    match config.admin {
        Some(addr) => {
            let _ = writeln!(out, "  {addr} (GET /live, /ready, /metrics)");
        }
        None => {
            let _ = writeln!(out, "  disabled (admin.enabled: false)");
        }
    }

    if problems.is_empty() {
        let _ = writeln!(out, "\nOK: no problems found.");
        return (0, out);
    }
    let _ = writeln!(
        out,
        "\n{} problem{}:",
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    for (i, p) in problems.iter().enumerate() {
        let _ = writeln!(out, "  {}. {}\n     Fix: {}", i + 1, p.what, p.fix);
    }
    (EX_PROBLEMS, out)
}

fn certificate(out: &mut String, problems: &mut Vec<Problem>, config: &SidecarConfig, app: &str) {
    let source = config.certificate.source();
    let _ = writeln!(
        out,
        "\nServing certificate (source: {source}): {}",
        config.certificate.describe()
    );
    if let CertificateConfig::Minted(mint) = &config.certificate {
        minted(out, problems, &config.certificate, mint, app);
        return;
    }
    let material = match config.certificate.read() {
        Ok(material) => material,
        Err(e) => {
            problems.push(Problem::load(&config.certificate, &e, app));
            return;
        }
    };
    let Material {
        cert_pem,
        key_pem,
        names,
    } = &material;
    // What the certificate says, even when the pair as a whole is unusable.
    match cert::parse_chain(names, cert_pem) {
        Ok((chain, leaf)) => {
            match CfIdentity::from_der(&leaf.der) {
                Ok(id) if id.is_instance_identity() => {
                    let _ = writeln!(out, "  identity   {id}");
                }
                _ => {
                    let _ = writeln!(
                        out,
                        "  identity   CN={} (no CF app/space/org OUs: not an instance identity)",
                        leaf.subject_cn
                    );
                }
            }
            let sans = if leaf.sans.is_empty() {
                "none".to_owned()
            } else {
                leaf.sans.join(", ")
            };
            let _ = writeln!(out, "  SANs       {sans}");
            let _ = writeln!(
                out,
                "  valid      {} to {} ({})",
                rfc3339(leaf.not_before),
                rfc3339(leaf.not_after),
                time_left(leaf.not_after - unix_now())
            );
            let _ = writeln!(
                out,
                "  chain      {} certificate{} (serial {})",
                chain.len(),
                if chain.len() == 1 { "" } else { "s" },
                leaf.serial
            );
        }
        Err(e) => {
            problems.push(Problem::load(&config.certificate, &e, app));
            return;
        }
    }
    let provider = tls::provider();
    let checked = cert::parse_pair(names, cert_pem, key_pem, &provider)
        .and_then(|pair| cert::check_validity(names, &pair.leaf, unix_now()));
    if let Err(e) = checked {
        problems.push(Problem::load(&config.certificate, &e, app));
    }
}

/// `source: minted`: mints one leaf in memory, exactly as the sidecar would, and describes it.
fn minted(
    out: &mut String,
    problems: &mut Vec<Problem>,
    source: &CertificateConfig,
    mint: &MintConfig,
    app: &str,
) {
    let provider = tls::provider();
    match cert::mint(mint, &provider, unix_now()) {
        Ok(minted) => {
            let leaf = &minted.leaf;
            let identity = CfIdentity::from_der(&leaf.der).unwrap_or_default();
            let _ = writeln!(out, "  identity   {identity}");
            let _ = writeln!(out, "  SANs       {}", leaf.sans.join(", "));
            if !minted.left_out.is_empty() {
                let _ = writeln!(
                    out,
                    "  left out   {} (the CA's name constraints do not permit them)",
                    minted.left_out.join(", ")
                );
            }
            let _ = writeln!(
                out,
                "  valid      {} to {}, renewed at {} (key: ECDSA P-256, made in memory)",
                rfc3339(leaf.not_before),
                rfc3339(leaf.not_after),
                rfc3339(minted.renew_at)
            );
            let _ = writeln!(
                out,
                "  chain      {} certificates, signed by {}",
                minted.chain.len(),
                minted.ca_subject
            );
            if !leaf.sans.iter().any(|s| {
                mint.dns_names
                    .iter()
                    .any(|n| s == &format!("DNS:{n}") && n.contains('.'))
            }) {
                problems.push(Problem {
                    what: "the minted certificate names no route, so clients can only verify it by CF identity".to_owned(),
                    fix: format!("map an internal route (cf map-route {app} apps.internal --hostname {app}) or list names in certificate.names, then cf restart {app}"),
                });
            }
        }
        Err(e) => {
            problems.push(Problem::load(source, &e, app));
        }
    }
}

fn egress(
    out: &mut String,
    problems: &mut Vec<Problem>,
    config: &SidecarConfig,
    rules: &Rules,
    app: &str,
) {
    if config.egress.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\nEgress (plaintext from the app, mutual TLS to the target)"
    );
    for (i, e) in config.egress.iter().enumerate() {
        // As tls_sidecar_config::Egress::env_var spells it (the buildpack's profile.d).
        let var = format!(
            "TLS_SIDECAR_EGRESS_{}",
            e.name.to_ascii_uppercase().replace('-', "_")
        );
        let _ = writeln!(
            out,
            "  egress[{i}] {}  {} -> {}  (the app finds it in ${})",
            e.name, e.bind, e.target, var
        );
        let described: Vec<String> = e.expect.iter().map(|s| describe_rule(s, config)).collect();
        let _ = writeln!(out, "      expect: {}", described.join(", "));
        rule_problems(problems, rules, &format!("egress[{i}].expect"), app);
    }
}

fn egress_proxy(
    out: &mut String,
    problems: &mut Vec<Problem>,
    config: &SidecarConfig,
    rules: &Rules,
    app: &str,
) {
    let Some(proxy) = &config.egress_proxy else {
        return;
    };
    let _ = writeln!(
        out,
        "\nEgress proxy (HTTP proxy for the app, mutual TLS to each target)\n  {}  (the app finds it in ${} = http://{})",
        proxy.bind,
        tls_sidecar_config::EgressProxy::ENV_VAR,
        proxy.bind
    );
    for (i, t) in proxy.targets.iter().enumerate() {
        let hosts: Vec<String> = t.hosts.iter().map(ToString::to_string).collect();
        let ports = if t.ports.is_empty() {
            "any port".to_owned()
        } else {
            let ports: Vec<String> = t.ports.iter().map(ToString::to_string).collect();
            format!("ports {}", ports.join(","))
        };
        let described: Vec<String> = t.expect.iter().map(|s| describe_rule(s, config)).collect();
        let _ = writeln!(
            out,
            "  targets[{i}] {} {ports}\n      expect: {}",
            hosts.join(", "),
            described.join(", ")
        );
        let field = format!("egress_proxy.targets[{i}].expect");
        rule_problems(problems, rules, &field, app);
    }
}

fn time_left(secs: i64) -> String {
    let (days, hours, minutes) = (
        secs.abs() / 86_400,
        secs.abs() % 86_400 / 3600,
        secs.abs() % 3600 / 60,
    );
    let span = if days > 0 {
        format!("{days} days {hours} hours")
    } else {
        format!("{hours} hours {minutes} minutes")
    };
    if secs < 0 {
        format!("EXPIRED {span} ago")
    } else {
        format!("{span} left")
    }
}

fn listeners(
    out: &mut String,
    problems: &mut Vec<Problem>,
    config: &SidecarConfig,
    rules: &Rules,
    app: &str,
) {
    let _ = writeln!(out, "\nListeners");
    for (i, l) in config.listeners.iter().enumerate() {
        let mut line = format!(
            "  listeners[{i}] {}  mode={}  upstream={}  client_auth={}",
            l.bind, l.mode, l.upstream, l.client_auth
        );
        match l.mode {
            Mode::Http => {
                let _ = write!(line, "  xfcc={}", l.xfcc);
            }
            Mode::Tcp if l.proxy_protocol => line.push_str("  proxy_protocol=v2"),
            Mode::Tcp => {}
        }
        let _ = writeln!(out, "{line}");
        if l.allow.is_empty() {
            let who = match l.client_auth {
                ClientAuth::None => "anyone (no client certificate asked for)",
                ClientAuth::Optional => {
                    "anyone; a client certificate, if sent, must verify against the trust anchors"
                }
                ClientAuth::Required => {
                    "any client whose certificate verifies against the trust anchors"
                }
            };
            let _ = writeln!(out, "      allow: {who}");
        } else {
            let described: Vec<String> = l.allow.iter().map(|s| describe_rule(s, config)).collect();
            let _ = writeln!(out, "      allow: {}", described.join(", "));
            rule_problems(problems, rules, &format!("listeners[{i}].allow"), app);
        }
        if !l.rules.is_empty() {
            let _ = writeln!(
                out,
                "      rules (first match decides; a request none matches gets 403):"
            );
        }
        for (j, rule) in l.rules.iter().enumerate() {
            let _ = writeln!(out, "        [{j}] {}", rule.describe());
            rule_problems(
                problems,
                rules,
                &format!("listeners[{i}].rules[{j}].allow"),
                app,
            );
        }
    }
}

/// A warning that the route port is open to forged identity headers.
fn route_warning(warning: &str) -> bool {
    warning.starts_with(config::ROUTE_NOT_FRONTED)
        || warning == tls_sidecar_config::UNFRONTED_XFCC_WARNING
}

fn route(
    out: &mut String,
    problems: &mut Vec<Problem>,
    config: &SidecarConfig,
    warnings: &[String],
    app: &str,
) {
    let _ = writeln!(out, "\nRoute port");
    match &config.route {
        Some(r) => {
            let headers = match r.trusted_xfcc_peer {
                Some(envoy) => format!(
                    "X-Forwarded-Client-Cert kept from {envoy} only (Diego's Envoy, carrying Gorouter's traffic: route.trust_gorouter_xfcc), other spellings and peers stripped"
                ),
                None => "identity headers stripped".to_owned(),
            };
            let _ = writeln!(out, "  {}  http -> {}  {headers}", r.bind, r.upstream);
        }
        None => {
            let _ = writeln!(out, "  not fronted: the app serves $PORT itself");
        }
    }
    for warning in warnings.iter().filter(|w| route_warning(w)) {
        problems.push(Problem {
            what: warning.clone(),
            fix: format!(
                "leave route.fronting out of tls-sidecar.yml (auto fronts the route port whenever a listener sets X-Forwarded-Client-Cert) and keep sidecar.process_types naming this process, then cf push {app}; or set xfcc: off if the app must not rely on the header"
            ),
        });
    }
}

/// The problems of the rules in `field`, each as the start would refuse it.
fn rule_problems(problems: &mut Vec<Problem>, rules: &Rules, field: &str, app: &str) {
    for error in &rules.problems {
        match error {
            StartError::IdentityOutsideCf { field: f, .. } if f == field => {
                let text = error.to_string();
                let (what, fix) = text.split_once(" Fix: ").unwrap_or((&text, ""));
                problems.push(Problem {
                    what: format!(
                        "{}; the sidecar refuses to start (exit 64)",
                        what.trim_end_matches('.')
                    ),
                    fix: fix.to_owned(),
                });
            }
            // The start's own fix assumes the environment is the app's; check may have been
            // run outside the container.
            StartError::AccessRule {
                field: f, problem, ..
            } if f == field => problems.push(Problem {
                what: format!("{field}: {problem}; the sidecar refuses to start (exit 64)"),
                fix: format!(
                    "Cloud Foundry sets VCAP_APPLICATION for the app's processes: run check inside the app's container (cf ssh {app}); or name the space or org explicitly (cf:space:<guid> from `cf space SPACE --guid`, cf:org:<guid> from `cf org ORG --guid`) in tls-sidecar.yml, then cf push {app}"
                ),
            }),
            _ => {}
        }
    }
}

/// A selector and, for the relative ones, what it resolves to here.
fn describe_rule(selector: &Selector, config: &SidecarConfig) -> String {
    let resolved = |what: &str, value: &Option<String>| match value {
        Some(guid) => format!("{selector} (= cf:{what}:{guid})"),
        None => format!("{selector} (unresolved: VCAP_APPLICATION has no {what} id)"),
    };
    match selector {
        Selector::SameSpace => resolved("space", &config.app.space_id),
        Selector::SameOrg => resolved("org", &config.app.organization_id),
        other => other.to_string(),
    }
}

fn trust_anchors(out: &mut String, problems: &mut Vec<Problem>, config: &SidecarConfig, app: &str) {
    let mut verifying: Vec<String> = config
        .listeners
        .iter()
        .enumerate()
        .filter(|(_, l)| l.verifies_clients())
        .map(|(i, l)| format!("listeners[{i}] (client_auth: {})", l.client_auth))
        .collect();
    verifying.extend(
        config
            .egress
            .iter()
            .enumerate()
            .map(|(i, e)| format!("egress[{i}] ({})", e.name)),
    );
    if verifying.is_empty() {
        let _ = writeln!(
            out,
            "\nTrust anchors\n  not used: no listener asks for client certificates and there is no egress"
        );
        return;
    }
    let (bundle, errors) = trust::load(&config.trust);
    let what = match (config.verifies_clients(), config.egress.is_empty()) {
        (true, true) => "client certificates",
        (true, false) => "client certificates and egress servers",
        (false, _) => "egress servers",
    };
    let _ = writeln!(
        out,
        "\nTrust anchors for {what} ({} in total)",
        bundle.anchor_count()
    );
    let trust = &config.trust;
    let mut sources = Vec::new();
    if let Some(dir) = &trust.system_dir {
        sources.push(format!("CF_SYSTEM_CERT_PATH {}", dir.display()));
    }
    sources.extend(trust.ca_files.iter().map(|f| f.display().to_string()));
    sources.extend(trust.extra.iter().map(|(name, _)| name.clone()));
    let _ = writeln!(
        out,
        "  read from: {}",
        if sources.is_empty() {
            "nothing (CF_SYSTEM_CERT_PATH unset, no trust.ca_files)".to_owned()
        } else {
            sources.join(", ")
        }
    );
    for file in &bundle.files {
        let n = file.subjects.len();
        let _ = writeln!(
            out,
            "  {}: {} ({n} certificate{})",
            file.name,
            file.subjects.join(", "),
            if n == 1 { "" } else { "s" }
        );
    }
    let platform_fix = format!(
        "Diego provides it when the platform operator configures trusted CA certificates (rep containers.trusted_ca_certificates; cf-deployment includes the instance identity CA). Otherwise add the CA that signs your clients to the app and list it in trust.ca_files (relative to the app directory), then cf push {app}"
    );
    let mut trust_problems = Vec::new();
    if trust.system_certs && trust.system_dir.is_none() {
        trust_problems.push(Problem {
            what: "CF_SYSTEM_CERT_PATH is not set, so the platform's CAs are not trusted"
                .to_owned(),
            fix: platform_fix.clone(),
        });
    }
    for e in &errors {
        let fix = match e {
            TrustError::SystemDirMissing(_) => platform_fix.clone(),
            TrustError::CaFileMissing(_) => format!(
                "add the file to the app or fix its name in trust.ca_files (relative to the app directory), then cf push {app}"
            ),
            TrustError::Unreadable { .. } => "make the file readable by the app's user".to_owned(),
            _ => format!(
                "trust files must hold PEM CA certificates (-----BEGIN CERTIFICATE-----); fix the file, then cf push {app}"
            ),
        };
        trust_problems.push(Problem {
            what: e.to_string(),
            fix,
        });
    }
    if bundle.anchor_count() == 0 {
        let searched = match &trust.system_dir {
            Some(dir) if errors.is_empty() => {
                format!(" ({} holds no certificates)", dir.display())
            }
            _ => String::new(),
        };
        let consequence = format!(
            "there are no trust anchors{searched}, so every {} certificate is refused on {}",
            if config.egress.is_empty() {
                "client"
            } else {
                "peer"
            },
            verifying.join(", ")
        );
        match trust_problems.last_mut() {
            Some(last) => last.what = format!("{}; {consequence}", last.what),
            None => trust_problems.push(Problem {
                what: consequence,
                fix: platform_fix,
            }),
        }
    }
    problems.extend(trust_problems);
}
