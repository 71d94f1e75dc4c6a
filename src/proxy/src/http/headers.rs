//! Header rewriting between the client and the app.

use super::settings::Forwarding;
use bytes::BytesMut;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub(crate) const X_FORWARDED_CLIENT_CERT: HeaderName =
    HeaderName::from_static("x-forwarded-client-cert");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The identity header, as [`RESERVED`] spells names.
const IDENTITY: &str = "x-forwarded-client-cert";
/// `Proxy`, as [`RESERVED`] spells names.
const PROXY: &str = "proxy";

/// Request fields no caller may send the app, as lower case with `-`: the three the sidecar
/// sets itself; `Forwarded` and `X-Real-IP`, a caller's claims about the client address
/// that an app reading them after the sidecar would take as the sidecar's word; and `Proxy`,
/// which CGI-style servers turn into `HTTP_PROXY`, where HTTP clients look for their
/// outbound proxy (httpoxy, CVE-2016-5385): no HTTP request carries it legitimately.
const RESERVED: [&str; 6] = [
    IDENTITY,
    "x-forwarded-proto",
    "x-forwarded-for",
    "forwarded",
    "x-real-ip",
    PROXY,
];

/// `name` is, or reads as, one of [`RESERVED`] in an app server that maps header names to
/// variables: CGI, WSGI, Rack, PHP and many Go and Java adapters upper-case the name and turn
/// `-` into `_`, so `X-Forwarded-Client_Cert` and `x_forwarded_for` land in the same
/// `HTTP_X_FORWARDED_*` variable as the real name, and which one wins depends on the server.
pub(crate) fn is_reserved(name: &str) -> bool {
    RESERVED.iter().any(|reserved| reads_as(reserved, name))
}

/// Of [`RESERVED`], what the route port removes: there Gorouter wrote X-Forwarded-For/-Proto
/// (the client's address through its chain), so only the identity header and `Proxy` are the
/// sidecar's to police.
fn is_reserved_on_route(name: &str) -> bool {
    is_identity_header(name) || reads_as(PROXY, name)
}

/// `name` reads as `reserved` (lower case, `-`) in a CGI-style server.
fn reads_as(reserved: &str, name: &str) -> bool {
    reserved.len() == name.len()
        && reserved
            .bytes()
            .zip(name.bytes())
            .all(|(want, got)| want == got.to_ascii_lowercase() || (want == b'-' && got == b'_'))
}

/// Removes every field [`is_reserved`] names from `headers` (request headers or trailers).
pub(crate) fn strip_reserved(headers: &mut HeaderMap) {
    strip_matching(headers, is_reserved);
}

/// Removes every field whose name `matches`.
fn strip_matching(headers: &mut HeaderMap, matches: fn(&str) -> bool) {
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|name| matches(name.as_str()))
        .cloned()
        .collect();
    for name in names {
        headers.remove(name);
    }
}

/// Why a request's `Host` cannot be trusted, if it cannot: several `Host` fields (which one
/// the app and a router pick differs), or an HTTP/2 `Host` naming another authority than
/// `:authority` (RFC 9113 §8.3.1 lets a server treat that as malformed).
pub(crate) fn host_conflict(
    headers: &HeaderMap,
    authority: Option<&http::uri::Authority>,
    h2: bool,
) -> Option<&'static str> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return Some("the request has more than one Host header");
    }
    match (h2, first, authority) {
        (true, Some(host), Some(authority))
            if !host
                .as_bytes()
                .eq_ignore_ascii_case(authority.as_str().as_bytes()) =>
        {
            Some("the request's Host header differs from its :authority")
        }
        _ => None,
    }
}

