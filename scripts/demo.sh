#!/usr/bin/env bash
# The main job: a shm-runtime server in one process, clients in others, everything through shared
# memory. Today it serves the built-in echo and sleep backends (the ONNX and GGUF backends are not
# built yet); it shows a request, a stream, the server's counters, and the round-trip latency.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p shm-runtime -p shm-examples
bin=target/release
name="demo-$$"
RUST_LOG=warn "$bin/shm-runtime" serve --name "$name" --model echo=echo --model slow=sleep &
server=$!
trap 'kill -TERM $server 2>/dev/null || true; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    "$bin/shm-runtime" status "$name" >/dev/null 2>&1 && break
    sleep 0.05
done
echo "== one request"
"$bin/echo-client" "$name" "hello from another process"
echo "== a stream (sleep backend, 10 ms per token)"
"$bin/echo-client" "$name" "x" --stream --model slow --max-tokens 5
echo "== round trips (default wait strategy)"
"$bin/microbench" --service "$name" --n 20000 --wait park
echo "== server counters"
"$bin/shm-runtime" status "$name"
echo "== ring layer alone: two processes ping-pong descriptors"
"$bin/ring-pingpong" 200000
