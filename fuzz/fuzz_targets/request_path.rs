//! The request-rule path normal form (`normalize_path`): what it returns is absolute, has no
//! empty, `.` or `..` segment and no spelling servers disagree on, is its own normal form, and
//! picks the same rule as the raw path it came from, so a request sent in normal form and its
//! raw spelling are authorized alike.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tls_sidecar_config::{PathPattern, normalize_path};

/// Patterns of the shapes users write, the catch-all last.
const PATTERNS: [&str; 7] = [
    "/admin/*",
    "/admin",
    "/api/v1/*",
    "/health",
    "/a%20b/*",
    "/~user/*",
    "/*",
];

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(normal) = normalize_path(raw) else {
        return;
    };
    assert!(normal.starts_with('/'), "{raw:?} -> {normal:?}");
    let segments: Vec<&str> = normal[1..].split('/').collect();
    let last = segments.len() - 1;
    for (i, segment) in segments.iter().enumerate() {
        // Only the last segment may be empty: the trailing slash.
        assert!(
            !segment.is_empty() || i == last,
            "{raw:?} -> {normal:?}: empty segment"
        );
        let decoded = decode_all(segment);
        assert!(
            decoded != b"." && decoded != b"..",
            "{raw:?} -> {normal:?}: dot segment {segment:?}"
        );
        assert!(
            !decoded.contains(&b'/') && !decoded.contains(&b'\\') && !segment.contains(';'),
            "{raw:?} -> {normal:?}: {segment:?} hides a separator or a parameter"
        );
    }
    assert_eq!(
        normalize_path(&normal).as_deref(),
        Ok(normal.as_str()),
        "{raw:?}: the normal form is not its own normal form"
    );
    let patterns: Vec<PathPattern> = PATTERNS.iter().map(|p| p.parse().unwrap()).collect();
    let first = |path: &str| patterns.iter().position(|p| p.matches(path));
    let again = normalize_path(&normal).unwrap_or_default();
    assert_eq!(
        first(&normal),
        first(&again),
        "{raw:?} and its normal form {normal:?} pick different rules"
    );
    assert!(first(&normal).is_some(), "the catch-all matches every path");
});

/// Every `%XX` decoded (what an app that decodes once more would see).
fn decode_all(segment: &str) -> Vec<u8> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |j: usize| bytes.get(j).and_then(|b| (*b as char).to_digit(16));
        match (bytes[i], hex(i + 1), hex(i + 2)) {
            (b'%', Some(hi), Some(lo)) => {
                out.push(u8::try_from(hi * 16 + lo).unwrap_or_default());
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}
