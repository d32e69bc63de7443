#!/usr/bin/env bash
# Every public item of shm-ring, shm-runtime and shm-runtime-gateway has a code example in its documentation
# (ci/doc_examples.py says what counts). Needs the nightly toolchain (rustdoc's JSON output);
# the examples themselves are compiled and run by `cargo test --doc` on stable.
set -euo pipefail
cd "$(dirname "$0")/.."
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
