//! Buildpack zips: ours (packaged by `scripts/package.sh`, or given by the environment), the
//! fixture buildpacks (zipped here from `fixtures/buildpacks/<name>/`), and copies with surgery
//! (a changed manifest, a swapped dependency tarball) for failure tests.

use crate::stage::{Buildpack, unzip};
use crate::util::{random_hex, run, workspace_root};
use crate::{Context, Result, bail};
use sha2::Digest;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::SystemTime;

/// Our buildpack's key in the tests (what `cf create-buildpack` would name it).
pub const OUR_KEY: &str = "tls_sidecar_buildpack";
/// Env var with a prebuilt cached zip (`scripts/test.sh` packages once and exports it).
pub const ZIP_ENV: &str = "TLS_SIDECAR_BUILDPACK_ZIP";
/// Env var with a prebuilt uncached zip.
pub const ZIP_UNCACHED_ENV: &str = "TLS_SIDECAR_BUILDPACK_ZIP_UNCACHED";

pub fn fixtures_dir() -> PathBuf {
    workspace_root().join("fixtures")
}

/// `fixtures/apps/<name>`.
pub fn fixture_app(name: &str) -> PathBuf {
    fixtures_dir().join("apps").join(name)
}

/// Where the harness keeps zips it makes or packages: `target/integration-zips`.
pub fn zips_dir() -> PathBuf {
    workspace_root().join("target").join("integration-zips")
}

/// `fixtures/buildpacks/<name>`, zipped (key = `name`).
pub fn fixture_buildpack(name: &str) -> Result<Buildpack> {
    let src = fixtures_dir().join("buildpacks").join(name);
    if !src.is_dir() {
        bail!("no fixture buildpack {}", src.display());
    }
    let dir = zips_dir().join("fixtures");
    std::fs::create_dir_all(&dir)?;
    let out = dir.join(format!("{name}.zip"));
    // Written under a unique name and renamed: parallel test binaries never see half a zip.
    let tmp = dir.join(format!(".{name}-{}.zip", random_hex(6)));
    zip_dir(&src, &tmp)?;
    std::fs::rename(&tmp, &out)?;
    Ok(Buildpack::new(name, out))
}

/// Zips `dir`'s contents (paths relative to it, sorted, unix modes and symlinks kept).
pub fn zip_dir(dir: &Path, out: &Path) -> Result<()> {
    let files = crate::util::list_tree(dir)?;
    let mut zip = zip::ZipWriter::new(File::create(out)?);
    for rel in files {
        let path = dir.join(rel.trim_end_matches('/'));
        let meta = std::fs::symlink_metadata(&path)?;
        let mode = meta.permissions().mode() & 0o7777;
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .unix_permissions(mode);
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path)?;
            zip.add_symlink(rel, target.display().to_string(), opts)?;
        } else if meta.is_dir() {
            zip.add_directory(rel, opts)?;
        } else {
            zip.start_file(rel, opts)?;
            zip.write_all(&std::fs::read(&path)?)?;
        }
    }
    zip.finish()?;
    Ok(())
}

/// A buildpack unpacked into a temp dir, to change and zip again.
#[derive(Debug)]
pub struct Unpacked {
    dir: tempfile::TempDir,
    zips: tempfile::TempDir,
}

impl Unpacked {
    pub fn new(zip: &Path) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("tsb-bp-").tempdir()?;
        let zips = tempfile::Builder::new().prefix("tsb-bp-zips-").tempdir()?;
        unzip(zip, dir.path())?;
        Ok(Unpacked { dir, zips })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `manifest.yml` as a YAML value.
    pub fn manifest(&self) -> Result<serde_yaml_ng::Value> {
        let text =
            std::fs::read_to_string(self.path().join("manifest.yml")).context("no manifest.yml")?;
        Ok(serde_yaml_ng::from_str(&text)?)
    }

    pub fn write_manifest(&self, manifest: &serde_yaml_ng::Value) -> Result<()> {
        std::fs::write(
            self.path().join("manifest.yml"),
            serde_yaml_ng::to_string(manifest)?,
        )?;
        Ok(())
    }

