//! An app instance as Diego runs it (`cf-buildpack-contract.md` §2.5, §3.1, §3.2):
//!
//! - its own network namespace (a container's network stack), with the instance IP on `lo`;
//! - per process, a private mount namespace with the droplet (an own copy, owned by vcap) at
//!   `/home/vcap`, the instance credentials read-only at `/etc/cf-instance-credentials` and the
//!   trusted CA dir read-only at `/etc/cf-system-certificates`;
//! - each process (web, and every sidecar for web) started as uid/gid 2000 (`vcap`) with CF's
//!   environment, through the launcher's exact script: `cd /home/vcap/app`, source
//!   `../profile.d/*`, `.profile.d/*`, `.profile`, then `exec bash -c "<command>"`.
//!
//! The process we spawn `exec`s its way (`ip netns exec` → `unshare` → `sh` → `setpriv` → `bash`
//! → `bash -c`) into the command itself, so its PID is the app's or the sidecar's: signals reach
//! it and its exit status is the process's own. Everything is torn down on drop.

use crate::cell::{AppIdentity, CellCa, DEFAULT_VALIDITY, InstanceCredentials};
use crate::netns::NetNs;
use crate::stage::Droplet;
use crate::util::{Deadline, chown_tree, copy_tree, host_tool, poll, poll_strict};
use crate::{Context, Result, bail};
use std::collections::BTreeMap;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// `vcap` on cflinuxfs4.
pub const VCAP_UID: u32 = 2000;
/// CF's default first process port.
pub const APP_PORT: u16 = 8080;
/// Where Diego mounts the instance credentials and the trusted CAs.
pub const CREDENTIALS_MOUNT: &str = "/etc/cf-instance-credentials";
pub const SYSTEM_CERTS_MOUNT: &str = "/etc/cf-system-certificates";
/// `PATH` of an app process on cflinuxfs4 before any profile script runs.
pub const APP_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// The launcher's script (`buildpackapplifecycle/launcher/launcher_unix.go`), with the default
/// `bash -c` entrypoint. Arguments: `$1` the app dir, `$2` the command.
pub const LAUNCHER_SCRIPT: &str = r#"
cd "$1"

echo "Invoking pre-start scripts."

