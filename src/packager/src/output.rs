//! Progress in the CF packager voice: `-----> ` for a step, 7 spaces for a detail.
//!
//! Generic over the writer so tests capture it; `main` hands it stderr, because stdout carries
//! only the zip's path (scripts read it).

use std::fmt::Display;
use std::io::Write;

/// Where progress goes.
#[derive(Debug)]
pub struct Output<W: Write> {
    out: W,
}

impl<W: Write> Output<W> {
    /// Progress written to `out`.
    pub fn new(out: W) -> Self {
        Output { out }
    }

    /// `-----> message`
    pub fn step(&mut self, message: impl Display) {
        self.line("-----> ", message);
    }

    /// `       message`, each embedded line indented the same (as libbuildpack's logger does).
    pub fn detail(&mut self, message: impl Display) {
        self.line("       ", message);
    }

    /// `       **ERROR** message`
    pub fn error(&mut self, message: impl Display) {
        self.line("       ", format_args!("**ERROR** {message}"));
    }

    /// The writer back, for tests.
    pub fn into_inner(self) -> W {
        self.out
    }

    fn line(&mut self, prefix: &str, message: impl Display) {
        let text = message.to_string();
        let indented = text.replace('\n', "\n       ");
        // Progress is a courtesy: a closed stderr must not fail the packaging itself.
        let _ = writeln!(self.out, "{prefix}{indented}");
    }
}

/// A size for people: `812 B`, `20.5 KiB`, `3.4 MiB`.
#[must_use]
pub fn human_size(bytes: usize) -> String {
    const KIB: f64 = 1024.0;
    #[allow(clippy::cast_precision_loss)] // one decimal shown: precision loss is invisible
    let size = bytes as f64;
    if size >= KIB * KIB {
        format!("{:.1} MiB", size / KIB / KIB)
    } else if size >= KIB {
        format!("{:.1} KiB", size / KIB)
    } else {
        format!("{bytes} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_and_details_use_the_cf_prefixes_and_indent_continuation_lines() {
        let mut out = Output::new(Vec::new());
        out.step("Packaging x.zip");
        out.detail("one\ntwo");
        out.error("bad");
        let text = String::from_utf8(out.into_inner()).expect("utf-8");
        assert_eq!(
            text,
            "-----> Packaging x.zip\n       one\n       two\n       **ERROR** bad\n"
        );
    }

    #[test]
    fn sizes_are_human() {
        assert_eq!(human_size(812), "812 B");
        assert_eq!(human_size(20 * 1024 + 512), "20.5 KiB");
        assert_eq!(human_size(3 * 1024 * 1024 + 400 * 1024), "3.4 MiB");
    }
}
