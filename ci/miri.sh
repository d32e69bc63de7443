#!/usr/bin/env bash
# Runs the heap-backed unit tests under miri (strict provenance) when a nightly with miri exists.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! cargo +nightly miri --version >/dev/null 2>&1; then
  if ! rustup component add miri --toolchain nightly >/dev/null 2>&1; then
    echo "miri: SKIPPED (no nightly toolchain with the miri component can be installed on this machine)"
    exit 0
  fi
fi
MIRIFLAGS="-Zmiri-strict-provenance -Zmiri-disable-isolation" \
  timeout 900 cargo +nightly miri test -p shm-ring --lib -- \
    spsc::tests::fifo spsc::tests::batch spsc::tests::roles mpmc::tests::fifo mpmc::tests::panicking \
    pool::tests::loans pool::tests::adopt pool::tests::reclaim_returns wait::tests::notify_without
# The in-place answer writer (rkyv places written straight into a buffer). Tree borrows: rkyv's
# relative pointers reach outside the reference they start from, which Stacked Borrows rejects in
# rkyv itself.
MIRIFLAGS="-Zmiri-strict-provenance -Zmiri-disable-isolation -Zmiri-tree-borrows" \
  timeout 900 cargo +nightly miri test -p shm-runtime --lib -- output::tests
