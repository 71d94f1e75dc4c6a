//! The packaged `manifest.yml` as supply reads it (`Manifest`, then the stack check and the
//! choice of dependency), plus what supply does with the chosen URI: the cache path, credential
//! redaction for the log and the proxy decision.
//!
//! Must never panic. A chosen dependency always has a well-formed sha256 and a tarball name; a
//! URI with credentials never reaches the log with them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;
use tls_sidecar_buildpack::fetch::{cache_path, proxy_for, redact};
use tls_sidecar_buildpack::manifest::{DEPENDENCY_NAME, Manifest, url_basename};
use tls_sidecar_config::Env;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(manifest) = serde_yaml_ng::from_str::<Manifest>(text) else {
        return;
    };
    let supported = manifest.supported_stacks();
    let mut stacks: Vec<Option<&str>> = vec![None, Some(""), Some("cflinuxfs4")];
    stacks.extend(supported.iter().map(|s| Some(s.as_str())));
    for stack in stacks {
        let _ = manifest.check_stack(stack);
        let Ok(dep) = manifest.dependency(DEPENDENCY_NAME, stack) else {
            continue;
        };
        assert_eq!(dep.name, DEPENDENCY_NAME);
        assert!(dep.sha256.len() == 64 && dep.sha256.bytes().all(|b| b.is_ascii_hexdigit()));
        let base = url_basename(dep.file.as_deref().unwrap_or(&dep.uri));
        assert!(
            base.ends_with(".tgz") || base.ends_with(".tar.gz"),
            "{base}"
        );

        let cached = cache_path(Path::new("/cache"), &dep.uri);
        assert!(
            cached.starts_with("/cache/dependencies"),
            "{}",
            cached.display()
        );

        let shown = redact(&dep.uri);
        if let Some((_, rest)) = dep.uri.split_once("://") {
            let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
            if let Some((userinfo, _)) = authority.rsplit_once('@') {
                assert!(
                    shown.contains("-redacted-:-redacted-@"),
                    "credentials {userinfo:?} shown: {shown}"
                );
            }
        }

        let env: Env = [
            (
                "https_proxy".to_owned(),
                "http://proxy.example:3128".to_owned(),
            ),
            ("http_proxy".to_owned(), dep.version.clone()),
            ("no_proxy".to_owned(), dep.cf_stacks.join(",")),
        ]
        .into();
        let _ = proxy_for(&dep.uri, &env);
    }
});