if [ -n "$(ls ../profile.d/* 2> /dev/null)" ]; then
  for env_file in ../profile.d/*; do
    source $env_file
  done
fi

if [ -n "$(ls .profile.d/* 2> /dev/null)" ]; then
  for env_file in .profile.d/*; do
    source $env_file
  done
fi

if [ -f .profile ]; then
  source .profile
fi

shift

echo "Invoking start command."

exec bash -c "$@"
"#;

/// What `cf ssh` runs a command through (`/tmp/lifecycle/shell`): the launcher's sourcing of
/// the profile scripts, silently. Arguments: `$1` the app dir, `$2` the command.
pub const SSH_SCRIPT: &str = r#"
cd "$1"
if [ -n "$(ls ../profile.d/* 2> /dev/null)" ]; then
  for env_file in ../profile.d/*; do
    source $env_file
  done
fi
if [ -n "$(ls .profile.d/* 2> /dev/null)" ]; then
  for env_file in .profile.d/*; do
    source $env_file
  done
fi
if [ -f .profile ]; then
  source .profile
fi
shift
exec bash -c "$@"
"#;

/// How to start an instance. `Default` is instance 0, a fresh identity of the app, 24 h
/// certificate, the shared CA, web and all its sidecars.
#[derive(Debug, Clone)]
pub struct LaunchOptions {
    pub index: u32,
    /// Default: [`crate::AppInfo::instance_identity`].
    pub identity: Option<AppIdentity>,
    pub validity: Duration,
    /// Default: [`CellCa::shared`].
    pub ca: Option<Arc<CellCa>>,
    /// Extra run-time env (`cf set-env` + restart), over the app's env.
    pub env: BTreeMap<String, String>,
    /// Start the sidecars for `web` (from result.json).
    pub sidecars: bool,
    /// Start the web process.
    pub web: bool,
    /// `cf push -c`: replaces result.json's web command.
    pub web_command: Option<String>,
    /// Extra `/etc/hosts` entries inside the instance (what BOSH DNS answers for internal
    /// routes), e.g. `("backend.apps.internal", <its instance IP>)`: see
    /// [`crate::netpair::HostsFile`].
    pub hosts: Vec<(String, IpAddr)>,
}

impl Default for LaunchOptions {
    fn default() -> Self {
        LaunchOptions {
            index: 0,
            identity: None,
            validity: DEFAULT_VALIDITY,
            ca: None,
            env: BTreeMap::new(),
            sidecars: true,
            web: true,
            web_command: None,
            hosts: Vec::new(),
        }
    }
}

/// One running process of an instance (web or a sidecar).
#[derive(Debug)]
pub struct Process {
    name: String,
    command: String,
    child: Mutex<Child>,
    pid: u32,
    stdout: PathBuf,
    stderr: PathBuf,
    exited: Mutex<Option<ExitStatus>>,
}

impl Process {
    /// `web`, or the sidecar's name (e.g. `tls-sidecar`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The command the launcher was given.
    pub fn command(&self) -> &str {
        &self.command
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn stdout(&self) -> String {
        std::fs::read(&self.stdout)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read(&self.stderr)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Both streams, labelled, for failure messages.
    pub fn logs(&self) -> String {
        format!(
            "--- {} stdout ---\n{}--- {} stderr ---\n{}",
            self.name,
            self.stdout(),
            self.name,
            self.stderr()
        )
    }

    /// The exit status, if the process has exited (non-blocking).
    pub fn try_status(&self) -> Result<Option<ExitStatus>> {
        let mut exited = self
            .exited
            .lock()
            .map_err(|_| crate::Error::msg("poisoned"))?;
        if exited.is_none() {
            let mut child = self
                .child
                .lock()
                .map_err(|_| crate::Error::msg("poisoned"))?;
            *exited = child.try_wait()?;
        }
        Ok(*exited)
    }

    /// Waits for the first line (stdout or stderr) containing `needle`; fails early if the
    /// process exits first. Returns the line.
    pub fn wait_for_log(&self, needle: &str, deadline: Deadline) -> Result<String> {
        poll_strict(
            deadline,
            &format!("{needle:?} in the {} logs", self.name),
            || {
                for text in [self.stdout(), self.stderr()] {
                    if let Some(line) = text.lines().find(|l| l.contains(needle)) {
                        return Ok(Ok(line.to_owned()));
                    }
                }
                if let Some(status) = self.try_status()? {
                    bail!("{} exited ({status}) before logging {needle:?}", self.name,);
                }
                Ok(Err("not logged yet".to_owned()))
            },
        )
        .map_err(|e| crate::Error::msg(format!("{e}\n{}", self.logs())))
    }

    /// Sends `signal` to the process itself.
    pub fn signal(&self, signal: rustix::process::Signal) -> Result<()> {
        let pid = rustix::process::Pid::from_raw(self.pid as i32).context("bad pid")?;
        rustix::process::kill_process(pid, signal)
            .with_context(|| format!("cannot signal {}", self.name))
    }

    /// Waits for the process to exit, up to `timeout`.
    pub fn wait_exit(&self, timeout: Duration) -> Result<ExitStatus> {
        poll(
            Deadline::after(timeout),
            &format!("{} to exit", self.name),
            || self.try_status(),
        )
        .map_err(|e| crate::Error::msg(format!("{e}\n{}", self.logs())))
    }

    fn kill_group(&self) {
        if let Some(pgid) = rustix::process::Pid::from_raw(self.pid as i32) {
            let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
        }
        if let Ok(mut child) = self.child.lock() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A running app instance. Dropping it kills its processes, deletes its namespace and its files.
#[derive(Debug)]
pub struct Instance {
    processes: Vec<Process>,
    credentials: InstanceCredentials,
    index: u32,
    env: BTreeMap<String, String>,
    /// The web process's environment: what `cf ssh` sessions get.
    ssh_env: BTreeMap<String, String>,
    // Drop order: processes are killed in Drop::drop, then the namespace and the dirs go.
    netns: NetNs,
    root: tempfile::TempDir,
    /// `LaunchOptions::hosts`, mounted over `/etc/hosts` by `ip netns exec`.
    _hosts: Option<crate::netpair::HostsFile>,
}

impl Instance {
    /// Starts instance `opts.index` of `droplet`: web (result.json's `process_types.web` or
    /// `opts.web_command`) and every sidecar whose `process_types` has `web`.
    pub fn launch(droplet: &Droplet, opts: &LaunchOptions) -> Result<Instance> {
        crate::require_root()?;
        let app = &droplet.app;
        let identity = opts
            .identity
            .clone()
            .unwrap_or_else(|| app.instance_identity());
        let ca = match &opts.ca {
            Some(ca) => ca.clone(),
            None => CellCa::shared()?,
        };
        for mount_point in ["/home/vcap", CREDENTIALS_MOUNT, SYSTEM_CERTS_MOUNT] {
            std::fs::create_dir_all(mount_point)
                .with_context(|| format!("cannot create the mount point {mount_point}"))?;
        }

        let root = tempfile::Builder::new().prefix("tsb-instance-").tempdir()?;
        let droplet_dir = root.path().join("droplet");
        copy_tree(&droplet.dir, &droplet_dir).context("cannot extract the droplet")?;
        chown_tree(&droplet_dir, VCAP_UID, VCAP_UID)?;
        let logs = root.path().join("logs");
        std::fs::create_dir(&logs)?;

        let credentials = InstanceCredentials::new(ca, identity, opts.validity)?;
        let netns = NetNs::create(Some(credentials.identity().ip))?;
        // Before any process starts: `ip netns exec` mounts it when it enters the namespace.
        let hosts = crate::netpair::HostsFile::write(netns.name(), &opts.hosts)?;

        let mut instance = Instance {
            processes: Vec::new(),
            credentials,
            index: opts.index,
            env: opts.env.clone(),
            ssh_env: BTreeMap::new(),
            netns,
            root,
            _hosts: hosts,
        };

        let sidecars: Vec<_> = droplet
            .result
            .sidecars
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter(|s| s.process_types.iter().any(|t| t == "web"))
            .collect();
        let sidecar_memory: i64 = sidecars.iter().map(|s| s.memory).sum();
        let web_memory = (i64::from(app.memory_mb) - sidecar_memory).max(0) as u32;

        instance.ssh_env = instance.process_env(droplet, web_memory);
        if opts.web {
            let command = opts
                .web_command
                .clone()
                .or_else(|| droplet.result.process_types.get("web").cloned())
                .unwrap_or_default();
            let env = instance.process_env(droplet, web_memory);
            instance.start("web", &command, &env, &droplet_dir, &logs)?;
        }
        if opts.sidecars {
            for s in &sidecars {
                let memory = if s.memory > 0 {
                    s.memory as u32
                } else {
                    app.memory_mb
                };
                let env = instance.process_env(droplet, memory);
                instance.start(&s.name, &s.command, &env, &droplet_dir, &logs)?;
            }
        }
        Ok(instance)
    }

    /// The environment of one process: CC's (§2.5, §3.2) after the launcher's `CalcEnv`.
    fn process_env(&self, droplet: &Droplet, memory_mb: u32) -> BTreeMap<String, String> {
        let app = &droplet.app;
        let id = self.credentials.identity();
        let ip = id.ip.to_string();
        let port = APP_PORT.to_string();
        let host_port = 40000 + self.index * 10;
        let mut vcap = app.vcap_application(memory_mb, Some("web"));
        if let Some(o) = vcap.as_object_mut() {
            o.insert("host".into(), "0.0.0.0".into());
            o.insert("instance_id".into(), id.instance_guid.clone().into());
            o.insert("port".into(), APP_PORT.into());
            o.insert("instance_index".into(), self.index.into());
        }
        let ports = serde_json::json!([
            {"external": host_port, "internal": APP_PORT, "external_tls_proxy": host_port + 1, "internal_tls_proxy": 61001},
            {"external": host_port + 2, "internal": APP_PORT, "external_tls_proxy": host_port + 3, "internal_tls_proxy": 61443},
        ]);
        let mut env = BTreeMap::new();
        env.extend(app.env.clone());
        env.extend(self.env.clone());
        let fixed = [
            ("HOME", "/home/vcap/app".to_owned()),
            ("TMPDIR", "/home/vcap/tmp".to_owned()),
            ("DEPS_DIR", "/home/vcap/deps".to_owned()),
            ("PORT", port.clone()),
            ("VCAP_APP_PORT", port),
            ("VCAP_APP_HOST", "0.0.0.0".to_owned()),
            ("VCAP_APPLICATION", vcap.to_string()),
            ("VCAP_SERVICES", app.services.to_string()),
            ("CF_INSTANCE_GUID", id.instance_guid.clone()),
            ("CF_INSTANCE_INDEX", self.index.to_string()),
            ("INSTANCE_GUID", id.instance_guid.clone()),
            ("INSTANCE_INDEX", self.index.to_string()),
            ("CF_INSTANCE_IP", ip.clone()),
            ("CF_INSTANCE_INTERNAL_IP", ip.clone()),
            ("CF_INSTANCE_PORT", host_port.to_string()),
            ("CF_INSTANCE_ADDR", format!("{ip}:{host_port}")),
            ("CF_INSTANCE_PORTS", ports.to_string()),
            (
                "CF_INSTANCE_CERT",
                format!("{CREDENTIALS_MOUNT}/instance.crt"),
            ),
            (
                "CF_INSTANCE_KEY",
                format!("{CREDENTIALS_MOUNT}/instance.key"),
            ),
            ("CF_SYSTEM_CERT_PATH", SYSTEM_CERTS_MOUNT.to_owned()),
            ("MEMORY_LIMIT", format!("{memory_mb}m")),
            ("LANG", "en_US.UTF-8".to_owned()),
            ("USER", "vcap".to_owned()),
            ("PATH", APP_PATH.to_owned()),
        ];
        for (k, v) in fixed {
            env.insert(k.to_owned(), v);
        }
        env
    }

    fn start(
        &mut self,
        name: &str,
        command: &str,
        env: &BTreeMap<String, String>,
        droplet_dir: &Path,
        logs: &Path,
    ) -> Result<()> {
        let stdout = logs.join(format!("{name}.stdout"));
        let stderr = logs.join(format!("{name}.stderr"));
        let mut cmd = self.vcap_command(LAUNCHER_SCRIPT, command, env, droplet_dir)?;
        cmd.stdin(Stdio::null())
            .stdout(File::create(&stdout)?)
            .stderr(File::create(&stderr)?);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        self.processes.push(Process {
            name: name.to_owned(),
            command: command.to_owned(),
            pid: child.id(),
            child: Mutex::new(child),
            stdout,
            stderr,
            exited: Mutex::new(None),
        });
        Ok(())
    }

    /// Runs `command` in the instance like `cf ssh <app> -c <command>`: inside its network and
    /// (a fresh) mount namespace, as vcap, with the web process's environment plus `env`
    /// (overriding it), after the profile scripts. Output is captured; the exit status is the
    /// command's own.
    pub fn ssh(&self, command: &str, env: &[(&str, &str)]) -> Result<Output> {
        let mut vars = self.ssh_env.clone();
        for (k, v) in env {
            vars.insert((*k).to_owned(), (*v).to_owned());
        }
        let mut cmd = self.vcap_command(SSH_SCRIPT, command, &vars, &self.droplet_dir())?;
        cmd.stdin(Stdio::null());
        cmd.output()
            .with_context(|| format!("cannot run {command:?} in the instance"))
    }

    /// Runs `command` as `cf run-task` does in this app's droplet: through the launcher (profile
    /// scripts sourced), with no sidecar, and a `VCAP_APPLICATION` that names no process type
    /// (Cloud Controller's task environment). Output is captured.
    pub fn run_task(&self, command: &str) -> Result<Output> {
        let mut vars = self.ssh_env.clone();
        if let Some(vcap) = vars.get("VCAP_APPLICATION") {
            let mut v: serde_json::Value = serde_json::from_str(vcap)?;
            if let Some(o) = v.as_object_mut() {
                o.remove("process_type");
                o.remove("process_id");
            }
            vars.insert("VCAP_APPLICATION".to_owned(), v.to_string());
        }
        let mut cmd = self.vcap_command(LAUNCHER_SCRIPT, command, &vars, &self.droplet_dir())?;
        cmd.stdin(Stdio::null());
        cmd.output()
            .with_context(|| format!("cannot run the task {command:?}"))
    }

    /// The command that enters the instance (network namespace, own mount namespace with the
    /// droplet and the credentials mounted), becomes vcap and runs `script` with `$1` =
    /// `/home/vcap/app` and `$2` = `command`.
    fn vcap_command(
        &self,
        script: &str,
        command: &str,
        env: &BTreeMap<String, String>,
        droplet_dir: &Path,
    ) -> Result<std::process::Command> {
        let (mount, setpriv, bash) = (host_tool("mount")?, host_tool("setpriv")?, "/bin/bash");
        let unshare = host_tool("unshare")?;
        // $1 droplet, $2 credentials, $3 system certs, $4 launcher script, $5 command.
        let enter = format!(
            "set -e\n\
             {mount} --bind \"$1\" /home/vcap\n\
             {mount} --bind \"$2\" {CREDENTIALS_MOUNT}\n\
             {mount} -o remount,bind,ro {CREDENTIALS_MOUNT}\n\
             {mount} --bind \"$3\" {SYSTEM_CERTS_MOUNT}\n\
             {mount} -o remount,bind,ro {SYSTEM_CERTS_MOUNT}\n\
             cd /home/vcap\n\
             exec {setpriv} --reuid={VCAP_UID} --regid={VCAP_UID} --clear-groups -- \
             {bash} -c \"$4\" /tmp/lifecycle/launcher /home/vcap/app \"$5\"\n",
            mount = mount.display(),
            setpriv = setpriv.display(),
        );
        let mut cmd = self.netns.command(&unshare.display().to_string())?;
        cmd.args([
            "--mount",
            "--propagation",
            "private",
            "--",
            "/bin/sh",
            "-c",
            &enter,
            "sh",
        ])
        .arg(droplet_dir)
        .arg(self.credentials.dir())
        .arg(self.credentials.ca().system_cert_dir())
        .arg(script)
        .arg(command)
        .env_clear()
        .envs(env)
        .current_dir("/");
        Ok(cmd)
    }

    pub fn processes(&self) -> &[Process] {
        &self.processes
    }

    pub fn process(&self, name: &str) -> Result<&Process> {
        self.processes
            .iter()
            .find(|p| p.name == name)
            .with_context(|| format!("instance has no process {name:?}"))
    }

    pub fn web(&self) -> Result<&Process> {
        self.process("web")
    }

    /// The port the web process listens on: its `$PORT` as launched, which the buildpack's
    /// route script moves to `route.app_port` while the sidecar fronts the route port (http
    /// mode), else CF's [`APP_PORT`].
    pub fn app_port(&self) -> Result<u16> {
        let pid = self.web()?.pid();
        let environ = std::fs::read(format!("/proc/{pid}/environ"))
            .with_context(|| format!("reading the environment of the web process {pid}"))?;
        Ok(environ
            .split(|b| *b == 0)
            .find_map(|var| var.strip_prefix(b"PORT="))
            .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
            .unwrap_or(APP_PORT))
    }

    pub fn identity(&self) -> &AppIdentity {
        self.credentials.identity()
    }

    /// `CF_INSTANCE_GUID`: the certificate's CN and DNS SAN.
    pub fn guid(&self) -> &str {
        &self.credentials.identity().instance_guid
    }

    /// `CF_INSTANCE_INTERNAL_IP`: the certificate's IP SAN, on `lo` in the namespace.
    pub fn ip(&self) -> IpAddr {
        self.credentials.identity().ip
    }

    pub fn credentials(&self) -> &InstanceCredentials {
        &self.credentials
    }

    pub fn netns(&self) -> &NetNs {
        &self.netns
    }

    /// The instance's own copy of the droplet (what `/home/vcap` shows its processes).
    pub fn droplet_dir(&self) -> PathBuf {
        self.root.path().join("droplet")
    }

    /// Runs a client command inside the instance's network namespace (as root, host files).
    pub fn exec(&self, argv: &[&str]) -> Result<Output> {
        self.netns.exec(argv)
    }

    /// Like [`Instance::exec`], writing `input` to the command's stdin (then closing it).
    pub fn exec_with_stdin(&self, argv: &[&str], input: &[u8]) -> Result<Output> {
        self.netns.exec_with_stdin(argv, input)
    }

    /// A TCP connection to `127.0.0.1:port` inside the instance.
    pub fn connect(&self, port: u16) -> Result<TcpStream> {
        self.netns.connect(
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
            Duration::from_secs(5),
        )
    }

    /// Waits until something accepts on `127.0.0.1:port` (Diego's port health check).
    /// Fails at once if any process of the instance exits meanwhile.
    pub fn wait_for_port(&self, port: u16, deadline: Deadline) -> Result<()> {
        poll_strict(deadline, &format!("port {port} to accept"), || {
            for p in &self.processes {
                if let Some(status) = p.try_status()? {
                    bail!(
                        "{} exited ({status}) while waiting for port {port}\n{}",
                        p.name,
                        p.logs()
                    );
                }
            }
            Ok(self.connect(port).map(|_| ()).map_err(|e| e.to_string()))
        })
    }

    /// Every process's logs, for failure messages.
    pub fn logs(&self) -> String {
        self.processes
            .iter()
            .map(Process::logs)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Kills every process (SIGKILL to each process group) and reaps it.
    pub fn kill(&self) {
        for p in &self.processes {
            p.kill_group();
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill();
    }
}
