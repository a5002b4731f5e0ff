# shellcheck shell=bash
# Sourced by scripts/cuda-check.sh and scripts/cuda-build.sh: a CUDA 13.0 toolkit made of
# NVIDIA's Python wheels, installed with pip into the git-ignored `.cuda/` of the repository,
# and the environment candle's and cudarc's build scripts read to find it. No GPU, no system
# toolkit and no root needed; only python3 with pip and the package registry.
#
# The pins: an unpinned install mixes in parts of later releases, and 13.0 matches the GPU
# machine's driver. The first five make a toolkit-like tree under nvidia/cu13/ (nvcc and its
# front end cicc in nvvm/, the crt headers, the runtime headers, CCCL for cub/thrust): enough
# to compile candle's kernels. Linking a binary also needs the libraries in CUDA_LINK_WHEELS.

CUDA_PREFIX="$(pwd)/.cuda"
CUDA_WHEELS=(
    nvidia-cuda-nvcc==13.0.88
    nvidia-cuda-crt==13.0.88
    nvidia-nvvm==13.0.88
    nvidia-cuda-runtime==13.0.96
    nvidia-cuda-cccl==13.0.85
)
CUDA_LINK_WHEELS=(
    nvidia-cublas==13.0.2.14
    nvidia-curand==10.4.0.35
    nvidia-cuda-nvrtc==13.0.88
)
CUDA_HOME_DIR="$CUDA_PREFIX/site/nvidia/cu13"

# cuda_install DIR WHEEL...: installs the wheels into .cuda/DIR unless these very pins are
# there already (a stamp; a changed pin or an interrupted install starts DIR afresh). Each set
# gets its own DIR: pip --target cannot merge a second set into the nvidia/ folder of a first.
cuda_install() {
    local dir="$CUDA_PREFIX/$1"
    shift
    local stamp="$dir/installed.txt"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$*" ]; then
        return
    fi
    if ! python3 -m pip --version >/dev/null 2>&1; then
        # As scripts/test.sh brings redis-server: Debian's package, on a fresh machine.
        local sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        echo "cuda: installing python3-pip (Debian package) for the CUDA wheels" >&2
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-pip >/dev/null
    fi
    echo "cuda: installing $* into ${dir#"$(pwd)/"}" >&2
    rm -rf "$dir"
    # --target keeps them out of every Python environment (and so is allowed where Debian
    # marks the system Python externally managed); --no-deps lets nothing unpinned in.
    PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check \
        --no-deps --no-cache-dir --target "$dir" "$@" || return 1
    printf '%s' "$*" > "$stamp"
}

# The variables the build scripts read: cudaforge (candle-kernels) takes NVCC, CUDA_HOME,
# CUDA_COMPUTE_CAP (90 = H100/H200; it compiles for sm_90a) and CUDAFORGE_THREADS; cudarc
# takes CUDARC_CUDA_VERSION (else it runs `nvcc --version`) and links from CUDA_HOME/lib(/stubs).
cuda_exports() {
    export CUDA_HOME="$CUDA_HOME_DIR" CUDA_PATH="$CUDA_HOME_DIR" CUDA_ROOT="$CUDA_HOME_DIR"
    export NVCC="$CUDA_HOME_DIR/bin/nvcc"
    export PATH="$CUDA_HOME_DIR/bin:$PATH"
    export CUDARC_CUDA_VERSION=13000
    export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
    export CUDAFORGE_THREADS="${CUDAFORGE_THREADS:-2}"
    export CPATH="$CUDA_HOME_DIR/include:$CUDA_HOME_DIR/include/cccl${CPATH:+:$CPATH}"
    export NVCC_APPEND_FLAGS="-I$CUDA_HOME_DIR/include -I$CUDA_HOME_DIR/include/cccl"
}
