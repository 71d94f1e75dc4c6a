//! The software bill of materials written beside each zip: `<zip name>.cdx.json`, CycloneDX 1.5
//! JSON. It names the zip (with its sha256), the two binaries it ships (with theirs) and every
//! Rust crate each binary is built from, with version, purl (`pkg:cargo/<name>@<version>`) and
//! licence, plus the dependency graph between them.
//!
//! The crates come from `cargo metadata --format-version 1` (scripts/package.sh passes it with
//! `--filter-platform x86_64-unknown-linux-musl`). Its resolve graph lists every optional
//! dependency a weak feature (`dep?/feature`) could enable, active or not (that is how ring
//! shows up for rustls-webpki), so an edge is followed only when the dependency is a normal one
//! and, if optional, enabled by the resolved features: the result is what `cargo build` links.
//! Build dependencies are left out; they do not end up in the binaries.
//!
//! The document is built on cyclonedx-bom's model and written by its CycloneDX 1.5 serialiser.
//!
//! Deterministic: no serial number, no timestamp unless `SOURCE_DATE_EPOCH` gives one, and every
//! list sorted, so the same inputs give the same bytes.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use cyclonedx_bom::external_models::date_time::DateTime;
use cyclonedx_bom::external_models::normalized_string::NormalizedString;
use cyclonedx_bom::external_models::uri::Purl;
use cyclonedx_bom::models::bom::{Bom, SpecVersion};
use cyclonedx_bom::models::component::{Classification, Component, Components};
use cyclonedx_bom::models::dependency::{Dependencies, Dependency};
use cyclonedx_bom::models::hash::{Hash, HashAlgorithm, HashValue, Hashes};
use cyclonedx_bom::models::license::{LicenseChoice, Licenses};
use cyclonedx_bom::models::metadata::Metadata;
use cyclonedx_bom::models::property::{Properties, Property};
use cyclonedx_bom::models::tool::Tools;
use serde::Deserialize;
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

pub use crate::errors::SbomError;

/// The parts of `cargo metadata --format-version 1` the SBOM needs.
#[derive(Debug, Clone, Deserialize)]
pub struct CargoMetadata {
    packages: Vec<MetaPackage>,
    #[serde(default)]
    resolve: Option<MetaResolve>,
}

#[derive(Debug, Clone, Deserialize)]
struct MetaPackage {
    id: String,
    name: String,
    version: String,
    #[serde(default)]
    license: Option<String>,
    #[serde(default)]
    license_file: Option<String>,
    #[serde(default)]
    dependencies: Vec<MetaDependency>,
    #[serde(default)]
    features: BTreeMap<String, Vec<String>>,
}

/// A dependency as the package's Cargo.toml declares it.
#[derive(Debug, Clone, Deserialize)]
struct MetaDependency {
    /// The package name (`package = "..."` when renamed).
    name: String,
    #[serde(default)]
    rename: Option<String>,
    /// `None` for a normal dependency, `"dev"` or `"build"` otherwise.
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    optional: bool,
}

#[derive(Debug, Clone, Deserialize)]
struct MetaResolve {
    nodes: Vec<MetaNode>,
}

#[derive(Debug, Clone, Deserialize)]
struct MetaNode {
    id: String,
    #[serde(default)]
    deps: Vec<MetaNodeDep>,
    #[serde(default)]
    features: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct MetaNodeDep {
    /// The library name the dependent uses (the rename, `-` as `_`).
    name: String,
    pkg: String,
    #[serde(default)]
    dep_kinds: Vec<MetaDepKind>,
}

#[derive(Debug, Clone, Deserialize)]
struct MetaDepKind {
    #[serde(default)]
    kind: Option<String>,
}

/// One crate of a binary's closure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crate {
    /// Package name.
    pub name: String,
    /// Version.
    pub version: String,
    /// SPDX expression from Cargo.toml, if any.
    pub license: Option<String>,
    /// `license-file` from Cargo.toml, when there is no `license`.
    pub license_file: Option<String>,
    /// The crates it depends on, as indices into the closure.
    pub depends_on: Vec<usize>,
}

impl CargoMetadata {
    /// Parses `cargo metadata --format-version 1` output.
    ///
    /// # Errors
    /// Not JSON of that shape.
    pub fn parse(json: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(json)
    }

