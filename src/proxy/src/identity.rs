//! Who is calling: the CF instance identity in a verified client certificate, and the
//! listener's `allow` rules over it.
//!
//! Diego writes `OU=organization:<g>`, `OU=space:<g>` and `OU=app:<g>` into ONE multi-valued
//! RDN (Go's `pkix.Name` encoding), DER-sorted by length; other CAs may use one RDN per OU, in
//! any order. So the OUs are collected from every RDN and matched by prefix, never by position.
//! A certificate carrying two different values for the same prefix is ambiguous and has no
//! identity for that part: authorization must not pick one.
//!
//! OUs are only a *claim*: any CA can write them. [`CfIdentity::from_der`] reads the claim;
//! the identity that rules, logs and metrics use comes from [`crate::trust::Anchors`], which
//! keeps the claim only for chains ending at the platform's instance-identity CA and
//! otherwise clears it ([`CfIdentity::not_platform`]).

use std::fmt;
use tls_sidecar_config::{Guid, RequestRule, Selector, VcapApplication};
use x509_parser::prelude::{FromDer, X509Certificate};

/// The CF identity of a peer certificate. Fields are `None` when the certificate does not carry
/// them (or carries conflicting values).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CfIdentity {
    /// Subject CN: the instance GUID for Diego certificates.
    pub instance: Option<String>,
    pub app: Option<Guid>,
    pub space: Option<Guid>,
    pub org: Option<Guid>,
    /// The leaf claimed app/space/org OUs, but its chain does not end at the platform's
    /// instance-identity CA: the claim was dropped (`app`, `space`, `org` are `None`).
    pub not_platform: bool,
}

impl CfIdentity {
    /// The `app`, `space`, `org` and `instance` fields of a connection's log line: `-` for a
    /// part the certificate lacks, no fields without a certificate.
    pub(crate) fn log_fields(id: Option<&CfIdentity>) -> [Option<&str>; 4] {
        let part = |f: fn(&CfIdentity) -> Option<&str>| id.map(|id| f(id).unwrap_or("-"));
        [
            part(|id| id.app.as_ref().map(Guid::as_str)),
            part(|id| id.space.as_ref().map(Guid::as_str)),
            part(|id| id.org.as_ref().map(Guid::as_str)),
            part(|id| id.instance.as_deref()),
        ]
    }

    pub fn from_der(der: &[u8]) -> Result<Self, String> {
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| format!("certificate does not parse: {e}"))?;
        let subject = cert.subject();
        let instance = subject
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned);
        let ous = organizational_units(subject);
        let ous: Vec<&str> = ous.iter().map(String::as_str).collect();
        Ok(CfIdentity {
            instance,
            app: unique_guid(&ous, "app:"),
            space: unique_guid(&ous, "space:"),
            org: unique_guid(&ous, "organization:"),
            not_platform: false,
        })
    }

    /// Whether the certificate claims any CF app/space/org OU (only then does it matter which
    /// CA signed it).
    pub fn claims_cf_identity(&self) -> bool {
        self.app.is_some() || self.space.is_some() || self.org.is_some()
    }

    /// This claim, dropped because a CA other than the platform's made it. The CN stays (it is
    /// only a name for logs, never authorization).
    pub(crate) fn dropped_as_not_platform(self) -> Self {
        CfIdentity {
            instance: self.instance,
            app: None,
            space: None,
            org: None,
            not_platform: true,
        }
    }

    /// A full CF instance identity: app, space and org are all known.
    pub fn is_instance_identity(&self) -> bool {
        self.app.is_some() && self.space.is_some() && self.org.is_some()
    }
}

/// Every OU of `subject` as text, decoded exactly as the XFCC `Subject` decodes it (all
/// string types: UTF8, Printable, IA5, T61/Latin-1, BMP/UTF-16, Universal/UTF-32), so the app
/// and authorization never read different GUIDs from one certificate. An OU that cannot be
/// decoded voids them all: a certificate the two sides could read differently gets no identity.
fn organizational_units(subject: &x509_parser::x509::X509Name) -> Vec<String> {
    subject
        .iter_organizational_unit()
        .map(|ou| crate::xfcc::attr_text(ou.attr_value()))
        .collect::<Option<Vec<String>>>()
        .unwrap_or_default()
}

fn unique_guid(ous: &[&str], prefix: &str) -> Option<Guid> {
    let mut found: Option<Guid> = None;
    for ou in ous {
        if let Some(v) = ou.strip_prefix(prefix) {
            let g: Guid = v.parse().ok()?;
            match &found {
                Some(prev) if *prev != g => return None,
                _ => found = Some(g),
            }
        }
    }
    found
}

