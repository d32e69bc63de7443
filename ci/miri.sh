#!/usr/bin/env bash
# Runs the heap-backed unit tests under miri (strict provenance): shm-ring's ring, pool and wait
# tests, and shm-runtime's in-place answer writer.
#
# Needs nightly with miri (installed by ci/nightly.sh when missing). When it cannot be had, fails
# if CI is set and prints SKIPPED with the reason otherwise. Tests are picked by module; the run
# fails when a module filter matches no test, so a move or rename cannot empty it silently.
set -euo pipefail
cd "$(dirname "$0")/.."

skip() {
  if [ -n "${CI:-}" ]; then
    echo "miri: FAILED: $1 (CI is set: miri must run)" >&2
    exit 1
  fi
  echo "miri: SKIPPED ($1)"
  exit 0
}

bash ci/nightly.sh miri || skip "no nightly toolchain with the miri component can be installed on this machine"
cargo +nightly miri --version >/dev/null 2>&1 || skip "cargo +nightly miri does not run"

log=$(mktemp)
trap 'rm -f "$log"' EXIT

# miri_test FLAGS PACKAGE FILTER... [-- SKIPPED_TEST...]: runs the package's unit tests whose names
# contain a FILTER, less the SKIPPED_TESTs (exact names); fails if a FILTER matched no test that
# passed. Quiet on success but for the counts; the whole output on failure.
miri_test() {
  local flags=$1 pkg=$2 filters=() skips=() t n total=0 counts="" empty=()
  shift 2
  while [ $# -gt 0 ] && [ "$1" != -- ]; do filters+=("$1"); shift; done
  [ $# -eq 0 ] || shift
  for t in "$@"; do skips+=(--skip "$t"); done
  echo "== miri: $pkg: ${filters[*]}${*:+ (left out: $#)}"
  if ! MIRIFLAGS="$flags" timeout 1800 cargo +nightly miri test -p "$pkg" --lib -- \
    "${filters[@]}" "${skips[@]}" >"$log" 2>&1; then
    cat "$log"
    echo "miri: FAILED ($pkg)" >&2
    exit 1
  fi
  for t in "${filters[@]}"; do
    n=$(grep -E '^test .* \.\.\. ok$' "$log" | grep -cF -e "$t" || true)
    [ "$n" -gt 0 ] || empty+=("$t")
    counts+="${counts:+, }$t $n"
    total=$((total + n))
  done
  if [ "${#empty[@]}" -gt 0 ]; then
    cat "$log"
    echo "miri: FAILED: no test of $pkg ran for: ${empty[*]}" >&2
    exit 1
  fi
  echo "miri: $pkg: $total tests passed ($counts)"
}

# shm-ring: every unit test of the SPSC and MPMC rings, the pool and the wait words but these seven.
# Six forge the token of a dead process: under miri ProcessToken::is_alive takes every process
# for alive (miri cannot read /proc/<pid>/stat), so the forged holder is never found dead. The
# process tests (ring/tests/processes.rs) cover the same with processes really killed. The seventh
# kills a child process between the pop and the owner word: it needs a /dev/shm segment and a
# real process, which miri has neither of (loom models the step in pool.rs loom_tests). Not run
# here at all: process.rs's tests (child processes, /proc) and every integration test in
# ring/tests (/dev/shm segments, processes).
strict="-Zmiri-strict-provenance -Zmiri-disable-isolation"
miri_test "$strict" shm-ring spsc::tests:: mpmc::tests:: pool::tests:: wait::tests:: -- \
  mpmc::tests::dead_participant_claim_is_skipped_after_takeover \
  mpmc::tests::consumer_skips_a_stuck_claim_of_a_dead_producer \
  pool::tests::dead_owner_is_reclaimed_and_its_entry_freed \
  pool::tests::taking_over_a_dead_owner_entry_reclaims_first \
  pool::tests::a_stale_intent_never_frees_a_chunk_that_is_held_or_on_the_list \
  pool::tests::an_intent_that_cannot_be_settled_yet_keeps_the_dead_owners_entry_for_a_later_pass \
  pool::tests::a_loaner_killed_between_pop_and_owner_word_loses_no_chunk

# The in-place answer writer (rkyv places written straight into a buffer). Tree borrows: rkyv's
# relative pointers reach outside the reference they start from, which Stacked Borrows rejects in
# rkyv itself.
miri_test "$strict -Zmiri-tree-borrows" shm-runtime backend::writer::tests::
echo "miri: ok"
