#!/usr/bin/env bash
# The whole test suite: unit, doc, cross-process and model tests (real ONNX Runtime and models),
# then loom and miri where available. Idempotent: fetches ONNX Runtime and the models first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
features=shm-runtime/onnx
cargo build --workspace --all-targets --features "$features"
cargo test --workspace --features "$features"
bash ci/loom.sh
bash ci/miri.sh
