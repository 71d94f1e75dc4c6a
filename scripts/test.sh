#!/usr/bin/env bash
# Everything CI runs: format, lints, unit tests, then the packaged buildpack end to end through
# the local Cloud Foundry emulation. Needs root for the emulation's namespaces (CI runs as root).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

step() { printf -- '-----> %s\n' "$*"; }

# A fresh machine has only a Rust toolchain: install the rest (and say what) before anything.
./scripts/setup.sh

# One build of everything, once: incremental caches would only add gigabytes to target/.
export CARGO_INCREMENTAL=0

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "Dependency policy: licences, bans (a second crypto provider), sources"
# Advisories need the RustSec database from GitHub, which this CI cannot reach
# (docs/RELIABILITY.md); run `cargo deny check advisories` where it can.
cargo deny --version >/dev/null 2>&1 || cargo install cargo-deny --locked
cargo deny --locked check licenses bans sources

step "Fuzzing smoke (every target, briefly; scripts/fuzz.sh --seconds 600 for a real run)"
./scripts/fuzz.sh --seconds "${FUZZ_SECONDS:-10}"

step "Packaging the buildpack (cached and uncached)"
zips="$root/target/test-zips"
TLS_SIDECAR_BUILDPACK_ZIP="$(./scripts/package.sh --cached --output "$zips" | tail -n 1)"
TLS_SIDECAR_BUILDPACK_ZIP_UNCACHED="$(./scripts/package.sh --uncached --dependency-uri-base "file://$zips" \
  --output "$zips" | tail -n 1)"
export TLS_SIDECAR_BUILDPACK_ZIP TLS_SIDECAR_BUILDPACK_ZIP_UNCACHED
printf '       %s\n       %s\n' "$TLS_SIDECAR_BUILDPACK_ZIP" "$TLS_SIDECAR_BUILDPACK_ZIP_UNCACHED"

step "Unit and end-to-end tests"
cargo test --workspace --locked -- --include-ignored