    /// The crates `package` is built from, itself first, then sorted by name and version. `None`
    /// if the metadata has no such package or no resolve graph.
    #[must_use]
    pub fn closure(&self, package: &str) -> Option<Vec<Crate>> {
        let packages: BTreeMap<&str, &MetaPackage> =
            self.packages.iter().map(|p| (p.id.as_str(), p)).collect();
        let nodes: BTreeMap<&str, &MetaNode> = self
            .resolve
            .as_ref()?
            .nodes
            .iter()
            .map(|n| (n.id.as_str(), n))
            .collect();
        let root = self.packages.iter().find(|p| p.name == package)?;

        let mut edges: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        let mut todo = vec![root.id.as_str()];
        while let Some(id) = todo.pop() {
            if edges.contains_key(id) {
                continue;
            }
            let (Some(pkg), Some(node)) = (packages.get(id), nodes.get(id)) else {
                continue;
            };
            let enabled = enabled_optional_deps(pkg, node);
            let mut out = BTreeSet::new();
            for dep in &node.deps {
                let normal = dep.dep_kinds.iter().any(|k| k.kind.is_none());
                let Some(dep_pkg) = packages.get(dep.pkg.as_str()) else {
                    continue;
                };
                let active = pkg
                    .dependencies
                    .iter()
                    .filter(|d| d.kind.is_none() && d.name == dep_pkg.name)
                    .filter(|d| {
                        d.rename
                            .as_ref()
                            .is_none_or(|r| r.replace('-', "_") == dep.name)
                    })
                    .any(|d| !d.optional || enabled.contains(d.feature_name()));
                if normal && active {
                    out.insert(dep.pkg.as_str());
                    todo.push(dep.pkg.as_str());
                }
            }
            edges.insert(id, out);
        }

        let mut order: Vec<&str> = edges.keys().copied().filter(|id| *id != root.id).collect();
        order.sort_by(|a, b| {
            let (pa, pb) = (packages[a], packages[b]);
            (&pa.name, &pa.version).cmp(&(&pb.name, &pb.version))
        });
        order.insert(0, root.id.as_str());
        let index: BTreeMap<&str, usize> =
            order.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        Some(
            order
                .iter()
                .map(|id| {
                    let p = packages[id];
                    let mut depends_on: Vec<usize> = edges[id].iter().map(|d| index[d]).collect();
                    depends_on.sort_unstable();
                    Crate {
                        name: p.name.clone(),
                        version: p.version.clone(),
                        license: p.license.clone(),
                        license_file: p.license_file.clone(),
                        depends_on,
                    }
                })
                .collect(),
        )
    }
}

impl MetaDependency {
    /// The name features use for it: the rename, else the package name.
    fn feature_name(&self) -> &str {
        self.rename.as_deref().unwrap_or(&self.name)
    }
}

/// The optional dependencies (by feature name) that `node`'s resolved features turn on: a
/// feature named like the dependency, `dep:x`, or `x/feature`; never a weak `x?/feature`.
fn enabled_optional_deps<'a>(pkg: &'a MetaPackage, node: &'a MetaNode) -> BTreeSet<&'a str> {
    let optional: BTreeSet<&str> = pkg
        .dependencies
        .iter()
        .filter(|d| d.optional)
        .map(MetaDependency::feature_name)
        .collect();
    let mut enabled = BTreeSet::new();
    for feature in &node.features {
        if optional.contains(feature.as_str()) {
            enabled.insert(feature.as_str());
        }
        for item in pkg.features.get(feature).into_iter().flatten() {
            if let Some(dep) = item.strip_prefix("dep:") {
                enabled.insert(dep);
            } else if let Some((dep, _)) = item.split_once('/')
                && !dep.ends_with('?')
                && optional.contains(dep)
            {
                enabled.insert(dep);
            }
        }
    }
    enabled
}

/// A binary the zip ships.
#[derive(Debug, Clone)]
pub struct Binary<'a> {
    /// Its Cargo package (`tls-sidecar-buildpack`, `tls-sidecar`).
    pub package: &'a str,
    /// Where it sits, e.g. `lib/tls-sidecar-buildpack` or `bin/tls-sidecar` in the tarball.
    pub location: String,
    /// sha256 of the executable, hex.
    pub sha256: &'a str,
}