impl fmt::Display for CfIdentity {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let show = |g: &Option<Guid>| g.as_ref().map_or("-".to_owned(), Guid::to_string);
        write!(
            f,
            "app={} space={} org={} instance={}",
            show(&self.app),
            show(&self.space),
            show(&self.org),
            self.instance.as_deref().unwrap_or("-")
        )?;
        if self.not_platform {
            f.write_str(" (CF OUs ignored: not from the platform identity CA)")?;
        }
        Ok(())
    }
}

/// A listener's resolved `allow` rules (OR'd). Empty means no rules: every caller that
/// completes the handshake is let through.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessPolicy {
    rules: Vec<Rule>,
    /// The selectors as written, for messages.
    written: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Rule {
    App(Guid),
    Space(Guid),
    Org(Guid),
    AnyInstance,
}

/// Why a caller was refused; the text is one line, safe to send back in a 403.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial(pub String);

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AccessPolicy {
    /// Resolves `cf:same-space`/`cf:same-org` against this app's `VCAP_APPLICATION`. A relative
    /// selector without the GUID it needs is an error: silently dropping it would change who
    /// may call.
    pub fn resolve(selectors: &[Selector], me: &VcapApplication) -> Result<Self, String> {
        let mine = |v: &Option<String>, what: &str, sel: &Selector| -> Result<Guid, String> {
            v.as_deref()
                .ok_or_else(|| format!("{sel} needs VCAP_APPLICATION.{what}, which is not set"))?
                .parse::<Guid>()
                .map_err(|e| format!("{sel}: VCAP_APPLICATION.{what}: {e}"))
        };
        let mut rules = Vec::with_capacity(selectors.len());
        for sel in selectors {
            rules.push(match sel {
                Selector::App(g) => Rule::App(g.clone()),
                Selector::Space(g) => Rule::Space(g.clone()),
                Selector::Org(g) => Rule::Org(g.clone()),
                Selector::SameSpace => Rule::Space(mine(&me.space_id, "space_id", sel)?),
                Selector::SameOrg => Rule::Org(mine(&me.organization_id, "organization_id", sel)?),
                Selector::Any => Rule::AnyInstance,
                Selector::Dns(_) => {
                    return Err(format!(
                        "{sel} is an egress selector and cannot authorize callers"
                    ));
                }
            });
        }
        Ok(AccessPolicy {
            rules,
            written: selectors.iter().map(Selector::to_string).collect(),
        })
    }

    pub fn has_rules(&self) -> bool {
        !self.rules.is_empty()
    }

    /// Default deny once rules exist: the caller passes if any rule matches.
    pub fn check(&self, caller: Option<&CfIdentity>) -> Result<(), Denial> {
        if self.rules.is_empty() {
            return Ok(());
        }
        let Some(id) = caller else {
            return Err(Denial("a client certificate is required".to_owned()));
        };
        let hit = self.rules.iter().any(|r| match r {
            Rule::App(g) => id.app.as_ref() == Some(g),
            Rule::Space(g) => id.space.as_ref() == Some(g),
            Rule::Org(g) => id.org.as_ref() == Some(g),
            Rule::AnyInstance => id.is_instance_identity(),
        });
        if hit {
            Ok(())
        } else if id.not_platform {
            Err(Denial(
                "the client certificate claims CF OUs, but its CA is not the platform instance-identity CA, so no cf: rule matches it".to_owned(),
            ))
        } else if !id.is_instance_identity() {
            Err(Denial(
                "the client certificate carries no CF app/space/org identity".to_owned(),
            ))
        } else {
            Err(Denial(format!(
                "caller {id} is not allowed (allow: {})",
                self.written.join(", ")
            )))
        }
    }
}

/// A listener's resolved request rules (http mode): the first rule whose paths and methods
/// match a request decides, and a request no rule matches is refused. Empty: no request rules.
#[derive(Debug, Clone, Default)]
pub struct RequestPolicy {
    rules: Vec<(RequestRule, AccessPolicy)>,
}

/// A refused request: the rule that refused it (`None`: no rule matched) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestDenial {
    pub rule: Option<usize>,
    pub reason: Denial,
}

