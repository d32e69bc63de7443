#!/usr/bin/env bash
# Runs the tests whose threads share memory inside one process under ThreadSanitizer: shm-ring's
# unit tests (rings, pool and wait words driven from several threads), shm-runtime's unit tests, and
# shm-runtime's in-process service tests (a server's workers and housekeeper, and client threads,
# in one process). TSan sees only the process it runs in, so the cross-process tests
# (ring/tests/processes.rs, cli/tests/processes.rs) are not run here: when a chunk goes to
# a client process and comes back through the pool, the atomics that order its reuse (owner word,
# free-list head) were last written by the other process, invisible to TSan, and two server workers
# writing answers into the same chunk one after the other are reported as a race (seen in
# shm-runtime's processes tests). Those orderings are tested by the process tests themselves.
#
# Needs nightly with rust-src (-Zbuild-std builds std instrumented too, so std's own
# synchronisation is seen), installed by ci/nightly.sh when missing. When it cannot be had (or the
# host has no ThreadSanitizer), fails if CI is set and prints SKIPPED with the reason otherwise.
# Reports are suppressed only through ci/tsan.supp, each entry with the reason it is not a race.
set -euo pipefail
cd "$(dirname "$0")/.."

skip() {
  if [ -n "${CI:-}" ]; then
    echo "tsan: FAILED: $1 (CI is set: ThreadSanitizer must run)" >&2
    exit 1
  fi
  echo "tsan: SKIPPED ($1)"
  exit 0
}

bash ci/nightly.sh tsan || skip "no nightly toolchain with rust-src can be installed on this machine"
host=$(rustc +nightly -vV | sed -n 's/^host: //p')
case "$host" in
  x86_64-unknown-linux-gnu | aarch64-unknown-linux-gnu) ;;
  *) skip "ThreadSanitizer is not supported on $host" ;;
esac

export CARGO_TARGET_DIR="${TSAN_TARGET_DIR:-target/tsan}"
export RUSTFLAGS="-Zsanitizer=thread"
export RUSTDOCFLAGS="-Zsanitizer=thread"
# halt_on_error: the first report fails the test binary; report_signal_unsafe=0: the CLI's signal
# handling is not under test here.
export TSAN_OPTIONS="suppressions=$PWD/ci/tsan.supp halt_on_error=1 second_deadlock_stack=1 report_signal_unsafe=0"
tsan_test() {
  echo "== tsan: cargo test $*"
  cargo +nightly test -Zbuild-std --target "$host" --release "$@"
}

tsan_test -p shm-ring --lib
tsan_test -p shm-runtime --lib
tsan_test -p shm-runtime --test service
tsan_test -p shm-runtime --test rewrite
echo "tsan: ok"
