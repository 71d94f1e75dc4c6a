//! The two `manifest.yml`s: the human-edited source at the repository root, and the packaged one
//! the packager writes into the zip (libbuildpack schema, read by supply and by Cloud Controller).

use std::collections::BTreeSet;
use std::fs;
use std::path::{Component, Path, PathBuf};

use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};

use crate::errors::PackagerError;
use crate::stack::Stack;
use crate::tarball::DEPENDENCY_NAME;

/// The manifest's file name, in the repository and in the zip.
pub const MANIFEST_FILE: &str = "manifest.yml";

/// Where the multi-call binary sits in the zip; the `bin/` shims exec it.
pub const BUILDPACK_BINARY_IN_ZIP: &str = "lib/tls-sidecar-buildpack";

/// The files every zip needs, so every source manifest must list them in `include_files`.
/// Without any one of them the buildpack cannot stage (the shims, the binary they exec) or cannot
/// be uploaded (`manifest.yml`) or cannot say its version (`VERSION`).
pub const REQUIRED_INCLUDE_FILES: [&str; 7] = [
    "bin/detect",
    "bin/supply",
    "bin/finalize",
    "bin/release",
    BUILDPACK_BINARY_IN_ZIP,
    MANIFEST_FILE,
    "VERSION",
];

/// Files that go into the zip if the repository has them and are skipped (with a note) if not.
pub const OPTIONAL_INCLUDE_FILES: [&str; 2] = ["README.md", "LICENSE"];

/// The `uri` base of a cached zip packaged without `--dependency-uri-base`. A cached zip never
/// downloads (supply takes the tarball from the zip, by `file:`), but libbuildpack's schema
/// wants a `uri`: the reserved `.invalid` domain (RFC 2606) says plainly that nothing is
/// published there.
#[must_use]
pub fn unpublished_dependency_uri_base(version: &str) -> String {
    format!("https://unpublished.invalid/tls-sidecar/v{version}")
}

/// Where the cached zip stores a dependency, as libbuildpack's packager does and its installer
/// expects: `dependencies/<md5hex(uri)>/<basename(uri)>`.
#[must_use]
pub fn cached_dependency_path(uri: &str) -> String {
    let digest = Md5::digest(uri.as_bytes());
    let basename = uri.rsplit('/').next().unwrap_or(uri);
    format!("dependencies/{}/{basename}", hex::encode(digest))
}

/// `{name, version}`: which version supply installs by default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultVersion {
    /// The dependency's name.
    pub name: String,
    /// Its version.
    pub version: String,
}

/// A dependency as the source manifest declares it. `uri`, `sha256` and `file` are accepted only
/// to recognise an already packaged manifest and refuse it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceDependency {
    name: String,
    version: String,
    #[serde(default)]
    cf_stacks: Vec<String>,
    #[serde(default)]
    uri: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    sha256: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    file: Option<serde_yaml_ng::Value>,
    /// libbuildpack's keys for where a dependency was built from and its sub-modules: valid in
    /// a source manifest (operators' tooling writes them), not used by this packager.
    #[serde(default, rename = "source")]
    _source: Option<serde_yaml_ng::Value>,
    #[serde(default, rename = "source_sha256")]
    _source_sha256: Option<serde_yaml_ng::Value>,
    #[serde(default, rename = "modules")]
    _modules: Option<serde_yaml_ng::Value>,
}

