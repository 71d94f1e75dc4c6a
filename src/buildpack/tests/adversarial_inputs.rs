//! Hostile or broken input from the app and the builder: a `tls-sidecar.yml` that is not YAML,
//! that misspells keys, that is not text, that tries to exhaust the parser; and command lines
//! with too many or too few arguments. Each fails with one CF-style `**ERROR**` saying where
//! the problem is and how to fix it, and writes nothing anywhere, `deps/<idx>/` included.
//!
//! Covered elsewhere and not repeated here: a bad value with its line and column and an
//! unknown stack (supply_test.rs), a bad TLS_SIDECAR_PORT (supply_test.rs), a DEPS_IDX that is
//! not digits (supply_test.rs), two arguments to supply (supply_test.rs).

mod common;

use common::*;
use std::fs;
use std::time::{Duration, Instant};

const VCAP: &str = r#"{"application_name":"myapp"}"#;

fn env() -> Vec<(&'static str, &'static str)> {
    vec![("CF_STACK", "cflinuxfs4"), ("VCAP_APPLICATION", VCAP)]
}

const EDIT_FIX: &str =
    "       Fix: edit tls-sidecar.yml in your app's root directory, then cf push myapp";

/// Stages an app whose `tls-sidecar.yml` holds `bytes`; expects exit 12, the given headline
/// and fix, and no change anywhere.
fn assert_config_refused(bytes: &[u8], headline: &str, fix: &str) {
    let stage = Stage::cached(&good_tgz());
    stage.idx("0");
    fs::write(stage.app().join("tls-sidecar.yml"), bytes).expect("write tls-sidecar.yml");
    let before = stage.tree();

    let run = stage.supply("0", &env());

    assert_eq!(run.code, 12, "{}", run.stdout);
    assert_eq!(
        run.lines(),
        [
            "-----> TLS Sidecar Buildpack version 1.2.3".to_owned(),
            format!("       **ERROR** {headline}"),
            "       Nothing was installed.".to_owned(),
            fix.to_owned(),
        ]
    );
    assert_eq!(stage.tree(), before, "something was written");
}

#[test]
fn malformed_yaml_fails_with_the_line_and_column_of_the_syntax_error() {
    assert_config_refused(
        b"listeners:\n  - port: 8443\n    mode: tcp: http\n",
        "tls-sidecar.yml line 3 column 14: mapping values are not allowed in this context",
        EDIT_FIX,
    );
}

#[test]
fn a_tab_in_the_indentation_fails_with_its_line_and_column() {
    assert_config_refused(
        b"listeners:\n\t- port: 8443\n",
        "tls-sidecar.yml line 2 column 1: found character that cannot start any token",
        EDIT_FIX,
    );
}

#[test]
fn a_misspelt_top_level_key_fails_with_a_did_you_mean() {
    assert_config_refused(
        b"listners:\n  - port: 8443\n",
        "tls-sidecar.yml line 1 column 1: unknown field `listners`, expected one of `listeners`, `egress`, `egress_proxy`, `certificate`, `trust`, `admin`, `limits`, `sidecar`, `log`, `route`; did you mean `listeners`?",
        EDIT_FIX,
    );
}

#[test]
fn a_misspelt_nested_key_fails_with_its_path_and_a_did_you_mean() {
    assert_config_refused(
        b"listeners:\n  - port: 8443\n    client_aut: required\n",
        "tls-sidecar.yml line 3 column 5: listeners[0]: unknown field `client_aut`, expected one of `port`, `upstream`, `mode`, `client_auth`, `allow`, `xfcc`, `proxy_protocol`, `rules`; did you mean `client_auth`?",
        EDIT_FIX,
    );
}

#[test]
fn a_config_file_that_is_not_utf8_text_is_refused_as_unreadable() {
    assert_config_refused(
        b"listeners:\n  - port: \xff\xfe\n",
        "cannot read tls-sidecar.yml: stream did not contain valid UTF-8",
        "       Fix: make tls-sidecar.yml in your app's root directory a readable file, then cf push myapp",
    );
}

#[test]
fn a_config_path_that_is_a_directory_is_refused_as_unreadable() {
    let stage = Stage::cached(&good_tgz());
    stage.idx("0");
    fs::create_dir(stage.app().join("tls-sidecar.yml")).unwrap();
    let before = stage.tree();

    let run = stage.supply("0", &env());

    assert_eq!(run.code, 12, "{}", run.stdout);
    assert_eq!(
        run.lines()[1],
        "       **ERROR** cannot read tls-sidecar.yml: Is a directory (os error 21)"
    );
    assert_eq!(stage.tree(), before, "something was written");
}

