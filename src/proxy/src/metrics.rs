//! Counters for `/metrics`, in the Prometheus text exposition format (0.0.4).
//!
//! Plain atomics, no registry crate: the set of series is fixed at start (one block per
//! listener), updates are one relaxed atomic add on the hot path, and the format is small
//! enough that hand-rendering it is simpler than tracking a client library's breaking changes.
//! `prometheus-client` 0.26 was measured as the renderer and rendered slower (docs/DESIGN.md,
//! "Metrics and dates").

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

/// Why a TLS handshake did not complete. The label values are part of the metrics contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// `limits.handshake_timeout` passed first.
    Timeout,
    /// The peer sent something that is not TLS, an old version, or broke off.
    Protocol,
    /// This instance has no certificate loaded yet.
    NoCertificate,
    /// A client certificate was required and none was sent.
    ClientCertMissing,
    /// The client certificate did not verify (unknown CA, expired, not yet valid, bad usage).
    ClientCertInvalid,
    /// The verified caller is not in `allow` (tcp mode refuses in the handshake).
    Denied,
}

impl HandshakeFailure {
    pub const ALL: [HandshakeFailure; 6] = [
        HandshakeFailure::Timeout,
        HandshakeFailure::Protocol,
        HandshakeFailure::NoCertificate,
        HandshakeFailure::ClientCertMissing,
        HandshakeFailure::ClientCertInvalid,
        HandshakeFailure::Denied,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::Protocol => "protocol",
            HandshakeFailure::NoCertificate => "no_certificate",
            HandshakeFailure::ClientCertMissing => "client_cert_missing",
            HandshakeFailure::ClientCertInvalid => "client_cert_invalid",
            HandshakeFailure::Denied => "denied",
        }
    }
}

/// Upper bounds (seconds) of the request latency histogram buckets.
const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    /// Sum in microseconds, so it stays an integer atomic.
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_micros
            .fetch_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX), Relaxed);
    }
}

/// Per-listener series; `port` is the label (`route` for the route listener).
#[derive(Debug, Default)]
pub struct ListenerMetrics {
    pub port: u16,
    /// The plaintext route listener: labelled `listener="route"`, no handshake series.
    pub route: bool,
    pub active: AtomicI64,
    pub accepted: AtomicU64,
    /// Refused at once because `limits.max_connections` was reached.
    pub refused: AtomicU64,
    /// Closed before their TLS handshake finished to make room for a new connection at
    /// `max_connections` (oldest silent connection first).
    pub shed: AtomicU64,
    /// Connections cut because a response owed to the client made no progress for
    /// `limits.idle_timeout` (a client that stopped reading, or a zero HTTP/2 window).
    pub stalled: AtomicU64,
    /// http mode: requests answered `503` because the listener's cap on requests in flight to
    /// the app stayed reached.
    pub app_saturated: AtomicU64,
    handshake_failures: [AtomicU64; HandshakeFailure::ALL.len()],
    /// Callers refused by `allow` (in the handshake in tcp mode, with a 403 in http mode).
    pub denials: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    /// http mode: finished requests and their latency.
    pub requests: AtomicU64,
    pub latency: Histogram,
    /// Requests refused by the request rules: one counter per rule, then one for requests no
    /// rule matched. Empty without request rules.
    request_denials: Box<[AtomicU64]>,
}

impl ListenerMetrics {
    pub fn new(port: u16) -> Self {
        Self::with_request_rules(port, 0)
    }

    /// A listener with `rules` request rules (http mode).
    pub fn with_request_rules(port: u16, rules: usize) -> Self {
        let counters = if rules == 0 { 0 } else { rules + 1 };
        ListenerMetrics {
            port,
            request_denials: (0..counters).map(|_| AtomicU64::new(0)).collect(),
            ..Default::default()
        }
    }

    /// A request refused by rule `rule`, or (`None`) matched by no rule.
    pub fn request_denied(&self, rule: Option<usize>) {
        let last = self.request_denials.len().saturating_sub(1);
        if let Some(counter) = self.request_denials.get(rule.unwrap_or(last)) {
            counter.fetch_add(1, Relaxed);
        }
    }

    /// Requests refused by `rule` (`None`: by no rule matching).
    pub fn request_denials(&self, rule: Option<usize>) -> u64 {
        let last = self.request_denials.len().saturating_sub(1);
        self.request_denials
            .get(rule.unwrap_or(last))
            .map_or(0, |c| c.load(Relaxed))
    }

