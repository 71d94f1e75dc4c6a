#!/usr/bin/env bash
# Benchmarks tls-sidecar against nginx, HAProxy, stunnel and hitch on this machine and writes
# docs/benchmarks.md and docs/benchmarks.svg.
#
# Usage: scripts/bench.sh [--quick] [--duration S] [--reps N] [--peers LIST] [--no-docs]
#                         [--rev REV | --sidecar BIN] [--zip ZIP | --no-package] [--work DIR]
#                         [--also-results FILE]...
#
#   --quick          short smoke run: 1 s windows, 1 repetition, 200/1,000 idle connections,
#                    does not touch docs/ unless --docs is given
#   --duration S     length of each measured window in seconds (default 6)
#   --reps N         repetitions of every measurement, interleaved across peers (default 3)
#   --peers LIST     comma-separated subset of: tls-sidecar-tcp, tls-sidecar-http,
#                    tls-sidecar-tcp-musl, nginx-http, nginx-stream, haproxy-tcp, haproxy-http,
#                    stunnel, hitch (default: all)
#   --docs/--no-docs write docs/benchmarks.md and docs/benchmarks.svg (default: yes unless --quick)
#   --rev REV        measure git revision REV (e.g. HEAD) instead of the working tree: it is
#                    exported to the work directory and built there (target dir target/bench-rev)
#   --sidecar BIN    measure this tls-sidecar binary instead of building one
#   --zip ZIP        time bin/supply on this cached buildpack zip instead of packaging one (its
#                    dependency tarball is also the musl peer)
#   --no-package     skip scripts/package.sh --cached (no supply timing, no musl peer)
#   --wait-quiet S   before measuring, wait up to S seconds for the 1-minute load average to drop
#                    below 0.5 (default 600; 0 with --quick); measures anyway after that
#   --work DIR       where configs, logs and results.jsonl go (default target/bench/<timestamp>)
#   --also-results FILE
#                    an earlier run's results.jsonl (repeatable): the report adds the table
#                    "tcp mode lead per run" over this run and those (the issue asks for the lead
#                    in each of three consecutive full runs)
#
# Phases, each interleaved over the peers: (1) keep-alive HTTP/1.1, (2) HTTP/2 (peers that speak
# h2: tls-sidecar-http, nginx-http, haproxy-http), (3) plaintext HTTP/1.1 to the same processes'
# plaintext listeners (tls-sidecar-http's route port, nginx-http's and haproxy-http's plain
# server), (4) full and (5) resumed TLS handshakes, (6) bulk, (7) latency at a fixed rate, (8) RSS
# with idle connections. The client presents a second Diego-shaped identity (a calling app in the
# same org and space) whenever a peer asks: the three http-mode peers require and verify it and
# send X-Forwarded-Client-Cert to the upstream; the tcp-mode peers do not ask.
#
# Needs root on Debian/Ubuntu (it apt-get installs nginx, libnginx-mod-stream, haproxy, stunnel4,
# hitch and wrk when missing, without starting their services) and at least 2 CPUs: every
# terminator runs pinned to CPU 0 (taskset -c 0), the load generator (tls-sidecar-bench) and the
# plaintext upstream on CPU 1. Everything listens on 127.0.0.1 only; every process the script
# starts is stopped on exit, also on failure or Ctrl-C. Run it on a quiet machine: it prints the
# load average and records it in the report.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly repo_root
readonly ALL_PEERS="tls-sidecar-tcp tls-sidecar-http tls-sidecar-tcp-musl nginx-http nginx-stream haproxy-tcp haproxy-http stunnel hitch"
readonly GUID=4e0a8b9c-1d2e-4f3a-5b6c-7d8e9f0a1b2c
readonly ORG=0f8a1c2d-3e4f-4a5b-8c6d-7e8f9a0b1c2d
readonly SPACE=5c4d3e2f-1a0b-4c9d-8e7f-6a5b4c3d2e1f
# The calling app whose identity the client presents to peers that ask (same org and space).
readonly CLIENT_GUID=8d7c6b5a-4f3e-4d2c-9b1a-0f9e8d7c6b5a
readonly UPSTREAM_PORT=18080
readonly CONNS=64
# HTTP/2: 8 connections × 8 streams = the 64 requests in flight of the HTTP/1.1 phases.
readonly H2_CONNS=8
readonly H2_STREAMS=8
# The peers measured in the HTTP/2 phase and those with a plaintext listener (plain phase).
readonly H2_PEERS="tls-sidecar-http nginx-http haproxy-http"
readonly PLAIN_PEERS="tls-sidecar-http nginx-http haproxy-http"

