//! `certificate.source: service`: the pair in a bound service's credentials in `VCAP_SERVICES`,
//! and the CA credentials `certificate.source: minted` signs with.
//!
//! # `certificate.source: service`
//!
//! The sidecar looks for the service instance by its **name** (as in `cf bind-service APP
//! NAME`) under every label of `VCAP_SERVICES` (user-provided or brokered), and reads these
//! string keys of its `credentials`:
//!
//! | Key | Alias | Content |
//! |---|---|---|
//! | `certificate` | `cert` | PEM certificate chain: the leaf first, then any intermediates |
//! | `private_key` | `key` | PEM private key (PKCS#1, PKCS#8 or SEC1; RSA, ECDSA or Ed25519) |
//! | `ca` | | optional PEM CA certificate(s), added to the trust bundle for client certificates |
//!
//! For example: `cf create-user-provided-service my-tls -p '{"certificate":"-----BEGIN
//! CERTIFICATE-----\n...","private_key":"-----BEGIN PRIVATE KEY-----\n..."}'`. `VCAP_SERVICES`
//! changes only when the app restarts, so there is nothing to watch.
//!
//! # `certificate.source: minted`
//!
//! The service named by `certificate.service` holds a CA the sidecar signs its own leaves with
//! (see [`super::minted`]):
//!
//! | Key | Alias | Content |
//! |---|---|---|
//! | `ca_certificate` | `certificate` | PEM: the signing CA first, then optionally its issuers (sent after the leaf) |
//! | `ca_private_key` | `private_key` | PEM private key of the signing CA: RSA or ECDSA, PKCS#1, PKCS#8 or SEC1 |
//!
//! The CA is also added to the trust bundle, so apps bound to the same CA service verify each
//! other. Use an intermediate name-constrained to the internal domains (`permitted;DNS:
//! .apps.internal`) rather than a root: whoever can read the app's environment holds this key.

use super::error::{LoadError, Remedy};
use super::pem::{Material, PairNames};
use serde_json::Value;

/// What a bound service's credentials provide (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServiceCredentials {
    pub(crate) certificate: String,
    pub(crate) private_key: String,
    pub(crate) ca: Option<String>,
}

/// The credentials of the service instance called `name` in `vcap_services`.
pub(crate) fn service_credentials(
    vcap_services: &str,
    name: &str,
) -> Result<ServiceCredentials, String> {
    let credentials = Credentials::find(vcap_services, name)?;
    Ok(ServiceCredentials {
        certificate: credentials.required(&["certificate", "cert"], "the PEM certificate chain")?,
        private_key: credentials.required(&["private_key", "key"], "the PEM private key")?,
        ca: credentials.key(&["ca"])?,
    })
}

/// What a bound CA service provides for `certificate.source: minted`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CaCredentials {
    /// PEM: the signing CA first, then optionally its issuers.
    pub(crate) certificate: String,
    /// PEM private key of the signing CA.
    pub(crate) private_key: String,
}

/// The keys of a CA service's credentials, as messages name them.
pub(crate) const CA_CERT_KEYS: [&str; 2] = ["ca_certificate", "certificate"];
pub(crate) const CA_KEY_KEYS: [&str; 2] = ["ca_private_key", "private_key"];

/// The CA certificate and key of the service instance called `name` (for
/// `certificate.source: minted`): `ca_certificate` (alias `certificate`) and `ca_private_key`
/// (alias `private_key`).
pub(crate) fn ca_credentials(vcap_services: &str, name: &str) -> Result<CaCredentials, String> {
    let credentials = Credentials::find(vcap_services, name)?;
    Ok(CaCredentials {
        certificate: credentials.required(&CA_CERT_KEYS, "the PEM CA certificate")?,
        private_key: credentials.required(&CA_KEY_KEYS, "the CA's PEM private key")?,
    })
}

/// One service instance's `credentials` object.
struct Credentials<'a> {
    name: &'a str,
    map: serde_json::Map<String, Value>,
}

impl<'a> Credentials<'a> {
    fn find(vcap_services: &str, name: &'a str) -> Result<Self, String> {
        let all: Value = serde_json::from_str(vcap_services)
            .map_err(|e| format!("VCAP_SERVICES is not valid JSON: {e}"))?;
        let labels = all
            .as_object()
            .ok_or("VCAP_SERVICES is not a JSON object")?;
        let instances = || labels.values().filter_map(Value::as_array).flatten();
        let Some(instance) =
            instances().find(|i| i.get("name").and_then(Value::as_str) == Some(name))
        else {
            let mut bound: Vec<&str> = instances()
                .filter_map(|i| i.get("name").and_then(Value::as_str))
                .collect();
            bound.sort_unstable();
            let bound = if bound.is_empty() {
                "none".to_owned()
            } else {
                bound.join(", ")
            };
            return Err(format!(
                "no service named \"{name}\" is bound to this app (VCAP_SERVICES holds: {bound})"
            ));
        };
        let map = instance
            .get("credentials")
            .and_then(Value::as_object)
            .ok_or_else(|| format!("the service \"{name}\" has no credentials object"))?
            .clone();
        Ok(Credentials { name, map })
    }