    /// The route listener's series, on `port`.
    pub fn route(port: u16) -> Self {
        ListenerMetrics {
            port,
            route: true,
            ..Default::default()
        }
    }

    /// The `listener` label value.
    pub fn label(&self) -> String {
        if self.route {
            "route".to_owned()
        } else {
            self.port.to_string()
        }
    }

    pub fn handshake_failed(&self, why: HandshakeFailure) {
        self.handshake_failures[why as usize].fetch_add(1, Relaxed);
    }

    pub fn handshake_failures(&self, why: HandshakeFailure) -> u64 {
        self.handshake_failures[why as usize].load(Relaxed)
    }
}

/// Why an egress connection did not reach its target. The label values are part of the
/// metrics contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EgressFailure {
    /// This instance has no certificate loaded yet, so it has nothing to prove itself with.
    NoCertificate,
    /// The target's name did not resolve.
    Resolve,
    /// No address of the target accepted a TCP connection within `limits.connect_timeout`.
    Connect,
    /// The TLS handshake did not finish within `limits.handshake_timeout`.
    Timeout,
    /// The server's certificate does not chain to a trusted CA.
    UnknownCa,
    /// The server's certificate is expired, not valid yet, malformed or not for servers.
    BadCertificate,
    /// The server's CF identity is not one `expect` names.
    Identity,
    /// `expect: [dns:...]` and the server's certificate does not name that host.
    Hostname,
    /// The server refused us (an alert: e.g. its `allow` rules do not name this app).
    Refused,
    /// Anything else in the handshake (protocol, version, broken connection).
    Handshake,
}

impl EgressFailure {
    pub const ALL: [EgressFailure; 10] = [
        EgressFailure::NoCertificate,
        EgressFailure::Resolve,
        EgressFailure::Connect,
        EgressFailure::Timeout,
        EgressFailure::UnknownCa,
        EgressFailure::BadCertificate,
        EgressFailure::Identity,
        EgressFailure::Hostname,
        EgressFailure::Refused,
        EgressFailure::Handshake,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EgressFailure::NoCertificate => "no_certificate",
            EgressFailure::Resolve => "resolve",
            EgressFailure::Connect => "connect",
            EgressFailure::Timeout => "timeout",
            EgressFailure::UnknownCa => "unknown_ca",
            EgressFailure::BadCertificate => "bad_certificate",
            EgressFailure::Identity => "identity",
            EgressFailure::Hostname => "hostname",
            EgressFailure::Refused => "refused",
            EgressFailure::Handshake => "handshake",
        }
    }
}

/// Per-egress series; `name` (the entry's `name`) is the label.
#[derive(Debug, Default)]
pub struct EgressMetrics {
    pub name: String,
    pub active: AtomicI64,
    /// Connections accepted from the app.
    pub accepted: AtomicU64,
    /// Refused at once because `limits.max_connections` was reached.
    pub refused: AtomicU64,
    failures: [AtomicU64; EgressFailure::ALL.len()],
    /// Plaintext bytes from the app to the target.
    pub bytes_sent: AtomicU64,
    /// Plaintext bytes from the target to the app.
    pub bytes_received: AtomicU64,
}

impl EgressMetrics {
    pub fn new(name: &str) -> Self {
        EgressMetrics {
            name: name.to_owned(),
            ..Default::default()
        }
    }

    pub fn failed(&self, why: EgressFailure) {
        self.failures[why as usize].fetch_add(1, Relaxed);
    }

    pub fn failures(&self, why: EgressFailure) -> u64 {
        self.failures[why as usize].load(Relaxed)
    }
}

#[derive(Debug, Default)]
pub struct Metrics {
    /// Shared with each listener's connection tasks (and its HTTP service).
    pub listeners: Vec<Arc<ListenerMetrics>>,
    /// One per `egress` entry, in config order.
    pub egress: Vec<Arc<EgressMetrics>>,
    /// notAfter of the serving certificate, Unix seconds; 0 until one is loaded.
    pub cert_not_after: AtomicI64,
    pub reloads_succeeded: AtomicU64,
    pub reloads_failed: AtomicU64,
}

impl Metrics {
    pub fn new(ports: impl IntoIterator<Item = u16>) -> Self {
        Self::with_request_rules(ports.into_iter().map(|port| (port, 0)))
    }

