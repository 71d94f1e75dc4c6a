#!/usr/bin/env bash
# Soak the packaged sidecar inside the local CF emulation: mixed load (keep-alive and new
# connections, tcp and http mode, HTTP/1.1 and HTTP/2) for N seconds, then its RSS and open file
# descriptors must be back at their post-warm-up values (integration/tests/soak.rs).
# Needs root, like every end-to-end test.
#
#   scripts/soak.sh                 60 s (what scripts/test.sh runs as part of the suite)
#   scripts/soak.sh --seconds 3600  an hour
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

usage() { echo "usage: $0 [--seconds N]" >&2; exit 64; }

seconds=60
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) [ $# -ge 2 ] || usage; seconds="$2"; shift 2 ;;
    --seconds=*) seconds="${1#--seconds=}"; shift ;;
    -h|--help) usage ;;
    *) echo "unknown argument: $1" >&2; usage ;;
  esac
done
case "$seconds" in
  ''|*[!0-9]*) echo "--seconds takes a whole number of seconds, not \"$seconds\"" >&2; exit 64 ;;
esac

echo "-----> Soaking the sidecar for ${seconds}s"
TLS_SIDECAR_SOAK_SECONDS="$seconds" exec cargo test -p tls-sidecar-integration --locked --test soak \
  -- --include-ignored --nocapture
