//! Request paths in one normal form, so that a request rule cannot be bypassed by spelling a
//! path another way, and the path patterns of `rules` (http mode).
//!
//! The shapes behind Envoy's and Istio's path-normalisation CVEs (`..` and `%2e%2e`, `..%2f`,
//! `//`, `/./`, `..;/`, `%2f` inside a segment) each name, to some server, a path other than the
//! one a naive prefix match sees. [`normalize`] gives every such spelling one form, or refuses
//! it where servers disagree on what it means; the sidecar matches rules on that form and
//! forwards that form, so what was authorized is what the app routes.

use crate::value::string_serde;
use std::fmt;
use std::str::FromStr;

/// Why a request path has no normal form (the request gets `400`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// Not origin-form: it does not start with `/` (`*` of `OPTIONS *`, for one).
    NotAbsolute,
    /// `%` not followed by two hex digits.
    BadEscape,
    /// `%2F` or `%5C` inside a segment: one segment to some servers, two to others.
    EncodedSeparator,
    /// A literal `\`: a separator to Windows-style servers, a character to the rest.
    Backslash,
    /// An escaped control character (`%00`-`%1F`, `%7F`), which servers truncate or reject.
    EncodedControl,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            PathError::NotAbsolute => "the path does not start with /",
            PathError::BadEscape => "a % is not followed by two hex digits",
            PathError::EncodedSeparator => "an encoded / or \\ (%2F, %5C) inside a path segment",
            PathError::Backslash => "a \\ in the path",
            PathError::EncodedControl => "an encoded control character in the path",
        })
    }
}

/// The normal form of a request path (without its query), in three steps:
/// 1. Percent-escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded, once;
///    every other escape stays an escape, in upper case. `%2F`, `%5C`, a literal `\` and an
///    escaped control character are refused.
/// 2. Path parameters (`;` and what follows it in a segment) are removed: Tomcat and Jetty
///    drop them before routing, so `/..;/admin` is `/../admin` to them.
/// 3. Empty segments are merged (`//` is `/`), `.` segments removed, and `..` removes the
///    segment before it, never climbing above `/` (RFC 3986 §5.2.4). A path that ended in `/`,
///    `.` or `..` ends in `/`.
///
/// The result starts with `/`, has no empty, `.` or `..` segment, and is its own normal form.
pub fn normalize(path: &str) -> Result<String, PathError> {
    let rest = path.strip_prefix('/').ok_or(PathError::NotAbsolute)?;
    let mut segments: Vec<String> = Vec::new();
    let mut trailing_slash = false;
    for raw in rest.split('/') {
        let segment = decode(raw)?;
        match segment.as_str() {
            "" | "." => trailing_slash = true,
            ".." => {
                segments.pop();
                trailing_slash = true;
            }
            _ => {
                segments.push(segment);
                trailing_slash = false;
            }
        }
    }
    let mut normal = String::with_capacity(path.len());
    for segment in &segments {
        normal.push('/');
        normal.push_str(segment);
    }
    if trailing_slash || segments.is_empty() {
        normal.push('/');
    }
    Ok(normal)
}

/// One segment: escapes checked and unreserved ones decoded, parameters removed.
fn decode(raw: &str) -> Result<String, PathError> {
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b';' => break,
            b'\\' => return Err(PathError::Backslash),
            b'%' => {
                let hex = |b: Option<&u8>| b.and_then(|b| (*b as char).to_digit(16));
                let (Some(hi), Some(lo)) = (hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) else {
                    return Err(PathError::BadEscape);
                };
                let byte = u8::try_from(hi * 16 + lo).map_err(|_| PathError::BadEscape)?;
                match byte {
                    b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                    0..=0x1f | 0x7f => return Err(PathError::EncodedControl),
                    b if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') => {
                        out.push(char::from(b));
                    }
                    b => {
                        out.push('%');
                        out.push_str(&format!("{b:02X}"));
                    }
                }
                i += 3;
            }
            _ => {
                // Not ASCII: hyper refuses such a request target; kept whole for other callers.
                let ch = raw[i..].chars().next().unwrap_or_default();
                out.push(ch);
                i += ch.len_utf8().max(1);
            }
        }
    }
    Ok(out)
}

/// A `paths` entry of a request rule: an exact path, or a prefix ending in `/*` that matches
/// the prefix itself and everything below it. Written in normal form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathPattern {
    Exact(String),
    /// Without the `/*` (empty for `/*`).
    Prefix(String),
}

impl PathPattern {
    /// Whether a normalised request path matches.
    pub fn matches(&self, normal: &str) -> bool {
        match self {
            PathPattern::Exact(p) => normal == p,
            PathPattern::Prefix(p) => normal
                .strip_prefix(p.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/')),
        }
    }

    /// `/*`: every path.
    pub fn is_everything(&self) -> bool {
        matches!(self, PathPattern::Prefix(p) if p.is_empty())
    }
}

impl FromStr for PathPattern {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if !s.starts_with('/') {
            return Err(format!("\"{s}\" does not start with / (e.g. /api/*)"));
        }
        let (base, pattern) = match s.strip_suffix("/*") {
            Some(prefix) => (prefix, PathPattern::Prefix(prefix.to_owned())),
            None => (s, PathPattern::Exact(s.to_owned())),
        };
        if base.contains('*') {
            return Err(format!(
                "\"{s}\": * may only end a path, as /*, which matches everything below the prefix"
            ));
        }
        let written = if base.is_empty() { "/" } else { base };
        match normalize(written) {
            Ok(normal) if normal == written => Ok(pattern),
            Ok(normal) => Err(format!(
                "\"{s}\" is not in normal form, so no request would match it as written (write {})",
                match pattern {
                    PathPattern::Prefix(_) => format!("{}/*", normal.trim_end_matches('/')),
                    PathPattern::Exact(_) => normal,
                }
            )),
            Err(e) => Err(format!("\"{s}\": {e}")),
        }
    }
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            PathPattern::Exact(p) => f.write_str(p),
            PathPattern::Prefix(p) => write!(f, "{p}/*"),
        }
    }
}
string_serde!(PathPattern);

