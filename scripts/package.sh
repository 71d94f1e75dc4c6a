#!/usr/bin/env bash
# Packages the TLS sidecar buildpack for `cf create-buildpack`.
#
# Usage: scripts/package.sh [--cached|--uncached] [--stack cflinuxfs4|cflinuxfs3|cflinuxfs5|any]
#                           [--version V] [--output DIR] [--dependency-uri-base URL]
#
#   --cached               put the tls-sidecar tarball into the zip: staging downloads nothing
#                          (default)
#   --uncached             leave it out; supply downloads it from the manifest's uri, so this
#                          needs --dependency-uri-base: publish the tarball there (see README)
#   --stack S              the stack the zip is for (default cflinuxfs4; `any` = every stack)
#   --version V            the version to package (default: the VERSION file)
#   --output DIR           where the zip, the tarball, their .sha256 files and the zip's SBOM
#                          (<zip>.cdx.json, CycloneDX) go (default: out/ in the repository; a
#                          relative DIR is relative to the current directory)
#   --dependency-uri-base URL
#                          where you will publish the tarball (required with --uncached;
#                          TLS_SIDECAR_DEPENDENCY_URI_BASE sets it too)
#
# Builds the static musl binaries tls-sidecar and tls-sidecar-buildpack (release profile), then
# runs tls-sidecar-packager, which checks that both are static, builds the tarball, the manifest
# and the zip, and writes the SBOM from `cargo metadata` (SOURCE_DATE_EPOCH, if set, dates it).
# Progress goes to stderr; the LAST line of stdout is the zip's absolute path, and nothing else
# is printed on stdout. Works from any directory.
set -euo pipefail

readonly TARGET=x86_64-unknown-linux-musl

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() {
  # The header comment above, without the leading "# ".
  sed -n '2,/^set -euo pipefail/{/^set /d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
}

die() {
  echo "       **ERROR** $*" >&2
  exit 1
}

step() {
  echo "-----> $*" >&2
}

# A value for option $1, or an error if the command line ends first.
need_value() {
  [[ $2 -ge 2 ]] || die "$1 needs a value (see scripts/package.sh --help)"
}

cached=--cached
stack=cflinuxfs4
version=""
output=""
uri_base=""
while (($#)); do
  case "$1" in
    --cached | --uncached) cached="$1"; shift ;;
    --stack) need_value "$1" $#; stack="$2"; shift 2 ;;
    --stack=*) stack="${1#*=}"; shift ;;
    --version) need_value "$1" $#; version="$2"; shift 2 ;;
    --version=*) version="${1#*=}"; shift ;;
    --output) need_value "$1" $#; output="$2"; shift 2 ;;
    --output=*) output="${1#*=}"; shift ;;
    --dependency-uri-base) need_value "$1" $#; uri_base="$2"; shift 2 ;;
    --dependency-uri-base=*) uri_base="${1#*=}"; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument '$1' (see scripts/package.sh --help)" ;;
  esac
done

uri_base="${uri_base:-${TLS_SIDECAR_DEPENDENCY_URI_BASE:-}}"
if [[ $cached == --uncached && -z $uri_base ]]; then
  die "--uncached needs --dependency-uri-base URL: the uncached buildpack downloads the tarball
       at staging from URL/tls-sidecar-<version>-linux-x64.tgz, and nobody publishes it unless you
       do (see README, \"Uncached buildpack\"). Or leave out --uncached: the cached zip downloads
       nothing."
fi

case "$stack" in
  cflinuxfs3 | cflinuxfs4 | cflinuxfs5 | any) ;;
  *) die "unknown stack '$stack': expected cflinuxfs3, cflinuxfs4, cflinuxfs5 or any" ;;
esac

# Resolve the output directory against the caller's directory before leaving it.
if [[ -z $output ]]; then
  output="$repo_root/out"
elif [[ $output != /* ]]; then
  output="$PWD/$output"
fi

# From here on cargo runs in the repository, so its config and toolchain files apply whatever the
# caller's directory.
cd "$repo_root"

# Both checks come before the build so that a missing toolchain piece reads as one clear line
# instead of a linker or cc-rs error minutes into the build.
if [[ ! -d "$(rustc --print sysroot)/lib/rustlib/$TARGET" ]]; then
  die "the Rust target $TARGET is not installed; the buildpack ships static musl binaries so that
       they run on every stack. Fix: rustup target add $TARGET"
fi
if ! command -v musl-gcc > /dev/null; then
  die "musl-gcc not found; it compiles the C parts of the TLS library (aws-lc) for $TARGET.
       Fix: apt-get install musl-tools"
fi

step "Building tls-sidecar and tls-sidecar-buildpack (release, $TARGET)"
# JSON messages on stdout tell where cargo put the executables (this respects CARGO_TARGET_DIR
# and any build.target-dir); cargo's own progress and diagnostics stay on stderr.
messages="$(cargo build --release --locked --target "$TARGET" \
  -p tls-sidecar -p tls-sidecar-buildpack --message-format=json-render-diagnostics)" \
  || die "cargo build failed (see above)"

executable() {
  local path
  while IFS= read -r path; do
    if [[ ${path##*/} == "$1" ]]; then
      echo "$path"
      return 0
    fi
  done < <(sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' <<< "$messages")
  die "cargo built no executable named $1"
}
sidecar="$(executable tls-sidecar)"
buildpack="$(executable tls-sidecar-buildpack)"

# The SBOM lists the crates of both binaries as cargo resolves them for the target.
metadata="$(mktemp)"
trap 'rm -f "$metadata"' EXIT
cargo metadata --format-version 1 --locked --filter-platform "$TARGET" > "$metadata" \
  || die "cargo metadata failed (see above)"

args=(--sidecar "$sidecar" --buildpack-binary "$buildpack" --repo-root "$repo_root"
  "$cached" --stack "$stack" --output "$output" --cargo-metadata "$metadata")
[[ -z $version ]] || args+=(--version "$version")
[[ -z $uri_base ]] || args+=(--dependency-uri-base "$uri_base")

# The packager is a host program; release, because deflating a few megabytes of binaries in a
# debug build is slow. Its stdout is the zip path and nothing else.
zip="$(cargo run --release --locked -q -p tls-sidecar-packager -- "${args[@]}")" \
  || die "packaging failed (see above)"
echo "$zip"
