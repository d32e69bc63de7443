#!/usr/bin/env bash
# Fuzzes what the server reads from memory other processes write: request chunks (`request`), ring
# descriptors resolved to pool chunks (`descriptor`), and ring, pool and service headers overwritten
# while in use (`headers`).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]     (default 60; targets: FUZZ_TARGETS="request ...")
#
# Needs a nightly toolchain (cargo-fuzz builds with -Zsanitizer=address) and cargo-fuzz, installed
# by ci/nightly.sh when missing; when they cannot be had, fails if CI is set and prints SKIPPED with
# the reason otherwise. Seeds are generated into fuzz/corpus/<target> first; the corpus grows there
# between runs. Prints each target's executions (libFuzzer's final stats) and fails if a target does
# not build or finds a crash, a leak or a hang (reproducer in fuzz/artifacts/<target>/).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
secs="${1:-60}"
targets="${FUZZ_TARGETS:-request descriptor headers}"

skip() {
  if [ -n "${CI:-}" ]; then
    echo "fuzz: FAILED: $1 (CI is set: fuzzing must run)" >&2
    exit 1
  fi
  echo "fuzz: SKIPPED ($1)"
  exit 0
}

bash ci/nightly.sh fuzz || skip "no nightly toolchain with cargo-fuzz can be installed on this machine"
export PATH="$HOME/.cargo/bin:$PATH"
cargo fuzz --version >/dev/null 2>&1 || skip "cargo fuzz does not run"

cd fuzz
# The seed writer is an ordinary program (no sanitizer, no libFuzzer).
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/fuzz/target}" \
  cargo +nightly run --quiet --release --bin seeds -- corpus

declare -A max_len=([request]=16384 [descriptor]=1200 [headers]=2048)
status=0
summary=()
for t in $targets; do
  echo "== fuzz $t (${secs}s)"
  # Only the Compiling lines are filtered out; the build's own exit status decides.
  set +e
  cargo +nightly fuzz build "$t" 2>&1 | grep -v '^\s*Compiling'
  rc=${PIPESTATUS[0]}
  set -e
  if [ "$rc" -ne 0 ]; then
    status=1
    summary+=("$t: FAILED to build (cargo fuzz build exit $rc)")
    continue
  fi
  mkdir -p "artifacts/$t"
  log="target/fuzz-$t.log"
  start=$(date +%s)
  # One fuzzing process, one thread (no -jobs: libFuzzer would then fork workers that write to
  # fuzz-N.log). -timeout: one input taking longer than 10 s counts as a hang (every loop must be
  # bounded).
  # -rss_limit_mb: far above what any target needs; runaway allocation is a finding too.
  set +e
  cargo +nightly fuzz run "$t" "corpus/$t" -- \
    -max_total_time="$secs" -print_final_stats=1 \
    -timeout=10 -rss_limit_mb=2048 -max_len="${max_len[$t]:-4096}" \
    -artifact_prefix="artifacts/$t/" >"$log" 2>&1
  rc=$?
  set -e
  took=$(($(date +%s) - start))
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || true)
  if [ "$rc" -ne 0 ]; then
    status=1
    summary+=("$t: FAILED after ${took}s, ${execs:-?} executions (exit $rc); log fuzz/$log, artifacts fuzz/artifacts/$t/")
    grep -E 'panicked|ERROR|SUMMARY|Test unit written|timeout' "$log" | head -20 || true
  else
    summary+=("$t: ok, ${execs:-?} executions in ${took}s")
  fi
done
echo "== fuzz summary"
printf '%s\n' "${summary[@]}"
exit "$status"