/// The source manifest as written in the repository.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSourceManifest {
    language: String,
    #[serde(default)]
    stack: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    default_versions: Vec<DefaultVersion>,
    #[serde(default)]
    dependencies: Vec<SourceDependency>,
    #[serde(default)]
    include_files: Vec<String>,
    /// libbuildpack's `pre_package` command: scripts/pre-package.sh builds what include_files
    /// names but the repository lacks (lib/tls-sidecar-buildpack). This packager builds through
    /// scripts/package.sh instead, so it does not run it.
    #[serde(default, rename = "pre_package")]
    _pre_package: Option<serde_yaml_ng::Value>,
    /// Other keys of libbuildpack's manifest schema: valid in a source manifest, unused here
    /// (docs/DESIGN.md, "manifest.yml").
    #[serde(default, rename = "dependency_deprecation_dates")]
    _dependency_deprecation_dates: Option<serde_yaml_ng::Value>,
    #[serde(default, rename = "version_lines")]
    _version_lines: Option<serde_yaml_ng::Value>,
    #[serde(default, rename = "url_to_dependency_map")]
    _url_to_dependency_map: Option<serde_yaml_ng::Value>,
    #[serde(default, rename = "exclude_files")]
    _exclude_files: Option<serde_yaml_ng::Value>,
}

/// A validated source manifest: one `tls-sidecar` dependency, known stacks, every required file
/// in `include_files`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceManifest {
    /// Where it was read from, for error messages.
    pub path: PathBuf,
    /// `language:`, which also names the zip (`-` becomes `_`).
    pub language: String,
    /// The tls-sidecar version the source names. The packaged manifest uses the packaging
    /// version instead: the sidecar is built from the same tree as the buildpack.
    pub sidecar_version: String,
    /// The stacks the sidecar is declared for.
    pub cf_stacks: Vec<Stack>,
    /// `include_files`, in order, without duplicates.
    pub include_files: Vec<String>,
}

impl SourceManifest {
    /// Reads and validates the source manifest at `path`.
    ///
    /// # Errors
    /// Unreadable or invalid YAML, an already packaged manifest, or content this packager cannot
    /// build (see [`PackagerError`]).
    pub fn load(path: &Path) -> Result<Self, PackagerError> {
        let text = fs::read_to_string(path).map_err(|cause| PackagerError::ReadInput {
            path: path.to_path_buf(),
            cause,
        })?;
        Self::parse(&text, path)
    }

    /// Validates manifest text; `path` is used in messages only.
    ///
    /// # Errors
    /// As [`SourceManifest::load`].
    pub fn parse(text: &str, path: &Path) -> Result<Self, PackagerError> {
        let raw: RawSourceManifest =
            serde_yaml_ng::from_str(text).map_err(|cause| PackagerError::ParseManifest {
                path: path.to_path_buf(),
                cause,
            })?;
        let invalid = |problem: String| PackagerError::InvalidManifest {
            path: path.to_path_buf(),
            problem,
        };

        // Only the packager writes these, so their presence means this is a packaged manifest
        // (libbuildpack keys on `stack`; `--stack any` omits it, hence the dependency fields).
        let packaged_field = if raw.stack.is_some() {
            Some("stack")
        } else {
            raw.dependencies.iter().find_map(|d| {
                (d.uri.is_some().then_some("uri"))
                    .or(d.sha256.is_some().then_some("sha256"))
                    .or(d.file.is_some().then_some("file"))
            })
        };
        if let Some(field) = packaged_field {
            return Err(PackagerError::AlreadyPackaged {
                path: path.to_path_buf(),
                field,
            });
        }

        if raw.language.is_empty()
            || !raw
                .language
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(invalid(format!(
                "language {:?} must be a non-empty name of letters, digits, - and _ (it names the \
                 zip); this buildpack's is tls-sidecar",
                raw.language
            )));
        }