/// A `methods` entry: one of the methods of RFC 9110 and PATCH, in upper case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Method(String);

impl Method {
    pub const ALLOWED: [&'static str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT",
    ];

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if Method::ALLOWED.contains(&s) {
            Ok(Method(s.to_owned()))
        } else {
            Err(format!(
                "\"{s}\" is not an HTTP method (expected one of {}; methods are case-sensitive)",
                Method::ALLOWED.join(", ")
            ))
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.0)
    }
}
string_serde!(Method);

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> Result<String, PathError> {
        normalize(p)
    }

    #[test]
    fn dot_segments_in_every_spelling_resolve_and_never_climb_above_the_root() {
        for (raw, want) in [
            ("/public/../admin", "/admin"),
            ("/public/%2e%2e/admin", "/admin"),
            ("/public/%2E%2e/admin", "/admin"),
            ("/public/.%2e/admin", "/admin"),
            ("/./admin/./x", "/admin/x"),
            ("/%2e/admin", "/admin"),
            ("/../../admin", "/admin"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/..", "/"),
        ] {
            assert_eq!(n(raw).as_deref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn merged_slashes_and_path_parameters_give_the_path_a_java_server_routes() {
        for (raw, want) in [
            ("//admin", "/admin"),
            ("/api//x///y", "/api/x/y"),
            ("/public/..;/admin", "/admin"),
            ("/public/..;jsessionid=1/admin", "/admin"),
            ("/admin;x=y/users", "/admin/users"),
            ("/;/admin", "/admin"),
            ("/api/", "/api/"),
            ("/", "/"),
        ] {
            assert_eq!(n(raw).as_deref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn unreserved_escapes_are_decoded_and_others_kept_in_upper_case() {
        assert_eq!(n("/%61dmin").as_deref(), Ok("/admin"));
        assert_eq!(n("/a%7eb%2D").as_deref(), Ok("/a~b-"));
        assert_eq!(n("/a%20b%3b").as_deref(), Ok("/a%20b%3B"));
        // Decoded once only: %252e is an escaped "%2e", not a dot.
        assert_eq!(
            n("/x/%252e%252e/admin").as_deref(),
            Ok("/x/%252e%252e/admin")
        );
    }

    #[test]
    fn encoded_separators_backslashes_and_broken_escapes_are_refused() {
        for (raw, why) in [
            ("/public/..%2fadmin", PathError::EncodedSeparator),
            ("/public/..%2Fadmin", PathError::EncodedSeparator),
            ("/admin%2fusers", PathError::EncodedSeparator),
            ("/public/..%5cadmin", PathError::EncodedSeparator),
            ("/public\\..\\admin", PathError::Backslash),
            ("/admin%00.html", PathError::EncodedControl),
            ("/a%2", PathError::BadEscape),
            ("/a%zz", PathError::BadEscape),
            ("*", PathError::NotAbsolute),
            ("admin", PathError::NotAbsolute),
        ] {
            assert_eq!(n(raw), Err(why), "{raw}");
        }
    }

    #[test]
    fn the_normal_form_is_its_own_normal_form() {
        for raw in [
            "/a/./b/../c//d;e/",
            "/%2e%2e/x%41",
            "/",
            "/a/b/..",
            "/x/%252e",
        ] {
            let once = n(raw).unwrap();
            assert_eq!(n(&once).unwrap(), once, "{raw}");
        }
    }

    #[test]
    fn a_prefix_matches_itself_and_below_but_not_a_longer_name() {
        let p: PathPattern = "/api/*".parse().unwrap();
        for yes in ["/api", "/api/", "/api/v1/x"] {
            assert!(p.matches(yes), "{yes}");
        }
        for no in ["/apix", "/ap", "/", "/other/api"] {
            assert!(!p.matches(no), "{no}");
        }
        let exact: PathPattern = "/health".parse().unwrap();
        assert!(exact.matches("/health"));
        assert!(!exact.matches("/health/") && !exact.matches("/healthz"));
        let all: PathPattern = "/*".parse().unwrap();
        assert!(all.is_everything() && all.matches("/") && all.matches("/x/y"));
    }

    #[test]
    fn a_pattern_must_be_written_in_normal_form() {
        for (bad, says) in [
            ("api/*", "does not start with /"),
            ("/api/../admin/*", "write /admin/*"),
            ("/api//x", "write /api/x"),
            ("/a*b", "* may only end a path"),
            ("/api/*/x", "* may only end a path"),
            ("/%61pi", "write /api"),
            ("/a%2fb", "encoded /"),
        ] {
            let e = bad.parse::<PathPattern>().unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        assert_eq!(
            "/api/*".parse::<PathPattern>().unwrap().to_string(),
            "/api/*"
        );
    }

    #[test]
    fn methods_are_the_standard_ones_in_upper_case() {
        assert_eq!("PATCH".parse::<Method>().unwrap().as_str(), "PATCH");
        assert!(
            "get"
                .parse::<Method>()
                .unwrap_err()
                .contains("case-sensitive")
        );
        assert!("PURGE".parse::<Method>().is_err());
    }
}
