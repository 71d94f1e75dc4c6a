//! One line per event on stdout, which CF forwards to `cf logs`: logfmt by default
//! (`ts=2026-11-28T03:20:00.123Z level=info msg="listening on 0.0.0.0:8443" listener=tls`),
//! or one JSON object per line with `log.format: json`.

use rustls::ProtocolVersion;
use std::fmt::{self, Write as _};
use std::sync::Once;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use time::OffsetDateTime;
use tls_sidecar_config::{Log, LogFormat};
use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Installs the global subscriber for `log`; a second call changes nothing, so the error path
/// can call [`init_default`] whether or not the configuration was read.
pub fn init(log: &Log) {
    let level = log
        .level
        .parse::<LevelFilter>()
        .unwrap_or(LevelFilter::INFO);
    let format = LineFormat {
        json: log.format == LogFormat::Json,
    };
    let installed = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stdout)
        .with_ansi(false)
        .event_format(format)
        .try_init()
        .is_ok();
    if installed {
        log_panics();
    }
}

/// [`init`] with logfmt at info level.
pub fn init_default() {
    init(&Log {
        format: LogFormat::Logfmt,
        level: "info".to_owned(),
    });
}

/// A panic in a connection task ends only that task (the runtime catches it); without this hook
/// its message would go to stderr unformatted.
fn log_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            tracing::error!(
                panic = %info,
                "a task panicked; only the connection it served is affected"
            );
        }));
    });
}

struct LineFormat {
    json: bool,
}

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let ts = timestamp(SystemTime::now());
        let level = level_name(*event.metadata().level());
        let line = if self.json {
            json_line(&ts, level, &fields)
        } else {
            logfmt_line(&ts, level, &fields)
        };
        writeln!(writer, "{line}")
    }
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::ERROR => "error",
        Level::WARN => "warn",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        Level::TRACE => "trace",
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Value {
    Str(String),
    U64(u64),
    I64(i64),
    F64(f64),
    Bool(bool),
}

#[derive(Debug, Default)]
struct Fields {
    message: String,
    others: Vec<(&'static str, Value)>,
}

impl Fields {
    fn push(&mut self, field: &Field, value: Value) {
        if field.name() == "message" {
            self.message = match value {
                Value::Str(s) => s,
                other => other.to_string(),
            };
        } else {
            self.others.push((field.name(), value));
        }
    }
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.push(field, Value::Str(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.push(field, Value::Str(value.to_owned()));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.push(field, Value::U64(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.push(field, Value::I64(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.push(field, Value::F64(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.push(field, Value::Bool(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.push(field, Value::Str(value.to_string()));
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Str(s) => f.write_str(s),
            Value::U64(n) => write!(f, "{n}"),
            Value::I64(n) => write!(f, "{n}"),
            Value::F64(n) => write!(f, "{n}"),
            Value::Bool(b) => write!(f, "{b}"),
        }
    }
}

fn logfmt_line(ts: &str, level: &str, fields: &Fields) -> String {
    let mut line = format!("ts={ts} level={level} msg=");
    quoted(&mut line, &fields.message);
    for (key, value) in &fields.others {
        let _ = write!(line, " {key}=");
        match value {
            Value::Str(s) if needs_quotes(s) => quoted(&mut line, s),
            other => {
                let _ = write!(line, "{other}");
            }
        }
    }
    line
}

fn needs_quotes(s: &str) -> bool {
    s.is_empty()
        || s.chars()
            .any(|c| c == ' ' || c == '=' || c == '"' || c == '\\' || c.is_control())
}

fn quoted(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:04x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn json_line(ts: &str, level: &str, fields: &Fields) -> String {
    use serde_json::Value as J;
    let string = |s: &str| J::String(s.to_owned()).to_string();
    let mut line = format!(
        "{{\"ts\":{},\"level\":{},\"msg\":{}",
        string(ts),
        string(level),
        string(&fields.message)
    );
    for (key, value) in &fields.others {
        let value = match value {
            Value::Str(s) => string(s),
            Value::U64(n) => n.to_string(),
            Value::I64(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::F64(n) => serde_json::Number::from_f64(*n)
                .map_or_else(|| "null".to_owned(), |n| n.to_string()),
        };
        let _ = write!(line, ",{}:{value}", string(key));
    }
    line.push('}');
    line
}

/// `2026-11-28T03:20:00.123Z`.
fn timestamp(now: SystemTime) -> String {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = i64::try_from(since.as_secs()).unwrap_or(i64::MAX);
    let mut s = rfc3339(secs);
    s.pop();
    let _ = write!(s, ".{:03}Z", since.subsec_millis());
    s
}

/// Seconds since the Unix epoch as `2026-11-28T03:20:00Z` (UTC), for log timestamps and
/// certificate dates.
///
/// The calendar comes from `time` (already linked for certificate dates); the fields are written
/// here rather than through its `Rfc3339` formatter, whose `formatting` feature would add code to
/// the binary for a fixed eight-field layout.
/// `d` in whole milliseconds, for the `*_ms` log fields.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The `tls` log field of a connection: the negotiated version, or `none` before a handshake.
pub(crate) fn tls_version(version: Option<ProtocolVersion>) -> &'static str {
    match version {
        Some(ProtocolVersion::TLSv1_3) => "1.3",
        Some(ProtocolVersion::TLSv1_2) => "1.2",
        Some(_) => "other",
        None => "none",
    }
}

pub fn rfc3339(secs: i64) -> String {
    match OffsetDateTime::from_unix_timestamp(secs) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        // Only beyond the years ±9999, which neither the clock nor an X.509 date reaches.
        Err(_) => format!("{secs} s after 1970-01-01T00:00:00Z"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn fields(message: &str, others: Vec<(&'static str, Value)>) -> Fields {
        Fields {
            message: message.to_owned(),
            others,
        }
    }

    #[test]
    fn dates_are_utc_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_836_000), "2026-11-28T03:20:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_836_000_123);
        assert_eq!(timestamp(t), "2026-11-28T03:20:00.123Z");
    }

    #[test]
    fn logfmt_quotes_only_values_that_need_it() {
        let f = fields(
            "listening on 0.0.0.0:8443",
            vec![
                ("addr", Value::Str("0.0.0.0:8443".into())),
                ("error", Value::Str("said \"no\"\nthen left".into())),
                ("bytes_in", Value::U64(12)),
                ("empty", Value::Str(String::new())),
            ],
        );
        assert_eq!(
            logfmt_line("T", "info", &f),
            r#"ts=T level=info msg="listening on 0.0.0.0:8443" addr=0.0.0.0:8443 error="said \"no\"\nthen left" bytes_in=12 empty="""#
        );
    }

    #[test]
    fn json_lines_are_objects_with_typed_values() {
        let f = fields(
            "done",
            vec![
                ("bytes_in", Value::U64(3)),
                ("peer", Value::Str("a\"b".into())),
            ],
        );
        let line = json_line("T", "warn", &f);
        assert_eq!(
            line,
            r#"{"ts":"T","level":"warn","msg":"done","bytes_in":3,"peer":"a\"b"}"#
        );
        let parsed: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(parsed["bytes_in"], 3);
    }
}