impl RequestPolicy {
    /// Each rule with its `allow` resolved (see [`AccessPolicy::resolve`]), in order.
    pub fn new(rules: Vec<(RequestRule, AccessPolicy)>) -> Self {
        RequestPolicy { rules }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Default deny: the first rule matching `method` and the normalised `path` must admit
    /// the caller.
    pub fn check(
        &self,
        method: &str,
        path: &str,
        caller: Option<&CfIdentity>,
    ) -> Result<(), RequestDenial> {
        let Some((index, (rule, policy))) = self
            .rules
            .iter()
            .enumerate()
            .find(|(_, (rule, _))| rule.matches(method, path))
        else {
            return Err(RequestDenial {
                rule: None,
                reason: Denial(format!("no rule matches {method} {path}")),
            });
        };
        let verdict = if rule.allow.is_empty() {
            Err(Denial("it lets nobody in (allow: [])".to_owned()))
        } else {
            policy.check(caller)
        };
        verdict.map_err(|why| RequestDenial {
            rule: Some(index),
            reason: Denial(format!("rules[{index}] ({}): {why}", rule.describe())),
        })
    }
}

/// An egress entry's resolved `expect` rules (OR'd): CF identity rules over the server
/// certificate's OUs (no hostname check: Diego certificates name no routes), and `dns:` names
/// the certificate's SANs must match (standard hostname verification, for minted or
/// self-managed certificates).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expectation {
    /// The `cf:` rules; empty when only `dns:` selectors are written.
    pub(crate) identity: AccessPolicy,
    /// The `dns:` names, lower case.
    pub(crate) dns: Vec<String>,
    /// The selectors as written, for messages.
    written: Vec<String>,
}

impl Expectation {
    /// Resolves `cf:same-space`/`cf:same-org` against this app's `VCAP_APPLICATION`.
    pub fn resolve(selectors: &[Selector], me: &VcapApplication) -> Result<Self, String> {
        let (dns, cf): (Vec<&Selector>, Vec<&Selector>) = selectors
            .iter()
            .partition(|s| matches!(s, Selector::Dns(_)));
        let cf: Vec<Selector> = cf.into_iter().cloned().collect();
        Ok(Expectation {
            identity: AccessPolicy::resolve(&cf, me)?,
            dns: dns
                .into_iter()
                .filter_map(|s| match s {
                    Selector::Dns(name) => Some(name.clone()),
                    _ => None,
                })
                .collect(),
            written: selectors.iter().map(Selector::to_string).collect(),
        })
    }

    /// Whether a `cf:` rule admits `identity`.
    pub fn admits(&self, identity: &CfIdentity) -> bool {
        self.identity.has_rules() && self.identity.check(Some(identity)).is_ok()
    }