    /// Applies `f` to the `dependencies[]` entry named `name`.
    pub fn edit_dependency(
        &self,
        name: &str,
        f: impl FnOnce(&mut serde_yaml_ng::Mapping) -> Result<()>,
    ) -> Result<()> {
        let mut manifest = self.manifest()?;
        let deps = manifest
            .get_mut("dependencies")
            .and_then(serde_yaml_ng::Value::as_sequence_mut)
            .context("manifest.yml has no dependencies")?;
        let dep = deps
            .iter_mut()
            .filter_map(serde_yaml_ng::Value::as_mapping_mut)
            .find(|m| m.get("name").and_then(serde_yaml_ng::Value::as_str) == Some(name))
            .with_context(|| format!("manifest.yml has no dependency {name}"))?;
        f(dep)?;
        self.write_manifest(&manifest)
    }

    /// The `file:` of dependency `name` (cached zips only), as a path in this dir.
    pub fn dependency_file(&self, name: &str) -> Result<PathBuf> {
        let manifest = self.manifest()?;
        let file = manifest
            .get("dependencies")
            .and_then(serde_yaml_ng::Value::as_sequence)
            .and_then(|deps| {
                deps.iter()
                    .find(|d| d.get("name").and_then(serde_yaml_ng::Value::as_str) == Some(name))
            })
            .and_then(|d| d.get("file"))
            .and_then(serde_yaml_ng::Value::as_str)
            .with_context(|| format!("dependency {name} has no file: (not a cached buildpack?)"))?;
        Ok(self.path().join(file))
    }

    /// Replaces dependency `name`'s cached tarball with `bytes` and sets a matching sha256, so
    /// the buildpack's checksum check passes and whatever comes next is what gets tested.
    pub fn replace_dependency(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let file = self.dependency_file(name)?;
        std::fs::write(&file, bytes)?;
        let sum = hex::encode(sha2::Sha256::digest(bytes));
        self.edit_dependency(name, |d| {
            d.insert("sha256".into(), sum.into());
            Ok(())
        })
    }

    /// Zips this dir as `<name>.zip` (kept as long as `self`).
    pub fn zip(&self, name: &str) -> Result<PathBuf> {
        let out = self.zips.path().join(format!("{name}.zip"));
        zip_dir(self.path(), &out)?;
        Ok(out)
    }
}

/// One entry of a hand-made tarball; names and link targets are written raw, unchecked, so
/// tests can build the hostile archives (`../x`, `/abs`, escaping symlinks) a buildpack must
/// refuse.
#[derive(Debug, Clone)]
pub enum TarEntry {
    File {
        name: String,
        mode: u32,
        data: Vec<u8>,
    },
    Dir {
        name: String,
    },
    Symlink {
        name: String,
        target: String,
    },
}

/// A gzip'd tar of `entries`, in order.
pub fn make_tgz(entries: &[TarEntry]) -> Result<Vec<u8>> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    for e in entries {
        let mut h = tar::Header::new_old();
        let (name, data): (&str, &[u8]) = match e {
            TarEntry::File { name, mode, data } => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                (name, data)
            }
            TarEntry::Dir { name } => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                (name, &[])
            }
            TarEntry::Symlink { name, target } => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                let link = &mut h.as_old_mut().linkname;
                if target.len() > link.len() {
                    bail!("link target too long");
                }
                link[..target.len()].copy_from_slice(target.as_bytes());
                (name, &[])
            }
        };
        let raw = &mut h.as_old_mut().name;
        if name.len() > raw.len() {
            bail!("tar name too long");
        }
        raw[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        tar.append(&h, data)?;
    }
    Ok(tar.into_inner()?.finish()?)
}

/// The tarball's entry name for our sidecar binary.
pub const SIDECAR_IN_TARBALL: &str = "bin/tls-sidecar";

static CACHED: Mutex<Option<PathBuf>> = Mutex::new(None);
static UNCACHED: Mutex<Option<PathBuf>> = Mutex::new(None);
static PACKAGE_LOCK: OnceLock<Mutex<()>> = OnceLock::new();

/// Our cached buildpack zip (with the sidecar tarball inside).
pub fn ours_cached() -> Result<PathBuf> {
    ours(true)
}

/// Our uncached buildpack zip (the manifest points at the tarball's URI).
pub fn ours_uncached() -> Result<PathBuf> {
    ours(false)
}

/// [`ours_cached`] or [`ours_uncached`] as a [`Buildpack`] with key [`OUR_KEY`].
pub fn our_buildpack(cached: bool) -> Result<Buildpack> {
    Ok(Buildpack::new(OUR_KEY, ours(cached)?))
}

