//! Getting the dependency tarball, verified, in libbuildpack's order (contract §4.4):
//!
//! 1. the manifest entry has `file:` (a cached zip): use `<buildpack>/<file>` where it lies;
//! 2. the app cache has `CACHE_DIR/dependencies/<sha256hex(uri)>/<basename(uri)>` with the
//!    right sha256: use it (a restage needs no network);
//! 3. download `uri` into a temp file inside `deps/<idx>/`, with retries, and keep the
//!    verified file in the app cache.
//!
//! The sha256 is computed while the bytes stream past (no second read of a download), and is
//! always checked before anything is extracted.

use crate::errors::{Fetched, FileError, InstallError};
use crate::manifest::{Dependency, url_basename};
use crate::output::Output;
use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tls_sidecar_config::Env;
use ureq::tls::{RootCerts, TlsConfig, TlsProvider};
use ureq::{Agent, Proxy};

/// A dependency is a few MB; anything far larger is not ours and would fill the disk.
const MAX_DOWNLOAD_BYTES: u64 = 512 * 1024 * 1024;
/// Where Debian/Ubuntu (and so cflinuxfs4) keep the system CA bundle.
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// How downloads behave. Tests shorten the delays; production uses [`Policy::default`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Wait before each retry; there is one attempt more than delays.
    pub retry_delays: Vec<Duration>,
    /// TCP (and proxy) connect, per attempt.
    pub connect_timeout: Duration,
    /// One whole attempt, from connect to the last body byte.
    pub attempt_timeout: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            retry_delays: crate::cli::DEFAULT_RETRY_DELAYS.to_vec(),
            connect_timeout: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(180),
        }
    }
}

/// Where to look and where to put things.
pub struct Places<'a> {
    pub buildpack_dir: &'a Path,
    pub cache_dir: &'a Path,
    /// `deps/<idx>/`: the only place a download is written to (besides the cache).
    pub work_dir: &'a Path,
}

/// A tarball whose sha256 matched. Holds the temp file alive when it lives in `deps/<idx>/`
/// (a download the cache could not keep); dropping it deletes that file.
#[derive(Debug)]
pub struct Verified {
    path: PathBuf,
    _temp: Option<tempfile::TempPath>,
}

impl Verified {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The app-cache location of `uri` (libbuildpack's layout, so a libbuildpack-era cache works).
pub fn cache_path(cache_dir: &Path, uri: &str) -> PathBuf {
    cache_dir
        .join("dependencies")
        .join(hex::encode(Sha256::digest(uri.as_bytes())))
        .join(url_basename(uri))
}

/// Removes what earlier stagings left in the app cache (`CACHE_DIR/dependencies/<hash>/`) except
/// `keep`'s directory: after an upgrade the previous version's tarball would otherwise stay in
/// the app's cache for good (and a cached zip needs none of them). The cache dir is this
/// buildpack's own (the builder gives each buildpack its own), and only directories named like
/// the layout's hashes are touched. Failures are only logged: a stale file costs disk, not
/// correctness.
pub fn prune_cache<W: Write>(cache_dir: &Path, keep: &Path, out: &mut Output<W>) {
    let dependencies = cache_dir.join("dependencies");
    let Ok(entries) = fs::read_dir(&dependencies) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        let hashed = entry.file_name().to_str().is_some_and(|n| {
            matches!(n.len(), 32 | 64) && n.bytes().all(|b| b.is_ascii_hexdigit())
        });
        if !hashed || keep.starts_with(&path) || !path.is_dir() {
            continue;
        }
        let names: Vec<String> = fs::read_dir(&path)
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        match fs::remove_dir_all(&path) {
            Ok(()) => out.info(format_args!(
                "Removed {} from the app cache (an earlier version)",
                names.join(", ")
            )),
            Err(e) => out.debug(format_args!("cannot remove {}: {e}", path.display())),
        }
    }
}

/// Finds, downloads if needed, and verifies `dep`. Warnings (an unwritable cache) go to `out`.
pub fn fetch<W: Write>(
    dep: &Dependency,
    places: &Places,
    policy: &Policy,
    env: &Env,
    out: &mut Output<W>,
) -> Result<(Verified, Option<crate::errors::Warning>), InstallError> {
    let expected = dep.sha256.to_ascii_lowercase();

    if let Some(file) = &dep.file {
        let path = places.buildpack_dir.join(file);
        out.info(format_args!("Copy [{}]", path.display()));
        let actual = match sha256_file(&path) {
            Ok(a) => a,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(InstallError::CachedFileMissing { path });
            }
            Err(source) => return Err(FileError::reading(&path)(source).into()),
        };
        check(&expected, actual, Fetched::BuildpackZip)?;
        return Ok((Verified { path, _temp: None }, None));
    }

