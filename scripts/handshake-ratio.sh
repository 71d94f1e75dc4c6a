#!/usr/bin/env bash
# Full TLS 1.3 server handshakes against the real sidecar (the static release binary the
# buildpack ships), once serving a Diego-shaped instance identity (RSA-3072, PKCS#1) and once a
# minted certificate (ECDSA P-256 from a bound CA): handshakes per second, the sidecar's CPU time
# per handshake, and the ECDSA/RSA ratio.
#
#   scripts/handshake-ratio.sh [SECONDS_PER_MODE]     (default 10)
#
# The client is `openssl s_time -new` (a full handshake per connection, no resumption), run on
# this machine against 127.0.0.1 only. Handshakes per sidecar CPU-second is the figure that
# compares the two keys: the client shares the machine, so wall-clock rates include its work.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
seconds="${1:-10}"
target=x86_64-unknown-linux-musl

die() { printf '       **ERROR** %s\n' "$*" >&2; exit 1; }
for tool in openssl curl awk; do
  command -v "$tool" >/dev/null || die "$tool is needed (apt-get install $tool)"
done

printf -- '-----> Building the release sidecar (%s)\n' "$target"
(cd "$root" && cargo build --release --locked --target "$target" -p tls-sidecar >&2)
bin="$root/target/$target/release/tls-sidecar"
[ -x "$bin" ] || die "no sidecar binary at $bin"

work="$(mktemp -d)"
pid=""
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
cd "$work"

printf -- '-----> Making certificates\n'
ossl() { openssl "$@" >/dev/null 2>&1 || die "openssl $*"; }
cat > ext.cnf <<'EOF'
[req]
distinguished_name = dn
[dn]
[ca]
basicConstraints = critical,CA:true
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[leaf]
keyUsage = critical,digitalSignature,keyEncipherment,keyAgreement
extendedKeyUsage = serverAuth,clientAuth
subjectAltName = DNS:4e0a8b9c-1d2e-4f3a-5b6c-7d8e9f0a1b2c,IP:127.0.0.1
EOF
# Diego: appRootCA -> instanceIdentityCA (RSA, PKCS#1) -> RSA-3072 leaf, three OUs in one RDN.
ossl genrsa -traditional -out root.key 2048
ossl req -x509 -new -key root.key -subj /CN=appRootCA -days 2 -config ext.cnf -extensions ca -out root.crt
ossl genrsa -traditional -out int.key 2048
ossl req -new -key int.key -subj /CN=instanceIdentityCA -config ext.cnf -out int.csr
ossl x509 -req -in int.csr -CA root.crt -CAkey root.key -set_serial 2 -days 2 -extfile ext.cnf -extensions ca -out int.crt
ossl genrsa -traditional -out instance.key 3072
ossl req -new -key instance.key -config ext.cnf -out leaf.csr \
  -subj "/OU=organization:0f8a4d6e-6c61-4c39-a6d0-2b0d6c1f8b11+OU=space:5c4d1b0e-2a3f-4e5d-9c8b-7a6f5e4d3c2b+OU=app:9e8d7c6b-5a4f-4e3d-8c2b-1a0f9e8d7c6b/CN=4e0a8b9c-1d2e-4f3a-5b6c-7d8e9f0a1b2c"
ossl x509 -req -in leaf.csr -CA int.crt -CAkey int.key -set_serial 3 -days 1 -extfile ext.cnf -extensions leaf -out leaf.crt
cat leaf.crt int.crt > instance.crt
# The minting CA: ECDSA P-256, as a platform team would bind it.
ossl ecparam -name prime256v1 -genkey -noout -out mint.key
ossl req -x509 -new -key mint.key -subj /CN=internalCA -days 2 -config ext.cnf -extensions ca -out mint.crt
json_pem() { awk '{printf "%s\\n", $0}' "$1"; }
vcap_services="{\"user-provided\":[{\"name\":\"internal-ca\",\"credentials\":{\"ca_certificate\":\"$(json_pem mint.crt)\",\"ca_private_key\":\"$(json_pem mint.key)\"}}]}"
vcap_application='{"application_id":"9e8d7c6b-5a4f-4e3d-8c2b-1a0f9e8d7c6b","space_id":"5c4d1b0e-2a3f-4e5d-9c8b-7a6f5e4d3c2b","organization_id":"0f8a4d6e-6c61-4c39-a6d0-2b0d6c1f8b11","application_uris":["backend.apps.internal"],"instance_index":0}'

