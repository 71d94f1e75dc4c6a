//! `tls-sidecar check`: loads the configuration, the serving certificate and the trust bundle
//! through the same code as the running sidecar, binds nothing, and reports in words: this
//! instance's identity, the certificate's names and expiry, each listener, the trust anchors,
//! the admin address, and every problem with its fix.
//!
//! Meant for `cf ssh APP -c '/home/vcap/deps/0/bin/tls-sidecar check'`: the default
//! configuration is the staged one beside the binary and the environment is the app's.

use crate::config::{self, CertificateConfig, MintConfig, SidecarConfig};
use crate::errors::app_name;
use crate::identity::CfIdentity;
use crate::logging::rfc3339;
use crate::reload::unix_now;
use crate::source::Material;
use crate::tls::{self, LoadError};
use crate::trust::{self, TrustError};
use crate::{EX_USAGE, Env};
use std::fmt::Write as _;
use std::path::Path;
use tls_sidecar_config::{CertificateSource, ClientAuth, Mode, Selector};

/// Exit code when the report lists problems.
pub const EX_PROBLEMS: u8 = 1;

/// Something that stops the sidecar from serving as configured, and how to fix it.
struct Problem {
    what: String,
    fix: String,
}

/// Runs the check; returns the exit code (0, [`EX_PROBLEMS`] or 64) and the report.
pub fn run(cli_path: Option<&Path>, env: &Env, exe: Option<&Path>) -> (u8, String) {
    let loaded = match config::load_unchecked(cli_path, env, exe) {
        Ok(loaded) => loaded,
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
    let config = &loaded.config;
    let mut out = String::new();
    let mut problems = Vec::new();
    let _ = writeln!(
        out,
        "tls-sidecar {} check\nConfiguration: {}{}",
        env!("CARGO_PKG_VERSION"),
        loaded.source,
        if loaded.overrides.is_empty() {
            String::new()
        } else {
            format!(" (overridden by {})", loaded.overrides.join(", "))
        }
    );
    for warning in &loaded.warnings {
        // Reported as a problem below, with its fix.
        if !warning.starts_with(config::SYSTEM_CERT_PATH_UNSET) {
            let _ = writeln!(out, "Warning: {warning}");
        }
    }

    certificate(&mut out, &mut problems, config, &app);
    listeners(&mut out, &mut problems, config, &app);
    egress(&mut out, &mut problems, config, &app);
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
        minted(out, problems, mint, app);
        return;
    }
    let material = match config.certificate.read() {
        Ok(material) => material,
        Err(e) => {
            let fix = load_fix(&e, source, &config.certificate, app);
            problems.push(Problem {
                what: e.to_string(),
                fix,
            });
            return;
        }
    };
    let Material {
        cert_pem,
        key_pem,
        names,
    } = &material;
    // What the certificate says, even when the pair as a whole is unusable.
    match tls::parse_chain(names, cert_pem) {
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
            let fix = load_fix(&e, source, &config.certificate, app);
            problems.push(Problem {
                what: e.to_string(),
                fix,
            });
            return;
        }
    }
    let provider = tls::provider();
    let checked = tls::parse_pair(names, cert_pem, key_pem, &provider)
        .and_then(|pair| tls::check_validity(names, &pair.leaf, unix_now()));
    if let Err(e) = checked {
        let fix = load_fix(&e, source, &config.certificate, app);
        problems.push(Problem {
            what: e.to_string(),
            fix,
        });
    }
}

/// `source: minted`: mints one leaf in memory, exactly as the sidecar would, and describes it.
fn minted(out: &mut String, problems: &mut Vec<Problem>, mint: &MintConfig, app: &str) {
    let provider = tls::provider();
    match crate::mint::mint(mint, &provider, unix_now()) {
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
            let fix = match &e {
                LoadError::Service(_) => format!(
                    "bind a service instance called \"{name}\" whose credentials hold \"ca_certificate\" and \"ca_private_key\" (PEM; e.g. cf create-user-provided-service {name} -p ca.json, then cf bind-service {app} {name}), then cf restage {app}",
                    name = mint.service
                ),
                _ => format!(
                    "put a valid CA certificate (CA:TRUE, not expired) and its own key into the service's credentials (cf update-user-provided-service {} -p ca.json), then cf restart {app}",
                    mint.service
                ),
            };
            problems.push(Problem {
                what: e.to_string(),
                fix,
            });
        }
    }
}