    /// The selectors as written, comma-separated.
    pub fn written(&self) -> String {
        self.written.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tls_sidecar_testkit::{LeafSpec, Pki};

    const APP: &str = "9e8d7c6b-5a4f-4e3d-8c2b-1a0f9e8d7c6b";
    const SPACE: &str = "5c4d1b0e-2a3f-4e5d-9c8b-7a6f5e4d3c2b";
    const ORG: &str = "0f8a4d6e-6c61-4c39-a6d0-2b0d6c1f8b11";
    const INSTANCE: &str = "4e0a8b9c-1d2e-4f3a-5b6c-7d8e9f0a1b2c";

    /// A certificate with `subj` (OpenSSL `-subj` syntax), DER.
    fn cert(subj: &str) -> Vec<u8> {
        Pki::shared()
            .issue_spec(&LeafSpec::subject(subj))
            .leaf_der
            .to_vec()
    }

    fn diego() -> CfIdentity {
        CfIdentity::from_der(&cert(&format!(
            "/OU=organization:{ORG}+OU=space:{SPACE}+OU=app:{APP}/CN={INSTANCE}"
        )))
        .unwrap()
    }

    fn vcap() -> VcapApplication {
        VcapApplication {
            space_id: Some(SPACE.into()),
            organization_id: Some(ORG.into()),
            ..Default::default()
        }
    }

    fn policy(sels: &[&str]) -> AccessPolicy {
        let sels: Vec<Selector> = sels.iter().map(|s| s.parse().unwrap()).collect();
        AccessPolicy::resolve(&sels, &vcap()).unwrap()
    }

    #[test]
    fn reads_the_three_ous_from_diegos_multi_valued_rdn() {
        let id = diego();
        assert_eq!(id.app.unwrap().as_str(), APP);
        assert_eq!(id.space.unwrap().as_str(), SPACE);
        assert_eq!(id.org.unwrap().as_str(), ORG);
        assert_eq!(id.instance.as_deref(), Some(INSTANCE));
    }

    #[test]
    fn reads_ous_from_separate_rdns_in_any_order() {
        let id = CfIdentity::from_der(&cert(&format!(
            "/CN=x/OU=app:{APP}/OU=organization:{ORG}/OU=space:{SPACE}"
        )))
        .unwrap();
        assert!(id.is_instance_identity());
        assert_eq!(id.app.unwrap().as_str(), APP);
    }

    #[test]
    fn conflicting_app_ous_give_no_app_identity() {
        let other = "11111111-2222-4333-8444-555555555555";
        let id = CfIdentity::from_der(&cert(&format!(
            "/OU=app:{APP}+OU=app:{other}+OU=space:{SPACE}+OU=organization:{ORG}/CN=x"
        )))
        .unwrap();
        assert_eq!(id.app, None);
        assert!(policy(&["cf:any"]).check(Some(&id)).is_err());
    }

    #[test]
    fn selectors_are_ored_and_relative_ones_resolve_from_vcap_application() {
        let id = diego();
        assert!(policy(&["cf:same-space"]).check(Some(&id)).is_ok());
        assert!(policy(&["cf:same-org"]).check(Some(&id)).is_ok());
        assert!(policy(&["cf:any"]).check(Some(&id)).is_ok());
        assert!(policy(&[&format!("cf:app:{APP}")]).check(Some(&id)).is_ok());
        let other = "11111111-2222-4333-8444-555555555555";
        let e = policy(&[&format!("cf:app:{other}"), &format!("cf:space:{other}")])
            .check(Some(&id))
            .unwrap_err();
        assert!(
            e.0.contains(&format!("app={APP}")) && e.0.contains("allow: cf:app:"),
            "{e}"
        );
        assert!(
            policy(&[&format!("cf:app:{other}"), &format!("cf:org:{ORG}")])
                .check(Some(&id))
                .is_ok()
        );
    }

    #[test]
    fn rules_deny_a_caller_without_a_certificate_or_without_ous_and_no_rules_allow_anyone() {
        let plain = CfIdentity::from_der(&cert("/CN=gorouter.service.cf.internal")).unwrap();
        assert!(
            policy(&["cf:any"])
                .check(None)
                .unwrap_err()
                .0
                .contains("required")
        );
        assert!(
            policy(&["cf:any"])
                .check(Some(&plain))
                .unwrap_err()
                .0
                .contains("no CF app/space/org identity")
        );
        assert!(AccessPolicy::default().check(None).is_ok());
    }

    #[test]
    fn an_expectation_matches_cf_rules_by_ous_and_keeps_dns_names_for_hostname_checks() {
        let id = diego();
        let sels = |s: &[&str]| -> Vec<Selector> { s.iter().map(|x| x.parse().unwrap()).collect() };
        let e =
            Expectation::resolve(&sels(&["cf:same-org", "dns:B.apps.internal"]), &vcap()).unwrap();
        assert!(e.admits(&id));
        assert_eq!(e.dns, ["b.apps.internal"]);
        assert_eq!(e.written(), "cf:same-org, dns:b.apps.internal");
        let other = "11111111-2222-4333-8444-555555555555";
        let e = Expectation::resolve(&sels(&[&format!("cf:app:{other}")]), &vcap()).unwrap();
        assert!(!e.admits(&id));
        let dns_only = Expectation::resolve(&sels(&["dns:b.apps.internal"]), &vcap()).unwrap();
        assert!(
            !dns_only.admits(&id),
            "no cf: rule admits anything by itself"
        );
    }

    #[test]
    fn a_claim_dropped_as_not_from_the_platform_ca_matches_no_rule_and_the_denial_says_why() {
        let claimed = diego();
        assert!(claimed.claims_cf_identity());
        let dropped = claimed.dropped_as_not_platform();
        assert_eq!((dropped.app.as_ref(), dropped.org.as_ref()), (None, None));
        assert_eq!(dropped.instance.as_deref(), Some(INSTANCE));
        for rules in [
            vec!["cf:any"],
            vec![&*format!("cf:app:{APP}")],
            vec!["cf:same-org"],
        ] {
            let denial = policy(&rules).check(Some(&dropped)).unwrap_err();
            assert!(
                denial.0.contains("not the platform instance-identity CA"),
                "{denial}"
            );
        }
        assert!(
            dropped
                .to_string()
                .ends_with("(CF OUs ignored: not from the platform identity CA)")
        );
    }

    #[test]
    fn a_relative_selector_without_vcap_application_is_an_error() {
        let e = AccessPolicy::resolve(
            &["cf:same-space".parse().unwrap()],
            &VcapApplication::default(),
        )
        .unwrap_err();
        assert!(e.contains("VCAP_APPLICATION.space_id"), "{e}");
    }
}