    /// The first of `names` that is set, as a string.
    fn key(&self, names: &[&str]) -> Result<Option<String>, String> {
        for n in names {
            match self.map.get(*n) {
                None | Some(Value::Null) => {}
                Some(Value::String(s)) => return Ok(Some(s.clone())),
                Some(_) => {
                    return Err(format!(
                        "credentials.{n} of the service \"{}\" is not a string",
                        self.name
                    ));
                }
            }
        }
        Ok(None)
    }

    fn required(&self, names: &[&str; 2], what: &str) -> Result<String, String> {
        self.key(names)?.ok_or_else(|| {
            format!(
                "the credentials of the service \"{}\" have no \"{}\" key (or \"{}\"): expected {what}",
                self.name, names[0], names[1]
            )
        })
    }
}

/// The pair in the credentials of the service `name` (`vcap_services`: `None` when unset).
pub(super) fn read(name: &str, vcap_services: Option<&str>) -> Result<Material, LoadError> {
    let creds = service_credentials(unbound(vcap_services)?, name).map_err(LoadError::Service)?;
    Ok(Material {
        cert_pem: creds.certificate.into_bytes(),
        key_pem: creds.private_key.into_bytes(),
        names: PairNames {
            cert: format!("service \"{name}\" credentials.certificate"),
            key: format!("service \"{name}\" credentials.private_key"),
            rotated_by_diego: false,
        },
    })
}

/// `VCAP_SERVICES`, or why no service can be bound without it.
pub(super) fn unbound(vcap_services: Option<&str>) -> Result<&str, LoadError> {
    vcap_services.ok_or_else(|| {
        LoadError::Service(
            "VCAP_SERVICES is not set, so no service is bound to this app".to_owned(),
        )
    })
}

/// The CA the service's credentials add to the trust bundle (`ca`), named for messages.
pub(super) fn trust_extra(name: &str, vcap_services: Option<&str>) -> Option<(String, String)> {
    let ca = service_credentials(vcap_services?, name).ok()?.ca?;
    Some((format!("service \"{name}\" credentials.ca"), ca))
}

/// How to fix a pair from the service `name` that does not load.
pub(super) fn remedy(name: &str) -> Remedy {
    Remedy {
        replace: format!(
            "update the credentials of the service (cf update-user-provided-service {name} -p '{{\"certificate\":\"...\",\"private_key\":\"...\"}}'), then cf restart APP"
        ),
        missing: "add the file to the app (paths are relative to the app directory, $HOME), make it readable, then cf push APP",
        unbound: Some(format!(
            "bind a service instance called \"{name}\" whose credentials hold \"certificate\" and \"private_key\" (cf bind-service APP {name}), then cf restage APP; or change certificate.service in tls-sidecar.yml"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VCAP: &str = r#"{
      "user-provided": [
        {"name": "db", "credentials": {"uri": "postgres://"}},
        {"name": "my-tls", "credentials": {"cert": "C", "key": "K"}}
      ],
      "tls-broker": [
        {"name": "brokered", "label": "tls-broker",
         "credentials": {"certificate": "C2", "private_key": "K2", "ca": "CA2"}}
      ]
    }"#;

    #[test]
    fn finds_a_service_by_name_under_any_label_with_either_key_spelling() {
        let c = service_credentials(VCAP, "my-tls").unwrap();
        assert_eq!((c.certificate.as_str(), c.private_key.as_str()), ("C", "K"));
        assert_eq!(c.ca, None);
        let c = service_credentials(VCAP, "brokered").unwrap();
        assert_eq!(c.certificate, "C2");
        assert_eq!(c.ca.as_deref(), Some("CA2"));
    }

    #[test]
    fn a_missing_service_names_the_bound_ones() {
        let e = service_credentials(VCAP, "nope").unwrap_err();
        assert_eq!(
            e,
            "no service named \"nope\" is bound to this app (VCAP_SERVICES holds: brokered, db, my-tls)"
        );
    }

    #[test]
    fn missing_credential_keys_are_named() {
        let e = service_credentials(VCAP, "db").unwrap_err();
        assert!(e.contains("no \"certificate\" key (or \"cert\")"), "{e}");
        let e = service_credentials(
            r#"{"x":[{"name":"s","credentials":{"certificate":"C","private_key":7}}]}"#,
            "s",
        )
        .unwrap_err();
        assert!(e.contains("credentials.private_key"), "{e}");
        assert!(
            service_credentials("[", "s")
                .unwrap_err()
                .contains("not valid JSON")
        );
    }
}
