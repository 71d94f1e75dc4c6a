//! Calling the sidecar as one [`Caller`] with real clients (`curl`, `openssl s_client`) and
//! checking what came back and what reached the app.

use super::{HELLO, app_connections, app_log, output_text, probe};
use tls_sidecar_integration::sidecar::{curl_on, s_client_send};
use tls_sidecar_integration::{Caller, Instance};

/// What a caller should get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Through to the app: its body.
    Served,
    /// http mode, verified but not allowed: `403` saying only `not allowed`; the app sees nothing.
    Forbidden,
    /// Refused in the TLS handshake with an alert; the app sees nothing, not even a connection.
    Refused,
}

/// `curl` as `caller` to `https://<guid>:<port>/?<probe>` inside the instance, and the checks
/// for `expect`.
pub fn curl_as(instance: &Instance, port: u16, caller: &Caller, expect: Expect) {
    let token = probe();
    let connections = app_connections(instance);
    let out = curl_on(
        instance,
        port,
        &format!("/?{token}"),
        caller.cert.as_ref(),
        &["--write-out", "\n%{http_code}"],
    )
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let what = format!(
        "curl to port {port} as {} (expected {expect:?})\n{}\n{}",
        caller.what,
        output_text(&out),
        instance.logs()
    );
    match expect {
        Expect::Served => {
            assert!(out.status.success(), "{what}");
            assert_eq!(stdout, format!("{HELLO}\n200"), "{what}");
            assert!(
                app_log(instance).contains(&token),
                "the app never saw it: {what}"
            );
        }
        Expect::Forbidden => {
            assert!(out.status.success(), "{what}");
            let (body, status) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
            assert_eq!(status, "403", "{what}");
            assert_forbidden_body(body, caller, &what);
            assert!(
                !app_log(instance).contains(&token),
                "reached the app: {what}"
            );
        }
        Expect::Refused => {
            assert!(!out.status.success(), "{what}");
            // TLS 1.3: the client has finished its side of the handshake and may already be
            // writing when the server's alert arrives; a client that fails on that write (e.g.
            // curl's exit 55 after the reset) never reads the alert. `s_client_as` reads first
            // and insists on the alert.
            let write_failed = out.status.code() == Some(55)
                && (stderr.contains("not connected") || stderr.contains("reset by peer"));
            assert!(
                stderr.contains("alert") || write_failed,
                "curl saw no TLS alert: {what}"
            );
            if write_failed {
                eprintln!("note: curl failed writing before it could read the alert: {stderr}");
            }
            assert!(!stdout.contains(HELLO), "{what}");
            assert!(
                !app_log(instance).contains(&token),
                "reached the app: {what}"
            );
            assert_eq!(
                app_connections(instance),
                connections,
                "the sidecar opened a connection to the app for a refused caller: {what}"
            );
        }
    }
}

/// `openssl s_client` as `caller` to `127.0.0.1:<port>`, sending one HTTP/1.0 request and
/// reading until the server closes, and the checks for `expect`.
pub fn s_client_as(instance: &Instance, port: u16, caller: &Caller, expect: Expect) {
    let token = probe();
    let connections = app_connections(instance);
    let request = format!(
        "GET /?{token} HTTP/1.0\r\nHost: {}\r\nConnection: close\r\n\r\n",
        instance.guid()
    );
    let (_ok, out) = s_client_send(
        instance,
        port,
        caller.cert.as_ref(),
        request.as_bytes(),
        &[],
    )
    .unwrap();
    let what = format!(
        "openssl s_client to port {port} as {} (expected {expect:?})\n{out}\n{}",
        caller.what,
        instance.logs()
    );
    match expect {
        Expect::Served => {
            assert!(out.contains(HELLO), "{what}");
            assert!(
                app_log(instance).contains(&token),
                "the app never saw it: {what}"
            );
        }
        Expect::Forbidden => {
            // s_client prints the response right after its session dump, on the same line.
            let status_line = out
                .find("HTTP/1.")
                .and_then(|i| out[i..].lines().next())
                .unwrap_or_else(|| panic!("no HTTP response: {what}"));
            assert!(status_line.contains(" 403"), "{what}");
            assert!(!out.contains(HELLO), "{what}");
            assert!(
                !app_log(instance).contains(&token),
                "reached the app: {what}"
            );
        }
        Expect::Refused => {
            assert!(out.contains("alert"), "s_client saw no TLS alert: {what}");
            assert!(!out.contains(HELLO), "{what}");
            assert!(
                !app_log(instance).contains(&token),
                "reached the app: {what}"
            );
            assert_eq!(
                app_connections(instance),
                connections,
                "the sidecar opened a connection to the app for a refused caller: {what}"
            );
        }
    }
}

/// Both clients.
pub fn call_as(instance: &Instance, port: u16, caller: &Caller, expect: Expect) {
    curl_as(instance, port, caller, expect);
    s_client_as(instance, port, caller, expect);
}

/// A 403 body: `not allowed` and nothing else; the reason (which names the selectors that
/// would have been let in) is only in the sidecar's log line.
pub fn assert_forbidden_body(body: &str, caller: &Caller, what: &str) {
    assert_eq!(body, "not allowed\n", "the 403 body: {what}");
    if let Some(app) = caller.app_guid() {
        assert!(
            !body.contains(app),
            "the 403 body names the caller's app: {what}"
        );
    }
}