    let cached = cache_path(places.cache_dir, &dep.uri);
    if cached.is_file() {
        match sha256_file(&cached) {
            Ok(actual) if actual == expected => {
                out.info(format_args!("Using cached [{}]", cached.display()));
                return Ok((
                    Verified {
                        path: cached,
                        _temp: None,
                    },
                    None,
                ));
            }
            Ok(actual) => out.debug(format_args!(
                "cached {} has sha256 {actual}, not {expected}: downloading again",
                cached.display()
            )),
            Err(e) => out.debug(format_args!(
                "cannot read cached {}: {e}: downloading again",
                cached.display()
            )),
        }
    }

    out.info(format_args!("Download [{}]", redact(&dep.uri)));
    let write_err = FileError::writing(places.work_dir);
    let mut tmp = tempfile::Builder::new()
        .prefix(crate::fsutil::TEMP_PREFIX)
        .suffix(".tgz")
        .tempfile_in(places.work_dir)
        .map_err(write_err)?;
    let actual = download(&dep.uri, &mut tmp, policy, env, out)?;
    // On a mismatch `tmp` is dropped here, which deletes the bad file.
    check(&expected, actual, Fetched::Download)?;
    out.debug(format_args!("sha256 {expected} verified"));
    Ok(keep_in_cache(tmp, &cached))
}

fn check(expected: &str, actual: String, from: Fetched) -> Result<(), InstallError> {
    if actual == expected {
        Ok(())
    } else {
        Err(InstallError::Sha256Mismatch {
            expected: expected.to_owned(),
            actual,
            from,
        })
    }
}

/// Moves the verified download into the app cache (a rename: same filesystem in practice), or
/// copies it there; if the cache cannot take it, staging goes on from the temp file.
fn keep_in_cache(
    tmp: tempfile::NamedTempFile,
    cached: &Path,
) -> (Verified, Option<crate::errors::Warning>) {
    let warning = |e: io::Error| crate::errors::Warning::CacheNotWritable {
        path: cached.to_owned(),
        reason: e.to_string(),
    };
    let temp_verified = |tmp: tempfile::NamedTempFile| {
        let path = tmp.into_temp_path();
        Verified {
            path: path.to_path_buf(),
            _temp: Some(path),
        }
    };
    let Some(dir) = cached.parent() else {
        return (
            temp_verified(tmp),
            Some(warning(io::Error::other("no parent directory"))),
        );
    };
    if let Err(e) = fs::create_dir_all(dir) {
        return (temp_verified(tmp), Some(warning(e)));
    }
    match tmp.persist(cached) {
        Ok(_) => (
            Verified {
                path: cached.to_owned(),
                _temp: None,
            },
            None,
        ),
        Err(e) if e.error.kind() == io::ErrorKind::CrossesDevices => {
            let mut src = e.file;
            match copy_into(&mut src, dir, cached) {
                Ok(()) => (
                    Verified {
                        path: cached.to_owned(),
                        _temp: None,
                    },
                    None,
                ),
                Err(err) => (temp_verified(src), Some(warning(err))),
            }
        }
        Err(e) => (temp_verified(e.file), Some(warning(e.error))),
    }
}