fn ours(cached: bool) -> Result<PathBuf> {
    let (var, slot) = if cached {
        (ZIP_ENV, &CACHED)
    } else {
        (ZIP_UNCACHED_ENV, &UNCACHED)
    };
    if let Some(v) = std::env::var_os(var).filter(|v| !v.is_empty()) {
        let p = PathBuf::from(v);
        if !p.is_file() {
            bail!("{var}={} is not a file", p.display());
        }
        return Ok(p);
    }
    let _in_process = PACKAGE_LOCK
        .get_or_init(|| Mutex::new(()))
        .lock()
        .map_err(|_| crate::Error::msg("poisoned"))?;
    let mut slot = slot.lock().map_err(|_| crate::Error::msg("poisoned"))?;
    if let Some(p) = slot.as_ref() {
        return Ok(p.clone());
    }
    let p = package(cached)?;
    *slot = Some(p.clone());
    Ok(p)
}

/// Runs `scripts/package.sh --cached|--uncached --output target/integration-zips` once, under an flock
/// shared by parallel test binaries, and reuses its zip while it is newer than every source.
fn package(cached: bool) -> Result<PathBuf> {
    let root = workspace_root();
    let out_dir = zips_dir();
    std::fs::create_dir_all(&out_dir)?;
    let lock = File::create(out_dir.join(".package.lock"))?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
        .context("cannot lock target/integration-zips/.package.lock")?;
    let flavour = if cached { "cached" } else { "uncached" };
    let record = out_dir.join(format!(".last-{flavour}"));
    if let Ok(previous) = std::fs::read_to_string(&record) {
        let zip = PathBuf::from(previous.trim());
        let fresh = match (mtime(&zip), newest_source_mtime(&root)) {
            (Some(z), Some(src)) => z > src,
            _ => false,
        };
        if fresh {
            return Ok(zip);
        }
    }
    let script = root.join("scripts").join("package.sh");
    if !script.is_file() {
        bail!(
            "{} does not exist yet: cannot package the buildpack (set {ZIP_ENV}/{ZIP_UNCACHED_ENV} \
             to prebuilt zips instead)",
            script.display()
        );
    }
    let mut cmd = Command::new("bash");
    cmd.arg(&script);
    if cached {
        cmd.arg("--cached");
    } else {
        // The tarball lands beside the zip: a file:// base makes the zip usable as it is.
        cmd.arg("--uncached")
            .arg("--dependency-uri-base")
            .arg(format!("file://{}", out_dir.display()));
    }
    cmd.arg("--output").arg(&out_dir).current_dir(&root);
    let out = run(&mut cmd).context("scripts/package.sh failed")?;
    let stdout = String::from_utf8(out.stdout)?;
    let last = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    let zip = if Path::new(last).is_absolute() {
        PathBuf::from(last)
    } else {
        root.join(last)
    };
    if !zip.is_file() || zip.extension().and_then(|e| e.to_str()) != Some("zip") {
        bail!("scripts/package.sh's last line {last:?} is not a zip file; output:\n{stdout}");
    }
    std::fs::write(&record, zip.display().to_string())?;
    Ok(zip)
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// The newest modification time among the files that go into the buildpack zip (everything in
/// the workspace but `target/`, `.git/`, `integration/`, `fixtures/`, `docs/`).
fn newest_source_mtime(root: &Path) -> Option<SystemTime> {
    fn walk(p: &Path, newest: &mut Option<SystemTime>) {
        let Ok(meta) = std::fs::symlink_metadata(p) else {
            return;
        };
        if let Ok(m) = meta.modified()
            && newest.is_none_or(|n| m > n)
        {
            *newest = Some(m);
        }
        if meta.is_dir()
            && let Ok(entries) = std::fs::read_dir(p)
        {
            for e in entries.flatten() {
                walk(&e.path(), newest);
            }
        }
    }
    let skip = [
        "target",
        ".git",
        "integration",
        "fixtures",
        "docs",
        "out",
        "fuzz",
        "bench",
    ];
    let mut newest = None;
    for e in std::fs::read_dir(root).ok()?.flatten() {
        let name = e.file_name();
        if skip.iter().any(|s| name == *s) {
            continue;
        }
        walk(&e.path(), &mut newest);
    }
    newest
}

/// sha256 hex of a file.
pub fn sha256_file(path: &Path) -> Result<String> {
    Ok(hex::encode(sha2::Sha256::digest(std::fs::read(path)?)))
}
