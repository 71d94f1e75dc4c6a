//! Scalar values of the config contract. Each parses from the string a user writes and prints
//! back to the same form, so a staged file reads exactly like an app's file.

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Implements `Deserialize`/`Serialize` through `FromStr`/`Display`, so a bad value reports the
/// value and what is allowed, and serde_yaml_ng adds the field path, line and column.
macro_rules! string_serde {
    ($ty:ty) => {
        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = $crate::value::ScalarString::deserialize(d)?;
                raw.0.parse().map_err(serde::de::Error::custom)
            }
        }
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    };
}
pub(crate) use string_serde;

/// Accepts a YAML string or a bare number/bool and hands its text to `FromStr`.
pub(crate) struct ScalarString(pub(crate) String);

impl<'de> Deserialize<'de> for ScalarString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = ScalarString;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ScalarString, E> {
                Ok(ScalarString(v.to_owned()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ScalarString, E> {
                Ok(ScalarString(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ScalarString, E> {
                Ok(ScalarString(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<ScalarString, E> {
                Ok(ScalarString(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<ScalarString, E> {
                Ok(ScalarString(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// A lower-cased Cloud Foundry GUID (`8-4-4-4-12` hex digits).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Guid(String);

impl Guid {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Guid {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let groups: Vec<&str> = s.split('-').collect();
        let shape_ok = groups.len() == 5
            && groups
                .iter()
                .zip([8, 4, 4, 4, 12])
                .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()));
        if shape_ok {
            Ok(Guid(s.to_ascii_lowercase()))
        } else {
            Err(format!(
                "\"{s}\" is not a GUID (expected 8-4-4-4-12 hex digits, as printed by `cf app --guid`)"
            ))
        }
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.0)
    }
}
string_serde!(Guid);

/// Who may call a listener (`allow`) or who must answer an egress (`expect`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    App(Guid),
    Space(Guid),
    Org(Guid),
    /// The space of this app, resolved from `VCAP_APPLICATION` at start.
    SameSpace,
    /// The org of this app, resolved from `VCAP_APPLICATION` at start.
    SameOrg,
    /// Any verified instance identity.
    Any,
    /// Standard hostname verification (egress only).
    Dns(String),
}

impl Selector {
    pub const ALLOWED: &'static str = "cf:app:<guid>, cf:space:<guid>, cf:org:<guid>, cf:same-space, cf:same-org, cf:any, dns:<name>";
}

impl FromStr for Selector {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let guid = |g: &str| {
            g.parse::<Guid>()
                .map_err(|e| format!("in selector \"{s}\": {e}"))
        };
        match s.trim() {
            "cf:same-space" => Ok(Selector::SameSpace),
            "cf:same-org" => Ok(Selector::SameOrg),
            "cf:any" => Ok(Selector::Any),
            t => {
                if let Some(g) = t.strip_prefix("cf:app:") {
                    Ok(Selector::App(guid(g)?))
                } else if let Some(g) = t.strip_prefix("cf:space:") {
                    Ok(Selector::Space(guid(g)?))
                } else if let Some(g) = t.strip_prefix("cf:org:") {
                    Ok(Selector::Org(guid(g)?))
                } else if let Some(name) = t.strip_prefix("dns:") {
                    if valid_dns_name(name) {
                        Ok(Selector::Dns(name.to_ascii_lowercase()))
                    } else {
                        Err(format!("\"{name}\" in selector \"{s}\" is not a DNS name"))
                    }
                } else {
                    Err(format!(
                        "\"{s}\" is not a selector (expected one of {})",
                        Selector::ALLOWED
                    ))
                }
            }
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Selector::App(g) => write!(f, "cf:app:{g}"),
            Selector::Space(g) => write!(f, "cf:space:{g}"),
            Selector::Org(g) => write!(f, "cf:org:{g}"),
            Selector::SameSpace => f.write_str("cf:same-space"),
            Selector::SameOrg => f.write_str("cf:same-org"),
            Selector::Any => f.write_str("cf:any"),
            Selector::Dns(n) => write!(f, "dns:{n}"),
        }
    }
}
string_serde!(Selector);

pub(crate) fn valid_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'*')
        })
}

/// Generates a string-valued enum with `FromStr`, `Display`, serde and an `ALLOWED` list.
macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name { $($(#[$vmeta])* $variant),+ }
        impl $name {
            pub const ALLOWED: &'static [&'static str] = &[$($text),+];
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }
        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s.trim().to_ascii_lowercase().as_str() {
                    $($text => Ok($name::$variant),)+
                    _ => Err(format!("\"{s}\" is not allowed (expected one of: {})", Self::ALLOWED.join(", "))),
                }
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result { f.write_str(self.as_str()) }
        }
        string_serde!($name);
    };
}

string_enum!(
    /// How a listener forwards: raw bytes, or parsed HTTP (XFCC, HTTP/2, 403 on denial).
    Mode { Tcp => "tcp", Http => "http" }
);
string_enum!(
    /// Whether a listener asks for and verifies a client certificate.
    ClientAuth { None => "none", Optional => "optional", Required => "required" }
);
impl ClientAuth {
    /// What `client_auth` is when the file leaves it out: access rules need a certificate to
    /// match against, so any `allow` or request rule implies `required`.
    pub(crate) fn implied_by(access_rules: bool) -> ClientAuth {
        if access_rules {
            ClientAuth::Required
        } else {
            ClientAuth::None
        }
    }
}
string_enum!(
    /// How the caller's certificate is passed to the app in `X-Forwarded-Client-Cert`.
    Xfcc { Envoy => "envoy", Raw => "raw", Off => "off" }
);
string_enum!(
    /// Where the serving (and egress client) certificate comes from.
    CertificateSource { Instance => "instance", Files => "files", Service => "service", Minted => "minted" }
);
string_enum!(
    /// Log line format on stdout.
    LogFormat { Logfmt => "logfmt", Json => "json" }
);
string_enum!(
    /// Whether the sidecar serves the route port (`$PORT`) in front of the app.
    Fronting {
        /// On whenever a listener tells the app who called (http mode with `xfcc` set).
        Auto => "auto",
        On => "on",
        Off => "off"
    }
);

/// `host:port`, where host is an IP address or a DNS name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl HostPort {
    pub fn is_loopback(&self) -> bool {
        match self.host.parse::<std::net::IpAddr>() {
            Ok(ip) => ip.is_loopback(),
            Err(_) => self.host.eq_ignore_ascii_case("localhost"),
        }
    }
}

impl FromStr for HostPort {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!("\"{s}\" is not host:port (e.g. 127.0.0.1:8080 or backend.apps.internal:8443)")
        };
        let (host, port) = s.trim().rsplit_once(':').ok_or_else(bad)?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port: u16 = port.parse().map_err(|_| bad())?;
        let host_ok = host.parse::<std::net::IpAddr>().is_ok() || valid_dns_name(host);
        if !host_ok || port == 0 {
            return Err(bad());
        }
        Ok(HostPort {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}
string_serde!(HostPort);

/// A `hosts` entry of an `egress_proxy` target: a DNS name, or `*.` and a domain, which covers
/// every name below the domain at any depth (`*.apps.internal` covers
/// `backend.apps.internal` and the instance route `0.backend.apps.internal`). Lower case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    /// The domain, without the `*.`.
    Below(String),
}

impl HostPattern {
    /// Whether `host` (any case, a trailing dot ignored) is this name or below this domain.
    pub fn matches(&self, host: &str) -> bool {
        let host = host.strip_suffix('.').unwrap_or(host);
        match self {
            HostPattern::Exact(name) => host.eq_ignore_ascii_case(name),
            HostPattern::Below(domain) => host
                .len()
                .checked_sub(domain.len() + 1)
                .filter(|&dot| dot > 0 && host.as_bytes()[dot] == b'.')
                .is_some_and(|dot| host[dot + 1..].eq_ignore_ascii_case(domain)),
        }
    }
}

impl FromStr for HostPattern {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let lower = s.trim().to_ascii_lowercase();
        let (name, pattern): (&str, fn(String) -> HostPattern) = match lower.strip_prefix("*.") {
            Some(domain) => (domain, HostPattern::Below),
            None => (lower.as_str(), HostPattern::Exact),
        };
        if name.contains('*') || !valid_dns_name(name) {
            return Err(format!(
                "\"{s}\" is not a host name or *.<domain> (e.g. backend.apps.internal or *.apps.internal)"
            ));
        }
        Ok(pattern(name.to_owned()))
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            HostPattern::Exact(name) => f.write_str(name),
            HostPattern::Below(domain) => write!(f, "*.{domain}"),
        }
    }
}
string_serde!(HostPattern);

/// A duration written as `500ms`, `10s`, `5m` or `24h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Millis(pub u64);

impl Millis {
    pub fn duration(self) -> Duration {
        Duration::from_millis(self.0)
    }
    pub const fn secs(s: u64) -> Self {
        Millis(s * 1000)
    }
}

impl FromStr for Millis {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("\"{s}\" is not a duration (e.g. 500ms, 10s, 5m, 24h)"))?;
        let factor = match unit.trim() {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => {
                return Err(format!(
                    "\"{s}\" is not a duration (use a unit: ms, s, m or h, e.g. 10s)"
                ));
            }
        };
        Ok(Millis(n.saturating_mul(factor)))
    }
}

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let ms = self.0;
        if ms != 0 && ms.is_multiple_of(3_600_000) {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms != 0 && ms.is_multiple_of(60_000) {
            write!(f, "{}m", ms / 60_000)
        } else if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}
