#!/usr/bin/env bash
# Compiles the CUDA half of aestream on a machine with no GPU and no CUDA toolkit, so that GPU
# code cannot rot unseen: installs NVIDIA's CUDA 13.0 compiler wheels into `.cuda/`
# (git-ignored; see scripts/cuda-env.sh), points candle's and cudarc's build scripts at them
# and runs `cargo clippy --features cuda --all-targets -- -D warnings` in its own target dir,
# `target/cuda`, so it never invalidates the ordinary build's fingerprints.
#
# A clippy/check build needs nvcc (candle-kernels compiles its .cu files to PTX and a static
# MoE library in its build script) and the headers, but no GPU and no CUDA libraries: nothing
# is linked. Cold it takes about 20 min on 2 busy cores, most of it candle-kernels' nvcc work;
# warm (wheels kept, target/cuda reused) only our crate is checked again.
#
# usage: scripts/cuda-check.sh            (from anywhere; CI's .ci/run calls it)
# env:   CUDA_CHECK_NICE=0 runs at normal priority (default: nice 19, for shared machines)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/cuda-env.sh
. scripts/cuda-env.sh

start=$(date +%s)
cuda_install site "${CUDA_WHEELS[@]}"
cuda_exports
nvcc --version | tail -2 >&2
nice -n "${CUDA_CHECK_NICE:-19}" cargo clippy --target-dir target/cuda --features cuda \
    --all-targets -- -D warnings
echo "cuda-check: clippy --features cuda passed in $(($(date +%s) - start)) s" >&2
