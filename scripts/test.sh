#!/usr/bin/env bash
# The whole test suite: unit, doc and cross-process tests, then loom and miri where available.
# Idempotent; needs nothing but the Rust toolchain for the ring crate.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --all-targets
cargo test --workspace
bash ci/loom.sh
bash ci/miri.sh
