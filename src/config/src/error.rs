use std::fmt;

/// Where a configuration value came from, so an error can say what to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A YAML file (its display path).
    File(String),
    /// An environment variable (its name).
    Env(String),
    /// The combination of several values (e.g. two listeners on one port).
    Combined,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Origin::File(p) => f.write_str(p),
            Origin::Env(v) => f.write_str(v),
            Origin::Combined => f.write_str("configuration"),
        }
    }
}

/// A configuration the sidecar cannot run with. Each variant names the field and the bad value;
/// user-facing fixes are added by each binary's `errors.rs`, which knows the context (staging
/// or start).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The YAML does not parse, or a value has the wrong type or is not allowed.
    #[error("{file}{}: {message}", location(*line, *column))]
    Syntax {
        file: String,
        line: Option<usize>,
        column: Option<usize>,
        message: String,
    },
    /// A value parsed but is not usable.
    #[error("{origin}: {}{problem}", field_prefix(origin, field))]
    Invalid {
        origin: Origin,
        field: String,
        problem: String,
    },
    /// The file exists but cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl ConfigError {
    pub(crate) fn invalid(
        origin: &Origin,
        field: impl Into<String>,
        problem: impl Into<String>,
    ) -> Self {
        ConfigError::Invalid {
            origin: origin.clone(),
            field: field.into(),
            problem: problem.into(),
        }
    }

    /// The origin of the bad value, when it is a single file or variable.
    pub fn origin(&self) -> Option<Origin> {
        match self {
            ConfigError::Syntax { file, .. } | ConfigError::Read { path: file, .. } => {
                Some(Origin::File(file.clone()))
            }
            ConfigError::Invalid { origin, .. } => Some(origin.clone()),
        }
    }
}

fn field_prefix(origin: &Origin, field: &str) -> String {
    match origin {
        Origin::Env(name) if name == field => String::new(),
        _ => format!("{field}: "),
    }
}

fn location(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(" line {l} column {c}"),
        (Some(l), None) => format!(" line {l}"),
        _ => String::new(),
    }
}

/// Adds "did you mean `x`?" to serde's "unknown field `y`, expected one of `a`, `b`" messages.
pub(crate) fn with_suggestion(message: String) -> String {
    let Some(rest) = message.find("unknown field `").map(|i| &message[i + 15..]) else {
        return message;
    };
    let Some(unknown) = rest.split('`').next() else {
        return message;
    };
    let candidates: Vec<&str> = rest.split('`').skip(2).step_by(2).collect();
    let best = candidates
        .iter()
        .map(|c| (edit_distance(unknown, c), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min();
    match best {
        Some((_, c)) => format!("{message}; did you mean `{c}`?"),
        None => message,
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_get_a_did_you_mean() {
        let m = with_suggestion(
            "unknown field `listner`, expected one of `listeners`, `egress`, `admin`".into(),
        );
        assert!(m.ends_with("did you mean `listeners`?"), "{m}");
        let m = with_suggestion("unknown field `zzzzzzzz`, expected `port` or `mode`".into());
        assert!(!m.contains("did you mean"), "{m}");
    }
}
