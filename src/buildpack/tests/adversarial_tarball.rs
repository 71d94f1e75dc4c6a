//! Hostile dependency tarballs, staged through the real binary from a cached buildpack whose
//! manifest carries the tarball's own sha256 (so the checksum passes and only the extraction
//! rules stand between the tarball and the disk). Each must fail with one CF-style `**ERROR**`
//! naming the entry, and leave every directory as it was, `deps/<idx>/` included.
//!
//! Covered elsewhere and not repeated here (install_test.rs): an entry with `..`, an absolute
//! entry, a symlink escaping the install dir, a hard link escaping it or to an absolute path.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use tar::EntryType;

fn env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("CF_STACK", "cflinuxfs4"),
        ("VCAP_APPLICATION", r#"{"application_name":"myapp"}"#),
    ]
}

/// The lines after the headline of every refused tarball.
const REFUSED_TAIL: [&str; 3] = [
    "       Nothing was installed.",
    "       The dependency tarball is not one the buildpack's packager builds (see docs/DESIGN.md).",
    "       Fix: package the buildpack again with scripts/package.sh and upload it (cf update-buildpack)",
];

/// Stages `members` after a good `bin/tls-sidecar` and expects `why` as the refusal, with the
/// whole temp root (buildpack, app, cache, deps, deps/0) unchanged.
fn assert_refused(members: Vec<M>, why: &str) {
    let mut all = vec![
        M::Dir("bin/"),
        M::File("bin/tls-sidecar", 0o755, SIDECAR_BYTES),
    ];
    all.extend(members);
    let stage = Stage::cached(&tgz(&all));
    stage.idx("0");
    let before = stage.tree();

    let run = stage.supply("0", &env());

    assert_eq!(run.code, 13, "{}", run.stdout);
    let mut want = vec![format!(
        "       **ERROR** Could not install tls-sidecar 1.0.0: {why}"
    )];
    want.extend(REFUSED_TAIL.iter().map(|l| (*l).to_owned()));
    assert_eq!(run.lines()[3..], want);
    assert_eq!(stage.tree(), before, "something was written");
}

#[test]
fn a_symlink_to_tmp_followed_by_a_file_written_through_it_is_refused_at_the_symlink() {
    // `link -> /tmp` then `link/<name>`: if the link were made, the file would land in /tmp.
    let name = format!("tls-sidecar-adversarial-{}", std::process::id());
    let through = format!("link/{name}");
    assert_refused(
        vec![
            M::Symlink("link", "/tmp"),
            M::File(&through, 0o644, b"escaped"),
        ],
        "refusing tarball entry \"link\": it links to the absolute path \"/tmp\"",
    );
    assert!(!std::path::Path::new("/tmp").join(&name).exists());
}

#[test]
fn a_file_written_through_a_symlink_is_refused_even_when_the_link_points_inside() {
    assert_refused(
        vec![
            M::Symlink("link", "bin"),
            M::File("link/extra", 0o644, b"x"),
        ],
        "refusing tarball entry \"link/extra\": it would be written through the symlink \"link\"",
    );
}

#[test]
fn a_chain_of_symlinks_that_only_escapes_on_disk_cannot_be_written_through() {
    // `up -> .` and `out -> up/..` look harmless as text; on disk `out` is the parent of the
    // extraction dir. Writing `out/escape` would put a file beside the install.
    assert_refused(
        vec![
            M::Symlink("up", "."),
            M::Symlink("out", "up/.."),
            M::File("out/escape", 0o644, b"x"),
        ],
        "refusing tarball entry \"out/escape\": it would be written through the symlink \"out\"",
    );
}

#[test]
fn a_hard_link_through_a_symlinked_directory_is_refused() {
    assert_refused(
        vec![
            M::Symlink("up", "."),
            M::Symlink("out", "up/.."),
            M::Hardlink("bin/stolen", "out/bin/tls-sidecar"),
        ],
        "refusing tarball entry \"bin/stolen\": it links to \"out/bin/tls-sidecar\", which the tarball does not contain",
    );
}

#[test]
fn a_symlink_chain_left_escaping_after_extraction_is_refused() {
    // Nothing is written through it, but a link out of deps/<idx> must not be installed either.
    assert_refused(
        vec![M::Symlink("up", "."), M::Symlink("bin/out", "../up/..")],
        "refusing tarball entry \"bin/out\": it links to \"../up/..\", outside the install directory",
    );
}

#[test]
fn fifos_and_device_nodes_are_refused() {
    for (kind, ty) in [
        ("fifo", EntryType::Fifo),
        ("character device", EntryType::Char),
        ("block device", EntryType::Block),
    ] {
        assert_refused(
            vec![M::Special("bin/node", ty)],
            &format!(
                "refusing tarball entry \"bin/node\": it is a {kind} (only files, directories and links are installed)"
            ),
        );
    }
}

