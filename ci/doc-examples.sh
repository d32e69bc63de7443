#!/usr/bin/env bash
# Every public item of shm-ring, shm-runtime and shm-runtime-gateway has a code example in its
# documentation (ci/doc_examples.py says what counts). Needs the nightly toolchain for rustdoc's
# JSON output (installed by ci/nightly.sh when missing): without it, fails if CI is set and prints
# SKIPPED otherwise. The examples themselves are compiled and run by `cargo test --doc` on stable.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! bash ci/nightly.sh >/dev/null 2>&1 || ! cargo +nightly --version >/dev/null 2>&1; then
  if [ -n "${CI:-}" ]; then
    echo "doc examples: FAILED: no nightly toolchain (CI is set: the check must run)" >&2
    exit 1
  fi
  echo "doc examples: SKIPPED (no nightly toolchain on this machine)"
  exit 0
fi
target=${DOC_EXAMPLES_TARGET:-target/doc-json}
status=0
for spec in shm-ring: shm-runtime:async shm-runtime-gateway:; do
  crate=${spec%%:*} features=${spec#*:}
  cargo +nightly rustdoc -q -p "$crate" --features "$features" --target-dir "$target" \
    -- -Z unstable-options --output-format json
  echo "doc examples: $crate"
  python3 ci/doc_examples.py "$target/doc/${crate//-/_}.json" || status=1
done
exit $status