        let [dependency] = raw.dependencies.as_slice() else {
            return Err(invalid(format!(
                "expected exactly one dependency, {DEPENDENCY_NAME}, found {}: the packager \
                 builds only the sidecar",
                raw.dependencies.len()
            )));
        };
        if dependency.name != DEPENDENCY_NAME {
            return Err(invalid(format!(
                "the dependency is named {:?}; the packager builds only {DEPENDENCY_NAME}",
                dependency.name
            )));
        }
        if raw.default_versions.len() != 1 || raw.default_versions[0].name != DEPENDENCY_NAME {
            return Err(invalid(format!(
                "default_versions must name exactly one dependency, {DEPENDENCY_NAME}, so that \
                 supply knows which version to install"
            )));
        }
        if dependency.cf_stacks.is_empty() {
            return Err(invalid(format!(
                "the {DEPENDENCY_NAME} dependency has no cf_stacks: list the stacks it supports \
                 (cflinuxfs3, cflinuxfs4, cflinuxfs5)"
            )));
        }
        let cf_stacks = dependency
            .cf_stacks
            .iter()
            .map(|name| match name.parse::<Stack>() {
                Ok(Stack::Any) | Err(_) => Err(invalid(format!(
                    "cf_stacks lists {name:?}, which is not a CF stack (cflinuxfs3, cflinuxfs4, \
                     cflinuxfs5)"
                ))),
                Ok(stack) => Ok(stack),
            })
            .collect::<Result<Vec<_>, _>>()?;

        let mut seen = BTreeSet::new();
        let mut include_files = Vec::new();
        for file in &raw.include_files {
            if !is_plain_relative_path(file) {
                return Err(invalid(format!(
                    "include_files lists {file:?}: expected a plain relative file path such as \
                     bin/supply (no leading /, no .., no trailing /)"
                )));
            }
            if file.starts_with("dependencies/") {
                return Err(invalid(format!(
                    "include_files lists {file:?}, but dependencies/ is written by the packager \
                     for the cached zip"
                )));
            }
            if seen.insert(file.clone()) {
                include_files.push(file.clone());
            }
        }
        let missing: Vec<&str> = REQUIRED_INCLUDE_FILES
            .into_iter()
            .filter(|f| !seen.contains(*f))
            .collect();
        if !missing.is_empty() {
            return Err(invalid(format!(
                "include_files must list {}: the buildpack cannot stage without them",
                missing.join(", ")
            )));
        }

