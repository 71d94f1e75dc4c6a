#!/usr/bin/env bash
# Installs what building, packaging and testing the buildpack need and this machine lacks, and
# says what it installs. Debian/Ubuntu, as root. scripts/demo.sh, scripts/test.sh and .ci/run
# call it first, so each works as the very first command on a machine with only a Rust toolchain.
#
# Usage: scripts/setup.sh [--check]
#
#   --check   install nothing: list what is missing and exit 1 if anything is
#
# System packages: musl-tools (static musl binaries: aws-lc's C parts), openssl and curl (real TLS
# clients in the tests), iproute2 and util-linux (the CF emulation's network and mount
# namespaces, setpriv), python3 (the fixture app), zip and unzip (buildpack archives),
# nghttp2-client (h2load: HTTP/2 clients that misbehave on purpose), ca-certificates.
# Rust: the x86_64-unknown-linux-musl target, clippy and rustfmt.
set -euo pipefail

readonly PACKAGES=(musl-tools openssl curl iproute2 util-linux python3 zip unzip ca-certificates nghttp2-client)
readonly TARGET=x86_64-unknown-linux-musl
readonly COMPONENTS=(clippy rustfmt)

check=0
case "${1:-}" in
  "") ;;
  --check) check=1 ;;
  -h | --help) sed -n '2,/^set -euo pipefail/{/^set /d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; exit 0 ;;
  *) echo "       **ERROR** unknown argument '$1' (see scripts/setup.sh --help)" >&2; exit 64 ;;
esac

say() { printf -- '-----> %s\n' "$*" >&2; }
detail() { printf -- '       %s\n' "$*" >&2; }
die() { printf -- '       **ERROR** %s\n' "$*" >&2; exit 1; }

command -v cargo > /dev/null && command -v rustup > /dev/null \
  || die "cargo and rustup are needed (the one thing this script does not install). Fix: install Rust with rustup"

missing_packages=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2> /dev/null | grep -q "install ok installed" || missing_packages+=("$p")
done
missing_rust=()
rustup target list --installed | grep -qx "$TARGET" || missing_rust+=("target $TARGET")
for c in "${COMPONENTS[@]}"; do
  rustup component list --installed | grep -q "^$c" || missing_rust+=("component $c")
done

if ((${#missing_packages[@]} == 0 && ${#missing_rust[@]} == 0)); then
  say "Tools: all present"
  exit 0
fi
if ((check)); then
  say "Missing (scripts/setup.sh installs them)"
  for m in "${missing_packages[@]}" "${missing_rust[@]}"; do detail "$m"; done
  exit 1
fi

if ((${#missing_packages[@]})); then
  [[ $(id -u) -eq 0 ]] || die "installing ${missing_packages[*]} needs root. Fix: sudo $0"
  say "Installing system packages: ${missing_packages[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing_packages[@]}" > /dev/null
fi
if ((${#missing_rust[@]})); then
  say "Installing Rust pieces: ${missing_rust[*]}"
  rustup target list --installed | grep -qx "$TARGET" || rustup target add "$TARGET"
  for c in "${COMPONENTS[@]}"; do
    rustup component list --installed | grep -q "^$c" || rustup component add "$c"
  done
fi