/// Everything the SBOM describes.
#[derive(Debug, Clone)]
pub struct SbomInput<'a> {
    /// The zip's file name.
    pub zip_name: &'a str,
    /// The zip's sha256, hex.
    pub zip_sha256: &'a str,
    /// The packaged version.
    pub version: &'a str,
    /// `cflinuxfs4`, ... or `any`.
    pub stack: &'a str,
    /// Whether the zip carries the dependency tarball.
    pub cached: bool,
    /// The binaries, in the order they are listed.
    pub binaries: Vec<Binary<'a>>,
    /// Each binary's crate closure (same order as `binaries`); `None` without cargo metadata.
    pub crates: Option<Vec<Vec<Crate>>>,
    /// Seconds since the epoch for `metadata.timestamp` (`SOURCE_DATE_EPOCH`); none if unset.
    pub timestamp: Option<u64>,
}

/// The SBOM as pretty-printed JSON, ending with a newline.
///
/// # Errors
/// [`SbomError`] if `SOURCE_DATE_EPOCH` lies past what RFC 3339 can write, or the document
/// cannot be written as CycloneDX 1.5 JSON.
pub fn render(input: &SbomInput) -> Result<String, SbomError> {
    let zip_ref = input.zip_name.to_owned();
    let mut components: BTreeMap<String, Component> = BTreeMap::new();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut binaries = Vec::new();

    for (i, binary) in input.binaries.iter().enumerate() {
        let closure = input.crates.as_ref().and_then(|c| c.get(i));
        let root = closure.and_then(|c| c.first());
        let version = root.map_or(input.version, |r| r.version.as_str());
        let purl = purl(binary.package, version);
        binaries.push(purl.clone());
        let mut component = library(binary.package, version, root)?;
        component.component_type = Classification::Application;
        component.hashes = Some(sha256(binary.sha256));
        component.properties = Some(Properties(vec![Property::new(
            "tls-sidecar:location",
            &binary.location,
        )]));
        let Some(closure) = closure else {
            graph.insert(purl.clone(), BTreeSet::new());
            components.insert(purl, component);
            continue;
        };
        for (j, krate) in closure.iter().enumerate() {
            let this = purl_of(krate);
            let deps = graph.entry(this.clone()).or_default();
            deps.extend(krate.depends_on.iter().map(|&k| purl_of(&closure[k])));
            if j > 0 && !components.contains_key(&this) {
                components.insert(this, library(&krate.name, &krate.version, Some(krate))?);
            }
        }
        components.insert(purl, component);
    }

    // The two binaries first, then the crates by purl.
    let mut ordered: Vec<Component> = Vec::new();
    for b in &binaries {
        if let Some(c) = components.remove(b) {
            ordered.push(c);
        }
    }
    ordered.extend(components.into_values());

    let mut dependencies = vec![Dependency {
        dependency_ref: zip_ref.clone(),
        dependencies: binaries
            .iter()
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect(),
    }];
    dependencies.extend(graph.into_iter().map(|(reference, deps)| Dependency {
        dependency_ref: reference,
        dependencies: deps.into_iter().collect(),
    }));

    let timestamp = input
        .timestamp
        .map(|secs| DateTime::try_from(rfc3339(secs)).map_err(|_| SbomError::Timestamp(secs)))
        .transpose()?;
    let name = input
        .zip_name
        .rsplit_once("-v")
        .map_or(input.zip_name, |(name, _)| name);
    let mut zip = Component::new(
        Classification::Application,
        name,
        input.version,
        Some(zip_ref),
    );
    zip.description = Some(NormalizedString::new(&format!(
        "Cloud Foundry buildpack zip ({}, stack {})",
        if input.cached { "cached" } else { "uncached" },
        input.stack
    )));
    zip.licenses = Some(Licenses(vec![LicenseChoice::expression("Apache-2.0")]));
    zip.hashes = Some(sha256(input.zip_sha256));
    zip.properties = Some(Properties(vec![Property::new(
        "tls-sidecar:file",
        input.zip_name,
    )]));

    let bom = Bom {
        version: 1,
        // No serial number: a random one per run would break byte-identical rebuilds.
        serial_number: None,
        metadata: Some(Metadata {
            timestamp,
            tools: Some(Tools::Object {
                services: None,
                components: Some(Components(vec![Component::new(
                    Classification::Application,
                    "tls-sidecar-packager",
                    env!("CARGO_PKG_VERSION"),
                    None,
                )])),
            }),
            component: Some(zip),
            properties: input.crates.is_none().then(|| {
                Properties(vec![Property::new(
                    "tls-sidecar:note",
                    "packaged without cargo metadata: the crates of the binaries are not listed",
                )])
            }),
            ..Metadata::default()
        }),
        components: Some(Components(ordered)),
        services: None,
        external_references: None,
        dependencies: Some(Dependencies(dependencies)),
        compositions: None,
        properties: None,
        vulnerabilities: None,
        signature: None,
        annotations: None,
        formulation: None,
        spec_version: SpecVersion::V1_5,
    };
    let mut bytes = Vec::new();
    bom.output_as_json_v1_5(&mut bytes)
        .map_err(|e| SbomError::Write(e.to_string()))?;
    let mut document: Value =
        serde_json::from_slice(&bytes).map_err(|e| SbomError::Write(e.to_string()))?;
    declare_leaves(&mut document);
    let mut json =
        serde_json::to_string_pretty(&document).map_err(|e| SbomError::Write(e.to_string()))?;
    json.push('\n');
    Ok(json)
}

