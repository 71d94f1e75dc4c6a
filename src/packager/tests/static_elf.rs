//! The static-ELF check on real binaries: musl static and static-pie pass, glibc dynamic fails,
//! and the packager refuses to package a dynamic binary.

mod common;

use std::fs;
use std::path::Path;

use common::{compile_c, fake_repo, stand_ins};
use tls_sidecar_packager::{ElfProblem, ensure_static_x86_64_executable};

#[test]
fn a_static_musl_binary_is_accepted() {
    ensure_static_x86_64_executable(&stand_ins().sidecar).expect("musl-gcc -static is static");
}

#[test]
fn a_static_pie_musl_binary_is_accepted() {
    // Rust's musl target builds static-pie: PT_DYNAMIC for self-relocation, but no interpreter
    // and no DT_NEEDED.
    ensure_static_x86_64_executable(&stand_ins().buildpack)
        .expect("rustc for the musl target makes a static-pie");
}

#[test]
fn a_dynamic_glibc_binary_is_rejected_for_its_interpreter() {
    let dir = tempfile::tempdir().expect("tempdir");
    let binary = compile_c(dir.path(), "dynamic", "cc", &["-O0"], "dynamic");
    let err = ensure_static_x86_64_executable(&binary).expect_err("cc links glibc dynamically");
    match &err.problem {
        ElfProblem::HasInterpreter(interp) => assert!(interp.contains("ld-linux"), "{interp}"),
        other => panic!("expected HasInterpreter, got {other:?}"),
    }
    let message = err.to_string();
    assert!(
        message.starts_with(&format!("{} is dynamically linked", binary.display())),
        "{message}"
    );
    assert!(
        message.contains("--target x86_64-unknown-linux-musl"),
        "{message}"
    );
}

#[test]
fn bin_ls_is_rejected() {
    let err =
        ensure_static_x86_64_executable(Path::new("/bin/ls")).expect_err("/bin/ls is dynamic");
    assert!(
        matches!(err.problem, ElfProblem::HasInterpreter(_)),
        "{err}"
    );
}

#[test]
fn a_binary_without_an_interpreter_that_still_needs_libc_is_rejected_for_its_libraries() {
    // What a half-static link looks like: no PT_INTERP, yet DT_NEEDED libc.so.6.
    let dir = tempfile::tempdir().expect("tempdir");
    let binary = compile_c(
        dir.path(),
        "no-interp",
        "cc",
        &["-Wl,--no-dynamic-linker"],
        "x",
    );
    let err = ensure_static_x86_64_executable(&binary).expect_err("it needs libc");
    match &err.problem {
        ElfProblem::NeedsLibraries(names) => assert_eq!(names, "libc.so.6"),
        other => panic!("expected NeedsLibraries, got {other:?}"),
    }
}

#[test]
fn a_shared_library_is_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let library = compile_c(
        dir.path(),
        "libstandin.so",
        "cc",
        &["-shared", "-fPIC"],
        "lib",
    );
    let err = ensure_static_x86_64_executable(&library).expect_err("a .so is not a program");
    assert!(matches!(err.problem, ElfProblem::NoEntryPoint), "{err}");
}

#[test]
fn the_packager_refuses_a_dynamic_sidecar_and_writes_nothing() {
    let repo = fake_repo();
    let out = tempfile::tempdir().expect("tempdir");
    let output = std::process::Command::new(common::PACKAGER)
        .args(["--sidecar", "/bin/ls", "--buildpack-binary"])
        .arg(&stand_ins().buildpack)
        .arg("--repo-root")
        .arg(repo.path())
        .arg("--output")
        .arg(out.path())
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("       **ERROR** /bin/ls is dynamically linked"),
        "{stderr}"
    );
    assert_eq!(fs::read_dir(out.path()).expect("list").count(), 0);
}

#[test]
fn the_packager_refuses_a_script_as_the_buildpack_binary() {
    let repo = fake_repo();
    let out = tempfile::tempdir().expect("tempdir");
    let script = repo.path().join("bin/supply");
    let output = std::process::Command::new(common::PACKAGER)
        .arg("--sidecar")
        .arg(&stand_ins().sidecar)
        .arg("--buildpack-binary")
        .arg(&script)
        .arg("--repo-root")
        .arg(repo.path())
        .arg("--output")
        .arg(out.path())
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("{} is not an ELF executable", script.display())),
        "{stderr}"
    );
}
