#!/usr/bin/env bash
# The prepared run for a machine with a GPU and no Rust toolchain (never CI). It takes the
# stripped, xz-compressed CUDA binary that scripts/cuda-build.sh made on a build machine
# (target/gpu/aestream.xz, carried along with the working tree), finds the GPU machine's CUDA
# libraries, records what the machine has, then measures: eval PSNR on cuda against cpu and
# in f16 / bf16, `bench` of the reference networks and the denoisers on cuda, a folder run
# on cuda, a short fine-tuning run on cuda, and the PyTorch peer where torch has CUDA.
# Everything goes to $OUT (or ./gpu-out); each step has its own time limit and a failing step
# is recorded and skipped, so one run gives every number it can. See docs/gpu.md.
#
# usage: scripts/gpu-bench.sh [SECONDS_PER_BENCH]     (from the repository root; default 3)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
SECS=${1:-3}
mkdir -p "$OUT"
LOG="$OUT/summary.txt"
: > "$LOG"
say() { echo "$*" | tee -a "$LOG"; }
# step NAME LIMIT_S CMD...: runs CMD with a deadline, output to $OUT/NAME.txt, status to the log.
step() {
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
    local rc=$?
    say "step $name: rc=$rc in $((SECONDS - t0)) s"
    return $rc
}

say "== machine"
{ nvidia-smi; nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv; } \
    > "$OUT/nvidia-smi.txt" 2>&1
head -20 "$OUT/nvidia-smi.txt" | tee -a "$LOG"
say "cpus: $(nproc), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"

# The binary: decompressed once into a scratch folder (the carried copy stays compressed).
BIN=${AESTREAM_BIN:-}
if [ -z "$BIN" ]; then
    [ -f target/gpu/aestream.xz ] || { say "no target/gpu/aestream.xz: run scripts/cuda-build.sh and carry target/gpu"; exit 1; }
    BIN=$(mktemp -d)/aestream
    xz -dc target/gpu/aestream.xz > "$BIN" || python3 -c \
        "import lzma,shutil,sys; shutil.copyfileobj(lzma.open('target/gpu/aestream.xz'), open(sys.argv[1],'wb'))" "$BIN"
    chmod +x "$BIN"
fi

# The CUDA libraries the binary needs besides the driver's libcuda.so.1: cuBLAS, cuRAND,
# NVRTC and the runtime, from wherever this machine has them (a toolkit, or the nvidia-*
# wheels beside PyTorch). The driver's own libcuda is found by the loader as usual.
LIBDIRS=$(python3 - <<'EOF' 2>/dev/null
import glob, os, site, sys
roots = set(site.getsitepackages() + [site.getusersitepackages()] + sys.path)
dirs = set()
for r in roots:
    for pat in ("nvidia/*/lib", "nvidia/cu*/lib", "torch/lib"):
        for d in glob.glob(os.path.join(r, pat)):
            if glob.glob(os.path.join(d, "lib*.so*")):
                dirs.add(d)
print(":".join(sorted(dirs)))
EOF
)
for d in /usr/local/cuda/lib64 /usr/local/cuda/lib; do [ -d "$d" ] && LIBDIRS="$LIBDIRS:$d"; done
export LD_LIBRARY_PATH="${LIBDIRS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "$LD_LIBRARY_PATH" | tr ':' '\n' > "$OUT/libdirs.txt"
ldd "$BIN" > "$OUT/ldd.txt" 2>&1
say "libraries: $(grep -cE 'cuda|cublas|curand|nvrtc' "$OUT/ldd.txt") CUDA entries, missing: $(grep -c 'not found' "$OUT/ldd.txt")"
grep -E 'cuda|cublas|curand|nvrtc|not found' "$OUT/ldd.txt" | tee -a "$LOG"
"$BIN" --version 2>&1 | tee -a "$LOG"

