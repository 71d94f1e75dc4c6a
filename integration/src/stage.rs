//! Staging as buildpackapplifecycle's builder does it with `-skipDetect=true` (what `cf push -b a
//! -b b` sets): every buildpack but the last is a supply buildpack, the last is final
//! (`cf-buildpack-contract.md` §1.3–§1.8, §2.2–§2.3).
//!
//! Layout under one temp root per staging:
//!
//! ```text
//! buildpacks/<xxhash64(key) hex>/   each zip unpacked (root = first dir containing bin/)
//! app/                              BUILD_DIR, a copy of the app
//! cache/<xxhash64(key) hex>/        supply CACHE_DIRs; cache/final for the final buildpack
//! contentsNNNNNNNNN/                the droplet: deps/<idx>/, profile.d/, then app/, tmp/, logs/,
//!                                   staging_info.yml
//! result.json                       as /tmp/result.json
//! staging.log                       stdout and stderr of everything, in order
//! ```
//!
//! The builder's exit codes are kept (225 supply, 223 compile and finalize, 224 release, 1 other),
//! and so are its messages, so a failing staging reads like `cf push` output.

use crate::cell::AppIdentity;
use crate::util::{copy_tree, random_bytes, random_guid, random_instance_guid};
use crate::xxhash::key_dir_name;
use crate::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// `buildpackapplifecycle/models.go` messages and codes.
pub mod exit {
    pub const COMPILE_FAIL_MSG: &str = "Failed to compile droplet";
    pub const RELEASE_FAIL_MSG: &str = "Failed to build droplet release";
    pub const SUPPLY_FAIL_MSG: &str = "Failed to run all supply scripts";
    pub const NO_SUPPLY_SCRIPT_FAIL_MSG: &str = "Error: one of the buildpacks chosen to supply dependencies does not support multi-buildpack apps";
    pub const MISSING_FINALIZE_WARN_MSG: &str = "Warning: the last buildpack is not compatible with multi-buildpack apps and cannot make use of any dependencies supplied by the buildpacks specified before it";
    pub const FINALIZE_FAIL_MSG: &str = "Failed to run finalize script";
    pub const COMPILE_FAIL_CODE: i32 = 223;
    pub const RELEASE_FAIL_CODE: i32 = 224;
    pub const SUPPLY_FAIL_CODE: i32 = 225;
    pub const FINALIZE_FAIL_CODE: i32 = 226;

    /// `ExitCodeFromError`: the first message the error text contains decides.
    pub fn code_from_error(message: &str) -> i32 {
        if message.contains(COMPILE_FAIL_MSG) {
            COMPILE_FAIL_CODE
        } else if message.contains(RELEASE_FAIL_MSG) {
            RELEASE_FAIL_CODE
        } else if message.contains(SUPPLY_FAIL_MSG) || message.contains(NO_SUPPLY_SCRIPT_FAIL_MSG) {
            SUPPLY_FAIL_CODE
        } else if message.contains(FINALIZE_FAIL_MSG) {
            FINALIZE_FAIL_CODE
        } else {
            1
        }
    }
}

/// A buildpack as the builder sees it: a key (the admin buildpack name or URL) and its zip.
#[derive(Debug, Clone)]
pub struct Buildpack {
    pub key: String,
    pub zip: PathBuf,
}

impl Buildpack {
    pub fn new(key: impl Into<String>, zip: impl Into<PathBuf>) -> Self {
        Buildpack {
            key: key.into(),
            zip: zip.into(),
        }
    }
}

/// What Cloud Controller knows about the app: names, GUIDs, routes, memory, env, services.
#[derive(Debug, Clone)]
pub struct AppInfo {
    pub name: String,
    pub guid: String,
    pub space_name: String,
    pub space_guid: String,
    pub org_name: String,
    pub org_guid: String,
    pub uris: Vec<String>,
    pub stack: String,
    /// Process memory (MB); sidecar memory is carved out of it at run time.
    pub memory_mb: u32,
    pub disk_mb: u32,
    /// `cf set-env` values: staging and run time.
    pub env: BTreeMap<String, String>,
    /// `VCAP_SERVICES`.
    pub services: serde_json::Value,
}

impl AppInfo {
    /// A new app on `cflinuxfs4` in a fresh space and org, 256 MB, route `<name>.example.com`.
    pub fn new(name: &str) -> Self {
        AppInfo {
            name: name.to_owned(),
            guid: random_guid(),
            space_name: "dev".to_owned(),
            space_guid: random_guid(),
            org_name: "tls-sidecar-tests".to_owned(),
            org_guid: random_guid(),
            uris: vec![format!("{name}.example.com")],
            stack: "cflinuxfs4".to_owned(),
            memory_mb: 256,
            disk_mb: 1024,
            env: BTreeMap::new(),
            services: serde_json::json!({}),
        }
    }

