#!/usr/bin/env bash
# The whole test suite: unit, doc, cross-process and model tests (real ONNX Runtime and llama.cpp
# with real models), a short chaos soak, then loom, miri, ThreadSanitizer and a short fuzz run
# (the last three need a nightly toolchain and say SKIPPED with the reason when none can be had).
# Idempotent: first fetches ONNX Runtime, the models and llama.cpp's build tools (scripts/setup.sh).
# Runs in the release profile, the one the benchmarks use, so llama.cpp is built once.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh all
features=shm-runtime/onnx,shm-runtime/gguf,shm-bench/onnx,shm-bench/gguf
cargo build --release --workspace --all-targets --features "$features"
cargo test --release --workspace --features "$features"
# Chaos: client processes killed every 200 ms, a garbage-writing client, a server killed under
# waiting clients (docs/reliability.md); 20 s here, 120 s for the full bar.
cargo run --release -p shm-bench --features "$features" --bin soak -- --seconds 20
bash ci/loom.sh
bash ci/miri.sh
bash ci/tsan.sh
# Each fuzz target for a short, bounded time (scripts/fuzz.sh 600 for a long run).
bash scripts/fuzz.sh "${SHM_FUZZ_SECONDS:-30}"