#[test]
fn an_escaping_name_hidden_in_a_pax_or_gnu_long_name_header_is_refused() {
    // The plain header says bin/benign; the extended header that tar readers honour says
    // otherwise.
    assert_refused(
        vec![
            M::PaxPath("../../escape"),
            M::File("bin/benign", 0o644, b"x"),
        ],
        "refusing tarball entry \"../../escape\": it has a \"..\" component",
    );
    let long = format!("{}/../../../escape", "d".repeat(120));
    assert_refused(
        vec![M::GnuLongName(&long), M::File("bin/benign", 0o644, b"x")],
        &format!("refusing tarball entry \"{long}\": it has a \"..\" component"),
    );
    assert_refused(
        vec![
            M::PaxPath("/tmp/escape"),
            M::File("bin/benign", 0o644, b"x"),
        ],
        "refusing tarball entry \"/tmp/escape\": it has an absolute path",
    );
}

#[test]
fn a_truncated_tarball_whose_sha256_matches_is_reported_as_corrupt_and_installs_nothing() {
    // A bad tarball packaged with its own checksum: the first entries unpack, then the stream
    // ends. What had been unpacked must go too.
    let big: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let whole = tgz(&[
        M::Dir("bin/"),
        M::File("bin/tls-sidecar", 0o755, SIDECAR_BYTES),
        M::File("share/big", 0o644, &big),
    ]);
    let cut = &whole[..whole.len() / 2];
    let stage = Stage::cached(cut);
    stage.idx("0");
    let before = stage.tree();

    let run = stage.supply("0", &env());

    assert_eq!(run.code, 13, "{}", run.stdout);
    let lines = run.lines();
    assert!(
        lines[3].starts_with("       **ERROR** Could not install tls-sidecar 1.0.0: ")
            && (lines[3].contains("the tarball is not a valid .tgz: ")
                || lines[3].contains("cannot write tarball entry \"share/big\": ")),
        "{}",
        lines[3]
    );
    assert_eq!(lines[4..], REFUSED_TAIL);
    assert_eq!(stage.tree(), before, "something was written");
}

#[test]
fn a_tarball_without_the_sidecar_binary_installs_nothing_at_all() {
    let stage = Stage::cached(&tgz(&[
        M::Dir("bin/"),
        M::File("bin/other", 0o755, b"not the sidecar"),
        M::File("README", 0o644, b"hello"),
    ]));
    stage.idx("0");
    let before = stage.tree();

    let run = stage.supply("0", &env());

    assert_eq!(run.code, 13, "{}", run.stdout);
    assert_eq!(
        run.lines()[3..],
        [
            "       **ERROR** Could not install tls-sidecar 1.0.0: the dependency tarball has no bin/tls-sidecar",
            "       Nothing was installed.",
            "       The dependency tarball is not one the buildpack's packager builds (see docs/DESIGN.md).",
            "       Fix: package the buildpack again with scripts/package.sh and upload it (cf update-buildpack)",
        ]
    );
    assert_eq!(
        stage.tree(),
        before,
        "the tarball's other files were installed"
    );
}

#[test]
fn a_sidecar_that_is_a_symlink_is_not_accepted_as_the_binary() {
    let stage = Stage::cached(&tgz(&[
        M::Dir("bin/"),
        M::File("bin/real", 0o755, SIDECAR_BYTES),
        M::Symlink("bin/tls-sidecar", "real"),
    ]));
    stage.idx("0");
    let before = stage.tree();

    let run = stage.supply("0", &env());

    assert_eq!(run.code, 13, "{}", run.stdout);
    assert_eq!(
        run.lines()[3],
        "       **ERROR** Could not install tls-sidecar 1.0.0: the dependency tarball has no bin/tls-sidecar"
    );
    assert_eq!(stage.tree(), before, "something was installed");
}

#[test]
fn setuid_setgid_and_sticky_bits_from_the_tarball_are_dropped() {
    let stage = Stage::cached(&tgz(&[
        M::Dir("bin/"),
        M::File("bin/tls-sidecar", 0o4755, SIDECAR_BYTES),
        M::File("bin/helper", 0o6755, b"helper"),
        M::File("share/data", 0o1644, b"data"),
    ]));
    let dep = stage.idx("0");
    let before = stage.tree();

    let run = stage.supply("0", &env());

    assert_eq!(run.code, 0, "{}", run.stdout);
    let mode = |p: &str| fs::metadata(dep.join(p)).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode("bin/tls-sidecar"), 0o755);
    assert_eq!(mode("bin/helper"), 0o755);
    assert_eq!(mode("share/data"), 0o644);
    assert!(
        changed(&before, &stage.tree())
            .iter()
            .all(|p| p.starts_with("deps/0/")),
        "{:?}",
        changed(&before, &stage.tree())
    );
}