/// What the app is told about one connection's caller, worked out once when the connection
/// starts.
pub(crate) struct CallerHeaders {
    pub(crate) forwarding: Forwarding,
    /// The `X-Forwarded-Client-Cert` value for this caller, if one is sent.
    pub(crate) xfcc: Option<HeaderValue>,
    /// The peer's IP for `X-Forwarded-For`.
    pub(crate) peer_ip: HeaderValue,
    /// On the route port: the peer is Diego's Envoy, whose `X-Forwarded-Client-Cert` is kept
    /// ([`Forwarding::RouteKeepingXfccFrom`]).
    pub(crate) from_envoy: bool,
    /// The `Host` of a request that names none: the app's address.
    pub(crate) default_host: HeaderValue,
}

/// Rewrites a client request's headers for the app: hop-by-hop headers out (`Upgrade` and
/// `Connection: upgrade` stay when `upgrade`), `Host` from the request target, then every
/// reserved field out under any spelling (and out of `Trailer`, so no trailer can bring one
/// back) and the sidecar's own `X-Forwarded-Client-Cert`, `X-Forwarded-Proto` and
/// `X-Forwarded-For` in. `authority` is the request's `:authority` (HTTP/2) or absolute-form
/// target, if any.
pub(crate) fn to_app(
    headers: &mut HeaderMap,
    authority: Option<&http::uri::Authority>,
    caller: &CallerHeaders,
    h2: bool,
    upgrade: bool,
) {
    strip_hop_by_hop(headers, upgrade);

    // One look at the names decides which of the steps below have anything to do: most
    // requests carry none of the names they remove, and each lookup by name costs a hash.
    let forwarding = caller.forwarding;
    let reserved = if forwarding == Forwarding::Tls {
        is_reserved
    } else {
        is_reserved_on_route
    };
    let (mut has_host, mut has_trailer, mut has_reserved) = (false, false, false);
    for name in headers.keys() {
        has_host |= name == header::HOST;
        has_trailer |= name == header::TRAILER;
        has_reserved |= reserved(name.as_str());
    }

    // RFC 9112 §3.2.2 (absolute-form) and RFC 9113 §8.3.1 (:authority): the target's authority
    // is the Host.
    if let Some(value) = authority.and_then(|a| HeaderValue::from_str(a.as_str()).ok()) {
        headers.insert(header::HOST, value);
    } else if !has_host {
        headers.insert(header::HOST, caller.default_host.clone());
    }
    if h2 {
        join_cookies(headers);
    }

    // Sanitize, then set: whatever the client sent never reaches the app.
    if has_trailer {
        strip_reserved_trailer_names(headers);
    }
    if forwarding != Forwarding::Tls {
        if !has_reserved {
            return;
        }
        // The route port: see [`is_reserved_on_route`].
        let kept: Vec<HeaderValue> = if caller.from_envoy {
            headers
                .get_all(X_FORWARDED_CLIENT_CERT)
                .iter()
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        strip_matching(headers, is_reserved_on_route);
        for value in kept {
            headers.append(X_FORWARDED_CLIENT_CERT, value);
        }
        return;
    }
    if has_reserved {
        strip_reserved(headers);
    }
    if let Some(xfcc) = &caller.xfcc {
        headers.insert(X_FORWARDED_CLIENT_CERT, xfcc.clone());
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
    // The TCP peer only: a caller's own X-Forwarded-For is a claim nobody checked.
    headers.insert(X_FORWARDED_FOR, caller.peer_ip.clone());
}

/// [`to_app`] for a head the fast HTTP/1.1 server side parsed itself ([`super::h1`]): writes
/// `fields` as the app should get them into `out`, each line ending in CRLF, names lower-cased
/// as hyper passes them on. Only a plain head comes here (see [`super::h1::parse`]): exactly
/// one `Host`, no `Trailer`, and nothing hop-by-hop but `Connection: keep-alive` or `close`,
/// which stays behind. Fields keep the client's order (a `HeaderMap` groups each name's
/// fields at its first place; nothing in HTTP reads meaning into the order across names).
pub(crate) fn write_to_app(
    out: &mut BytesMut,
    fields: &[httparse::Header<'_>],
    caller: &CallerHeaders,
) {
    let forwarding = caller.forwarding;
    let reserved = if forwarding == Forwarding::Tls {
        is_reserved
    } else {
        is_reserved_on_route
    };
    for field in fields {
        if reserved(field.name) || field.name.eq_ignore_ascii_case(header::CONNECTION.as_str()) {
            continue;
        }
        write_field(out, field.name.as_bytes(), field.value);
    }
    match forwarding {
        Forwarding::Tls => {
            if let Some(xfcc) = &caller.xfcc {
                write_field(out, X_FORWARDED_CLIENT_CERT.as_ref(), xfcc.as_bytes());
            }
            write_field(out, X_FORWARDED_PROTO.as_ref(), b"https");
            write_field(out, X_FORWARDED_FOR.as_ref(), caller.peer_ip.as_bytes());
        }
        // The route port: see [`is_reserved_on_route`]; Envoy's X-Forwarded-Client-Cert goes
        // last, as `to_app` appends it.
        Forwarding::RouteKeepingXfccFrom(_) if caller.from_envoy => {
            for field in fields
                .iter()
                .filter(|f| f.name.eq_ignore_ascii_case(IDENTITY))
            {
                write_field(out, IDENTITY.as_bytes(), field.value);
            }
        }
        Forwarding::Route | Forwarding::RouteKeepingXfccFrom(_) => {}
    }
}

/// `name: value` and CRLF, the name in lower case.
fn write_field(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.reserve(name.len() + value.len() + 4);
    let start = out.len();
    out.extend_from_slice(name);
    out[start..].make_ascii_lowercase();
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Drops reserved names from the `Trailer` fields, and the fields if nothing is left. hyper's
/// client sends only the trailers `Trailer` announces, so this alone keeps a forged trailer
/// from the app; the body wrapper ([`super::trailers`]) drops them from the trailers too.
fn strip_reserved_trailer_names(headers: &mut HeaderMap) {
    if !headers.contains_key(header::TRAILER) {
        return;
    }
    let kept: Vec<String> = trailer_names(headers)
        .filter(|name| !is_reserved(name))
        .map(str::to_owned)
        .collect();
    headers.remove(header::TRAILER);
    if !kept.is_empty()
        && let Ok(value) = HeaderValue::from_str(&kept.join(", "))
    {
        headers.insert(header::TRAILER, value);
    }
}

/// The field names the `Trailer` fields announce, trimmed, empty ones skipped.
pub(crate) fn trailer_names(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::TRAILER)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|name| !name.is_empty())
}

/// Whether a header name is `X-Forwarded-Client-Cert` as some app server will read it (see
/// [`is_reserved`]).
pub(crate) fn is_identity_header(name: &str) -> bool {
    reads_as(IDENTITY, name)
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
    // One look at the names, then lookups only for those present: most messages carry none
    // of them, or only `Connection: keep-alive`, and each lookup by name costs a hash.
    let (mut connection, mut others, mut upgrade, mut te) = (false, false, false, false);
    for name in headers.keys() {
        connection |= name == header::CONNECTION;
        others |=
            name == KEEP_ALIVE || name == PROXY_CONNECTION || name == header::TRANSFER_ENCODING;
        upgrade |= name == header::UPGRADE;
        te |= name == header::TE;
    }
    if !(connection || others || upgrade || te || keep_upgrade) {
        return;
    }
    if connection {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            // The common tokens name no field to remove (Keep-Alive goes below anyway).
            .filter(|token| {
                !token.eq_ignore_ascii_case("keep-alive") && !token.eq_ignore_ascii_case("close")
            })
            .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
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
    if others {
        headers.remove(KEEP_ALIVE);
        headers.remove(PROXY_CONNECTION);
        headers.remove(header::TRANSFER_ENCODING);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else if upgrade {
        headers.remove(header::UPGRADE);
    }
    if te {
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

/// An HTTP/1.1 request that asks to switch protocols (`Connection: upgrade` + `Upgrade`), to
/// anything but `h2c`: after an h2c upgrade the tunnel would carry HTTP/2 requests the sidecar
/// never parses, each with whatever X-Forwarded-Client-Cert the client likes ("h2c
/// smuggling"). Such a request is forwarded as a plain request, its Upgrade removed.
pub(crate) fn wants_upgrade(headers: &HeaderMap) -> bool {
    let h2c = headers
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("h2c"));
    !h2c && headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
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
    fn every_spelling_of_xfcc_is_an_identity_header() {
        for name in [
            "x-forwarded-client-cert",
            "X-Forwarded-Client-Cert",
            "x_forwarded_client_cert",
            "X-Forwarded-Client_Cert",
        ] {
            assert!(is_identity_header(name), "{name}");
        }
        for name in [
            "x-forwarded-client-certs",
            "x-forwarded-for",
            "xforwarded-client-cert",
        ] {
            assert!(!is_identity_header(name), "{name}");
        }
    }

    #[test]
    fn an_h2c_upgrade_is_not_an_upgrade() {
        assert!(!wants_upgrade(&map(&[
            ("connection", "Upgrade, HTTP2-Settings"),
            ("upgrade", "h2c")
        ])));
        assert!(!wants_upgrade(&map(&[
            ("connection", "upgrade"),
            ("upgrade", "websocket, H2C")
        ])));
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
    fn every_spelling_of_a_reserved_name_is_reserved_and_nothing_else_is() {
        for name in [
            "x-forwarded-client-cert",
            "X-Forwarded-Client_Cert",
            "x_forwarded_client_cert",
            "X-FORWARDED-PROTO",
            "x_forwarded-proto",
            "x-forwarded_for",
            "Forwarded",
            "x_real_ip",
            "Proxy",
        ] {
            assert!(is_reserved(name), "{name}");
        }
        for name in [
            "x-forwarded-client-certs",
            "x-forwarded-host",
            "x-forwarded",
            "xforwardedfor",
            "x-real-ipv6",
            "forwarde",
            "proxy-authorization",
            "proxy-connection",
        ] {
            assert!(!is_reserved(name), "{name}");
        }
    }

    #[test]
    fn the_trailer_field_loses_reserved_names_and_keeps_the_rest() {
        let mut h = map(&[
            ("trailer", "X-Forwarded-Client-Cert, x-checksum"),
            ("trailer", "x_forwarded_for"),
        ]);
        strip_reserved_trailer_names(&mut h);
        assert_eq!(
            h.get_all("trailer").iter().collect::<Vec<_>>(),
            ["x-checksum"]
        );
        let mut h = map(&[("trailer", "X-Forwarded-Proto")]);
        strip_reserved_trailer_names(&mut h);
        assert!(!h.contains_key("trailer"));
    }

    #[test]
    fn several_hosts_or_an_h2_host_other_than_the_authority_conflict() {
        let authority: http::uri::Authority = "app.apps.internal:8443".parse().unwrap();
        let two = map(&[("host", "a"), ("host", "b")]);
        assert!(host_conflict(&two, None, false).is_some());
        let one = map(&[("host", "APP.apps.internal:8443")]);
        assert_eq!(host_conflict(&one, Some(&authority), true), None);
        let other = map(&[("host", "admin.internal")]);
        assert!(host_conflict(&other, Some(&authority), true).is_some());
        assert_eq!(host_conflict(&other, None, true), None);
        assert_eq!(
            host_conflict(&HeaderMap::new(), Some(&authority), true),
            None
        );
    }

    #[test]
    fn split_http2_cookies_become_one_field() {
        let mut h = map(&[("cookie", "a=1"), ("cookie", "b=2")]);
        join_cookies(&mut h);
        assert_eq!(h.get_all("cookie").iter().collect::<Vec<_>>(), ["a=1; b=2"]);
    }
}
