#!/usr/bin/env bash
# The main job today: two processes exchanging descriptors over shared-memory rings, with latencies.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --release -q -p shm-examples --bin ring-pingpong -- "${1:-200000}"