free_port() {
  local p
  while :; do
    p=$(( 20000 + RANDOM % 20000 ))
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
  done
}

clk_tck="$(getconf CLK_TCK)"
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# run_mode NAME SOURCE: starts the sidecar, runs s_time, prints "NAME handshakes wall_rate cpu_per_hs".
run_mode() {
  local name="$1" source="$2" port admin
  port="$(free_port)"; admin="$(free_port)"
  cat > "$name.yml" <<EOF
listeners:
  - port: $port
    mode: http
certificate:
  source: $source
  service: internal-ca
admin:
  listen: 127.0.0.1:$admin
log:
  level: warn
EOF
  [ "$source" = instance ] && sed -i '/service: internal-ca/d' "$name.yml"
  env -i PORT=8080 CF_INSTANCE_CERT="$work/instance.crt" CF_INSTANCE_KEY="$work/instance.key" \
    CF_INSTANCE_GUID=4e0a8b9c-1d2e-4f3a-5b6c-7d8e9f0a1b2c CF_INSTANCE_INTERNAL_IP=127.0.0.1 \
    VCAP_APPLICATION="$vcap_application" VCAP_SERVICES="$vcap_services" \
    "$bin" --config "$work/$name.yml" > "$name.log" 2>&1 &
  pid=$!
  local i
  for i in $(seq 1 200); do
    curl -fsS "http://127.0.0.1:$admin/ready" >/dev/null 2>&1 && break
    kill -0 "$pid" 2>/dev/null || die "the sidecar exited: $(cat "$name.log")"
    sleep 0.05
  done
  curl -fsS "http://127.0.0.1:$admin/ready" >/dev/null || die "the sidecar never became ready: $(cat "$name.log")"
  local key
  key="$(echo | openssl s_client -connect "127.0.0.1:$port" -tls1_3 2>/dev/null | awk -F': ' '/^Peer signature type|^Server Temp Key|Peer signing digest/ {printf "%s; ", $2}')"
  local before after out count
  before="$(cpu_ticks "$pid")"
  out="$(openssl s_time -connect "127.0.0.1:$port" -new -tls1_3 -time "$seconds" 2>&1)"
  after="$(cpu_ticks "$pid")"
  count="$(printf '%s\n' "$out" | awk '/connections in .* real seconds/ {print $1; exit}')"
  real="$(printf '%s\n' "$out" | awk '/connections in .* real seconds/ {print $4; exit}')"
  [ -n "$count" ] && [ "$count" -gt 0 ] || die "s_time made no connections: $out"
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
  awk -v n="$name" -v c="$count" -v r="$real" -v t=$(( after - before )) -v hz="$clk_tck" -v k="$key" 'BEGIN {
    cpu = t / hz
    printf "%-8s %7d handshakes in %3d s: %7.1f/s wall; sidecar CPU %.3f ms/handshake = %7.0f handshakes per core-second  (%s)\n",
      n, c, r, c / r, cpu * 1000 / c, (cpu > 0 ? c / cpu : 0), k
    print n, c / r, (cpu > 0 ? c / cpu : 0) > "/dev/stderr"
  }' 2>> results
}

printf -- '-----> Full TLS 1.3 handshakes, %s s per mode (openssl s_time -new)\n' "$seconds"
run_mode rsa3072 instance
run_mode ecdsa minted
awk '
  $1 == "rsa3072" { rw = $2; rc = $3 }
  $1 == "ecdsa"   { ew = $2; ec = $3 }
  END {
    printf "ECDSA P-256 / RSA-3072: %.1fx handshakes per sidecar core-second, %.1fx wall-clock rate\n", ec / rc, ew / rw
  }' results
