#!/usr/bin/env bash
# The main job, end to end on this machine: package the buildpack, stage a fixture app with it
# through the local Cloud Foundry emulation (supply + a libbuildpack-style final buildpack),
# launch the droplet as CF would (uid vcap, its own network namespace, the sidecar beside the
# web process), and call the app over HTTPS on the sidecar port with curl and openssl.
#
#   ./scripts/demo.sh [--hold]      --hold keeps the instance running until Enter
#
# Needs root (namespaces). Installs what is missing first (scripts/setup.sh says what).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

if [ "$(id -u)" -ne 0 ]; then
  echo "       **ERROR** The local CF emulation needs root for its network and mount namespaces." >&2
  echo "       Run: sudo ./scripts/demo.sh" >&2
  exit 1
fi

./scripts/setup.sh

echo "-----> Packaging the buildpack (cached, cflinuxfs4)"
zip="$(./scripts/package.sh --cached --output "$root/out" | tail -n 1)"
echo "       $zip"
echo

echo "-----> cf push demo-app -b tls_sidecar_buildpack -b <a libbuildpack-style final buildpack>"
exec cargo run -q --locked -p tls-sidecar-integration --bin cf-local -- \
  push --name demo-app --app fixtures/apps/http-app -b "$zip" -b fixture:libbuildpack-final "$@"