    pub fn with_env(mut self, name: &str, value: &str) -> Self {
        self.env.insert(name.to_owned(), value.to_owned());
        self
    }

    pub fn with_stack(mut self, stack: &str) -> Self {
        stack.clone_into(&mut self.stack);
        self
    }

    /// A new instance identity of this app (random instance GUID and TEST-NET-1 IP).
    pub fn instance_identity(&self) -> AppIdentity {
        AppIdentity {
            org_guid: self.org_guid.clone(),
            space_guid: self.space_guid.clone(),
            app_guid: self.guid.clone(),
            instance_guid: random_instance_guid(),
            ip: AppIdentity::random().ip,
        }
    }

    /// `VCAP_APPLICATION` as CC's `VarsBuilder` makes it (without the launcher's additions).
    pub fn vcap_application(
        &self,
        memory_mb: u32,
        process_type: Option<&str>,
    ) -> serde_json::Value {
        let mut v = serde_json::json!({
            "cf_api": "https://api.example.com",
            "limits": {"fds": 16384, "mem": memory_mb, "disk": self.disk_mb},
            "application_name": self.name,
            "application_uris": self.uris,
            "name": self.name,
            "space_name": self.space_name,
            "space_id": self.space_guid,
            "organization_id": self.org_guid,
            "organization_name": self.org_name,
            "uris": self.uris,
            "application_id": self.guid,
            "version": "5f1e4b2a-0000-4000-8000-000000000001",
            "application_version": "5f1e4b2a-0000-4000-8000-000000000001",
        });
        if let (Some(t), Some(obj)) = (process_type, v.as_object_mut()) {
            obj.insert("process_id".into(), self.guid.clone().into());
            obj.insert("process_type".into(), t.into());
        } else if let Some(obj) = v.as_object_mut() {
            obj.insert("users".into(), serde_json::Value::Null);
        }
        v
    }

    /// CC's staging memory: the app's, but at least `minimum_staging_memory_mb` (1024).
    pub fn staging_memory_mb(&self) -> u32 {
        self.memory_mb.max(1024)
    }

    /// The environment `bin/supply`, `bin/finalize`, `bin/compile` and `bin/release` see
    /// (§1.8): user env, `CF_STACK`, `VCAP_APPLICATION`, `MEMORY_LIMIT`, `VCAP_SERVICES`, `LANG`.
    /// No `PORT`, `CF_INSTANCE_*`, `TMPDIR`.
    pub fn staging_env(&self, home: &Path) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        env.insert(
            "PATH".to_owned(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
        );
        env.insert("HOME".to_owned(), home.display().to_string());
        env.insert("USER".to_owned(), "vcap".to_owned());
        env.extend(self.env.clone());
        env.insert("CF_STACK".to_owned(), self.stack.clone());
        let mem = self.staging_memory_mb();
        env.insert(
            "VCAP_APPLICATION".to_owned(),
            self.vcap_application(mem, None).to_string(),
        );
        env.insert("MEMORY_LIMIT".to_owned(), format!("{mem}m"));
        env.insert("VCAP_SERVICES".to_owned(), self.services.to_string());
        env.insert("LANG".to_owned(), "en_US.UTF-8".to_owned());
        env
    }
}

/// One `cf push`'s staging: the app, its source dir and the ordered buildpacks (supply..., final).
#[derive(Debug, Clone)]
pub struct StagingRequest {
    pub app: AppInfo,
    pub app_dir: PathBuf,
    pub buildpacks: Vec<Buildpack>,
    /// Kill a buildpack script that runs longer than this (CF's staging timeout is 15 min).
    pub script_timeout: Duration,
}

impl StagingRequest {
    pub fn new(app: AppInfo, app_dir: impl Into<PathBuf>) -> Self {
        StagingRequest {
            app,
            app_dir: app_dir.into(),
            buildpacks: Vec::new(),
            script_timeout: Duration::from_secs(300),
        }
    }

    pub fn buildpack(mut self, bp: Buildpack) -> Self {
        self.buildpacks.push(bp);
        self
    }

    /// Stages. `Err` only when the emulation itself cannot run; a failing buildpack gives an
    /// `Ok(Staging)` whose [`Staging::exit_code`] is non-zero, like the builder's exit status.
    pub fn stage(&self) -> Result<Staging> {
        stage(self)
    }
}

