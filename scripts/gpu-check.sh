#!/usr/bin/env bash
# The prepared check for a session that is lent a GPU machine (never CI): builds with
# `--features cuda`, runs the library tests on that build, benches the reference networks and
# `denoise` on the GPU, and runs the folder pipeline on it. Results go to $OUT (or ./gpu-check).
#
# usage: scripts/gpu-check.sh        (from the repository root; needs nvcc and a CUDA GPU)
set -uo pipefail
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
nvidia-smi -L 2>&1 | tee "$OUT/gpu.txt"
nvcc --version 2>&1 | tail -1 | tee -a "$OUT/gpu.txt"
if ! cargo build --release --features cuda > "$OUT/build.txt" 2>&1; then
    tail -30 "$OUT/build.txt"
    exit 1
fi
cargo test --release --features cuda --lib > "$OUT/tests.txt" 2>&1
grep -E "^test result|FAILED|panicked" "$OUT/tests.txt"
BIN=target/release/aestream
for args in "conv-ae-ref --batch 8" "conv-ae-ref --batch 32" "dense-ae-ref --batch 64" \
    "denoise --size 256 --batch 8" "denoise-fast --size 256 --batch 8"; do
    for dev in cuda cpu; do
        # shellcheck disable=SC2086
        timeout 120 "$BIN" bench $args --device "$dev" --seconds 3 --json 2>>"$OUT/bench.err"
    done
done | tee "$OUT/bench.jsonl"
mkdir -p "$OUT/frames"
for i in $(seq 0 15); do cp samples/noisy/flower.png "$OUT/frames/f$i.png"; done
/usr/bin/time -v "$BIN" run denoise-fast --once --device cuda --input "$OUT/frames" \
    --output "$OUT/denoised" > "$OUT/run.txt" 2>&1
grep -E "device:|frames|Elapsed|Maximum resident" "$OUT/run.txt"
