#!/usr/bin/env bash
# Model-checks the lock-free algorithms with loom (--cfg shm_loom swaps the atomics shim): the
# models of tests/loom.rs, and the crate's own (--lib) that stop a pool loan half-way.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f ring/tests/loom.rs ]; then
  echo "loom: FAILED: the loom models (ring/tests/loom.rs) are missing" >&2
  exit 1
fi
RUSTFLAGS="--cfg shm_loom" LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-2}" \
  CARGO_TARGET_DIR=target/loom cargo test --release -p shm-ring --lib --test loom