usage() {
  sed -n '2,/^set -euo pipefail/{/^set /d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}
die() {
  echo "bench: error: $*" >&2
  exit 1
}
step() {
  echo "-----> $*" >&2
}
need_value() {
  [[ $2 -ge 2 ]] || die "$1 needs a value (see --help)"
}

duration=6
duration_given=0
reps=3
quick=0
docs=""
peers_arg=""
sidecar_bin=""
rev=""
zip=""
package=1
work=""
wait_quiet=""
also_results=()
while (($#)); do
  case "$1" in
    --quick) quick=1; shift ;;
    --duration) need_value "$1" $#; duration="$2"; duration_given=1; shift 2 ;;
    --reps) need_value "$1" $#; reps="$2"; shift 2 ;;
    --peers) need_value "$1" $#; peers_arg="$2"; shift 2 ;;
    --docs) docs=1; shift ;;
    --no-docs) docs=0; shift ;;
    --sidecar) need_value "$1" $#; sidecar_bin="$(realpath "$2")"; shift 2 ;;
    --rev) need_value "$1" $#; rev="$2"; shift 2 ;;
    --zip) need_value "$1" $#; zip="$(realpath "$2")"; shift 2 ;;
    --no-package) package=0; shift ;;
    --work) need_value "$1" $#; work="$2"; shift 2 ;;
    --wait-quiet) need_value "$1" $#; wait_quiet="$2"; shift 2 ;;
    --also-results)
      need_value "$1" $#
      [[ -f $2 ]] || die "--also-results $2: no such file"
      also_results+=("$(realpath "$2")")
      shift 2
      ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
if ((quick)); then
  ((duration_given)) || duration=1
  reps=1
  idle_steps="200,1000"
  speed_seconds=1
  supply_reps=5
else
  # 9,900 rather than 10,000: this sandbox's hard open-file limit is 20,000 and a tcp proxy holds
  # two descriptors per connection (client + upstream).
  idle_steps="1000,9900"
  speed_seconds=3
  supply_reps=15