    /// Listeners as (port, number of request rules).
    pub fn with_request_rules(listeners: impl IntoIterator<Item = (u16, usize)>) -> Self {
        Metrics {
            listeners: listeners
                .into_iter()
                .map(|(port, rules)| Arc::new(ListenerMetrics::with_request_rules(port, rules)))
                .collect(),
            ..Default::default()
        }
    }

    /// Adds the route listener's series (last in `listeners`), when there is one.
    pub fn with_route(mut self, port: Option<u16>) -> Self {
        self.listeners
            .extend(port.map(|port| Arc::new(ListenerMetrics::route(port))));
        self
    }

    /// The route listener's series.
    pub fn route(&self) -> Option<&ListenerMetrics> {
        self.listeners.iter().find(|l| l.route).map(|l| l.as_ref())
    }

    /// Adds one block of egress series per name.
    pub fn with_egress<'a>(mut self, names: impl IntoIterator<Item = &'a str>) -> Self {
        self.egress = names
            .into_iter()
            .map(|name| Arc::new(EgressMetrics::new(name)))
            .collect();
        self
    }

    pub fn egress(&self, name: &str) -> Option<&EgressMetrics> {
        self.egress
            .iter()
            .find(|e| e.name == name)
            .map(|e| e.as_ref())
    }

    pub fn listener(&self, port: u16) -> Option<&ListenerMetrics> {
        self.listeners
            .iter()
            .find(|l| l.port == port && !l.route)
            .map(|l| l.as_ref())
    }

    /// The Prometheus text exposition of every series.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        for family in LISTENER_FAMILIES {
            family.header(&mut out);
            for l in &self.listeners {
                let _ = writeln!(
                    out,
                    "{}{{listener=\"{}\"}} {}",
                    family.name,
                    l.label(),
                    (family.value)(l)
                );
            }
        }
        let name = "tls_sidecar_handshake_failures_total";
        header(
            &mut out,
            name,
            "counter",
            "TLS handshakes that did not complete, by reason.",
        );
        for l in self.listeners.iter().filter(|l| !l.route) {
            for why in HandshakeFailure::ALL {
                let label = l.label();
                let _ = writeln!(
                    out,
                    "{name}{{listener=\"{label}\",reason=\"{}\"}} {}",
                    why.as_str(),
                    l.handshake_failures(why)
                );
            }
        }
        let name = "tls_sidecar_request_denials_total";
        header(
            &mut out,
            name,
            "counter",
            "Requests refused by the request rules (http mode), by rule index; rule=\"none\": no rule matched.",
        );
        for l in &self.listeners {
            let label = l.label();
            let last = l.request_denials.len().saturating_sub(1);
            for (i, count) in l.request_denials.iter().enumerate() {
                let rule = if i == last {
                    "none".to_owned()
                } else {
                    i.to_string()
                };
                let count = count.load(Relaxed);
                let _ = writeln!(
                    out,
                    "{name}{{listener=\"{label}\",rule=\"{rule}\"}} {count}"
                );
            }
        }
        self.render_latency(&mut out);
        let name = "tls_sidecar_certificate_expiry_timestamp_seconds";
        header(
            &mut out,
            name,
            "gauge",
            "notAfter of the serving certificate (Unix time); 0 until one is loaded.",
        );
        let _ = writeln!(out, "{name} {}", self.cert_not_after.load(Relaxed));
        let name = "tls_sidecar_certificate_reloads_total";
        header(&mut out, name, "counter", "Certificate reloads by result.");
        let _ = writeln!(
            out,
            "{name}{{result=\"success\"}} {}",
            self.reloads_succeeded.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "{name}{{result=\"failure\"}} {}",
            self.reloads_failed.load(Relaxed)
        );
        if !self.egress.is_empty() {
            self.render_egress(&mut out);
        }
        out
    }

    fn render_latency(&self, out: &mut String) {
        let name = "tls_sidecar_request_duration_seconds";
        header(
            out,
            name,
            "histogram",
            "HTTP request latency through the sidecar (http mode).",
        );
        for l in &self.listeners {
            let label = l.label();
            let mut cumulative = 0;
            for (bucket, le) in l.latency.buckets.iter().zip(LATENCY_BUCKETS) {
                cumulative += bucket.load(Relaxed);
                let _ = writeln!(
                    out,
                    "{name}_bucket{{listener=\"{label}\",le=\"{le}\"}} {cumulative}"
                );
            }
            let count = l.latency.count.load(Relaxed);
            let sum = l.latency.sum_micros.load(Relaxed) as f64 / 1e6;
            let _ = writeln!(
                out,
                "{name}_bucket{{listener=\"{label}\",le=\"+Inf\"}} {count}"
            );
            let _ = writeln!(out, "{name}_sum{{listener=\"{label}\"}} {sum}");
            let _ = writeln!(out, "{name}_count{{listener=\"{label}\"}} {count}");
        }
    }

    fn render_egress(&self, out: &mut String) {
        for family in EGRESS_FAMILIES {
            family.header(out);
            for e in &self.egress {
                let _ = writeln!(
                    out,
                    "{}{{egress=\"{}\"}} {}",
                    family.name,
                    e.name,
                    (family.value)(e)
                );
            }
        }
        let name = "tls_sidecar_egress_failures_total";
        header(
            out,
            name,
            "counter",
            "Egress connections closed before reaching the target, by reason.",
        );
        for e in &self.egress {
            for why in EgressFailure::ALL {
                let _ = writeln!(
                    out,
                    "{name}{{egress=\"{}\",reason=\"{}\"}} {}",
                    e.name,
                    why.as_str(),
                    e.failures(why)
                );
            }
        }
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A family with one sample per listener (or egress), read from one of its atomics.
struct Family<T> {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    value: fn(&T) -> u64,
}

impl<T> Family<T> {
    fn header(&self, out: &mut String) {
        header(out, self.name, self.kind, self.help);
    }
}

/// A gauge of open connections: never below zero, since a close follows its open.
fn open(active: &AtomicI64) -> u64 {
    active.load(Relaxed).max(0).unsigned_abs()
}

// One row per family, as the exposition lists them.
#[rustfmt::skip]
const LISTENER_FAMILIES: [Family<ListenerMetrics>; 9] = [
    Family { name: "tls_sidecar_connections_active", kind: "gauge", help: "TLS connections open now.", value: |l| open(&l.active) },
    Family { name: "tls_sidecar_connections_total", kind: "counter", help: "TCP connections accepted.", value: |l| l.accepted.load(Relaxed) },
    Family { name: "tls_sidecar_connections_refused_total", kind: "counter", help: "Connections refused because max_connections was reached.", value: |l| l.refused.load(Relaxed) },
    Family { name: "tls_sidecar_connections_shed_total", kind: "counter", help: "Connections closed before their TLS handshake finished to admit a new one at max_connections.", value: |l| l.shed.load(Relaxed) },
    Family { name: "tls_sidecar_connections_stalled_total", kind: "counter", help: "Connections cut because data owed to the client made no progress for idle_timeout.", value: |l| l.stalled.load(Relaxed) },
    Family { name: "tls_sidecar_app_saturated_total", kind: "counter", help: "Requests answered 503 because the cap on requests in flight to the app was reached.", value: |l| l.app_saturated.load(Relaxed) },
    Family { name: "tls_sidecar_authorization_denials_total", kind: "counter", help: "Verified callers refused by the allow rules.", value: |l| l.denials.load(Relaxed) },
    Family { name: "tls_sidecar_received_bytes_total", kind: "counter", help: "Bytes received from clients (decrypted).", value: |l| l.bytes_in.load(Relaxed) },
    Family { name: "tls_sidecar_sent_bytes_total", kind: "counter", help: "Bytes sent to clients (before encryption).", value: |l| l.bytes_out.load(Relaxed) },
];

#[rustfmt::skip]
const EGRESS_FAMILIES: [Family<EgressMetrics>; 5] = [
    Family { name: "tls_sidecar_egress_connections_active", kind: "gauge", help: "Egress connections open now.", value: |e| open(&e.active) },
    Family { name: "tls_sidecar_egress_connections_total", kind: "counter", help: "Connections the app opened to an egress listener.", value: |e| e.accepted.load(Relaxed) },
    Family { name: "tls_sidecar_egress_connections_refused_total", kind: "counter", help: "Egress connections refused because max_connections was reached.", value: |e| e.refused.load(Relaxed) },
    Family { name: "tls_sidecar_egress_sent_bytes_total", kind: "counter", help: "Bytes from the app to egress targets (before encryption).", value: |e| e.bytes_sent.load(Relaxed) },
    Family { name: "tls_sidecar_egress_received_bytes_total", kind: "counter", help: "Bytes from egress targets to the app (decrypted).", value: |e| e.bytes_received.load(Relaxed) },
];

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Each series has the value.
    fn assert_values(text: &str, expected: &[(&str, &str)]) {
        for (series, want) in expected {
            assert_eq!(value(text, series), *want, "{series}");
        }
    }

    fn value(text: &str, series: &str) -> String {
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("{series} missing in\n{text}"))
            .to_owned()
    }

    #[test]
    fn renders_every_family_with_help_type_and_per_listener_labels() {
        let m = Metrics::new([8443, 9443]);
        let l = m.listener(9443).unwrap();
        l.accepted.fetch_add(3, Relaxed);
        l.active.fetch_add(2, Relaxed);
        l.handshake_failed(HandshakeFailure::Denied);
        m.cert_not_after.store(1_900_000_000, Relaxed);
        let text = m.render();
        assert_values(
            &text,
            &[
                ("tls_sidecar_connections_total{listener=\"9443\"}", "3"),
                ("tls_sidecar_connections_total{listener=\"8443\"}", "0"),
                ("tls_sidecar_connections_active{listener=\"9443\"}", "2"),
                (
                    "tls_sidecar_handshake_failures_total{listener=\"9443\",reason=\"denied\"}",
                    "1",
                ),
                (
                    "tls_sidecar_certificate_expiry_timestamp_seconds",
                    "1900000000",
                ),
            ],
        );
        for family in [
            "connections_active",
            "handshake_failures_total",
            "request_duration_seconds",
            "certificate_reloads_total",
        ] {
            assert!(
                text.contains(&format!("# TYPE tls_sidecar_{family} ")),
                "{family}"
            );
        }
    }

    #[test]
    fn request_denials_are_counted_per_rule_and_for_requests_no_rule_matched() {
        let m = Metrics::with_request_rules([(8443, 2), (9443, 0)]);
        let l = m.listener(8443).unwrap();
        l.request_denied(Some(1));
        l.request_denied(None);
        l.request_denied(None);
        m.listener(9443).unwrap().request_denied(None);
        let text = m.render();
        assert_values(
            &text,
            &[
                (
                    "tls_sidecar_request_denials_total{listener=\"8443\",rule=\"0\"}",
                    "0",
                ),
                (
                    "tls_sidecar_request_denials_total{listener=\"8443\",rule=\"1\"}",
                    "1",
                ),
                (
                    "tls_sidecar_request_denials_total{listener=\"8443\",rule=\"none\"}",
                    "2",
                ),
            ],
        );
        assert!(!text.contains("tls_sidecar_request_denials_total{listener=\"9443\""));
    }

    #[test]
    fn egress_series_are_labelled_by_name_and_failures_by_reason() {
        let m = Metrics::new([8443]).with_egress(["backend", "db"]);
        let e = m.egress("db").unwrap();
        e.accepted.fetch_add(2, Relaxed);
        e.failed(EgressFailure::Identity);
        e.bytes_sent.fetch_add(10, Relaxed);
        let text = m.render();
        assert_values(
            &text,
            &[
                ("tls_sidecar_egress_connections_total{egress=\"db\"}", "2"),
                (
                    "tls_sidecar_egress_failures_total{egress=\"db\",reason=\"identity\"}",
                    "1",
                ),
                (
                    "tls_sidecar_egress_failures_total{egress=\"backend\",reason=\"identity\"}",
                    "0",
                ),
                ("tls_sidecar_egress_sent_bytes_total{egress=\"db\"}", "10"),
            ],
        );
        assert!(!Metrics::new([8443]).render().contains("egress"));
    }

    #[test]
    fn the_latency_histogram_is_cumulative_and_counts_every_observation() {
        let m = Metrics::new([8443]);
        let l = m.listener(8443).unwrap();
        l.latency.observe(Duration::from_micros(500));
        l.latency.observe(Duration::from_millis(30));
        l.latency.observe(Duration::from_secs(60));
        let text = m.render();
        assert_values(
            &text,
            &[
                (
                    "tls_sidecar_request_duration_seconds_bucket{listener=\"8443\",le=\"0.001\"}",
                    "1",
                ),
                (
                    "tls_sidecar_request_duration_seconds_bucket{listener=\"8443\",le=\"0.05\"}",
                    "2",
                ),
                (
                    "tls_sidecar_request_duration_seconds_bucket{listener=\"8443\",le=\"10\"}",
                    "2",
                ),
                (
                    "tls_sidecar_request_duration_seconds_bucket{listener=\"8443\",le=\"+Inf\"}",
                    "3",
                ),
                (
                    "tls_sidecar_request_duration_seconds_count{listener=\"8443\"}",
                    "3",
                ),
            ],
        );
    }
}