fn copy_into(src: &mut tempfile::NamedTempFile, dir: &Path, dest: &Path) -> io::Result<()> {
    let mut copy = tempfile::Builder::new()
        .prefix(crate::fsutil::TEMP_PREFIX)
        .tempfile_in(dir)?;
    src.as_file_mut().rewind()?;
    io::copy(src.as_file_mut(), copy.as_file_mut())?;
    copy.persist(dest).map_err(|e| e.error)?;
    Ok(())
}

/// sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut r = BufReader::with_capacity(256 * 1024, File::open(path)?);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok(hex::encode(h.finalize()));
        }
        h.update(&buf[..n]);
    }
}

enum Failure {
    /// Worth another attempt (network, server, timeout); the text is the reason shown.
    Retry(String),
    /// Local: retrying would fail the same way.
    Fatal(InstallError),
}

fn download<W: Write>(
    uri: &str,
    file: &mut tempfile::NamedTempFile,
    policy: &Policy,
    env: &Env,
    out: &mut Output<W>,
) -> Result<String, InstallError> {
    let agent = agent(uri, policy, env, out)?;
    let attempts = policy.retry_delays.len() + 1;
    let mut reason = String::new();
    for attempt in 1..=attempts {
        match attempt_once(&agent, uri, file) {
            Ok(sha) => return Ok(sha),
            Err(Failure::Fatal(e)) => return Err(e),
            Err(Failure::Retry(why)) => {
                if let Some(delay) = policy.retry_delays.get(attempt - 1) {
                    out.info(format_args!(
                        "Download failed ({why}), retrying in {} (attempt {} of {attempts})",
                        human(*delay),
                        attempt + 1
                    ));
                    std::thread::sleep(*delay);
                }
                reason = why;
            }
        }
    }
    Err(InstallError::Download {
        uri: redact(uri),
        attempts,
        reason,
    })
}

fn attempt_once(
    agent: &Agent,
    uri: &str,
    tmp: &mut tempfile::NamedTempFile,
) -> Result<String, Failure> {
    let path = tmp.path().to_owned();
    let local = |source| Failure::Fatal(FileError::writing(&path)(source).into());
    let file = tmp.as_file_mut();
    // Each attempt starts from an empty file: a partial body from a failed one must not stay.
    file.set_len(0).map_err(local)?;
    file.rewind().map_err(local)?;
    let mut response = agent
        .get(uri)
        .call()
        .map_err(|e| Failure::Retry(e.to_string()))?;
    let status = response.status();
    if status.as_u16() >= 400 {
        return Err(Failure::Retry(format!(
            "HTTP {}{}",
            status.as_u16(),
            status
                .canonical_reason()
                .map(|r| format!(" {r}"))
                .unwrap_or_default()
        )));
    }
    let mut body = response
        .body_mut()
        .with_config()
        .limit(MAX_DOWNLOAD_BYTES)
        .reader();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Failure::Retry(format!("reading the response: {e}"))),
        };
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n]).map_err(local)?;
    }
    file.flush().map_err(local)?;
    Ok(hex::encode(hasher.finalize()))
}

/// A ureq agent that uses only what `env` says: aws-lc-rs (the one provider in our graph),
/// trust from `SSL_CERT_FILE` or the system bundle, the proxy variables, explicit timeouts.
fn agent<W: Write>(
    uri: &str,
    policy: &Policy,
    env: &Env,
    out: &mut Output<W>,
) -> Result<Agent, InstallError> {
    let https = scheme(uri).eq_ignore_ascii_case("https");
    let roots = trust_roots(env, https)?;
    let proxy = proxy_for(uri, env)?;
    if let Some((var, value)) = &proxy {
        out.debug(format_args!("using the proxy {} from {var}", redact(value)));
    }
    let tls = TlsConfig::builder()
        .provider(TlsProvider::Rustls)
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .root_certs(roots)
        .build();
    let proxy = match proxy {
        Some((var, value)) => Some(Proxy::new(&value).map_err(|_| InstallError::Proxy {
            var: var.to_owned(),
            value: redact(&value),
        })?),
        None => None,
    };
    Ok(Agent::config_builder()
        .tls_config(tls)
        // Set explicitly: ureq's default reads the process environment behind our back.
        .proxy(proxy)
        // Statuses are retried by us, with the status as the reason.
        .http_status_as_error(false)
        // A .tgz must arrive byte for byte: no transparent gzip decoding to break the sha256.
        .accept_encoding("identity")
        .user_agent(concat!("tls-sidecar-buildpack/", env!("CARGO_PKG_VERSION")))
        .timeout_connect(Some(policy.connect_timeout))
        .timeout_global(Some(policy.attempt_timeout))
        .build()
        .new_agent())
}