#[test]
fn a_yaml_alias_bomb_fails_fast_instead_of_exhausting_staging() {
    // "Billion laughs": nine levels of nine aliases expand to 9^9 strings if followed.
    let mut bomb = String::from(
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    for (prev, cur) in ["a", "b", "c", "d", "e", "f", "g", "h"]
        .iter()
        .zip(["b", "c", "d", "e", "f", "g", "h", "i"])
    {
        bomb.push_str(&format!(
            "{cur}: &{cur} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"
        ));
    }
    let stage = Stage::cached(&good_tgz());
    stage.idx("0");
    stage.app_file("tls-sidecar.yml", &bomb);
    let before = stage.tree();

    let started = Instant::now();
    let run = stage.supply("0", &env());

    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(run.code, 12, "{}", run.stdout);
    assert!(
        run.lines()[1].starts_with("       **ERROR** tls-sidecar.yml line "),
        "{}",
        run.stdout
    );
    assert_eq!(stage.tree(), before, "something was written");
}

#[test]
fn a_config_file_over_64_kib_is_refused_before_it_is_parsed() {
    // 100 000 nested brackets: the YAML parser's time grows with the square of the nesting,
    // so this would take minutes to fail if it were parsed.
    let depth = 50_000;
    let started = Instant::now();
    assert_config_refused(
        format!("listeners: {}{}\n", "[".repeat(depth), "]".repeat(depth)).as_bytes(),
        "tls-sidecar.yml: the file is 100012 bytes, more than the 65536 allowed (a complete configuration is a few KB)",
        EDIT_FIX,
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn deeply_nested_yaml_under_the_size_limit_fails_with_its_place_instead_of_overflowing() {
    let depth = 10_000;
    let nested = format!("listeners: {}{}\n", "[".repeat(depth), "]".repeat(depth));
    let stage = Stage::cached(&good_tgz());
    stage.idx("0");
    stage.app_file("tls-sidecar.yml", &nested);
    let before = stage.tree();

    let run = stage.supply("0", &env());

    assert_eq!(run.code, 12, "{}{}", run.stdout, run.stderr);
    assert_eq!(
        run.lines()[1],
        "       **ERROR** tls-sidecar.yml line 1 column 13: listeners[0]: invalid type: sequence, expected struct ListenerSpec"
    );
    assert_eq!(stage.tree(), before, "something was written");
}

#[test]
fn supply_with_too_few_or_too_many_arguments_prints_its_usage_and_writes_nothing() {
    let stage = Stage::cached(&good_tgz());
    stage.idx("0");
    let (bp, app, cache, deps) = (stage.bp(), stage.app(), stage.cache(), stage.deps());
    let full = [s(&app), s(&cache), s(&deps), "0", "extra"];
    let before = stage.tree();

    for n in [0, 1, 3, 5] {
        let mut args = vec!["--buildpack-dir", s(&bp), "supply"];
        args.extend(&full[..n]);

        let run = run(&args, &env());

        assert_eq!(run.code, 64, "{n} arguments: {}", run.stdout);
        assert_eq!(
            run.lines(),
            [
                format!("       **ERROR** supply takes 4 arguments (BUILD_DIR CACHE_DIR DEPS_DIR DEPS_IDX), got {n}"),
                "       Usage: bin/supply BUILD_DIR CACHE_DIR DEPS_DIR DEPS_IDX (the Cloud Foundry builder passes these)".to_owned(),
            ]
        );
        assert_eq!(stage.tree(), before, "{n} arguments: something was written");
    }
}

#[test]
fn a_build_dir_that_does_not_exist_is_refused_before_anything_is_written() {
    let stage = Stage::cached(&good_tgz());
    stage.idx("0");
    let (bp, cache, deps) = (stage.bp(), stage.cache(), stage.deps());
    let missing = stage.path("no-such-app");
    let before = stage.tree();

    let run = run(
        &[
            "--buildpack-dir",
            s(&bp),
            "supply",
            s(&missing),
            s(&cache),
            s(&deps),
            "0",
        ],
        &env(),
    );

    assert_eq!(run.code, 64, "{}", run.stdout);
    assert_eq!(
        run.lines(),
        [format!(
            "       **ERROR** BUILD_DIR {} is not a directory",
            missing.display()
        )]
    );
    assert_eq!(stage.tree(), before, "something was written");
}

#[test]
fn an_unknown_stack_with_a_path_in_it_is_refused_and_writes_nothing() {
    let stage = Stage::cached(&good_tgz());
    stage.idx("0");
    let before = stage.tree();

    let run = stage.supply(
        "0",
        &[("CF_STACK", "../../cflinuxfs4"), ("VCAP_APPLICATION", VCAP)],
    );

    assert_eq!(run.code, 11, "{}", run.stdout);
    assert_eq!(
        run.lines()[1],
        "       **ERROR** This buildpack does not support the stack ../../cflinuxfs4 (it supports: cflinuxfs4)"
    );
    assert_eq!(stage.tree(), before, "something was written");
}
