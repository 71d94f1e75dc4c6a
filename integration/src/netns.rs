//! A named network namespace per app instance (`ip netns add tsb-<random>`), like a container's
//! own network stack: fixed ports (8080, 8443, 8444) never collide between parallel tests.

use crate::util::{host_tool, random_hex, run};
use crate::{Context, Result};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

/// A network namespace with `lo` up and, optionally, the instance's IP on `lo`. Deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    ip: Option<IpAddr>,
}

impl NetNs {
    /// `ip netns add tsb-<random>`, `ip link set lo up`, and `ip addr add <ip>/32 dev lo` if an
    /// address is given (use TEST-NET-1, 192.0.2.0/24: it exists only inside this namespace).
    pub fn create(ip: Option<IpAddr>) -> Result<Self> {
        let name = format!("tsb-{}", random_hex(6));
        let ip_tool = host_tool("ip")?;
        run(Command::new(&ip_tool).args(["netns", "add", &name]))
            .context("cannot create a network namespace")?;
        let ns = NetNs { name, ip };
        run(Command::new(&ip_tool).args(["-n", &ns.name, "link", "set", "lo", "up"]))?;
        if let Some(addr) = ip {
            let cidr = match addr {
                IpAddr::V4(a) => format!("{a}/32"),
                IpAddr::V6(a) => format!("{a}/128"),
            };
            run(Command::new(&ip_tool).args(["-n", &ns.name, "addr", "add", &cidr, "dev", "lo"]))?;
        }
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The instance IP added to `lo`, if any.
    pub fn ip(&self) -> Option<IpAddr> {
        self.ip
    }

    /// `/run/netns/<name>`, the handle `setns(2)` takes.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// A command that runs `program args...` inside the namespace (`ip netns exec`), as root with
    /// the host's file system: for clients such as `curl` and `openssl s_client`.
    pub fn command(&self, program: &str) -> Result<Command> {
        let mut cmd = Command::new(host_tool("ip")?);
        cmd.args(["netns", "exec", &self.name, program]);
        Ok(cmd)
    }

    /// Runs `argv` inside the namespace and returns its output, whatever the exit status.
    pub fn exec(&self, argv: &[&str]) -> Result<Output> {
        let (program, args) = argv.split_first().context("empty command")?;
        let mut cmd = self.command(program)?;
        cmd.args(args);
        cmd.output()
            .with_context(|| format!("cannot run {argv:?} in {}", self.name))
    }

    /// Like [`NetNs::exec`], writing `input` to the command's stdin and then closing it.
    pub fn exec_with_stdin(&self, argv: &[&str], input: &[u8]) -> Result<Output> {
        use std::io::Write;
        let (program, args) = argv.split_first().context("empty command")?;
        let mut cmd = self.command(program)?;
        cmd.args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot run {argv:?} in {}", self.name))?;
        if let Some(mut stdin) = child.stdin.take() {
            // A command that exits without reading everything is not an error here.
            let _ = stdin.write_all(input);
        }
        child
            .wait_with_output()
            .with_context(|| format!("cannot run {argv:?} in {}", self.name))
    }

    /// Opens a TCP connection to `addr` from inside the namespace. A helper thread enters the
    /// namespace (`setns`) and connects; the socket belongs to the namespace it was made in, so
    /// the returned stream works from any thread.
    pub fn connect(&self, addr: SocketAddr, timeout: Duration) -> Result<TcpStream> {
        let path = self.path();
        let name = self.name.clone();
        let handle = std::thread::spawn(move || -> Result<TcpStream> {
            let ns = std::fs::File::open(&path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            rustix::thread::move_into_link_name_space(
                ns.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .with_context(|| format!("cannot enter network namespace {name}"))?;
            TcpStream::connect_timeout(&addr, timeout)
                .with_context(|| format!("cannot connect to {addr} in {name}"))
        });
        handle
            .join()
            .map_err(|_| crate::Error::msg("the connect thread panicked"))?
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Ok(ip) = host_tool("ip") {
            let _ = Command::new(ip).args(["netns", "del", &self.name]).output();
        }
    }
}