/// Gives every dependency entry without `dependsOn` an empty one. cyclonedx-bom leaves the field
/// out when the list is empty; CycloneDX asks that a component known to have no dependencies be
/// declared with an empty list, so that it is not read as "dependencies unknown".
fn declare_leaves(document: &mut Value) {
    let entries = document
        .get_mut("dependencies")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten();
    for entry in entries {
        if let Some(entry) = entry.as_object_mut() {
            entry
                .entry("dependsOn")
                .or_insert_with(|| Value::Array(Vec::new()));
        }
    }
}

fn purl(name: &str, version: &str) -> String {
    format!("pkg:cargo/{name}@{version}")
}

fn purl_of(c: &Crate) -> String {
    purl(&c.name, &c.version)
}

/// A crate (or, with its type changed, a binary) as a component: bom-ref and purl are both
/// `pkg:cargo/<name>@<version>`.
fn library(name: &str, version: &str, krate: Option<&Crate>) -> Result<Component, SbomError> {
    let reference = purl(name, version);
    let mut component = Component::new(
        Classification::Library,
        name,
        version,
        Some(reference.clone()),
    );
    // Written as given, not rebuilt by a purl encoder: the test and consumers compare it with
    // `pkg:cargo/<name>@<version>` (cargo names and versions need no escaping).
    component.purl = Some(
        Purl::from_str(&reference)
            .map_err(|()| SbomError::Write(format!("bad purl {reference}")))?,
    );
    component.licenses = match krate {
        Some(Crate {
            license: Some(l), ..
        }) => Some(Licenses(vec![LicenseChoice::expression(&spdx(l))])),
        Some(Crate {
            license_file: Some(f),
            ..
        }) => Some(Licenses(vec![LicenseChoice::license(&format!(
            "see {f} in the crate"
        ))])),
        _ => None,
    };
    Ok(component)
}

fn sha256(hex: &str) -> Hashes {
    Hashes(vec![Hash {
        alg: HashAlgorithm::SHA_256,
        content: HashValue(hex.to_owned()),
    }])
}