fi
[[ -n $docs ]] || docs=$((quick ? 0 : 1))
[[ -n $wait_quiet ]] || wait_quiet=$((quick ? 0 : 600))
[[ $wait_quiet =~ ^[0-9]+$ ]] || die "--wait-quiet must be a number of seconds"
[[ $duration =~ ^[0-9]+([.][0-9]+)?$ ]] || die "--duration must be a number of seconds"
[[ $reps =~ ^[1-9][0-9]?$ ]] || die "--reps must be 1..99"
peers=()
for p in ${peers_arg//,/ }; do
  [[ " $ALL_PEERS " == *" $p "* ]] || die "unknown peer '$p' (one of: $ALL_PEERS)"
  peers+=("$p")
done
((${#peers[@]})) || read -r -a peers <<< "$ALL_PEERS"

[[ $(uname -s) == Linux ]] || die "Linux only (taskset, /proc)"
(($(nproc --all) >= 2)) || die "needs at least 2 CPUs (terminators on CPU 0, load on CPU 1)"
[[ $(id -u) == 0 ]] || die "run as root (apt-get, 10,000 sockets, nginx/hitch users)"

# The hard open-file limit of this machine (raising it needs CAP_SYS_RESOURCE).
ulimit -n "$(ulimit -Hn)"
(($(ulimit -n) >= 20000)) || echo "bench: warning: open-file limit $(ulimit -n): the idle test may fail" >&2

timestamp="$(date -u +%Y%m%dT%H%M%SZ)"
[[ -n $work ]] || work="$repo_root/target/bench/$timestamp"
mkdir -p "$work"
work="$(cd "$work" && pwd)"
results="$work/results.jsonl"
: > "$results"
started_pids=()
policy_rc_created=0

# Stops every process this script started (and their descendants), by pid.
descendants() {
  local pid=$1 child
  for child in $(ps -o pid= --ppid "$pid" 2> /dev/null); do
    descendants "$child"
    echo "$child"
  done
}
stop_pid() {
  local pid=$1 all i
  kill -0 "$pid" 2> /dev/null || return 0
  all="$(descendants "$pid") $pid"
  kill -TERM "$pid" 2> /dev/null || true
  for ((i = 0; i < 50; i++)); do
    kill -0 "$pid" 2> /dev/null || break
    sleep 0.1
  done
  # shellcheck disable=SC2086
  kill -KILL $all 2> /dev/null || true
  wait "$pid" 2> /dev/null || true
}
cleanup() {
  local pid
  for pid in "${started_pids[@]}"; do
    stop_pid "$pid"
  done
  if ((policy_rc_created)); then rm -f /usr/sbin/policy-rc.d; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------------
step "Work directory: $work"

step "Installing the peers from Debian when missing"
declare -A want=([nginx]=nginx [haproxy]=haproxy [stunnel4]=stunnel4 [hitch]=hitch [wrk]=wrk)
missing=()
for cmd in "${!want[@]}"; do
  command -v "$cmd" > /dev/null || missing+=("${want[$cmd]}")
done
[[ -e /usr/lib/nginx/modules/ngx_stream_module.so ]] || missing+=(libnginx-mod-stream)
command -v unzip > /dev/null || missing+=(unzip)
if ((${#missing[@]})); then
  echo "       apt-get install ${missing[*]}" >&2
  # Keep Debian's maintainer scripts from starting the services (port 80 etc.).
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    policy_rc_created=1
  fi
  apt-get update -q > "$work/apt.log" 2>&1 || die "apt-get update failed (see $work/apt.log)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" \
    >> "$work/apt.log" 2>&1 || die "apt-get install failed (see $work/apt.log)"
fi

step "Building the load generator and the sidecar (release)"
cd "$repo_root"
cargo build --release -q -p tls-sidecar-bench || die "cargo build -p tls-sidecar-bench failed"
bench="$repo_root/target/release/tls-sidecar-bench"
src_root="$repo_root"
if [[ -n $rev ]]; then
  # A committed revision, built apart from the working tree (which may be mid-edit).
  git -C "$repo_root" rev-parse --verify -q "$rev^{commit}" > /dev/null || die "--rev $rev is not a commit"
  src_root="$work/src"
  mkdir -p "$src_root"
  rev_hash="$(git -C "$repo_root" rev-parse --short "$rev^{commit}")"
  # -m: files get the time of extraction, not of the commit. With the commit's time, a build
  # of an older revision made since looks newer than these sources to cargo, which then keeps
  # that binary and measures the wrong revision.
  git -C "$repo_root" archive "$rev_hash" | tar -x -m -C "$src_root"
  export CARGO_TARGET_DIR="$repo_root/target/bench-rev"
  echo "       building $rev ($rev_hash) in $src_root" >&2
fi
if [[ -z $sidecar_bin ]]; then
  (cd "$src_root" && cargo build --release -q --locked -p tls-sidecar) \
    || die "cargo build -p tls-sidecar failed (measure a commit with --rev HEAD, or pass --sidecar BIN)"
  sidecar_bin="${CARGO_TARGET_DIR:-$repo_root/target}/release/tls-sidecar"
fi
[[ -x $sidecar_bin ]] || die "$sidecar_bin is not executable"

if [[ -z $zip ]] && ((package)); then
  step "Packaging the cached buildpack (scripts/package.sh --cached)"
  if zip="$("$src_root/scripts/package.sh" --cached --stack cflinuxfs4 --output "$work/package" 2> "$work/package.log" | tail -n 1)" && [[ -f $zip ]]; then
    :
  else
    echo "       packaging failed (see $work/package.log): no supply timing, no musl peer" >&2
    zip=""
  fi
fi
musl_bin=""
if [[ -n $zip ]]; then
  bp="$work/buildpack"
  mkdir -p "$bp" "$work/musl"
  unzip -q -o "$zip" -d "$bp"
  tarball="$(find "$bp/dependencies" -name 'tls-sidecar-*-linux-x64.tgz' 2> /dev/null | head -n 1)"
  if [[ -n $tarball ]]; then
    tar -xzf "$tarball" -C "$work/musl"
    musl_bin="$work/musl/bin/tls-sidecar"
  fi
fi

# ---------------------------------------------------------------------------------------------
quiet() { awk -v l="$(cut -d' ' -f1 /proc/loadavg)" 'BEGIN { exit !(l < 0.5) }'; }
if ! quiet && ((wait_quiet > 0)); then
  step "Waiting up to $wait_quiet s for a quiet machine (1-min load < 0.5; now $(cut -d' ' -f1 /proc/loadavg))"
  for ((waited = 0; waited < wait_quiet; waited += 10)); do
    quiet && break
    sleep 10
  done
fi
load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
echo "       load average before measuring: $load_before (1, 5, 15 min)" >&2
quiet || echo "       WARNING: the machine is not quiet (1-min load >= 0.5); results will be noisy" >&2

# ---------------------------------------------------------------------------------------------
step "Certificates: Diego-shaped RSA-3072 instance identities (root CA → intermediate → leaves)"
certs="$work/certs"
mkdir -p "$certs/system"
(
  cd "$certs"
  cat > ext.cnf << EOF
[ca]
basicConstraints=critical,CA:TRUE
keyUsage=critical,keyCertSign,cRLSign
subjectKeyIdentifier=hash
[int]
basicConstraints=critical,CA:TRUE,pathlen:0
keyUsage=critical,keyCertSign,cRLSign
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
[leaf]
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=DNS:$GUID,IP:127.0.0.1
authorityKeyIdentifier=keyid
[client]
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth,serverAuth
subjectAltName=DNS:$CLIENT_GUID
authorityKeyIdentifier=keyid
EOF
  openssl genrsa -traditional -out ca.key 3072 2> /dev/null
  openssl req -x509 -new -key ca.key -subj "/CN=bench instance identity root CA" -days 7 \
    -sha256 -extensions ca -config ext.cnf -out ca.crt 2> /dev/null
  openssl genrsa -traditional -out int.key 3072 2> /dev/null
  openssl req -new -key int.key -subj "/CN=bench instance identity intermediate CA" -out int.csr
  openssl x509 -req -in int.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 7 -sha256 \
    -extfile ext.cnf -extensions int -out int.crt 2> /dev/null
  openssl genrsa -traditional -out instance.key 3072 2> /dev/null
  openssl req -new -key instance.key -out leaf.csr \
    -subj "/OU=organization:$ORG+OU=space:$SPACE+OU=app:$GUID/CN=$GUID"
  openssl x509 -req -in leaf.csr -CA int.crt -CAkey int.key -CAcreateserial -days 7 -sha256 \
    -extfile ext.cnf -extensions leaf -out leaf.crt 2> /dev/null
  cat leaf.crt int.crt > instance.crt     # chain = leaf + intermediate, as Diego writes it
  # The calling app's instance identity, shaped the same way: what the client presents.
  openssl genrsa -traditional -out client.key 3072 2> /dev/null
  openssl req -new -key client.key -out client.csr \
    -subj "/OU=organization:$ORG+OU=space:$SPACE+OU=app:$CLIENT_GUID/CN=$CLIENT_GUID"
  openssl x509 -req -in client.csr -CA int.crt -CAkey int.key -CAcreateserial -days 7 -sha256 \
    -extfile ext.cnf -extensions client -out client-leaf.crt 2> /dev/null
  cat client-leaf.crt int.crt > client.crt
  cat instance.crt instance.key > combined.pem   # HAProxy and hitch want one file
  cp ca.crt system/trusted-ca-1.crt
  chmod 644 ./*.crt ./*.pem ./*.key
) || die "certificate generation failed"

# ---------------------------------------------------------------------------------------------
declare -A port admin plain_port pid_of skip
i=0
for p in $ALL_PEERS; do
  port[$p]=$((18443 + i))
  admin[$p]=$((18540 + i))
  [[ " $PLAIN_PEERS " == *" $p "* ]] && plain_port[$p]=$((18640 + i))
  i=$((i + 1))
done
# What every client subcommand presents when a peer asks for a client certificate.
client_id=(--cert "$certs/client.crt" --key "$certs/client.key")

# Fills a template from bench/ into the work directory.
render() { # render TEMPLATE PEER OUT
  sed -e "s#@DIR@#$work#g" -e "s#@PORT@#${port[$2]}#g" -e "s#@UP@#$UPSTREAM_PORT#g" \
    -e "s#@CHAIN@#$certs/instance.crt#g" -e "s#@KEY@#$certs/instance.key#g" \
    -e "s#@PEM@#$certs/combined.pem#g" -e "s#@ADMIN@#${admin[$2]}#g" \
    -e "s#@CA@#$certs/ca.crt#g" -e "s#@PLAIN@#${plain_port[$2]:-0}#g" -e "s#@SPACE@#$SPACE#g" \
    "$repo_root/bench/$1" > "$3"
}

start_peer() { # start_peer PEER → pid_of[PEER], or skip[PEER]=reason
  local p=$1 log="$work/$1.log" bin=$sidecar_bin pid tries probed=0 route_env=() plain_arg=()
  case $p in
    tls-sidecar-tcp-musl)
      [[ -n $musl_bin ]] || { skip[$p]="no musl binary (packaging skipped or failed)"; return 0; }
      bin=$musl_bin ;;
  esac
  case $p in
    tls-sidecar-*)
      local template=tls-sidecar-tcp.yml
      [[ $p == tls-sidecar-http ]] && template=tls-sidecar-http.yml
      render $template "$p" "$work/$p.yml"
      # The route-port listener (plaintext phase), as the buildpack's profile script sets it up.
      [[ -n ${plain_port[$p]:-} ]] && route_env=(TLS_SIDECAR_ROUTE_PORT="${plain_port[$p]}")
      env CF_INSTANCE_CERT="$certs/instance.crt" CF_INSTANCE_KEY="$certs/instance.key" \
        CF_SYSTEM_CERT_PATH="$certs/system" PORT=$UPSTREAM_PORT "${route_env[@]}" \
        taskset -c 0 "$bin" --config "$work/$p.yml" > "$log" 2>&1 &
      ;;
    nginx-http | nginx-stream)
      render "$p.conf" "$p" "$work/$p.conf"
      mkdir -p "$work/$p.tmp"
      taskset -c 0 nginx -c "$work/$p.conf" -e "$work/$p.error.log" > "$log" 2>&1 &
      ;;
    haproxy-tcp | haproxy-http)
      render "$p.cfg" "$p" "$work/$p.cfg"
      taskset -c 0 haproxy -db -f "$work/$p.cfg" > "$log" 2>&1 &
      ;;
    stunnel)
      render stunnel.conf "$p" "$work/$p.conf"
      taskset -c 0 stunnel4 "$work/$p.conf" > "$log" 2>&1 &
      ;;
    hitch)
      render hitch.conf "$p" "$work/$p.conf"
      mkdir -p "$work/hitch-ocsp"
      taskset -c 0 hitch --config="$work/$p.conf" > "$log" 2>&1 &
      ;;
  esac
  pid=$!
  started_pids+=("$pid")
  [[ -n ${plain_port[$p]:-} ]] && plain_arg=(--plain-addr "127.0.0.1:${plain_port[$p]}")
  for ((tries = 0; tries < 50; tries++)); do
    if ! kill -0 "$pid" 2> /dev/null; then
      # (The substitution fails when there is no error.log: `return 0`, not its status.)
      skip[$p]="exited at start: $(grep -hv '^\s*$' "$log" "$work/$p.error.log" 2> /dev/null | tail -n 1 | cut -c1-200)"
      return 0
    fi
    if "$bench" probe --addr "127.0.0.1:${port[$p]}" --ca "$certs/ca.crt" --sni "$GUID" \
      "${client_id[@]}" "${plain_arg[@]}" --label "$p" > "$work/$p.probe" 2> "$work/$p.probe.err"; then
      probed=1
      # The sidecar binds its route port a moment after its TLS port: wait for both.
      ((${#plain_arg[@]} == 0)) || grep -q '"plain":true' "$work/$p.probe" && break
    fi
    sleep 0.2
  done
  if ((probed)); then
    pid_of[$p]=$pid
    cat "$work/$p.probe" >> "$results"
    ((${#plain_arg[@]} == 0)) || grep -q '"plain":true' "$work/$p.probe" \
      || echo "       $p: WARNING: its plaintext listener ${plain_port[$p]} does not answer (see $work/$p.probe)" >&2
    return
  fi
  skip[$p]="not answering TLS on ${port[$p]} after 10 s: $(tail -n 1 "$work/$p.probe.err" 2> /dev/null | cut -c1-200) (see $log)"
  stop_pid "$pid"
  return 0
}

json_str() { # a JSON string literal
  local s=${1//\\/\\\\}
  s=${s//\"/\\\"}
  printf '"%s"' "${s//$'\n'/ }"
}

# ---------------------------------------------------------------------------------------------
step "Starting the upstream (CPU 1) and the peers (CPU 0)"
taskset -c 1 "$bench" upstream --listen "127.0.0.1:$UPSTREAM_PORT" --max-seconds 14400 \
  > "$work/upstream.log" 2>&1 &
upstream_pid=$!
started_pids+=("$upstream_pid")
for ((i = 0; i < 50; i++)); do
  grep -q listening "$work/upstream.log" 2> /dev/null && break
  sleep 0.1
done
grep -q listening "$work/upstream.log" || die "the upstream did not start (see $work/upstream.log)"

active=()
for p in "${peers[@]}"; do
  start_peer "$p"
  if [[ -n ${skip[$p]:-} ]]; then
    echo "       $p: skipped: ${skip[$p]}" >&2
    printf '{"type":"skip","peer":"%s","reason":%s}\n' "$p" "$(json_str "${skip[$p]}")" >> "$results"
  else
    echo "       $p: pid ${pid_of[$p]}, port ${port[$p]}" >&2
    active+=("$p")
  fi
done
((${#active[@]})) || die "no peer started"

# ---------------------------------------------------------------------------------------------
step "Recording the machine and the versions"
version_of() {
  case $1 in
    tls-sidecar-tcp | tls-sidecar-http) "$sidecar_bin" --version 2>&1 | head -n 1 ;;
    tls-sidecar-tcp-musl) [[ -n $musl_bin ]] && "$musl_bin" --version 2>&1 | head -n 1 ;;
    nginx-*) nginx -v 2>&1 | head -n 1 ;;
    haproxy-*) haproxy -v 2>&1 | head -n 1 | cut -d' ' -f1-3 ;;
    stunnel) stunnel4 -version 2>&1 | grep -m1 -i '^stunnel' ;;
    hitch) hitch --version 2>&1 | head -n 1 ;;
  esac
}
lock_version() { # version of crate $1 in Cargo.lock
  awk -v n="$1" '$0 == "name = \"" n "\"" { getline; gsub(/version = |"/, ""); print; exit }' "$repo_root/Cargo.lock"
}
{
  printf '{"type":"meta","timestamp":"%s","quick":%s,"duration_s":%s,"reps":%s,"conns":%s' \
    "$timestamp" "$([[ $quick == 1 ]] && echo true || echo false)" "$duration" "$reps" "$CONNS"
  printf ',"idle_steps":"%s","load_before":"%s"' "$idle_steps" "$load_before"
  printf ',"h2_conns":%s,"h2_streams":%s' "$H2_CONNS" "$H2_STREAMS"
  printf ',"client_cert":%s' "$(json_str "$(openssl x509 -in "$certs/client-leaf.crt" -noout -subject -nameopt RFC2253 | sed 's/^subject=//')")"
  printf ',"cpu":%s' "$(json_str "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')")"
  printf ',"cpus":%s,"kernel":%s' "$(nproc --all)" "$(json_str "$(uname -sr)")"
  # shellcheck source=/dev/null  # the machine's own file, nothing to follow
  printf ',"os":%s' "$(json_str "$(. /etc/os-release && echo "$PRETTY_NAME")")"
  printf ',"mem":%s' "$(json_str "$(free -h | awk '/^Mem:/ {print $2}')")"
  printf ',"openssl":%s,"rustls":"%s","aws_lc_rs":"%s","tokio":"%s","hyper":"%s"' \
    "$(json_str "$(openssl version)")" "$(lock_version rustls)" "$(lock_version aws-lc-rs)" \
    "$(lock_version tokio)" "$(lock_version hyper)"
  printf ',"wrk":%s' "$(json_str "$(wrk -v 2>&1 | head -n 1 | cut -d' ' -f1-2)")"
  printf ',"sidecar_bin":%s,"rustc":%s' "$(json_str "$sidecar_bin")" "$(json_str "$(rustc --version)")"
  if [[ -n $rev ]]; then
    printf ',"git":%s' "$(json_str "$rev_hash ($rev)")"
  else
    printf ',"git":%s' "$(json_str "$(git -C "$repo_root" describe --always --dirty 2> /dev/null || echo unknown)")"
  fi
  printf ',"sidecar_mtime":%s' "$(json_str "$(date -u -r "$sidecar_bin" +%Y-%m-%dT%H:%MZ)")"
  printf ',"zip":%s' "$(json_str "${zip:+$(basename "$zip") ($(date -u -r "$zip" +%Y-%m-%dT%H:%MZ))}")"
  printf ',"versions":{'
  sep=""
  for p in "${peers[@]}"; do
    printf '%s"%s":%s' "$sep" "$p" "$(json_str "$(version_of "$p" || true)")"
    sep=","
  done
  printf '}}\n'
} >> "$results"

# ---------------------------------------------------------------------------------------------
step "Physical limits on CPU 0: openssl speed (${speed_seconds} s per size)"
aes="$(taskset -c 0 openssl speed -mr -seconds "$speed_seconds" -evp aes-256-gcm 2> /dev/null \
  | awk -F: '/^\+F:/ { print $NF }')"
rsa="$(taskset -c 0 openssl speed -mr -seconds "$speed_seconds" rsa3072 2> /dev/null \
  | awk -F: '/^\+F2:/ { printf "%s %s", $4, $5 }')"
printf '{"type":"speed","aes256gcm_16k_bytes_per_s":%s,"rsa3072_sign_per_s":%s,"rsa3072_verify_per_s":%s}\n' \
  "${aes:-0}" "${rsa%% *}" "${rsa##* }" >> "$results"
echo "       AES-256-GCM 16 KB: $(awk -v b="${aes:-0}" 'BEGIN { printf "%.0f MB/s", b / 1e6 }'); RSA-3072 sign/s: ${rsa%% *}" >&2

if [[ -n $zip ]]; then
  step "bin/supply on the cached zip, $supply_reps runs"
  vcap='{"application_id":"'$GUID'","application_name":"bench","name":"bench","space_id":"'$SPACE'","space_name":"bench","organization_id":"'$ORG'","organization_name":"bench","limits":{"mem":1024,"disk":1024,"fds":16384},"uris":[],"application_uris":[],"users":null}'
  times=()
  for ((i = 0; i < supply_reps; i++)); do
    stage="$(mktemp -d "$work/stage.XXXXXX")"
    mkdir -p "$stage/build" "$stage/cache" "$stage/deps/0"
    echo 'print("hello")' > "$stage/build/app.py"
    t0=$(date +%s%N)
    env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME="$stage" \
      USER=vcap LANG=en_US.UTF-8 CF_STACK=cflinuxfs4 MEMORY_LIMIT=1024m VCAP_SERVICES='{}' \
      VCAP_APPLICATION="$vcap" taskset -c 0 "$bp/bin/supply" "$stage/build" "$stage/cache" \
      "$stage/deps" 0 > "$stage.log" 2>&1 || die "bin/supply failed (see $stage.log)"
    t1=$(date +%s%N)
    times+=("$(((t1 - t0) / 1000))")
    [[ -x $stage/deps/0/bin/tls-sidecar ]] || die "bin/supply did not install the sidecar ($stage.log)"
    rm -rf "$stage" "$stage.log"
  done
  printf '{"type":"supply","zip":%s,"zip_bytes":%s,"wall_us":[%s]}\n' "$(json_str "$(basename "$zip")")" \
    "$(stat -c %s "$zip")" "$(IFS=,; echo "${times[*]}")" >> "$results"
fi

# ---------------------------------------------------------------------------------------------
# One measurement: the generator on CPU 1, the terminator's CPU sampled by pid. METRIC is a
# client subcommand, or plain: `keepalive --plain` to the peer's plaintext listener (same
# process, so the CPU watched is still the peer's).
measure() { # measure METRIC PEER REP [ARGS...]
  local metric=$1 p=$2 rep=$3 out cmd=("$1") to=${port[$2]}
  shift 3
  if [[ $metric == plain ]]; then
    cmd=(keepalive --plain)
    to=${plain_port[$p]}
  fi
  if out="$(timeout $((${duration%.*} * 3 + 120)) taskset -c 1 "$bench" "${cmd[@]}" \
    --addr "127.0.0.1:$to" --ca "$certs/ca.crt" --sni "$GUID" "${client_id[@]}" \
    --watch-pid "${pid_of[$p]}" --account-pid "$upstream_pid" --label "$p" --rep "$rep" \
    --duration "$duration" "$@" \
    2> "$work/last-error.log")"; then
    echo "$out" >> "$results"
    printf '       %-22s %-10s rep %s: %s\n' "$p" "$metric" "$rep" \
      "$(sed -E 's/.*"per_s":([0-9]+)[.0-9]*.*"server_cpu_s":([0-9.]+).*/\1 \/s, server CPU \2 s/' <<< "$out")" >&2
  else
    printf '{"type":"error","metric":"%s","peer":"%s","rep":%s,"error":%s}\n' "$metric" "$p" "$rep" \
      "$(json_str "$(tail -n 1 "$work/last-error.log")")" >> "$results"
    echo "       $p $metric rep $rep FAILED: $(tail -n 1 "$work/last-error.log")" >&2
  fi
}

# Every repetition visits every peer of the phase, starting one peer later each time, so slow
# drift on the machine spreads over all of them.
phase=()
interleaved() { # interleaved METRIC [ARGS...], over the peers in phase
  local metric=$1 rep k n=${#phase[@]}
  shift
  for ((rep = 1; rep <= reps; rep++)); do
    for ((k = 0; k < n; k++)); do
      measure "$metric" "${phase[$(((k + rep - 1) % n))]}" "$rep" "$@"
      sleep 0.3
    done
  done
}
among() { # among LIST: phase = the active peers in LIST (all active ones without LIST)
  local p
  phase=()
  for p in "${active[@]}"; do
    if [[ $# -eq 0 || " $1 " == *" $p "* ]]; then phase+=("$p"); fi
  done
}

among
step "(1) keep-alive: $CONNS connections, GET 1 KB, ${duration} s × $reps"
interleaved keepalive --conns "$CONNS" --path /1k
among "$H2_PEERS"
if ((${#phase[@]})); then
  step "(2) HTTP/2 keep-alive: $H2_CONNS connections × $H2_STREAMS streams, GET 1 KB (${phase[*]})"
  interleaved h2 --conns "$H2_CONNS" --streams "$H2_STREAMS" --path /1k
fi
among "$PLAIN_PEERS"
if ((${#phase[@]})); then
  step "(3) plaintext keep-alive to the same processes' plain listeners: $CONNS connections (${phase[*]})"
  interleaved plain --conns "$CONNS" --path /1k
fi
among
step "(4) full TLS 1.3 handshakes: new connection per request, no resumption offered"
interleaved handshake --conns "$CONNS" --path /1k
step "(5) resumed TLS 1.3 handshakes: each connection offers the ticket the previous one got"
interleaved resume --conns "$CONNS" --path /1k
step "(6) bulk: GET 100 MB over one connection"
interleaved bulk --conns 1 --path /bulk
rate="$("$bench" report --results "$results" --half-slowest-keepalive)"
step "(7) latency at a fixed rate of $rate requests/s (half the slowest peer's keep-alive rate)"
interleaved rate --conns "$CONNS" --path /1k --rate "$rate"

# A number from the idle test's JSON line in $out (serde_json writes the keys in alphabetical
# order, so each is picked on its own).
kb_of() { grep -o "\"$1\":[0-9]*" <<< "$out" | cut -d: -f2; }
step "(8) RSS: idle, holding $idle_steps idle TLS connections, after they close (fresh peer each)"
for p in "${active[@]}"; do
  stop_pid "${pid_of[$p]}"
  sleep 0.5
  start_peer "$p"
  if [[ -n ${skip[$p]:-} ]]; then
    echo "       $p: did not restart: ${skip[$p]}" >&2
    continue
  fi
  sleep 1
  if out="$(timeout 600 taskset -c 1 "$bench" idle --addr "127.0.0.1:${port[$p]}" --ca "$certs/ca.crt" \
    --sni "$GUID" "${client_id[@]}" --watch-pid "${pid_of[$p]}" --label "$p" --steps "$idle_steps" --sources 4 \
    --settle "$([[ $quick == 1 ]] && echo 1 || echo 3)" 2> "$work/last-error.log")"; then
    echo "$out" >> "$results"
    echo "       $p: idle $(kb_of idle_kb) KB, after close $(kb_of after_close_kb) KB" >&2
  else
    printf '{"type":"error","metric":"idle","peer":"%s","rep":1,"error":%s}\n' "$p" \
      "$(json_str "$(tail -n 1 "$work/last-error.log")")" >> "$results"
    echo "       $p idle FAILED: $(tail -n 1 "$work/last-error.log")" >&2
  fi
  stop_pid "${pid_of[$p]}"
done

printf '{"type":"end","load_after":"%s"}\n' "$(cut -d' ' -f1-3 /proc/loadavg)" >> "$results"

# ---------------------------------------------------------------------------------------------
step "Report"
report_args=(--results "$results" --md "$work/benchmarks.md" --svg "$work/benchmarks.svg")
for f in "${also_results[@]}"; do
  report_args+=(--also-results "$f")
done
"$bench" report "${report_args[@]}"
if ((docs)); then
  cp "$work/benchmarks.md" "$repo_root/docs/benchmarks.md"
  cp "$work/benchmarks.svg" "$repo_root/docs/benchmarks.svg"
  echo "       wrote docs/benchmarks.md and docs/benchmarks.svg" >&2
fi
echo "       results: $results" >&2