string_serde!(Millis);

/// Memory in MB, written as `32`, `32M`, `32MB` or `1G` (as in a CF manifest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct MemoryMb(pub u32);

impl FromStr for MemoryMb {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim().to_ascii_uppercase();
        let bad = || format!("\"{s}\" is not a memory size (expected megabytes, e.g. 32 or 64M)");
        let (num, mult) = if let Some(n) = t.strip_suffix("GB").or_else(|| t.strip_suffix('G')) {
            (n, 1024)
        } else if let Some(n) = t.strip_suffix("MB").or_else(|| t.strip_suffix('M')) {
            (n, 1)
        } else {
            (t.as_str(), 1)
        };
        let n: u32 = num.trim().parse().map_err(|_| bad())?;
        let mb = n.checked_mul(mult).ok_or_else(bad)?;
        if mb == 0 {
            return Err(format!(
                "\"{s}\" is not allowed: the sidecar needs at least 1 MB"
            ));
        }
        Ok(MemoryMb(mb))
    }
}

impl fmt::Display for MemoryMb {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl<'de> Deserialize<'de> for MemoryMb {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        ScalarString::deserialize(d)?
            .0
            .parse()
            .map_err(de::Error::custom)
    }
}

impl Serialize for MemoryMb {
    // An integer, because launch.yml's `limits.memory` is a Go int and the staged file mirrors it.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_pattern_covers_its_name_or_every_name_below_its_domain() {
        let below: HostPattern = "*.Apps.Internal".parse().unwrap();
        assert_eq!(below.to_string(), "*.apps.internal");
        for yes in [
            "backend.apps.internal",
            "0.backend.apps.internal",
            "BACKEND.apps.internal.",
        ] {
            assert!(below.matches(yes), "{yes}");
        }
        for no in [
            "apps.internal",
            ".apps.internal",
            "backendapps.internal",
            "backend.apps.internal.evil.com",
            "evil-apps.internal",
        ] {
            assert!(!below.matches(no), "{no}");
        }
        let exact: HostPattern = "backend.apps.internal".parse().unwrap();
        assert!(
            exact.matches("Backend.apps.internal") && !exact.matches("x.backend.apps.internal")
        );
        for bad in ["*", "*.", "a.*.internal", "**.x", "back end", ""] {
            assert!(bad.parse::<HostPattern>().is_err(), "{bad}");
        }
    }

    #[test]
    fn selectors_round_trip_and_normalise_guid_case() {
        let s: Selector = "cf:app:ABCDEF01-2345-6789-abcd-ef0123456789"
            .parse()
            .unwrap();
        assert_eq!(s.to_string(), "cf:app:abcdef01-2345-6789-abcd-ef0123456789");
        for t in [
            "cf:same-space",
            "cf:same-org",
            "cf:any",
            "dns:backend.apps.internal",
        ] {
            assert_eq!(t.parse::<Selector>().unwrap().to_string(), t);
        }
    }

    #[test]
    fn a_selector_with_a_bad_guid_names_the_selector() {
        let e = "cf:space:1234".parse::<Selector>().unwrap_err();
        assert!(
            e.contains("cf:space:1234") && e.contains("8-4-4-4-12"),
            "{e}"
        );
        let e = "app:x".parse::<Selector>().unwrap_err();
        assert!(e.contains("cf:same-space"), "{e}");
    }

    #[test]
    fn durations_parse_units_and_print_the_largest_whole_unit() {
        assert_eq!("500ms".parse::<Millis>().unwrap(), Millis(500));
        assert_eq!("10s".parse::<Millis>().unwrap().to_string(), "10s");
        assert_eq!("300s".parse::<Millis>().unwrap().to_string(), "5m");
        assert_eq!("24h".parse::<Millis>().unwrap(), Millis(86_400_000));
        assert!("10".parse::<Millis>().unwrap_err().contains("unit"));
        assert!("ten seconds".parse::<Millis>().is_err());
    }

    #[test]
    fn memory_accepts_manifest_units() {
        assert_eq!("32".parse::<MemoryMb>().unwrap(), MemoryMb(32));
        assert_eq!("64M".parse::<MemoryMb>().unwrap(), MemoryMb(64));
        assert_eq!("64mb".parse::<MemoryMb>().unwrap(), MemoryMb(64));
        assert_eq!("1G".parse::<MemoryMb>().unwrap(), MemoryMb(1024));
        assert!("0".parse::<MemoryMb>().is_err());
        assert!("lots".parse::<MemoryMb>().is_err());
    }

    #[test]
    fn host_port_accepts_ips_and_names_and_rejects_port_zero() {
        assert_eq!("127.0.0.1:8080".parse::<HostPort>().unwrap().port, 8080);
        assert_eq!(
            "backend.apps.internal:8443"
                .parse::<HostPort>()
                .unwrap()
                .host,
            "backend.apps.internal"
        );
        assert_eq!(
            "[::1]:9000".parse::<HostPort>().unwrap().to_string(),
            "[::1]:9000"
        );
        assert!("127.0.0.1:0".parse::<HostPort>().is_err());
        assert!("127.0.0.1".parse::<HostPort>().is_err());
        assert!("bad host:80".parse::<HostPort>().is_err());
    }

    #[test]
    fn enums_list_what_is_allowed() {
        let e = "tcpp".parse::<Mode>().unwrap_err();
        assert_eq!(e, "\"tcpp\" is not allowed (expected one of: tcp, http)");
        assert_eq!(
            "REQUIRED".parse::<ClientAuth>().unwrap(),
            ClientAuth::Required
        );
    }
}
