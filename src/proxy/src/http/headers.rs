//! Header rewriting between the client and the app.

use super::conn::Conn;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub(crate) const X_FORWARDED_CLIENT_CERT: HeaderName =
    HeaderName::from_static("x-forwarded-client-cert");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Rewrites a client request's headers for the app: hop-by-hop headers out (`Upgrade` and
/// `Connection: upgrade` stay when `upgrade`), `Host` from the request target, then the
/// sanitize-set of `X-Forwarded-Client-Cert` and the `X-Forwarded-*` headers. `authority` is
/// the request's `:authority` (HTTP/2) or absolute-form target, if any.
pub(crate) fn to_app(
    headers: &mut HeaderMap,
    authority: Option<&http::uri::Authority>,
    conn: &Conn,
    upgrade: bool,
) {
    strip_hop_by_hop(headers, upgrade);

    // RFC 9112 §3.2.2 (absolute-form) and RFC 9113 §8.3.1 (:authority): the target's authority
    // is the Host.
    if let Some(value) = authority.and_then(|a| HeaderValue::from_str(a.as_str()).ok()) {
        headers.insert(header::HOST, value);
    } else if !headers.contains_key(header::HOST) {
        headers.insert(header::HOST, conn.shared.authority_header.clone());
    }
    if conn.h2 {
        join_cookies(headers);
    }

    // Sanitize, then set: whatever the client sent never reaches the app.
    headers.remove(X_FORWARDED_CLIENT_CERT);
    if let Some(xfcc) = &conn.xfcc {
        headers.insert(X_FORWARDED_CLIENT_CERT, xfcc.clone());
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
    append_forwarded_for(headers, &conn.peer_ip);
}

/// Rewrites the app's response headers for the client. `upgrade`: a `101` being relayed.
pub(crate) fn to_client(headers: &mut HeaderMap, upgrade: bool) {
    strip_hop_by_hop(headers, upgrade);
}

/// Removes the hop-by-hop headers of RFC 9110 §7.6.1: `Connection` and every header it names,
/// `Keep-Alive`, `Proxy-Connection`, `Transfer-Encoding` (hyper frames each hop itself),
/// `Upgrade` (unless `keep_upgrade`, which also sets `Connection: upgrade`), and `TE` unless it
/// is `trailers`, the one value that means something end to end.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
            .collect();
        for name in named {
            // Host is never hop-by-hop; Upgrade and TE are decided below.
            let kept = name == header::HOST || name == header::UPGRADE || name == header::TE;
            if !kept {
                headers.remove(&name);
            }
        }
        headers.remove(header::CONNECTION);
    }
    headers.remove(KEEP_ALIVE);
    headers.remove(PROXY_CONNECTION);
    headers.remove(header::TRANSFER_ENCODING);
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
    if headers.contains_key(header::TE) {
        let trailers = headers
            .get_all(header::TE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| {
                t.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .eq_ignore_ascii_case("trailers")
            });
        if trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        } else {
            headers.remove(header::TE);
        }
    }
}

/// An HTTP/1.1 request that asks to switch protocols (`Connection: upgrade` + `Upgrade`).
pub(crate) fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Appends the peer to `X-Forwarded-For`, folding several incoming fields into one.
fn append_forwarded_for(headers: &mut HeaderMap, peer_ip: &HeaderValue) {
    let mut existing = headers.get_all(&X_FORWARDED_FOR).iter().peekable();
    if existing.peek().is_none() {
        headers.insert(X_FORWARDED_FOR, peer_ip.clone());
        return;
    }
    let mut joined = Vec::with_capacity(64);
    for value in existing {
        let value = value.as_bytes().trim_ascii();
        if !value.is_empty() {
            joined.extend_from_slice(value);
            joined.extend_from_slice(b", ");
        }
    }
    joined.extend_from_slice(peer_ip.as_bytes());
    match HeaderValue::from_bytes(&joined) {
        Ok(value) => headers.insert(X_FORWARDED_FOR, value),
        // Unreachable: built from valid values and separators.
        Err(_) => headers.insert(X_FORWARDED_FOR, peer_ip.clone()),
    };
}

/// HTTP/2 may split `Cookie` into several fields; HTTP/1.1 wants one, joined by `"; "`
/// (RFC 9113 §8.2.3).
fn join_cookies(headers: &mut HeaderMap) {
    let mut cookies = headers.get_all(header::COOKIE).iter();
    if cookies.next().is_none() || cookies.next().is_none() {
        return;
    }
    let mut joined = Vec::with_capacity(256);
    for (i, value) in headers.get_all(header::COOKIE).iter().enumerate() {
        if i > 0 {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(value.as_bytes());
    }
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn names(h: &HeaderMap) -> Vec<String> {
        let mut n: Vec<String> = h.keys().map(|k| k.as_str().to_owned()).collect();
        n.sort();
        n
    }

    #[test]
    fn connection_and_the_headers_it_names_are_removed_but_host_is_not() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret"),
            ("connection", "host"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("host", "a"),
            ("accept", "*/*"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(names(&h), ["accept", "host"]);
    }

    #[test]
    fn an_upgrade_keeps_upgrade_and_says_connection_upgrade() {
        let mut h = map(&[
            ("connection", "Upgrade, keep-alive"),
            ("upgrade", "websocket"),
        ]);
        assert!(wants_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
        assert!(!wants_upgrade(&map(&[("upgrade", "websocket")])));
    }

    #[test]
    fn te_survives_only_as_trailers() {
        let mut h = map(&[("te", "gzip, trailers;q=1"), ("connection", "TE")]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h["te"], "trailers");
        let mut h = map(&[("te", "gzip")]);
        strip_hop_by_hop(&mut h, false);
        assert!(!h.contains_key("te"));
    }

    #[test]
    fn forwarded_for_folds_existing_fields_and_appends_the_peer() {
        let peer = HeaderValue::from_static("203.0.113.7");
        let mut h = map(&[
            ("x-forwarded-for", "198.51.100.1"),
            ("x-forwarded-for", " 198.51.100.2 "),
        ]);
        append_forwarded_for(&mut h, &peer);
        assert_eq!(
            h.get_all("x-forwarded-for").iter().collect::<Vec<_>>(),
            ["198.51.100.1, 198.51.100.2, 203.0.113.7"]
        );
        let mut h = HeaderMap::new();
        append_forwarded_for(&mut h, &peer);
        assert_eq!(h["x-forwarded-for"], "203.0.113.7");
    }

    #[test]
    fn split_http2_cookies_become_one_field() {
        let mut h = map(&[("cookie", "a=1"), ("cookie", "b=2")]);
        join_cookies(&mut h);
        assert_eq!(h.get_all("cookie").iter().collect::<Vec<_>>(), ["a=1; b=2"]);
    }
}
