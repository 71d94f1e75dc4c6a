//! The packaged `manifest.yml` (libbuildpack's schema, docs/DESIGN.md "manifest.yml"): which
//! stacks this buildpack supports and where the `tls-sidecar` dependency comes from.
//!
//! Only the keys supply reads are modelled; the others (`include_files`, `pre_package`, ...)
//! are ignored, as libbuildpack ignores what it does not use.

use crate::errors::{Error, ManifestError};
use serde::{Deserialize, Deserializer};
use std::path::Path;

/// The dependency this buildpack installs.
pub const DEPENDENCY_NAME: &str = "tls-sidecar";

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Manifest {
    #[serde(default)]
    pub language: Option<String>,
    /// Set when packaged for one stack; absent for `--stack any`.
    #[serde(default)]
    pub stack: Option<String>,
    #[serde(default)]
    pub default_versions: Vec<DefaultVersion>,
    #[serde(default)]
    pub dependencies: Vec<Dependency>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct DefaultVersion {
    pub name: String,
    #[serde(deserialize_with = "scalar")]
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Dependency {
    pub name: String,
    #[serde(deserialize_with = "scalar")]
    pub version: String,
    pub uri: String,
    pub sha256: String,
    #[serde(default)]
    pub cf_stacks: Vec<String>,
    /// Relative to the buildpack dir; present in a cached zip only.
    #[serde(default)]
    pub file: Option<String>,
}

/// The outcome of the stack check that does not stop staging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StackCheck {
    Supported,
    /// `CF_STACK` was not set; the list is what the manifest supports.
    Unchecked {
        supported: Vec<String>,
    },
}

impl Manifest {
    /// Reads `<buildpack_dir>/manifest.yml`.
    pub fn load(buildpack_dir: &Path) -> Result<Manifest, ManifestError> {
        let path = buildpack_dir.join("manifest.yml");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ManifestError::Missing { path });
            }
            Err(source) => return Err(ManifestError::Read { path, source }),
        };
        serde_yaml_ng::from_str(&text).map_err(|e| ManifestError::Parse {
            path,
            message: e.to_string(),
        })
    }

    /// Stacks this buildpack runs on: `stack:` if packaged for one, else every `cf_stacks`.
    pub fn supported_stacks(&self) -> Vec<String> {
        if let Some(s) = &self.stack {
            return vec![s.clone()];
        }
        let mut all: Vec<String> = Vec::new();
        for s in self.dependencies.iter().flat_map(|d| &d.cf_stacks) {
            if !all.contains(s) {
                all.push(s.clone());
            }
        }
        all
    }

    /// libbuildpack's `CheckStackSupport`: `stack:` must equal `CF_STACK`; without it, some
    /// dependency's `cf_stacks` must list it (an empty dependency list supports any stack).
    pub fn check_stack(&self, cf_stack: Option<&str>) -> Result<StackCheck, Error> {
        let Some(stack) = cf_stack.filter(|s| !s.is_empty()) else {
            return Ok(StackCheck::Unchecked {
                supported: self.supported_stacks(),
            });
        };
        let ok = match &self.stack {
            Some(s) => s == stack,
            None => {
                self.dependencies.is_empty()
                    || self
                        .dependencies
                        .iter()
                        .any(|d| d.cf_stacks.iter().any(|s| s == stack))
            }
        };
        if ok {
            Ok(StackCheck::Supported)
        } else {
            Err(Error::UnsupportedStack {
                stack: stack.to_owned(),
                supported: self.supported_stacks(),
            })
        }
    }

    /// The entry to install: the default version (or the highest) among entries for the
    /// stack, checked for a well-formed sha256 and a format supply can extract.
    pub fn dependency(
        &self,
        name: &str,
        cf_stack: Option<&str>,
    ) -> Result<Dependency, ManifestError> {
        let stack = cf_stack.filter(|s| !s.is_empty());
        let candidates: Vec<&Dependency> = self
            .dependencies
            .iter()
            .filter(|d| d.name == name)
            .filter(|d| match stack {
                // A single-stack zip drops cf_stacks (the packager deletes them), so an empty
                // list means "the manifest's stack".
                Some(s) => d.cf_stacks.is_empty() || d.cf_stacks.iter().any(|c| c == s),
                None => true,
            })
            .collect();
        let default = self
            .default_versions
            .iter()
            .find(|d| d.name == name)
            .map(|d| d.version.as_str());
        let chosen = match default {
            Some(v) => candidates.into_iter().find(|d| d.version == v),
            None => candidates
                .into_iter()
                .max_by(|a, b| version_key(&a.version).cmp(&version_key(&b.version))),
        };
        let Some(dep) = chosen else {
            return Err(ManifestError::NoDependency {
                name: name.to_owned(),
                stack: stack.map(str::to_owned),
            });
        };
        if dep.sha256.len() != 64 || !dep.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ManifestError::BadSha256 {
                name: dep.name.clone(),
                version: dep.version.clone(),
                value: dep.sha256.clone(),
            });
        }
        let shown = dep.file.clone().unwrap_or_else(|| dep.uri.clone());
        let base = url_basename(dep.file.as_deref().unwrap_or(&dep.uri));
        if !(base.ends_with(".tgz") || base.ends_with(".tar.gz")) {
            return Err(ManifestError::UnsupportedFormat {
                name: dep.name.clone(),
                version: dep.version.clone(),
                file: shown,
            });
        }
        Ok(dep.clone())
    }
}

