#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/ for a fixed time each and reports what they did.
#
# Usage: scripts/fuzz.sh [--seconds N] [TARGET...]
#
#   --seconds N   how long each target runs (default 60)
#   TARGET        config_file, config_env, selector, archive, manifest, xfcc, xfcc_grammar,
#                 http_head, proxy_v2, request_path (default: all of them)
#
# Prints, per target, the executions and exec/s from libFuzzer's final stats, the crashes found
# and the corpus size, then a closing "fuzz: N passed, N failed" line. Exits non-zero if any
# target crashed (a panic, a failed assertion, a sanitizer report, a timeout or running out of
# memory); the input that did it is saved under fuzz/artifacts/<target>/ and the command that
# replays it is printed. Make every such input a regression test in the owning crate.
#
# Seeds are read from fuzz/corpus/<target>/ (checked in, small); what a run discovers goes to
# fuzz/corpus-work/<target>/ (ignored by git), so the checked-in seeds never grow by themselves.
#
# Toolchain: cargo-fuzz builds with -Zsanitizer=address and other unstable flags, which only a
# nightly compiler accepts. This project's machines have the stable toolchain alone and cannot
# fetch another, so the build sets RUSTC_BOOTSTRAP=1, which makes the stable compiler accept
# unstable flags. That is fine for a test harness and must never be used for what we ship (the
# release binaries are built by scripts/package.sh without it). The fuzz crate is outside the
# main workspace, so nothing else is built this way.
#
# cargo-fuzz is installed with `cargo install cargo-fuzz --locked` if it is missing.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ALL_TARGETS=(config_file config_env selector archive manifest xfcc xfcc_grammar http_head app_answer proxy_v2 request_path)

die() {
  echo "       **ERROR** $*" >&2
  exit 1
}
step() { echo "-----> $*"; }
detail() { echo "       $*"; }

seconds=60
targets=()
while (($#)); do
  case "$1" in
    --seconds)
      [[ $# -ge 2 ]] || die "--seconds needs a value"
      seconds="$2"
      shift 2
      ;;
    --seconds=*) seconds="${1#*=}"; shift ;;
    -h | --help)
      sed -n '2,/^set -euo pipefail/{/^set /d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
      exit 0
      ;;
    -*) die "unknown option '$1' (see scripts/fuzz.sh --help)" ;;
    *) targets+=("$1"); shift ;;
  esac
done
[[ $seconds =~ ^[1-9][0-9]*$ ]] || die "--seconds takes a whole number of seconds, got '$seconds'"
((${#targets[@]})) || targets=("${ALL_TARGETS[@]}")
for t in "${targets[@]}"; do
  [[ " ${ALL_TARGETS[*]} " == *" $t "* ]] || die "unknown target '$t' (expected one of: ${ALL_TARGETS[*]})"
done

if ! cargo fuzz --version > /dev/null 2>&1; then
  step "Installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1
cd "$repo_root/fuzz"

step "Building ${targets[*]} ($(cargo fuzz --version))"
for t in "${targets[@]}"; do
  cargo fuzz build "$t"
done

# The archive target makes a temp dir per input: on tmpfs that is ~20x faster than on disk.
scratch_tmp="${TMPDIR:-/tmp}"
[[ -d /dev/shm && -w /dev/shm ]] && scratch_tmp=/dev/shm

passed=0
failed=0
for t in "${targets[@]}"; do
  work="corpus-work/$t"
  artifacts="artifacts/$t"
  log="$(mktemp)"
  mkdir -p "$work" "$artifacts" "corpus/$t"
  before="$(find "$artifacts" -type f | sort)"
  step "Fuzzing $t for ${seconds} s"
  status=0
  # -timeout: an input that takes 10 s is a hang, reported like a crash.
  TMPDIR="$scratch_tmp" cargo fuzz run "$t" "$work" "corpus/$t" -- \
    -max_total_time="$seconds" -timeout=10 -print_final_stats=1 > "$log" 2>&1 || status=$?
  execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
  rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)"
  corpus="$(grep -o 'corp: [0-9]*/[0-9A-Za-z]*' "$log" | tail -n 1 | cut -d' ' -f2)"
  new="$(comm -13 <(echo "$before") <(find "$artifacts" -type f | sort) | sed '/^$/d')"
  crashes="$(grep -c . <<< "$new" || true)"
  detail "$t: executions ${execs:-?}, exec/s ${rate:-?}, crashes $crashes, corpus ${corpus:-?} (units/bytes)"
  if ((status != 0 || crashes > 0)); then
    failed=$((failed + 1))
    grep -E 'panicked at|^==[0-9]+==ERROR|SUMMARY:|ALARM: working on the last Unit' "$log" | head -n 5 | sed 's/^/       /' || true
    while IFS= read -r a; do
      [[ -n $a ]] && detail "replay: RUSTC_BOOTSTRAP=1 cargo fuzz run $t fuzz/$a   (from $repo_root)"
    done <<< "$new"
    ((crashes > 0)) || tail -n 20 "$log" | sed 's/^/       /'
  else
    passed=$((passed + 1))
  fi
  rm -f "$log"
done

echo "fuzz: $passed passed, $failed failed"
((failed == 0))
