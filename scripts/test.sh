#!/usr/bin/env bash
# The whole test suite: unit, doc, cross-process and model tests (real ONNX Runtime and llama.cpp
# with real models), then loom and miri where available. Idempotent: first fetches ONNX Runtime, the
# models and llama.cpp's build tools (scripts/setup.sh). Runs in the release profile, the one the
# benchmarks use, so llama.cpp is built once.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh all
features=shm-runtime/onnx,shm-runtime/gguf,shm-bench/onnx,shm-bench/gguf
cargo build --release --workspace --all-targets --features "$features"
cargo test --release --workspace --features "$features"
bash ci/loom.sh
bash ci/miri.sh