fn egress(out: &mut String, problems: &mut Vec<Problem>, config: &SidecarConfig, app: &str) {
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
        let rules: Vec<String> = e.expect.iter().map(|s| describe_rule(s, config)).collect();
        let _ = writeln!(out, "      expect: {}", rules.join(", "));
        if let Err(problem) = e.expectation(&config.app) {
            problems.push(Problem {
                what: format!("egress[{i}].expect: {problem}; the sidecar refuses to start (exit 64)"),
                fix: format!(
                    "Cloud Foundry sets VCAP_APPLICATION for the app's processes: run check inside the app's container (cf ssh {app}); or name the space or org explicitly (cf:space:<guid>, cf:org:<guid>) in tls-sidecar.yml, then cf push {app}"
                ),
            });
        }
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

/// How to fix a certificate that does not load, by source.
fn load_fix(
    e: &LoadError,
    source: CertificateSource,
    cert: &CertificateConfig,
    app: &str,
) -> String {
    let replace = match source {
        CertificateSource::Instance => {
            "Diego issues and rotates the instance identity itself: restart the instance (cf restart APP) to get a new one; outside Diego point CF_INSTANCE_CERT and CF_INSTANCE_KEY at a valid pair".to_owned()
        }
        CertificateSource::Service => {
            let name = match cert {
                CertificateConfig::Service { name, .. } => name.as_str(),
                CertificateConfig::Minted(m) => m.service.as_str(),
                CertificateConfig::Files { .. } => "SERVICE",
            };
            format!("update the credentials of the service (cf update-user-provided-service {name} -p '{{\"certificate\":\"...\",\"private_key\":\"...\"}}'), then cf restart APP")
        }
        _ => "put a valid PEM pair at certificate.cert_file and certificate.key_file (relative to the app directory), then cf push APP; the sidecar also picks up replaced files by itself".to_owned(),
    };
    let fix = match e {
        LoadError::Missing(_) | LoadError::Unreadable { .. } => match source {
            CertificateSource::Instance => "the instance identity exists only in a Diego container: run this inside the app's container (cf ssh APP), or set CF_INSTANCE_CERT and CF_INSTANCE_KEY to existing files".to_owned(),
            _ => "add the file to the app (paths are relative to the app directory, $HOME), make it readable, then cf push APP".to_owned(),
        },
        LoadError::Service(_) => match cert {
            CertificateConfig::Service { name, .. } => format!(
                "bind a service instance called \"{name}\" whose credentials hold \"certificate\" and \"private_key\" (cf bind-service APP {name}), then cf restage APP; or change certificate.service in tls-sidecar.yml"
            ),
            CertificateConfig::Files { .. } | CertificateConfig::Minted(_) => replace,
        },
        LoadError::Expired { .. } => replace,
        LoadError::NotYetValid { .. } => format!("check the issuer's clock, or wait until the certificate becomes valid; or {replace}"),
        LoadError::Mismatch { rotated_by_diego: true, .. } => "Diego may be mid-rotation: run check again in a minute; if it persists, cf restart APP".to_owned(),
        LoadError::Mismatch { .. } => format!("use the certificate's own key (`openssl x509 -noout -pubkey -in CERT` and `openssl pkey -pubout -in KEY` must print the same): {replace}"),
        LoadError::UnsupportedKey { .. } | LoadError::BadKey { .. } => format!("issue the certificate for an RSA (e.g. openssl genrsa 3072) or ECDSA P-256 key: {replace}"),
        LoadError::BadPem { .. } | LoadError::NoCertificate(_) | LoadError::NoKey(_) | LoadError::BadCertificate { .. } => format!("provide PEM (-----BEGIN ...-----); convert DER with `openssl x509 -inform DER -in CERT -out CERT.pem`; {replace}"),
    };
    fix.replace("APP", app)
}

fn listeners(out: &mut String, problems: &mut Vec<Problem>, config: &SidecarConfig, app: &str) {
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
            continue;
        }
        let rules: Vec<String> = l.allow.iter().map(|s| describe_rule(s, config)).collect();
        let _ = writeln!(out, "      allow: {}", rules.join(", "));
        if let Err(problem) = l.policy(&config.app) {
            problems.push(Problem {
                what: format!("listeners[{i}].allow: {problem}; the sidecar refuses to start (exit 64)"),
                fix: format!(
                    "Cloud Foundry sets VCAP_APPLICATION for the app's processes: run check inside the app's container (cf ssh {app}); or name the space or org explicitly (cf:space:<guid> from `cf space SPACE --guid`, cf:org:<guid> from `cf org ORG --guid`) in tls-sidecar.yml, then cf push {app}"
                ),
            });
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
