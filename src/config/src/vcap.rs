use serde::Deserialize;

/// The parts of `VCAP_APPLICATION` the buildpack and the sidecar use. Every field is optional:
/// a missing one degrades a message or a selector, and each user says what it needs.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct VcapApplication {
    #[serde(default)]
    pub application_id: Option<String>,
    #[serde(default)]
    pub application_name: Option<String>,
    #[serde(default)]
    pub application_uris: Vec<String>,
    #[serde(default)]
    pub space_id: Option<String>,
    #[serde(default)]
    pub space_name: Option<String>,
    #[serde(default)]
    pub organization_id: Option<String>,
    #[serde(default)]
    pub organization_name: Option<String>,
    #[serde(default)]
    pub instance_index: Option<u32>,
}

impl VcapApplication {
    /// Stands for the app's name in `cf` commands of fix texts when `VCAP_APPLICATION` names
    /// none (outside CF, or a hand-made environment).
    pub const APP_NAME_PLACEHOLDER: &'static str = "APP_NAME";

    /// The app's name for `cf` commands in fix texts, or [`Self::APP_NAME_PLACEHOLDER`].
    pub fn app_name(&self) -> &str {
        self.application_name
            .as_deref()
            .filter(|n| !n.is_empty())
            .unwrap_or(Self::APP_NAME_PLACEHOLDER)
    }

    /// Reads `VCAP_APPLICATION` from `env`; absent or unparsable yields the empty value and the
    /// parse error text, so callers can warn without failing.
    pub fn from_env(env: &crate::Env) -> (Self, Option<String>) {
        match env.get("VCAP_APPLICATION") {
            None => (Self::default(), None),
            Some(raw) => match serde_json::from_str(raw) {
                Ok(v) => (v, None),
                Err(e) => (
                    Self::default(),
                    Some(format!("VCAP_APPLICATION is not valid JSON: {e}")),
                ),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_fields_cloud_controller_sets() {
        let mut env = crate::Env::new();
        env.insert(
            "VCAP_APPLICATION".into(),
            r#"{"application_id":"a","application_name":"web","application_uris":["web.apps.internal"],
               "space_id":"s","organization_id":"o","instance_index":2,"limits":{"mem":1024}}"#
                .into(),
        );
        let (v, err) = VcapApplication::from_env(&env);
        assert!(err.is_none());
        assert_eq!(v.application_name.as_deref(), Some("web"));
        assert_eq!(v.app_name(), "web");
        assert_eq!(v.instance_index, Some(2));
        assert_eq!(v.application_uris, vec!["web.apps.internal"]);
    }

    #[test]
    fn an_app_without_a_name_is_called_by_the_placeholder() {
        for raw in [None, Some(r#"{"application_name":""}"#), Some("not json")] {
            let mut env = crate::Env::new();
            if let Some(raw) = raw {
                env.insert("VCAP_APPLICATION".into(), raw.into());
            }
            assert_eq!(VcapApplication::from_env(&env).0.app_name(), "APP_NAME");
        }
    }
}
