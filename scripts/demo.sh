#!/usr/bin/env bash
# The main job: a shm-runtime server serving real models (a MiniLM sentiment classifier and the
# MiniLM sentence embedder through ONNX Runtime, SmolLM2-135M through llama.cpp) in one process,
# clients in others, every request and answer through shared memory. Fetches and builds what it
# needs first (idempotent; the first run builds llama.cpp, about 10 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release -q -p shm-runtime-cli -p shm-examples --features shm-runtime-cli/onnx,shm-runtime-cli/gguf
bin=target/release
name="demo-$$"
RUST_LOG=warn "$bin/shm-runtime" serve --config examples/demo.toml --name "$name" &
server=$!
trap 'kill -TERM $server 2>/dev/null || true; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 200); do
    "$bin/shm-runtime" status "$name" >/dev/null 2>&1 && break
    kill -0 $server 2>/dev/null || { echo "the server did not start" >&2; exit 1; }
    sleep 0.05
done
echo "== sentiment classification (MiniLM + trained head), from a client process"
"$bin/infer" "$name" sentiment classify \
    "I absolutely loved this film, the acting was wonderful." \
    "The food was cold and the waiter was rude." \
    "Setup took two minutes and it has worked perfectly ever since." \
    "It broke after a week and support never answered." \
    --repeat 50
echo
echo "== sentence embeddings (all-MiniLM-L6-v2, mean pooling, normalised)"
"$bin/infer" "$name" minilm embed \
    "A man is playing a guitar." \
    "Someone is strumming a guitar." \
    "The stock market fell sharply today." \
    --repeat 50
echo
echo "== SmolLM2-135M-Instruct (Q4_1, llama.cpp), streamed token by token through the rings"
"$bin/generate" "$name" smollm2 "What is the capital of France? Answer in one sentence." --chat --max-tokens 48
"$bin/generate" "$name" smollm2 "Shared memory lets two processes" --max-tokens 40
echo
echo "== the runtime's own overhead: echo round trips (default wait strategy)"
"$bin/microbench" --service "$name" --n 20000 --wait park
echo
echo "== server counters"
"$bin/shm-runtime" status "$name"
