//! Two "cells": the network namespaces of two instances joined by a veth pair, so one
//! instance reaches the other at its instance IP (TEST-NET-1, 192.0.2.0/24, which exists only
//! inside the test's own namespaces) as on CF's overlay network; and per-instance `/etc/hosts`
//! entries, the way BOSH DNS answers `backend.apps.internal` with the instance IPs.
//!
//! `ip netns exec <ns>` bind-mounts every file in `/etc/netns/<ns>/` over `/etc/`, so a
//! [`HostsFile`] written there before an instance starts is the `/etc/hosts` of its processes
//! (our sidecar's resolver reads it) and of every command run with `ip netns exec`.

use crate::netns::NetNs;
use crate::util::{host_tool, random_hex, run};
use crate::{Context, Result, bail};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Command;

/// A veth pair between two namespaces, each end routing the other instance's IP. Deleted on
/// drop (and with either namespace).
#[derive(Debug)]
pub struct NetPair {
    ns: String,
    dev: String,
}

impl NetPair {
    /// Joins `a` and `b`: `ip link add <a-end> netns <a> type veth peer name <b-end> netns <b>`,
    /// both ends up, and in each namespace a host route to the other's instance IP over its
    /// end. Both namespaces must have an instance IP (see [`NetNs::create`]).
    pub fn connect(a: &NetNs, b: &NetNs) -> Result<NetPair> {
        let (Some(ip_a), Some(ip_b)) = (a.ip(), b.ip()) else {
            bail!("both namespaces need an instance IP to route to");
        };
        if ip_a == ip_b {
            bail!(
                "{} and {} have the same instance IP {ip_a}",
                a.name(),
                b.name()
            );
        }
        let ip = host_tool("ip")?;
        let tag = random_hex(4);
        let (dev_a, dev_b) = (format!("tsbv{tag}a"), format!("tsbv{tag}b"));
        run(Command::new(&ip).args([
            "link",
            "add",
            &dev_a,
            "netns",
            a.name(),
            "type",
            "veth",
            "peer",
            "name",
            &dev_b,
            "netns",
            b.name(),
        ]))
        .context("cannot create the veth pair")?;
        let pair = NetPair {
            ns: a.name().to_owned(),
            dev: dev_a.clone(),
        };
        for (ns, dev, to) in [(a, &dev_a, ip_b), (b, &dev_b, ip_a)] {
            run(Command::new(&ip).args(["-n", ns.name(), "link", "set", dev, "up"]))?;
            run(Command::new(&ip).args([
                "-n",
                ns.name(),
                "route",
                "add",
                &host_route(to),
                "dev",
                dev,
            ]))
            .with_context(|| format!("cannot route {to} in {}", ns.name()))?;
        }
        Ok(pair)
    }
}

fn host_route(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}/32"),
        IpAddr::V6(a) => format!("{a}/128"),
    }
}

impl Drop for NetPair {
    fn drop(&mut self) {
        if let Ok(ip) = host_tool("ip") {
            let _ = Command::new(ip)
                .args(["-n", &self.ns, "link", "del", &self.dev])
                .output();
        }
    }
}

/// `/etc/netns/<ns>/hosts`: localhost plus `entries`. Removed (with its directory) on drop.
#[derive(Debug)]
pub struct HostsFile {
    dir: PathBuf,
}

impl HostsFile {
    /// Writes the file for the namespace called `ns`; `None` when there are no entries (the
    /// instance then sees the host's `/etc/hosts`, as before).
    pub fn write(ns: &str, entries: &[(String, IpAddr)]) -> Result<Option<HostsFile>> {
        if entries.is_empty() {
            return Ok(None);
        }
        let dir = PathBuf::from("/etc/netns").join(ns);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let guard = HostsFile { dir };
        let mut text = String::from("127.0.0.1 localhost\n::1 localhost ip6-localhost\n");
        for (name, ip) in entries {
            text.push_str(&format!("{ip} {name}\n"));
        }
        let path = guard.dir.join("hosts");
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        crate::cell::set_mode(&path, 0o644)?;
        Ok(Some(guard))
    }
}

impl Drop for HostsFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