/// The last path segment of a URL or path, without query or fragment.
pub fn url_basename(uri: &str) -> &str {
    let path = uri.split(['?', '#']).next().unwrap_or(uri);
    path.rsplit('/').next().unwrap_or(path)
}

/// Numeric segments compare as numbers (`1.10.0` > `1.9.0`); others as text.
fn version_key(v: &str) -> Vec<(u64, String)> {
    v.split(['.', '-', '+'])
        .map(|part| match part.parse::<u64>() {
            Ok(n) => (n, String::new()),
            Err(_) => (0, part.to_owned()),
        })
        .collect()
}

/// A YAML scalar as text: `version: 1.0` parses as a float, and must still read "1.0".
fn scalar<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    use serde::de::Error as _;
    match serde_yaml_ng::Value::deserialize(d)? {
        serde_yaml_ng::Value::String(s) => Ok(s),
        serde_yaml_ng::Value::Number(n) => Ok(n.to_string()),
        other => Err(D::Error::custom(format!(
            "expected a version, got {other:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PACKAGED: &str = r#"
language: tls-sidecar
stack: cflinuxfs4
default_versions:
  - {name: tls-sidecar, version: 1.0.0}
dependencies:
  - name: tls-sidecar
    version: 1.0.0
    uri: https://example.com/tls-sidecar-1.0.0-linux-x64.tgz
    sha256: 0000000000000000000000000000000000000000000000000000000000000000
    file: dependencies/abc/tls-sidecar-1.0.0-linux-x64.tgz
include_files: [bin/supply]
"#;

    const ANY_STACK: &str = r#"
language: tls-sidecar
dependencies:
  - name: tls-sidecar
    version: 1.9.0
    uri: https://example.com/tls-sidecar-1.9.0-linux-x64.tgz?x=1
    sha256: 1111111111111111111111111111111111111111111111111111111111111111
    cf_stacks: [cflinuxfs3, cflinuxfs4, cflinuxfs5]
  - name: tls-sidecar
    version: 1.10.0
    uri: https://example.com/tls-sidecar-1.10.0-linux-x64.tgz
    sha256: 2222222222222222222222222222222222222222222222222222222222222222
    cf_stacks: [cflinuxfs4]
"#;

    #[test]
    fn a_single_stack_zip_supports_exactly_its_stack() {
        let m: Manifest = serde_yaml_ng::from_str(PACKAGED).unwrap();
        assert_eq!(
            m.check_stack(Some("cflinuxfs4")).unwrap(),
            StackCheck::Supported
        );
        let e = m.check_stack(Some("cflinuxfs3")).unwrap_err();
        assert!(
            matches!(e, Error::UnsupportedStack { ref supported, .. } if supported == &["cflinuxfs4"])
        );
        assert_eq!(
            m.check_stack(None).unwrap(),
            StackCheck::Unchecked {
                supported: vec!["cflinuxfs4".into()]
            }
        );
        let d = m.dependency(DEPENDENCY_NAME, Some("cflinuxfs4")).unwrap();
        assert_eq!(
            d.file.as_deref(),
            Some("dependencies/abc/tls-sidecar-1.0.0-linux-x64.tgz")
        );
    }

    #[test]
    fn an_any_stack_zip_checks_cf_stacks_and_picks_the_highest_version_for_the_stack() {
        let m: Manifest = serde_yaml_ng::from_str(ANY_STACK).unwrap();
        assert_eq!(
            m.supported_stacks(),
            ["cflinuxfs3", "cflinuxfs4", "cflinuxfs5"]
        );
        assert!(m.check_stack(Some("cflinuxfs2")).is_err());
        assert_eq!(
            m.dependency(DEPENDENCY_NAME, Some("cflinuxfs4"))
                .unwrap()
                .version,
            "1.10.0"
        );
        assert_eq!(
            m.dependency(DEPENDENCY_NAME, Some("cflinuxfs3"))
                .unwrap()
                .version,
            "1.9.0"
        );
        assert!(matches!(
            m.dependency("other", None),
            Err(ManifestError::NoDependency { .. })
        ));
    }

    #[test]
    fn a_malformed_sha256_or_a_non_tgz_dependency_is_a_packaging_error() {
        let m: Manifest = serde_yaml_ng::from_str(&PACKAGED.replace("0000000000", "zz")).unwrap();
        assert!(matches!(
            m.dependency(DEPENDENCY_NAME, None),
            Err(ManifestError::BadSha256 { .. })
        ));
        let m: Manifest = serde_yaml_ng::from_str(&PACKAGED.replace(".tgz", ".zip")).unwrap();
        assert!(matches!(
            m.dependency(DEPENDENCY_NAME, None),
            Err(ManifestError::UnsupportedFormat { .. })
        ));
    }

    #[test]
    fn url_basenames_drop_query_and_fragment() {
        assert_eq!(url_basename("https://h/a/b/x.tgz?sig=1#f"), "x.tgz");
        assert_eq!(url_basename("x.tgz"), "x.tgz");
    }

    #[test]
    fn numeric_versions_are_read_as_text() {
        let m: Manifest =
            serde_yaml_ng::from_str("default_versions: [{name: x, version: 1.0}]").unwrap();
        assert_eq!(m.default_versions[0].version, "1.0");
    }
}