fn trust_roots(env: &Env, required: bool) -> Result<RootCerts, InstallError> {
    let path = PathBuf::from(
        env.get("SSL_CERT_FILE")
            .filter(|v| !v.is_empty())
            .map_or(SYSTEM_CA_BUNDLE, String::as_str),
    );
    let fail = |reason: String| InstallError::TrustStore {
        path: path.clone(),
        reason,
    };
    let pem = match fs::read(&path) {
        Ok(p) => p,
        // Plain http needs no trust anchors (an https redirect then fails verification).
        Err(_) if !required => return Ok(RootCerts::new_with_certs(&[])),
        Err(e) => return Err(fail(e.to_string())),
    };
    let certs: Vec<_> = ureq::tls::parse_pem(&pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect();
    if certs.is_empty() && required {
        return Err(fail("it contains no PEM certificate".into()));
    }
    Ok(RootCerts::new_with_certs(&certs))
}

/// The proxy for `uri` from `env`, with the variable it came from: `https_proxy`/`HTTPS_PROXY`
/// for https, `http_proxy`/`HTTP_PROXY` for http, unless `no_proxy`/`NO_PROXY` lists the host.
/// Loopback is never proxied (as in Go's `http.ProxyFromEnvironment`, which libbuildpack uses).
pub fn proxy_for(uri: &str, env: &Env) -> Result<Option<(&'static str, String)>, InstallError> {
    let vars: &[&'static str] = if scheme(uri).eq_ignore_ascii_case("https") {
        &["https_proxy", "HTTPS_PROXY"]
    } else {
        &["http_proxy", "HTTP_PROXY"]
    };
    let Some((var, value)) = vars.iter().find_map(|v| {
        env.get(*v)
            .filter(|x| !x.trim().is_empty())
            .map(|x| (*v, x.trim().to_owned()))
    }) else {
        return Ok(None);
    };
    let host = host(uri).to_ascii_lowercase();
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    let no_proxy = ["no_proxy", "NO_PROXY"]
        .iter()
        .find_map(|v| env.get(*v))
        .map_or("", String::as_str);
    if loopback || bypasses(&host, no_proxy) {
        return Ok(None);
    }
    Ok(Some((var, value)))
}

/// `no_proxy` entries: `*` (all), `host`, `.domain`, `*.domain`; a bare domain also matches
/// its subdomains (curl and Go agree on that); `:port` suffixes are ignored.
fn bypasses(host: &str, no_proxy: &str) -> bool {
    no_proxy
        .split(',')
        .map(|e| e.trim().to_ascii_lowercase())
        .filter(|e| !e.is_empty())
        .any(|entry| {
            if entry == "*" {
                return true;
            }
            let entry = match entry.rsplit_once(':') {
                Some((h, port))
                    if !h.ends_with(']')
                        && !h.contains(':')
                        && port.bytes().all(|b| b.is_ascii_digit()) =>
                {
                    h.to_owned()
                }
                _ => entry,
            };
            let domain = entry.trim_start_matches('*').trim_start_matches('.');
            host == domain || host.ends_with(&format!(".{domain}"))
        })
}

fn scheme(uri: &str) -> &str {
    uri.split_once("://").map_or("", |(s, _)| s)
}

/// The host of `scheme://[userinfo@]host[:port]/...` (brackets kept off IPv6 literals).
fn host(uri: &str) -> &str {
    let rest = uri.split_once("://").map_or(uri, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if let Some(v6) = hostport.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6);
    }
    hostport.split(':').next().unwrap_or(hostport)
}

