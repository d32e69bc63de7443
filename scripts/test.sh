#!/usr/bin/env bash
# The whole test suite: unit, doc, cross-process and model tests (real ONNX Runtime and llama.cpp
# with real models), the root-only tests, the gateway under load (wrk) and behind nginx, the fuzz
# harnesses' own tests, a short chaos soak, then loom, miri, ThreadSanitizer and a short fuzz run.
# Idempotent: first fetches ONNX Runtime, the models and llama.cpp's build tools (scripts/setup.sh),
# then the nightly toolchain with miri and rust-src, and cargo-fuzz (ci/nightly.sh). With CI set,
# nothing is skipped: a step that cannot run fails the suite; without CI, the miri, TSan and fuzz
# steps, the root-only tests and the gateway's wrk and nginx steps (without root to install the
# tool) say SKIPPED with the reason when they cannot run here.
# Runs in the release profile, the one the benchmarks use, so llama.cpp is built once.
set -euo pipefail
cd "$(dirname "$0")/.."
# Runs one step and says how long it took.
step() {
  local start=$SECONDS
  "$@"
  echo "test: $((SECONDS - start)) s: $*"
}
step bash scripts/setup.sh all
if ! bash ci/nightly.sh; then
  [ -z "${CI:-}" ] || exit 1
  echo "test: no nightly tooling: the miri, TSan and fuzz steps will say SKIPPED"
fi
# The model backends everywhere: the library's, the benchmarks' (the soak) and the command's (its
# gateway tests serve the demo's models).
bench_features=shm-runtime/onnx,shm-runtime/gguf,shm-runtime/async,shm-bench/onnx,shm-bench/gguf
features=$bench_features,shm-runtime-cli/onnx,shm-runtime-cli/gguf
# Builds what the tests run (the criterion benches are checked by clippy in .ci/run, not built:
# each is a large LTO link).
step cargo test --release --workspace --features "$features" --lib --bins --tests --examples --no-run
step cargo test --release --workspace --features "$features" --lib --bins --tests --examples
# The documentation's examples (an example on every public item, most of them running against a
# real server), in the dev profile and without the model features: in release with them, each
# example links the whole runtime and llama.cpp (shm-runtime's 291 took 18 minutes); here the three
# crates' 474 take about a minute once built.
step cargo test -p shm-ring -p shm-runtime -p shm-runtime-gateway --doc --features shm-runtime/async
# The tests that need root (a second user, segments of other users), marked #[ignore = "needs root"]:
# shm-ring's processes and the command's (cli/) processes and permissions tests. --ignored also
# runs the child-process entries, which do nothing unless started as a child. Same features as
# above: no rebuild.
if [ "$(id -u)" = 0 ]; then
  step cargo test --release --workspace --features "$features" --test processes --test permissions -- --ignored
elif [ -n "${CI:-}" ]; then
  echo "test: FAILED: the root-only tests (shm-ring processes, the command's processes and permissions, --ignored) need root; CI must run as root" >&2
  exit 1
else
  echo "test: SKIPPED the root-only tests (shm-ring processes, the command's processes and permissions, --ignored): not root"
fi
# The Python package (python/, built and installed into the project's venv by setup.sh) against
# real servers: the binaries built above (the server with the model features, the `infer` and
# `generate` programs whose answers it must match) and the demo's models.
# The venv is where setup.sh puts it (the same rule as the Rust side's cache).
venv=${SHM_RUNTIME_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/shm-runtime}/venv
step env SHM_RUNTIME_BIN="$PWD/target/release/shm-runtime" CARGO_TARGET_DIR="$PWD/target/python" \
  "$venv/bin/python" -m pytest -q python/tests
# The gateway with existing tools, on the binary the tests above built (target/release/shm-runtime,
# with the model features: the load test serves the demo's models): under load from wrk (256
# connections on echo, 16 SmolLM2 streams), and behind nginx with one of two pairs killed. Each
# script installs its tools with apt-get as root; without root and without the tool, SKIPPED
# here, a failure with CI set (the script runs and says what is missing).
gateway_step() { # gateway_step SCRIPT TOOL...: runs SCRIPT unless a TOOL is missing and cannot be installed
  local script=$1 tool
  shift
  for tool in "$@"; do
    if ! PATH=$PATH:/usr/sbin command -v "$tool" >/dev/null 2>&1 && [ "$(id -u)" != 0 ] && [ -z "${CI:-}" ]; then
      echo "test: SKIPPED $script: $tool is missing and installing it needs root (Debian: apt-get install $tool)"
      return 0
    fi
  done
  step bash "$script" target/release/shm-runtime
}
gateway_step scripts/gateway-load.sh wrk curl jq
gateway_step scripts/gateway-lb.sh nginx curl
# The fuzz harnesses as plain tests (fuzz/ is outside the workspace; stable is enough). In the
# workspace's target directory, so that the dependencies they share are not built twice.
step cargo test --release --manifest-path fuzz/Cargo.toml --target-dir target
# Chaos: client processes killed every 200 ms, a garbage-writing client, a server killed under
# waiting clients (docs/reliability.md); 20 s here, 120 s for the full bar.
step cargo run --release -p shm-bench --features "$bench_features" --bin soak -- --seconds 20
step bash ci/loom.sh
step bash ci/miri.sh
step bash ci/tsan.sh
# Every public item of the libraries has a code example (the examples run with the doc tests).
step bash ci/doc-examples.sh
# Each fuzz target for a short, bounded time (scripts/fuzz.sh 600 for a long run).
step bash scripts/fuzz.sh "${SHM_FUZZ_SECONDS:-30}"