        Ok(SourceManifest {
            path: path.to_path_buf(),
            language: raw.language,
            sidecar_version: dependency.version.clone(),
            cf_stacks,
            include_files,
        })
    }

    /// The packaged manifest's `cf_stacks` for `stack`: that stack alone, or for `any` every
    /// stack the source lists.
    ///
    /// # Errors
    /// [`PackagerError::StackNotInManifest`] if the source does not list `stack`.
    pub fn cf_stacks_for(&self, stack: Stack) -> Result<Vec<String>, PackagerError> {
        if stack == Stack::Any {
            return Ok(self
                .cf_stacks
                .iter()
                .map(|s| s.as_str().to_owned())
                .collect());
        }
        if self.cf_stacks.contains(&stack) {
            return Ok(vec![stack.as_str().to_owned()]);
        }
        Err(PackagerError::StackNotInManifest {
            stack: stack.as_str().to_owned(),
            path: self.path.clone(),
            listed: self
                .cf_stacks
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
    }
}

/// Relative, only normal components, `/`-separated as zip entry names are.
fn is_plain_relative_path(file: &str) -> bool {
    !file.is_empty()
        && !file.ends_with('/')
        && !file.contains('\\')
        && Path::new(file)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

/// A dependency in the packaged manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackagedDependency {
    /// `tls-sidecar`.
    pub name: String,
    /// The packaged version.
    pub version: String,
    /// Where supply downloads the tarball from (uncached zip), and the key of the cached path.
    pub uri: String,
    /// The tarball's sha256, checked by supply.
    pub sha256: String,
    /// The stacks this entry serves.
    pub cf_stacks: Vec<String>,
    /// The tarball's path inside the cached zip; absent in the uncached one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

/// The manifest inside the zip.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackagedManifest {
    /// As in the source.
    pub language: String,
    /// The stack CF registers the buildpack for; absent for `--stack any`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<String>,
    /// `[{name: tls-sidecar, version}]`.
    pub default_versions: Vec<DefaultVersion>,
    /// `[tls-sidecar]`.
    pub dependencies: Vec<PackagedDependency>,
    /// The files actually in the zip (optional ones the repository lacks are left out).
    pub include_files: Vec<String>,
}

impl PackagedManifest {
    /// The YAML written into the zip, with a header saying where it came from.
    ///
    /// # Errors
    /// Only if serialisation fails, which plain strings and lists do not.
    pub fn to_yaml(&self) -> Result<String, serde_yaml_ng::Error> {
        let body = serde_yaml_ng::to_string(self)?;
        Ok(format!(
            "# Written by tls-sidecar-packager from the repository's manifest.yml: edit that one\n\
             # and package again (scripts/package.sh).\n{body}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOURCE: &str = "\
language: tls-sidecar
default_versions:
  - {name: tls-sidecar, version: 1.0.0}
dependencies:
  - name: tls-sidecar
    version: 1.0.0
    cf_stacks: [cflinuxfs3, cflinuxfs4, cflinuxfs5]
include_files: [README.md, VERSION, bin/detect, bin/supply, bin/finalize, bin/release,
                lib/tls-sidecar-buildpack, manifest.yml, VERSION]
";

    fn parse(text: &str) -> Result<SourceManifest, PackagerError> {
        SourceManifest::parse(text, Path::new("manifest.yml"))
    }

    fn problem(text: &str) -> String {
        parse(text).expect_err("invalid").to_string()
    }

    #[test]
    fn the_source_manifest_parses_with_include_files_deduplicated_in_order() {
        let manifest = parse(SOURCE).expect("valid");
        assert_eq!(manifest.language, "tls-sidecar");
        assert_eq!(manifest.cf_stacks, Stack::NAMED.to_vec());
        assert_eq!(manifest.include_files[..2], ["README.md", "VERSION"]);
        assert_eq!(manifest.include_files.len(), 8);
    }

    #[test]
    fn the_repository_manifest_is_a_valid_source_manifest() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../manifest.yml");
        let manifest = SourceManifest::load(&path).expect("the repository's manifest.yml");
        assert_eq!(manifest.language, "tls-sidecar");
        assert_eq!(manifest.cf_stacks, Stack::NAMED.to_vec());
    }

    #[test]
    fn a_manifest_with_a_stack_is_already_packaged() {
        let text = format!("stack: cflinuxfs4\n{SOURCE}");
        assert!(problem(&text).starts_with(
            "Cannot package from already packaged buildpack manifest: manifest.yml has `stack`"
        ));
    }

    #[test]
    fn a_manifest_with_a_sha256_is_already_packaged_even_without_a_stack() {
        let text = SOURCE.replace(
            "    version: 1.0.0\n",
            "    version: 1.0.0\n    sha256: abc\n",
        );
        assert!(
            problem(&text)
                .contains("already packaged buildpack manifest: manifest.yml has `sha256`")
        );
    }

    #[test]
    fn a_packaged_manifest_written_by_the_packager_is_refused() {
        let packaged = PackagedManifest {
            language: "tls-sidecar".into(),
            stack: None,
            default_versions: vec![DefaultVersion {
                name: "tls-sidecar".into(),
                version: "1.0.0".into(),
            }],
            dependencies: vec![PackagedDependency {
                name: "tls-sidecar".into(),
                version: "1.0.0".into(),
                uri: "https://example.com/x.tgz".into(),
                sha256: "00".repeat(32),
                cf_stacks: vec!["cflinuxfs4".into()],
                file: None,
            }],
            include_files: REQUIRED_INCLUDE_FILES
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
        };
        let yaml = packaged.to_yaml().expect("yaml");
        assert!(matches!(
            parse(&yaml),
            Err(PackagerError::AlreadyPackaged { field: "uri", .. })
        ));
    }

    #[test]
    fn a_missing_required_include_file_is_named() {
        let text = SOURCE.replace(" bin/release,", "");
        assert_eq!(
            problem(&text),
            "manifest.yml: include_files must list bin/release: the buildpack cannot stage \
             without them"
        );
    }

    #[test]
    fn include_files_must_stay_inside_the_buildpack() {
        for bad in ["../secret", "/etc/passwd", "bin/", "dependencies/x"] {
            let text = SOURCE.replace("README.md,", &format!("{bad:?},"));
            assert!(
                problem(&text).contains("include_files lists"),
                "{bad} accepted"
            );
        }
    }

    #[test]
    fn an_unknown_stack_in_cf_stacks_is_refused() {
        let text = SOURCE.replace("cflinuxfs3,", "cflinuxfs2,");
        assert!(problem(&text).contains("cf_stacks lists \"cflinuxfs2\""));
    }

    #[test]
    fn a_misspelt_key_is_refused_rather_than_ignored() {
        let text = SOURCE.replace("include_files:", "include_file:");
        assert!(matches!(
            parse(&text),
            Err(PackagerError::ParseManifest { .. })
        ));
    }

    #[test]
    fn a_second_dependency_is_refused() {
        let text = SOURCE.replace(
            "include_files:",
            "  - {name: other, version: 1.0.0, cf_stacks: [cflinuxfs4]}\ninclude_files:",
        );
        assert!(problem(&text).contains("expected exactly one dependency, tls-sidecar, found 2"));
    }

    #[test]
    fn a_named_stack_must_be_listed_and_any_takes_every_listed_stack() {
        let text = SOURCE.replace("cflinuxfs3, cflinuxfs4, cflinuxfs5", "cflinuxfs4");
        let manifest = parse(&text).expect("valid");
        assert_eq!(
            manifest.cf_stacks_for(Stack::Cflinuxfs4).expect("listed"),
            ["cflinuxfs4"]
        );
        assert_eq!(
            manifest.cf_stacks_for(Stack::Any).expect("any"),
            ["cflinuxfs4"]
        );
        let err = manifest
            .cf_stacks_for(Stack::Cflinuxfs3)
            .expect_err("not listed");
        assert!(
            err.to_string()
                .starts_with("Stack `cflinuxfs3` not found in manifest")
        );
    }

    #[test]
    fn the_cached_path_is_the_md5_of_the_uri_and_its_basename() {
        // Expected values computed with `printf %s URI | md5sum`.
        assert_eq!(
            cached_dependency_path("https://example.com/a/tls-sidecar-1.0.0-linux-x64.tgz"),
            "dependencies/a19bf1f7331e0c7d2cd877f760950343/tls-sidecar-1.0.0-linux-x64.tgz"
        );
        assert_eq!(
            cached_dependency_path("file:///x/y.tgz"),
            "dependencies/a5dff64af7daeab45a332fa66f87ebaf/y.tgz"
        );
    }

    #[test]
    fn libbuildpack_schema_keys_are_accepted_and_truly_unknown_keys_are_refused_with_their_line() {
        let with_keys = SOURCE.replace(
            "    cf_stacks: [cflinuxfs3, cflinuxfs4, cflinuxfs5]\n",
            "    cf_stacks: [cflinuxfs3, cflinuxfs4, cflinuxfs5]\n    source: https://example.com/src.tgz\n    source_sha256: abc\n    modules: []\n",
        ) + "pre_package: scripts/pre-package.sh\n\
dependency_deprecation_dates:\n  - {version_line: 1.x.x, name: tls-sidecar, date: 2030-01-01, link: https://example.com}\n\
version_lines: {tls-sidecar: {latest: 1.x}}\n\
url_to_dependency_map: []\n\
exclude_files: [.git/]\n";
        let m = parse(&with_keys).expect("libbuildpack keys are valid");
        assert_eq!(m.sidecar_version, "1.0.0");

        let e = parse(&format!("{SOURCE}include_file: [x]\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `include_file`"), "{e}");
        assert!(e.contains("at line 10 column 1"), "{e}");
    }
}
