#!/usr/bin/env bash
# Builds the CUDA binary on a machine without a GPU, for a GPU machine without a Rust toolchain
# (docs/gpu.md): `cargo build --release --features cuda` against the CUDA 13.0 wheels of
# scripts/cuda-env.sh, then stripped and xz-compressed into target/gpu/aestream.xz, small
# enough to travel with the working tree. scripts/gpu-bench.sh runs it there.
#
# Linking needs what a clippy run does not: cuBLAS, cuRAND, NVRTC and the runtime as `.so`
# files (their wheels ship only versioned names, so unversioned links are made beside them),
# and the driver library libcuda.so, which only a GPU machine has. For the link alone a
# stand-in is made, as NVIDIA's toolkit ships one in lib/stubs: a library named libcuda.so.1
# that defines every `cu*` name of cuda.h. It lies in lib/stubs of .cuda's toolkit tree, where
# only the linker looks (cudarc adds that folder to the link search); the binary records just
# the name libcuda.so.1, which the GPU machine's driver provides. Never put the stand-in on a
# runtime library path: a program that loads it gets no GPU.
#
# usage: scripts/cuda-build.sh        (about 30+ min cold on 2 cores; needs cc, strip, xz)
# env:   CUDA_COMPUTE_CAP (default 90: H100/H200)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/cuda-env.sh
. scripts/cuda-env.sh

start=$(date +%s)
cuda_install site "${CUDA_WHEELS[@]}"
cuda_install link "${CUDA_LINK_WHEELS[@]}"
cuda_exports

lib="$CUDA_HOME_DIR/lib"
# Unversioned names for the linker's -lcublas, -lcublasLt, -lcurand, -lnvrtc, -lcudart.
for so in "$CUDA_PREFIX"/link/nvidia/cu13/lib/lib{cublas,cublasLt,curand,nvrtc}.so.* "$lib"/libcudart.so.*; do
    case "$so" in *builtins* | *.alt.*) continue ;; esac
    base=$(basename "$so")
    ln -sf "$so" "$lib/${base%%.so.*}.so"
done

# The link-time stand-in for the driver's libcuda.so.1 (see above).
stub="$lib/stubs/libcuda.so"
if [ ! -f "$stub" ]; then
    mkdir -p "$lib/stubs"
    grep -ohE '\bcu[A-Z][A-Za-z0-9_]*\b' "$CUDA_HOME_DIR"/include/cuda*.h | sort -u |
        sed 's/.*/void &(void) {}/' > "$CUDA_PREFIX/libcuda-stub.c"
    cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stub" "$CUDA_PREFIX/libcuda-stub.c"
    echo "cuda-build: link stand-in with $(wc -l < "$CUDA_PREFIX/libcuda-stub.c") cu* names" >&2
fi

CARGO_PROFILE_RELEASE_DEBUG=0 nice -n "${CUDA_BUILD_NICE:-19}" \
    cargo build --release --features cuda --target-dir target/cuda
bin=target/cuda/release/aestream
mkdir -p target/gpu
strip -o target/gpu/aestream "$bin"
xz -9e -T2 -c target/gpu/aestream > target/gpu/aestream.xz
rm target/gpu/aestream
readelf -d "$bin" | grep NEEDED >&2
echo "cuda-build: $(du -h "$bin" | cut -f1) built, $(du -h target/gpu/aestream.xz | cut -f1) \
stripped and compressed in target/gpu/aestream.xz, in $(($(date +%s) - start)) s" >&2