say "== eval: PSNR on the samples, cuda against cpu, then half precision"
# Variants of the shipped denoise.toml: f16 as shipped (with the SURE blend); bf16 only
# without the blend (its probe is finer than bf16 resolves), beside f32 without it.
TMP=$(mktemp -d)
noblend() { sed 's/^sure_blend = true/sure_blend = false/' pipelines/denoise.toml; }
sed 's/^\[infer\]/[infer]\ndtype = "f16"/' pipelines/denoise.toml > "$TMP/denoise-f16.toml"
noblend > "$TMP/denoise-noblend.toml"
noblend | sed 's/^\[infer\]/[infer]\ndtype = "bf16"/' > "$TMP/denoise-bf16.toml"
step eval-cpu 300 "$BIN" eval denoise --data samples/clean --device cpu --json
step eval-cuda 300 "$BIN" eval denoise --data samples/clean --device cuda --json
for v in f16 noblend bf16; do
    step "eval-cuda-$v" 300 "$BIN" eval "$TMP/denoise-$v.toml" --data samples/clean --device cuda --json
done
for f in eval-cpu eval-cuda eval-cuda-f16 eval-cuda-noblend eval-cuda-bf16; do
    say "$f: $(python3 -c "import json,sys; r=json.loads(open(sys.argv[1]).read().strip().splitlines()[-1]); print('psnr', r['psnr'], 'ssim', r['ssim'])" "$OUT/$f.txt" 2>&1 | tail -1)"
done

say "== bench (JSON lines in bench.jsonl)"
: > "$OUT/bench.jsonl"
while read -r args; do
    args=${args//TMP/$TMP}
    # shellcheck disable=SC2086
    if step bench-one 300 "$BIN" bench $args --device cuda --seconds "$SECS" --json; then
        tail -1 "$OUT/bench-one.txt" >> "$OUT/bench.jsonl"
    else
        say "  failed: bench $args: $(tail -2 "$OUT/bench-one.txt" | tr '\n' ' ')"
    fi
done <<'EOF'
conv-ae-ref --batch 8
conv-ae-ref --batch 32
dense-ae-ref --batch 64
denoise --size 256 --batch 8
denoise-fast --size 256 --batch 8
denoise --size 256 --batch 8 --dtype f16
denoise --size 256 --batch 32
TMP/denoise-noblend.toml --size 256 --batch 8
TMP/denoise-bf16.toml --size 256 --batch 8
EOF
python3 - "$OUT/bench.jsonl" <<'EOF' | tee -a "$LOG"
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    print(f"{r['model']:14} b{r['batch']:<3} {r['size']}² {r.get('dtype','f32'):5} "
          f"infer {r['infer_images_per_s']:9.1f} img/s (p50 {r['p50_ms']:.2f} ms)  "
          f"train {r['train_steps_per_s']:8.2f} steps/s")
EOF

say "== folder run on cuda: 64 noisy 256² frames"
mkdir -p "$TMP/in"
for i in $(seq 0 63); do cp samples/noisy/flower.png "$TMP/in/f$i.png"; done
step run-cuda 300 /usr/bin/time -v "$BIN" run denoise --once --device cuda --input "$TMP/in" --output "$TMP/out"
grep -E "device:|Elapsed|Maximum resident" "$OUT/run-cuda.txt" | tee -a "$LOG"
say "outputs: $(find "$TMP/out" -name '*.png' | wc -l) of 64"

say "== fine-tuning on cuda (AdamW and the trainer on the device), 60 s of a watched folder"
mkdir -p "$TMP/ft-in"
for i in $(seq 0 31); do cp samples/noisy/china.png "$TMP/ft-in/c$i.png"; done
step finetune-cuda 120 timeout -s INT 60 "$BIN" run denoise-fast --finetune --device cuda \
    --input "$TMP/ft-in" --output "$TMP/ft-out"
grep -iE "fine-tune|error|panick" "$OUT/finetune-cuda.txt" | tail -8 | tee -a "$LOG"

say "== PyTorch peer on cuda"
if python3 -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    step pytorch-cuda 300 python3 benches/pytorch_reference.py --device cuda --seconds "$SECS"
    cat "$OUT/pytorch-cuda.txt" | tee -a "$LOG"
else
    say "no CUDA-enabled torch here"
fi
say "== done: $OUT"
