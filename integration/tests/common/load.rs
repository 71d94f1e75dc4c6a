//! Load helpers shared by the flood tests: a thread inside an instance's network namespace,
//! the descriptor limit a flood needs, and what `/proc` says about a process.
#![allow(dead_code)]

use std::net::TcpStream;
use std::os::fd::AsFd;
use std::sync::Mutex;
use std::time::Duration;
use tls_sidecar_integration::Instance;
use tls_sidecar_integration::http::request;
use tls_sidecar_integration::sidecar::{ADMIN_PORT, Metrics};

/// Runs `f` on a thread inside `instance`'s network namespace: every socket it makes there
/// belongs to the instance, and can be used from any thread afterwards.
pub fn in_netns<T: Send + 'static>(
    instance: &Instance,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = instance.netns().path();
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path).unwrap();
        rustix::thread::move_into_link_name_space(
            ns.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .unwrap();
        f()
    })
}

/// `/metrics`, from a thread already inside the namespace.
pub fn scrape() -> Metrics {
    let mut conn = TcpStream::connect(("127.0.0.1", ADMIN_PORT)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let r = request(
        &mut conn,
        "GET",
        "/metrics",
        "127.0.0.1",
        &[("Connection", "close")],
    )
    .unwrap();
    Metrics(r.text())
}

/// Raises this process's file-descriptor limit before the instance starts (its processes
/// inherit it): to 65,536 if root may raise the hard limit, else to the hard limit. The flood
/// holds 10,000 client sockets here and the sidecar one descriptor per connection there.
pub fn raise_nofile() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    const WANTED: u64 = 65_536;
    let limit = getrlimit(Resource::Nofile);
    if limit.maximum.is_some_and(|max| max < WANTED) {
        let wanted = Rlimit {
            current: Some(WANTED),
            maximum: Some(WANTED),
        };
        // Without CAP_SYS_RESOURCE this fails; the hard limit below is then what we get.
        let _ = setrlimit(Resource::Nofile, wanted);
    }
    let limit = getrlimit(Resource::Nofile);
    let raised = Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    setrlimit(Resource::Nofile, raised).unwrap();
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// The sidecar's own `Max open files` soft limit, from `/proc/<pid>/limits`.
pub fn nofile_of(pid: u32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next())
        .map_or(0, |v| v.parse().unwrap_or(u64::MAX))
}

/// One flood at a time in this process: two would need twice the descriptors.
pub static ONE_FLOOD: Mutex<()> = Mutex::new(());

// What `/proc` says of the sidecar: one reader for every test crate. Not every test binary
// that includes this module uses both.
#[allow(unused_imports)]
pub use tls_sidecar_testkit::{fds, rss};

pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// The highest VmRSS over a short while (the sidecar may still be settling).
pub fn peak_rss(pid: u32) -> u64 {
    (0..10)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(100));
            rss(pid)
        })
        .max()
        .unwrap_or(0)
}
