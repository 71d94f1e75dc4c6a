#!/usr/bin/env bash
# libbuildpack's `pre_package` hook (manifest.yml): builds what include_files names but the
# repository does not hold, lib/tls-sidecar-buildpack (the static multi-call binary the bin/
# shims exec). libbuildpack's buildpack-packager runs it in a copy of the repository before it
# zips include_files. scripts/package.sh does not need it: it builds the binaries itself. Why
# buildpack-packager still cannot make a working zip of this buildpack: docs/DESIGN.md,
# "manifest.yml".
set -euo pipefail
readonly TARGET=x86_64-unknown-linux-musl
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

./scripts/setup.sh
echo "-----> Building tls-sidecar-buildpack (release, $TARGET) into lib/" >&2
cargo build --release --locked --target "$TARGET" -p tls-sidecar-buildpack >&2
target_dir="$(cargo metadata --format-version 1 --no-deps --locked \
  | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
mkdir -p lib
install -m 0755 "$target_dir/$TARGET/release/tls-sidecar-buildpack" lib/tls-sidecar-buildpack
