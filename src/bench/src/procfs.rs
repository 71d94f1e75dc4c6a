//! CPU time and RSS of a process tree from `/proc`.
//!
//! `/proc/<pid>/stat` fields 14 and 15 (utime, stime) are process totals: they include every
//! thread, live or exited. The tree is the process and all its descendants (nginx's and
//! hitch's workers), found again at every sample.

use std::collections::HashMap;
use std::fs;

/// USER_HZ: the unit of utime/stime; 100 on every Linux x86_64 kernel ABI.
pub const TICKS_PER_SECOND: f64 = 100.0;

#[derive(Debug, Clone, Copy, Default)]
pub struct TreeSample {
    pub ticks: u64,
    pub rss_kb: u64,
    /// The anonymous part of `rss_kb` (heap, stacks); the rest is mapped files: the program's
    /// code and libraries, clean page cache shared with any other process mapping them.
    pub rss_anon_kb: u64,
    pub processes: usize,
}

impl TreeSample {
    pub fn cpu_seconds(&self) -> f64 {
        self.ticks as f64 / TICKS_PER_SECOND
    }
}

/// (ppid, utime + stime) from a `/proc/<pid>/stat` line.
fn parse_stat(text: &str) -> Option<(u32, u64)> {
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

/// (VmRSS, RssAnon) in KB from `/proc/<pid>/status`; zeros once the process is gone.
fn rss_kb(pid: u32) -> (u64, u64) {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("RssAnon:"))
}

/// Sums CPU ticks and RSS over `root` and all its descendants.
pub fn sample_tree(root: u32) -> crate::Result<TreeSample> {
    let mut table: HashMap<u32, (u32, u64)> = HashMap::new();
    for entry in fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(stat) = fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|t| parse_stat(&t))
        {
            table.insert(pid, stat);
        }
    }
    if !table.contains_key(&root) {
        return Err(format!("process {root} is not running").into());
    }
    let mut sample = TreeSample::default();
    let mut todo = vec![root];
    while let Some(pid) = todo.pop() {
        if let Some(&(_, ticks)) = table.get(&pid) {
            sample.ticks += ticks;
            let (rss, anon) = rss_kb(pid);
            sample.rss_kb += rss;
            sample.rss_anon_kb += anon;
            sample.processes += 1;
        }
        todo.extend(
            table
                .iter()
                .filter(|(_, (ppid, _))| *ppid == pid)
                .map(|(child, _)| *child),
        );
    }
    Ok(sample)
}

/// Busy seconds (everything but idle and iowait) of CPUs 0 and 1 together, from `/proc/stat`.
pub fn cpus01_busy_seconds() -> f64 {
    let Ok(text) = fs::read_to_string("/proc/stat") else {
        return f64::NAN;
    };
    let mut busy = 0u64;
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        if !matches!(fields.next(), Some("cpu0" | "cpu1")) {
            continue;
        }
        let v: Vec<u64> = fields.filter_map(|f| f.parse().ok()).collect();
        // user nice system idle iowait irq softirq steal (guest time is inside user)
        let total: u64 = v.iter().take(8).sum();
        let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
        busy += total.saturating_sub(idle);
    }
    busy as f64 / TICKS_PER_SECOND
}

/// This process's own CPU seconds (the generator's cost, for the method section).
pub fn self_cpu_seconds() -> f64 {
    fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|t| parse_stat(&t))
        .map_or(0.0, |(_, t)| t as f64 / TICKS_PER_SECOND)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_with_spaces_and_parens() {
        let line = "42 (a b) c) S 7 42 42 0 -1 4194560 100 0 0 0 13 5 0 0 20 0 1 0 1 2 3";
        assert_eq!(parse_stat(line), Some((7, 18)));
    }
}
