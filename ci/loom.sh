#!/usr/bin/env bash
# Model-checks the lock-free algorithms with loom (--cfg shm_loom swaps the atomics shim).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f ring/tests/loom.rs ]; then
  echo "loom: SKIPPED (no loom models in ring/tests/loom.rs yet)"
  exit 0
fi
RUSTFLAGS="--cfg shm_loom" LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-2}" \
  CARGO_TARGET_DIR=target/loom cargo test --release -p shm-ring --test loom