/// `launch.yml` (`buildpackrunner/resources/launch.go`), read the way yaml.v2 reads it: unknown
/// keys ignored, missing keys zero.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct LaunchData {
    #[serde(default)]
    pub processes: Option<Vec<LaunchProcess>>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct LaunchProcess {
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub command: Option<String>,
    #[serde(default)]
    pub limits: Option<LaunchLimits>,
    #[serde(default)]
    pub platforms: Option<LaunchPlatforms>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct LaunchLimits {
    /// A Go `int`: `64M` does not parse (staging fails with exit 1).
    #[serde(default)]
    pub memory: Option<i64>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct LaunchPlatforms {
    #[serde(default)]
    pub cloudfoundry: Option<LaunchCloudFoundry>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct LaunchCloudFoundry {
    #[serde(default)]
    pub sidecar_for: Option<Vec<String>>,
}

impl LaunchProcess {
    fn plain(kind: &str, command: &str) -> Self {
        LaunchProcess {
            kind: Some(kind.to_owned()),
            command: Some(command.to_owned()),
            ..Default::default()
        }
    }

    fn kind(&self) -> &str {
        self.kind.as_deref().unwrap_or("")
    }

    fn sidecar_for(&self) -> Vec<String> {
        self.platforms
            .as_ref()
            .and_then(|p| p.cloudfoundry.as_ref())
            .and_then(|c| c.sidecar_for.clone())
            .unwrap_or_default()
    }
}

/// `/tmp/result.json` (`models.go` `StagingResult`). `processes` and `sidecars` are tagged
/// `json:"processes, omitempty"` in Go: the space makes encoding/json ignore `omitempty`, so the
/// builder writes `null` when there are none. This emulation does the same.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StagingResult {
    pub lifecycle_metadata: LifecycleMetadata,
    pub process_types: BTreeMap<String, String>,
    pub processes: Option<Vec<ResultProcess>>,
    pub sidecars: Option<Vec<ResultSidecar>>,
    pub execution_metadata: String,
    pub lifecycle_type: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LifecycleMetadata {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub buildpack_key: String,
    pub detected_buildpack: String,
    pub buildpacks: Vec<BuildpackMetadata>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct BuildpackMetadata {
    #[serde(default)]
    pub key: String,
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ResultProcess {
    #[serde(rename = "type")]
    pub kind: String,
    pub command: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ResultSidecar {
    pub name: String,
    pub process_types: Vec<String>,
    pub command: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub memory: i64,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// `resources.MergeProcesses`: an entry of `b` replaces every entry of `a` with the same type,
/// else it is appended.
fn merge_processes(mut a: Vec<LaunchProcess>, b: Vec<LaunchProcess>) -> Vec<LaunchProcess> {
    for pb in b {
        let mut replaced = false;
        for pa in &mut a {
            if pa.kind() == pb.kind() {
                *pa = pb.clone();
                replaced = true;
            }
        }
        if !replaced {
            a.push(pb);
        }
    }
    a
}

/// `resources.ConvertToResult`.
pub fn convert_to_result(processes: &[LaunchProcess]) -> StagingResult {
    let mut process_types = BTreeMap::new();
    let mut list = Vec::new();
    let mut sidecars = Vec::new();
    for p in processes {
        let command = p.command.clone().unwrap_or_default();
        let targets = p.sidecar_for();
        if targets.is_empty() {
            list.push(ResultProcess {
                kind: p.kind().to_owned(),
                command: command.clone(),
            });
            process_types.insert(p.kind().to_owned(), command);
        } else {
            sidecars.push(ResultSidecar {
                name: p.kind().to_owned(),
                process_types: targets,
                command,
                memory: p.limits.as_ref().and_then(|l| l.memory).unwrap_or(0),
            });
        }
    }
    StagingResult {
        lifecycle_metadata: LifecycleMetadata {
            buildpack_key: String::new(),
            detected_buildpack: String::new(),
            buildpacks: Vec::new(),
        },
        process_types,
        processes: (!list.is_empty()).then_some(list),
        sidecars: (!sidecars.is_empty()).then_some(sidecars),
        execution_metadata: String::new(),
        lifecycle_type: "buildpack".to_owned(),
    }
}

/// `staging_info.yml` (JSON despite the name).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StagingInfo {
    pub detected_buildpack: String,
    pub start_command: String,
}

/// The outcome of one staging. Owns the temp root: everything is deleted on drop.
#[derive(Debug)]
pub struct Staging {
    root: tempfile::TempDir,
    pub app: AppInfo,
    /// The builder's exit status: 0, or 225/223/224/1 (see [`exit`]).
    pub exit_code: i32,
    /// Everything the scripts and the builder printed, stdout and stderr interleaved in order.
    pub output: String,
    /// `DEPS_IDX` of each buildpack, in order (zero-padded as the builder does).
    pub deps_indices: Vec<String>,
    pub build_dir: PathBuf,
    pub contents_dir: PathBuf,
    /// Unpacked buildpack roots, in order.
    pub buildpack_dirs: Vec<PathBuf>,
    /// `CACHE_DIR` of each buildpack, in order (the last is `cache/final`).
    pub cache_dirs: Vec<PathBuf>,
    /// Parsed `result.json`, on success.
    pub result: Option<StagingResult>,
}

impl Staging {
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    pub fn succeeded(&self) -> bool {
        self.exit_code == 0
    }

    /// `Ok` if staging succeeded, else an error carrying the exit code and the whole output.
    pub fn ensure_success(&self) -> Result<()> {
        if self.succeeded() {
            Ok(())
        } else {
            bail!(
                "staging failed with exit code {}:\n{}",
                self.exit_code,
                self.output
            )
        }
    }

    /// `DEPS_DIR` (`contentsNNNN/deps`).
    pub fn deps_dir(&self) -> PathBuf {
        self.contents_dir.join("deps")
    }

    /// `deps/<DEPS_IDX of buildpack i>`.
    pub fn deps_path(&self, i: usize) -> PathBuf {
        self.deps_dir()
            .join(self.deps_indices.get(i).map_or("missing", String::as_str))
    }

    /// `PROFILE_DIR` (becomes `/home/vcap/profile.d`).
    pub fn profile_dir(&self) -> PathBuf {
        self.contents_dir.join("profile.d")
    }

    pub fn result_json_path(&self) -> PathBuf {
        self.root.path().join("result.json")
    }

    /// `result.json` as raw JSON text.
    pub fn result_json_text(&self) -> Result<String> {
        std::fs::read_to_string(self.result_json_path()).context("no result.json")
    }

    pub fn staging_info(&self) -> Result<StagingInfo> {
        let text = std::fs::read_to_string(self.contents_dir.join("staging_info.yml"))?;
        Ok(serde_json::from_str(&text)?)
    }

    /// The droplet to launch (the staging must have succeeded).
    pub fn droplet(&self) -> Result<Droplet> {
        self.ensure_success()?;
        Ok(Droplet {
            dir: self.contents_dir.clone(),
            result: self
                .result
                .clone()
                .context("staging succeeded but wrote no result.json")?,
            app: self.app.clone(),
        })
    }
}

/// A staged droplet: the directory (`app/`, `deps/`, `profile.d/`, `tmp/`, `logs/`,
/// `staging_info.yml`) and the staging result CC stored with it.
#[derive(Debug, Clone)]
pub struct Droplet {
    pub dir: PathBuf,
    pub result: StagingResult,
    pub app: AppInfo,
}

/// `DepsIndex`: zero-padded to the digits of (number of supply buildpacks + 1).
pub fn deps_index(i: usize, buildpack_count: usize) -> String {
    let width = buildpack_count.max(1).to_string().len();
    format!("{i:0width$}")
}

/// Unzips `zip` into `dest` keeping unix modes (the bin/ scripts must stay executable).
pub fn unzip(zip: &Path, dest: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let file =
        File::open(zip).with_context(|| format!("cannot open buildpack zip {}", zip.display()))?;
    let mut archive =
        zip::ZipArchive::new(file).with_context(|| format!("{} is not a zip", zip.display()))?;
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i)?;
        let rel = entry
            .enclosed_name()
            .with_context(|| format!("unsafe path {:?} in {}", entry.name(), zip.display()))?;
        let out = dest.join(rel);
        if entry.is_dir() {
            std::fs::create_dir_all(&out)?;
            continue;
        }
        if let Some(parent) = out.parent() {
            std::fs::create_dir_all(parent)?;
        }
        if entry.is_symlink() {
            let mut target = String::new();
            std::io::Read::read_to_string(&mut entry, &mut target)?;
            std::os::unix::fs::symlink(target, &out)?;
            continue;
        }
        let mut f = File::create(&out)?;
        std::io::copy(&mut entry, &mut f)?;
        let mode = entry.unix_mode().map_or(0o644, |m| m & 0o7777);
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// `buildpackPath`: the dir itself if it has `bin/`, else its only entry if that has `bin/`.
fn buildpack_root(dir: &Path, key: &str) -> std::result::Result<PathBuf, String> {
    if dir.join("bin").exists() {
        return Ok(dir.to_path_buf());
    }
    let entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|_| {
            format!(
                "Failed to read buildpack directory '{}' for buildpack '{key}'",
                dir.display()
            )
        })?
        .filter_map(std::result::Result::ok)
        .collect();
    if entries.len() == 1 {
        let nested = entries[0].path();
        if nested.join("bin").exists() {
            return Ok(nested);
        }
    }
    Err(format!(
        "malformed buildpack does not contain a /bin dir: {key}"
    ))
}

/// How Go's `exec.ExitError` reads.
fn go_exit_error(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(9)) => "signal: killed".to_owned(),
        (None, Some(15)) => "signal: terminated".to_owned(),
        (None, Some(s)) => format!("signal: {s}"),
        (None, None) => "exit status unknown".to_owned(),
    }
}

struct Builder<'a> {
    req: &'a StagingRequest,
    log: File,
    env: BTreeMap<String, String>,
    cwd: PathBuf,
}

impl Builder<'_> {
    fn say(&mut self, line: &str) {
        let _ = writeln!(self.log, "{line}");
    }

    /// Runs a buildpack script with stdout (unless captured) and stderr into the staging log.
    fn run(
        &mut self,
        script: &Path,
        args: &[&Path],
        capture_stdout: bool,
    ) -> Result<(ExitStatus, Vec<u8>)> {
        let mut cmd = Command::new(script);
        cmd.args(args)
            .env_clear()
            .envs(&self.env)
            .current_dir(&self.cwd)
            .stdin(Stdio::null());
        cmd.stderr(Stdio::from(self.log.try_clone()?));
        let captured = tempfile::tempfile()?;
        if capture_stdout {
            cmd.stdout(Stdio::from(captured.try_clone()?));
        } else {
            cmd.stdout(Stdio::from(self.log.try_clone()?));
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", script.display()))?;
        let started = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait()? {
                break s;
            }
            if started.elapsed() > self.req.script_timeout {
                let _ = child.kill();
                let s = child.wait()?;
                self.say(&format!(
                    "(emulation) {} killed after {:?}",
                    script.display(),
                    self.req.script_timeout
                ));
                break s;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut out = Vec::new();
        if capture_stdout {
            let mut f = captured;
            std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(0))?;
            std::io::Read::read_to_end(&mut f, &mut out)?;
        }
        Ok((status, out))
    }
}

fn stage(req: &StagingRequest) -> Result<Staging> {
    if req.buildpacks.is_empty() {
        bail!("staging needs at least one buildpack");
    }
    let root = tempfile::Builder::new().prefix("tsb-staging-").tempdir()?;
    crate::cell::set_mode(root.path(), 0o755)?;
    let r = root.path().to_path_buf();
    let n = req.buildpacks.len();
    let supply_count = n - 1;

    // Setup: buildpacks, app, caches, contents dir (makeDirectories, downloadBuildpacks).
    let mut unpacked = Vec::new();
    for bp in &req.buildpacks {
        let dir = r.join("buildpacks").join(key_dir_name(&bp.key));
        if dir.exists() {
            bail!("buildpack key {:?} given twice", bp.key);
        }
        std::fs::create_dir_all(&dir)?;
        unzip(&bp.zip, &dir)?;
        unpacked.push(dir);
    }
    let build_dir = r.join("app");
    copy_tree(&req.app_dir, &build_dir).context("cannot copy the app into BUILD_DIR")?;
    let mut cache_dirs: Vec<PathBuf> = req.buildpacks[..supply_count]
        .iter()
        .map(|bp| r.join("cache").join(key_dir_name(&bp.key)))
        .collect();
    cache_dirs.push(r.join("cache").join("final"));
    for c in &cache_dirs {
        std::fs::create_dir_all(c)?;
    }
    let digits: String = random_bytes(9)
        .iter()
        .map(|b| char::from(b'0' + b % 10))
        .collect();
    let contents = r.join(format!("contents{digits}"));
    let deps = contents.join("deps");
    let deps_indices: Vec<String> = (0..n).map(|i| deps_index(i, n)).collect();
    for idx in &deps_indices {
        std::fs::create_dir_all(deps.join(idx))?;
    }
    let profile_dir = contents.join("profile.d");
    std::fs::create_dir_all(&profile_dir)?;
    let home = r.join("home");
    std::fs::create_dir_all(&home)?;

    let log_path = r.join("staging.log");
    let log = File::options().create(true).append(true).open(&log_path)?;
    let mut b = Builder {
        req,
        log,
        env: req.app.staging_env(&home),
        cwd: r.clone(),
    };

    let outcome = build(
        &mut b,
        &unpacked,
        &build_dir,
        &cache_dirs,
        &deps,
        &deps_indices,
        &profile_dir,
    );
    let (exit_code, result) = match outcome {
        Ok(result) => {
            for name in ["tmp", "logs"] {
                std::fs::create_dir_all(contents.join(name))?;
            }
            copy_tree(&build_dir, &contents.join("app"))
                .context("Failed to copy compiled droplet")?;
            (0, Some(result))
        }
        Err(BuildError::Lifecycle(message)) => {
            // builder/main.go: println(err.Error()) (stderr), os.Exit(ExitCodeFromError(err)).
            b.say(&message);
            (exit::code_from_error(&message), None)
        }
        Err(BuildError::Harness(e)) => return Err(e),
    };
    drop(b);
    let output = String::from_utf8_lossy(&std::fs::read(&log_path)?).into_owned();
    let buildpack_dirs = unpacked
        .iter()
        .zip(&req.buildpacks)
        .map(|(d, bp)| buildpack_root(d, &bp.key).unwrap_or_else(|_| d.clone()))
        .collect();
    Ok(Staging {
        root,
        app: req.app.clone(),
        exit_code,
        output,
        deps_indices,
        build_dir,
        contents_dir: contents,
        buildpack_dirs,
        cache_dirs,
        result,
    })
}

enum BuildError {
    /// A staging failure the builder reports (message → exit code).
    Lifecycle(String),
    /// The emulation could not do its job.
    Harness(crate::Error),
}

impl From<crate::Error> for BuildError {
    fn from(e: crate::Error) -> Self {
        BuildError::Harness(e)
    }
}

impl From<std::io::Error> for BuildError {
    fn from(e: std::io::Error) -> Self {
        BuildError::Harness(e.into())
    }
}

fn lifecycle(message: impl Into<String>) -> BuildError {
    BuildError::Lifecycle(message.into())
}

/// `GoLikeLightning` in skip-detect mode, up to and including `WriteStartCommands`.
fn build(
    b: &mut Builder<'_>,
    unpacked: &[PathBuf],
    build_dir: &Path,
    cache_dirs: &[PathBuf],
    deps: &Path,
    deps_indices: &[String],
    profile_dir: &Path,
) -> std::result::Result<StagingResult, BuildError> {
    let req = b.req;
    let n = req.buildpacks.len();
    let supply_count = n - 1;

    // validateSupplyBuildpacks
    let mut roots = Vec::new();
    for (i, bp) in req.buildpacks[..supply_count].iter().enumerate() {
        let root = match buildpack_root(&unpacked[i], &bp.key) {
            Ok(p) => p,
            Err(e) => {
                b.say(&e);
                return Err(lifecycle(format!("{}: {e}", exit::SUPPLY_FAIL_MSG)));
            }
        };
        if !root.join("bin").join("supply").exists() {
            return Err(lifecycle(exit::NO_SUPPLY_SCRIPT_FAIL_MSG));
        }
        roots.push(root);
    }
    // runSupplyBuildpacks
    for (i, root) in roots.iter().enumerate() {
        let idx = PathBuf::from(&deps_indices[i]);
        let (status, _) = b.run(
            &root.join("bin/supply"),
            &[build_dir, &cache_dirs[i], deps, &idx],
            false,
        )?;
        if !status.success() {
            return Err(lifecycle(format!(
                "{}: {}",
                exit::SUPPLY_FAIL_MSG,
                go_exit_error(status)
            )));
        }
    }
    let final_bp = &req.buildpacks[supply_count];
    let final_root = buildpack_root(&unpacked[supply_count], &final_bp.key)
        .map_err(|e| lifecycle(format!("{}: {e}", exit::SUPPLY_FAIL_MSG)))?;

    // runFinalize, wrapped by GoLikeLightning in CompileFailMsg (so a finalize failure exits 223:
    // ExitCodeFromError tests CompileFailMsg before FinalizeFailMsg).
    let final_idx = PathBuf::from(&deps_indices[supply_count]);
    let final_cache = &cache_dirs[supply_count];
    let wrap = |inner: String| lifecycle(format!("{}: {inner}", exit::COMPILE_FAIL_MSG));
    if final_root.join("bin/finalize").exists() {
        if final_root.join("bin/supply").exists() {
            let (status, _) = b.run(
                &final_root.join("bin/supply"),
                &[build_dir, final_cache, deps, &final_idx],
                false,
            )?;
            if !status.success() {
                return Err(wrap(format!(
                    "{}: {}",
                    exit::SUPPLY_FAIL_MSG,
                    go_exit_error(status)
                )));
            }
        }
        let (status, _) = b.run(
            &final_root.join("bin/finalize"),
            &[build_dir, final_cache, deps, &final_idx, profile_dir],
            false,
        )?;
        if !status.success() {
            return Err(wrap(format!(
                "{}: {}",
                exit::FINALIZE_FAIL_MSG,
                go_exit_error(status)
            )));
        }
    } else {
        if supply_count > 0 {
            b.say(exit::MISSING_FINALIZE_WARN_MSG);
        }
        std::fs::remove_dir_all(deps.join(&final_idx))?;
        let (status, _) = b.run(
            &final_root.join("bin/compile"),
            &[build_dir, final_cache],
            false,
        )?;
        if !status.success() {
            return Err(wrap(go_exit_error(status)));
        }
    }

    // ProcessYML over the supply buildpacks: deps/<strconv.Itoa(i)>/launch.yml (UNPADDED).
    let mut processes: Vec<LaunchProcess> = Vec::new();
    for i in 0..supply_count {
        processes = merge_launch_yml(deps, i, processes)?;
    }
    // ProcessFinalBuildpack: its launch.yml, or else bin/release.
    if deps
        .join(supply_count.to_string())
        .join("launch.yml")
        .exists()
    {
        processes = merge_launch_yml(deps, supply_count, processes)?;
    } else {
        let (status, stdout) = b.run(&final_root.join("bin/release"), &[build_dir], true)?;
        if !status.success() {
            return Err(lifecycle(format!(
                "{}: {}",
                exit::RELEASE_FAIL_MSG,
                go_exit_error(status)
            )));
        }
        #[derive(Deserialize, Default)]
        struct Release {
            #[serde(default)]
            default_process_types: Option<BTreeMap<String, String>>,
        }
        let text = String::from_utf8_lossy(&stdout);
        let release: Release = if text.trim().is_empty() {
            Release::default()
        } else {
            serde_yaml_ng::from_str(&text).map_err(|e| {
                lifecycle(format!(
                    "{}: buildpack's release output invalid: {e}",
                    exit::RELEASE_FAIL_MSG
                ))
            })?
        };
        let defaults = release.default_process_types.unwrap_or_default();
        processes = merge_processes(
            processes,
            defaults
                .iter()
                .map(|(k, v)| LaunchProcess::plain(k, v))
                .collect(),
        );
    }
    // The app's Procfile (a YAML map), last.
    match std::fs::read_to_string(build_dir.join("Procfile")) {
        Ok(text) => {
            let procfile: BTreeMap<String, String> = if text.trim().is_empty() {
                BTreeMap::new()
            } else {
                serde_yaml_ng::from_str::<Option<BTreeMap<String, String>>>(&text)
                    .map_err(|_| lifecycle("Failed to read command from Procfile: invalid YAML"))?
                    .unwrap_or_default()
            };
            processes = merge_processes(
                processes,
                procfile
                    .iter()
                    .map(|(k, v)| LaunchProcess::plain(k, v))
                    .collect(),
            );
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(lifecycle(format!(
                "Failed to read command from Procfile: {e}"
            )));
        }
    }

    // WriteStartCommands
    let mut result = convert_to_result(&processes);
    let web = result.process_types.get("web").cloned().unwrap_or_default();
    if web.is_empty() {
        b.say("No start command specified by buildpack or via Procfile.");
        b.say("App will not start unless a command is provided at runtime.");
    }
    let buildpacks: Vec<BuildpackMetadata> = req
        .buildpacks
        .iter()
        .enumerate()
        .map(|(i, bp)| {
            let mut m = BuildpackMetadata {
                key: bp.key.clone(),
                ..Default::default()
            };
            if let Ok(text) =
                std::fs::read_to_string(deps.join(&deps_indices[i]).join("config.yml"))
            {
                // yaml.Unmarshal into BuildpackMetadata; errors ignored, absent keys kept.
                if let Ok(parsed) = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&text) {
                    for (field, slot) in [
                        ("key", &mut m.key),
                        ("name", &mut m.name),
                        ("version", &mut m.version),
                    ] {
                        if let Some(v) = parsed.get(field).and_then(scalar_string) {
                            *slot = v;
                        }
                    }
                }
            }
            m
        })
        .collect();
    let last = buildpacks.last().cloned().unwrap_or_default();
    let contents = deps.parent().context("deps dir has no parent")?;
    let info = StagingInfo {
        detected_buildpack: last.name.clone(),
        start_command: web,
    };
    std::fs::write(
        contents.join("staging_info.yml"),
        format!(
            "{}\n",
            serde_json::to_string(&info).map_err(crate::Error::from)?
        ),
    )?;
    result.lifecycle_metadata = LifecycleMetadata {
        buildpack_key: last.key.clone(),
        detected_buildpack: last.name,
        buildpacks,
    };
    let root = contents.parent().context("contents dir has no parent")?;
    std::fs::write(
        root.join("result.json"),
        format!(
            "{}\n",
            serde_json::to_string(&result).map_err(crate::Error::from)?
        ),
    )?;
    Ok(result)
}

fn scalar_string(v: &serde_yaml_ng::Value) -> Option<String> {
    match v {
        serde_yaml_ng::Value::String(s) => Some(s.clone()),
        serde_yaml_ng::Value::Number(n) => Some(n.to_string()),
        serde_yaml_ng::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `MergeLaunchYML`: reads `deps/<i unpadded>/launch.yml` if it exists. A YAML error is returned
/// as is (builder exit code 1).
fn merge_launch_yml(
    deps: &Path,
    i: usize,
    processes: Vec<LaunchProcess>,
) -> std::result::Result<Vec<LaunchProcess>, BuildError> {
    let path = deps.join(i.to_string()).join("launch.yml");
    if !path.exists() {
        return Ok(processes);
    }
    let text = std::fs::read_to_string(&path)?;
    let data: LaunchData = if text.trim().is_empty() {
        LaunchData::default()
    } else {
        serde_yaml_ng::from_str::<Option<LaunchData>>(&text)
            .map_err(|e| lifecycle(format!("yaml: {e}")))?
            .unwrap_or_default()
    };
    Ok(merge_processes(
        processes,
        data.processes.unwrap_or_default(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deps_index_is_padded_to_the_digits_of_the_buildpack_count() {
        assert_eq!(deps_index(0, 1), "0");
        assert_eq!(deps_index(2, 3), "2");
        assert_eq!(deps_index(2, 9), "2");
        assert_eq!(deps_index(2, 10), "02");
        assert_eq!(deps_index(10, 11), "10");
        assert_eq!(deps_index(3, 100), "003");
    }

    #[test]
    fn exit_codes_follow_the_first_matching_message() {
        assert_eq!(
            exit::code_from_error("Failed to run all supply scripts: exit status 1"),
            225
        );
        assert_eq!(
            exit::code_from_error(
                "Failed to compile droplet: Failed to run finalize script: exit status 1"
            ),
            223
        );
        assert_eq!(
            exit::code_from_error("Failed to build droplet release: exit status 2"),
            224
        );
        assert_eq!(exit::code_from_error(exit::NO_SUPPLY_SCRIPT_FAIL_MSG), 225);
        assert_eq!(exit::code_from_error("yaml: bad"), 1);
    }

    #[test]
    fn later_processes_of_the_same_type_replace_earlier_ones() {
        let sidecar: LaunchData = serde_yaml_ng::from_str(
            "processes:\n- type: tls-sidecar\n  command: /home/vcap/deps/0/bin/tls-sidecar\n  \
             limits: {memory: 32}\n  platforms: {cloudfoundry: {sidecar_for: [web]}}\n  extra: ignored\n",
        )
        .unwrap();
        let merged = merge_processes(
            sidecar.processes.unwrap(),
            vec![LaunchProcess::plain("web", "python3 app.py")],
        );
        let result = convert_to_result(&merged);
        let json = serde_json::to_value(&result).unwrap();
        assert_eq!(
            json["process_types"],
            serde_json::json!({"web": "python3 app.py"})
        );
        assert_eq!(
            json["sidecars"],
            serde_json::json!([{"name": "tls-sidecar", "process_types": ["web"],
                "command": "/home/vcap/deps/0/bin/tls-sidecar", "memory": 32}])
        );
        let replaced = merge_processes(merged, vec![LaunchProcess::plain("tls-sidecar", "x")]);
        let result = convert_to_result(&replaced);
        assert!(result.sidecars.is_none());
        assert_eq!(result.process_types["tls-sidecar"], "x");
        assert_eq!(
            serde_json::to_value(&result).unwrap()["sidecars"],
            serde_json::Value::Null
        );
    }
}
