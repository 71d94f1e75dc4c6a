//! The staging log, in libbuildpack's voice (`libbuildpack:logger.go`), so our lines read like
//! every other CF buildpack's in `cf push` output:
//!
//! ```text
//! -----> Step
//!        detail
//!        **WARNING** something that works but is probably wrong     (bold red)
//!        **ERROR** what failed                                       (bold red)
//!        DEBUG: only when BP_DEBUG is set
//! ```
//!
//! Colour is opened and closed on every line: Loggregator streams staging output line by line
//! and prefixes each with a timestamp, so colour left open across a newline would bleed into the
//! prefix of the next line (libherokubuildpack's `log.rs` does the same).

use std::fmt::Display;
use std::io::Write;
use tls_sidecar_config::Env;

/// Seven spaces: libbuildpack's indentation for everything below a step.
pub const INDENT: &str = "       ";
const RED: &str = "\x1b[31;1m";
const RESET: &str = "\x1b[0m";

/// A writer of staging-log lines. Generic over `W` so tests read what a phase printed.
pub struct Output<W: Write> {
    w: W,
    debug: bool,
}

impl<W: Write> Output<W> {
    /// `BP_DEBUG` non-empty turns on debug lines, as in libbuildpack.
    pub fn new(w: W, env: &Env) -> Self {
        let debug = env.get("BP_DEBUG").is_some_and(|v| !v.is_empty());
        Output { w, debug }
    }

    /// `-----> msg`; further lines of `msg` are indented like details.
    pub fn step(&mut self, msg: impl Display) {
        let msg = msg.to_string();
        let mut lines = msg.split('\n');
        let first = lines.next().unwrap_or_default();
        self.line(format_args!("-----> {first}"));
        for l in lines {
            self.detail_line(l);
        }
    }

    /// Seven spaces, then `msg`; every line of `msg` is indented.
    pub fn info(&mut self, msg: impl Display) {
        for l in msg.to_string().split('\n') {
            self.detail_line(l);
        }
    }

    /// `**WARNING** msg`, bold red.
    pub fn warning(&mut self, msg: impl Display) {
        self.red("**WARNING**", &msg.to_string());
    }

    /// `**ERROR** msg`, bold red.
    pub fn error(&mut self, msg: impl Display) {
        self.red("**ERROR**", &msg.to_string());
    }

    /// `DEBUG: msg`, only when `BP_DEBUG` is set.
    pub fn debug(&mut self, msg: impl Display) {
        if !self.debug {
            return;
        }
        let msg = msg.to_string();
        let mut lines = msg.split('\n');
        let first = lines.next().unwrap_or_default();
        self.line(format_args!("{INDENT}DEBUG: {first}"));
        for l in lines {
            self.detail_line(l);
        }
    }

    /// Text exactly as given (release's YAML, which the builder parses).
    pub fn raw(&mut self, text: &str) {
        // Best effort, like every line here: see `line`.
        let _ = self.w.write_all(text.as_bytes());
        let _ = self.w.flush();
    }

    /// The writer back (tests read it).
    pub fn into_inner(self) -> W {
        self.w
    }

    fn red(&mut self, label: &str, msg: &str) {
        let mut lines = msg.split('\n');
        let first = lines.next().unwrap_or_default();
        self.line(format_args!("{INDENT}{RED}{label} {first}{RESET}"));
        for l in lines {
            if l.is_empty() {
                self.line(format_args!("{INDENT}"));
            } else {
                self.line(format_args!("{INDENT}{RED}{l}{RESET}"));
            }
        }
    }

    fn detail_line(&mut self, l: &str) {
        self.line(format_args!("{INDENT}{l}"));
    }

    fn line(&mut self, args: std::fmt::Arguments) {
        // The staging log is best effort: if stdout is gone nobody can read the line anyway,
        // and failing staging over it would turn a cosmetic problem into a broken push.
        let _ = writeln!(self.w, "{args}");
        let _ = self.w.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn printed(env: &[(&str, &str)], f: impl FnOnce(&mut Output<Vec<u8>>)) -> String {
        let env: Env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut out = Output::new(Vec::new(), &env);
        f(&mut out);
        String::from_utf8(out.into_inner()).unwrap()
    }

    #[test]
    fn steps_and_details_use_libbuildpack_prefixes_and_reindent_newlines() {
        let text = printed(&[], |o| {
            o.step("Installing tls-sidecar 1.0.0");
            o.info("Copy [/x]\nsecond line");
        });
        assert_eq!(
            text,
            "-----> Installing tls-sidecar 1.0.0\n       Copy [/x]\n       second line\n"
        );
    }

    #[test]
    fn warnings_and_errors_are_bold_red_on_every_line() {
        let text = printed(&[], |o| {
            o.warning("one\ntwo");
            o.error("bad");
        });
        assert_eq!(
            text,
            concat!(
                "       \x1b[31;1m**WARNING** one\x1b[0m\n",
                "       \x1b[31;1mtwo\x1b[0m\n",
                "       \x1b[31;1m**ERROR** bad\x1b[0m\n",
            )
        );
    }

    #[test]
    fn debug_lines_appear_only_when_bp_debug_is_non_empty() {
        assert_eq!(printed(&[], |o| o.debug("x")), "");
        assert_eq!(printed(&[("BP_DEBUG", "")], |o| o.debug("x")), "");
        assert_eq!(
            printed(&[("BP_DEBUG", "1")], |o| o.debug("x")),
            "       DEBUG: x\n"
        );
    }
}
