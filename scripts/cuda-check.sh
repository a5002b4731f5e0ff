#!/usr/bin/env bash
# Compiles the CUDA half of aestream on a machine with no GPU and no CUDA toolkit: proves in CI
# that `--features cuda` still builds and is lint-clean, so GPU code cannot rot unseen.
#
# NVIDIA publishes the CUDA compiler, headers and runtime as Python wheels. This script pins
# the CUDA 13.0 ones (an unpinned install mixes in parts of later releases; 13.0 matches the
# GPU machine's driver), installs them with pip into `.cuda/` (git-ignored), points candle's
# and cudarc's build scripts at that tree and runs
# `cargo clippy --features cuda --all-targets -- -D warnings` with its own target dir,
# `target/cuda`, so it never invalidates the ordinary build's fingerprints.
#
# A clippy/check build needs nvcc (candle-kernels compiles its .cu files to PTX and a static
# MoE library in its build script; cudarc asks nvcc for the CUDA version) and the headers, but
# no GPU and no CUDA libraries: nothing is linked. It is slow cold (about 18 min on 2 busy
# cores, half of it candle-kernels' nvcc work) and quick warm: the wheels are kept once
# installed and cargo reuses `target/cuda`.
#
# usage: scripts/cuda-check.sh            clippy with --features cuda (what CI runs)
#        scripts/cuda-check.sh --env      print the exports, for `eval "$(scripts/cuda-check.sh --env)"`
#                                         before a hand-run `cargo build --features cuda`
# env:   CUDA_CHECK_NICE=0 to run at normal priority (default: nice 19, the machine is shared)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PREFIX="$ROOT/.cuda"

# The pins: the five wheels that make a toolkit-like tree under nvidia/cu13/ (nvcc, its
# front end cicc in nvvm/, the crt headers, the runtime headers, CCCL for cub/thrust).
WHEELS=(
    nvidia-cuda-nvcc==13.0.88
    nvidia-cuda-crt==13.0.88
    nvidia-nvvm==13.0.88
    nvidia-cuda-runtime==13.0.96
    nvidia-cuda-cccl==13.0.85
)
STAMP="$PREFIX/installed.txt"

install_wheels() {
    # Idempotent: the stamp records the exact pins that were installed; anything else
    # (first run, changed pins, interrupted install) reinstalls into a fresh folder.
    if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "${WHEELS[*]}" ] && [ -x "$PREFIX/site/nvidia/cu13/bin/nvcc" ]; then
        return
    fi
    local py
    py=$(command -v python3 || true)
    if [ -z "$py" ] || ! "$py" -m pip --version >/dev/null 2>&1; then
        echo "cuda-check: needs python3 with pip (Debian: apt-get install python3-pip)" >&2
        exit 1
    fi
    echo "cuda-check: installing the CUDA 13.0 wheels into .cuda/ (about 200 MB download)" >&2
    rm -rf "$PREFIX"
    mkdir -p "$PREFIX"
    # --target keeps them out of any Python environment; --no-deps so nothing unpinned slips in.
    PIP_ROOT_USER_ACTION=ignore "$py" -m pip install --quiet --disable-pip-version-check --no-deps --no-cache-dir \
        --target "$PREFIX/site" "${WHEELS[@]}"
    printf '%s' "${WHEELS[*]}" > "$STAMP"
}

cuda_env() {
    local home="$PREFIX/site/nvidia/cu13"
    cat <<EOF
export CUDA_HOME="$home"
export CUDA_PATH="$home"
export CUDA_ROOT="$home"
export NVCC="$home/bin/nvcc"
export PATH="$home/bin:\$PATH"
export CUDARC_CUDA_VERSION=13000
export CUDA_COMPUTE_CAP=\${CUDA_COMPUTE_CAP:-90}
export CUDAFORGE_THREADS=\${CUDAFORGE_THREADS:-2}
export CPATH="$home/include:$home/include/cccl\${CPATH:+:\$CPATH}"
export NVCC_APPEND_FLAGS="-I$home/include -I$home/include/cccl\${NVCC_APPEND_FLAGS:+ \$NVCC_APPEND_FLAGS}"
EOF
}

install_wheels
if [ "${1:-}" = "--env" ]; then
    cuda_env
    exit 0
fi
eval "$(cuda_env)"
nvcc --version | tail -2 >&2

NICE=(nice -n "${CUDA_CHECK_NICE:-19}")
start=$(date +%s)
"${NICE[@]}" cargo clippy --target-dir "$ROOT/target/cuda" --features cuda --all-targets -- -D warnings
echo "cuda-check: clippy --features cuda passed in $(($(date +%s) - start)) s" >&2