/// `YYYY-MM-DDTHH:MM:SSZ` for seconds since the epoch (UTC); empty past 9999-12-31, which
/// RFC 3339's four-digit year cannot write (`render` then refuses the timestamp).
fn rfc3339(secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// Cargo still accepts the deprecated `MIT/Apache-2.0`; SPDX spells it `MIT OR Apache-2.0`.
fn spdx(license: &str) -> String {
    license
        .split('/')
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" OR ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A package with a normal dependency, an optional one enabled by `dep:`, one left off
    /// behind a weak feature (as rustls-webpki has ring), and a build dependency.
    const METADATA: &str = r#"{
      "packages": [
        {"id": "app", "name": "app", "version": "1.0.0", "license": "Apache-2.0",
         "dependencies": [
           {"name": "web-pki", "rename": null, "kind": null, "optional": false}
         ], "features": {}},
        {"id": "webpki", "name": "web-pki", "version": "0.1.0", "license": "ISC",
         "dependencies": [
           {"name": "aws-lc", "rename": "awslc", "kind": null, "optional": true},
           {"name": "ring", "rename": null, "kind": null, "optional": true},
           {"name": "cc", "rename": null, "kind": "build", "optional": false}
         ],
         "features": {"alloc": ["ring?/alloc"], "aws": ["dep:awslc"], "ring": ["dep:ring"]}},
        {"id": "awslc", "name": "aws-lc", "version": "1.2.0", "license": "MIT/Apache-2.0",
         "dependencies": [], "features": {}},
        {"id": "ring", "name": "ring", "version": "0.17.0", "license": null,
         "license_file": "LICENSE", "dependencies": [], "features": {}},
        {"id": "cc", "name": "cc", "version": "1.0.0", "license": "MIT",
         "dependencies": [], "features": {}}
      ],
      "resolve": {"nodes": [
        {"id": "app", "features": [], "deps": [
          {"name": "web_pki", "pkg": "webpki", "dep_kinds": [{"kind": null, "target": null}]}]},
        {"id": "webpki", "features": ["alloc", "aws"], "deps": [
          {"name": "awslc", "pkg": "awslc", "dep_kinds": [{"kind": null, "target": null}]},
          {"name": "ring", "pkg": "ring", "dep_kinds": [{"kind": null, "target": null}]},
          {"name": "cc", "pkg": "cc", "dep_kinds": [{"kind": "build", "target": null}]}]},
        {"id": "awslc", "features": [], "deps": []},
        {"id": "ring", "features": [], "deps": []},
        {"id": "cc", "features": [], "deps": []}
      ]}
    }"#;

    #[test]
    fn the_closure_follows_enabled_normal_dependencies_only() {
        let m = CargoMetadata::parse(METADATA).expect("parse");
        let closure = m.closure("app").expect("app");
        let names: Vec<&str> = closure.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["app", "aws-lc", "web-pki"]);
        assert_eq!(closure[0].depends_on, [2]);
        assert_eq!(closure[2].depends_on, [1]);
        assert!(m.closure("missing").is_none());
    }

    #[test]
    fn deprecated_slash_licences_become_spdx_or() {
        assert_eq!(spdx("MIT/Apache-2.0"), "MIT OR Apache-2.0");
        assert_eq!(spdx("Apache-2.0 OR MIT"), "Apache-2.0 OR MIT");
    }

    #[test]
    fn timestamps_are_utc_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn the_document_reads_back_as_valid_cyclonedx_1_5_with_every_leaf_declared() {
        use cyclonedx_bom::validation::Validate;

        let m = CargoMetadata::parse(METADATA).expect("parse");
        let hex = |c: char| c.to_string().repeat(64);
        let (zip_sha, app_sha) = (hex('a'), hex('b'));
        let json = render(&SbomInput {
            zip_name: "app-cached-cflinuxfs4-v1.0.0.zip",
            zip_sha256: &zip_sha,
            version: "1.0.0",
            stack: "cflinuxfs4",
            cached: true,
            binaries: vec![Binary {
                package: "app",
                location: "bin/app".to_owned(),
                sha256: &app_sha,
            }],
            crates: Some(vec![m.closure("app").expect("app")]),
            timestamp: Some(1_700_000_000),
        })
        .expect("render");

        let bom = Bom::parse_from_json_v1_5(json.as_bytes()).expect("cyclonedx-bom reads it");
        let result = bom.validate();
        assert!(result.passed(), "{result:?}");
        let document: Value = serde_json::from_str(&json).expect("json");
        let leaf = serde_json::json!({"ref": "pkg:cargo/aws-lc@1.2.0", "dependsOn": []});
        assert!(
            document["dependencies"]
                .as_array()
                .is_some_and(|d| d.contains(&leaf)),
            "{json}"
        );
    }

    #[test]
    fn a_timestamp_past_the_year_9999_is_refused() {
        let input = SbomInput {
            zip_name: "app-v1.0.0.zip",
            zip_sha256: "",
            version: "1.0.0",
            stack: "any",
            cached: false,
            binaries: Vec::new(),
            crates: None,
            timestamp: Some(253_402_300_800),
        };
        assert!(matches!(
            render(&input),
            Err(SbomError::Timestamp(253_402_300_800))
        ));
        assert_eq!(rfc3339(253_402_300_799), "9999-12-31T23:59:59Z");
    }
}