/// `scheme://user:pass@host/...` → `scheme://-redacted-:-redacted-@host/...` (libbuildpack's
/// `filterURI`), so credentials in a manifest or proxy URL never reach the staging log.
pub fn redact(uri: &str) -> String {
    let (prefix, rest) = match uri.split_once("://") {
        Some((s, r)) => (format!("{s}://"), r),
        None => (String::new(), uri),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rsplit_once('@') {
        Some((_, hostport)) => format!("{prefix}-redacted-:-redacted-@{hostport}{}", &rest[end..]),
        None => uri.to_owned(),
    }
}

fn human(d: Duration) -> String {
    if d.as_millis().is_multiple_of(1000) {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_env as env;

    #[test]
    fn credentials_in_urls_are_redacted() {
        assert_eq!(
            redact("https://u:p@h.example/x.tgz"),
            "https://-redacted-:-redacted-@h.example/x.tgz"
        );
        assert_eq!(
            redact("https://h.example/a@b.tgz"),
            "https://h.example/a@b.tgz"
        );
        assert_eq!(redact("http://proxy:3128"), "http://proxy:3128");
    }

    #[test]
    fn the_proxy_follows_the_scheme_and_no_proxy() {
        let e = env(&[
            ("https_proxy", "http://p:3128"),
            ("HTTP_PROXY", "http://q:3128"),
            ("no_proxy", "internal.example,.corp:443"),
        ]);
        assert_eq!(
            proxy_for("https://github.com/x.tgz", &e).unwrap(),
            Some(("https_proxy", "http://p:3128".into()))
        );
        assert_eq!(
            proxy_for("http://github.com/x.tgz", &e).unwrap(),
            Some(("HTTP_PROXY", "http://q:3128".into()))
        );
        assert_eq!(
            proxy_for("https://a.internal.example/x.tgz", &e).unwrap(),
            None
        );
        assert_eq!(
            proxy_for("https://internal.example/x.tgz", &e).unwrap(),
            None
        );
        assert_eq!(proxy_for("https://x.corp/x.tgz", &e).unwrap(), None);
        assert_eq!(proxy_for("https://127.0.0.1:8080/x.tgz", &e).unwrap(), None);
        assert_eq!(
            proxy_for("https://github.com/x.tgz", &Env::new()).unwrap(),
            None
        );
    }

    #[test]
    fn hosts_are_found_behind_userinfo_ports_and_ipv6_brackets() {
        assert_eq!(host("https://u:p@h.example:8443/x"), "h.example");
        assert_eq!(host("http://[::1]:8080/x"), "::1");
        assert_eq!(host("http://h?x=1"), "h");
    }

    #[test]
    fn the_cache_path_is_libbuildpacks_sha256_of_the_uri() {
        let p = cache_path(
            Path::new("/c"),
            "https://h/tls-sidecar-1.0.0-linux-x64.tgz?sig=1",
        );
        assert!(p.starts_with("/c/dependencies"));
        assert_eq!(p.file_name().unwrap(), "tls-sidecar-1.0.0-linux-x64.tgz");
        assert_eq!(p.parent().unwrap().file_name().unwrap().len(), 64);
    }

    #[test]
    fn https_without_a_readable_ca_bundle_fails_with_the_path() {
        let e = trust_roots(&env(&[("SSL_CERT_FILE", "/no/such/bundle.pem")]), true).unwrap_err();
        assert!(
            matches!(e, InstallError::TrustStore { ref path, .. } if path == Path::new("/no/such/bundle.pem"))
        );
        assert!(trust_roots(&env(&[("SSL_CERT_FILE", "/no/such/bundle.pem")]), false).is_ok());
    }
}
