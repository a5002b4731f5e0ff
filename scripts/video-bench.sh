#!/usr/bin/env bash
# Frames per second of `--framing y4m` (docs/video.md): a noisy testsrc2 clip made by ffmpeg,
# piped through a release build of aestream, per size and pipeline. Not a test: a number for
# the notes. Usage: scripts/video-bench.sh [FRAMES] (default 10). Needs ffmpeg and
# `cargo build --release`.
set -euo pipefail
cd "$(dirname "$0")/.."
frames=${1:-10}
bin=${CARGO_TARGET_DIR:-target}/release/aestream
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for size in 640x480 1280x720; do
    clip=$tmp/$size.y4m
    ffmpeg -v error -f lavfi -i "testsrc2=size=$size:rate=25" -frames:v "$frames" \
        -vf noise=alls=25:allf=t -pix_fmt yuv420p -f yuv4mpegpipe "$clip"
    for run in "denoise-fast" "denoise-fast --temporal 2" "denoise"; do
        [ -n "${SKIP:-}" ] && [[ "$size $run" == $SKIP ]] && continue
        start=$(date +%s.%N)
        # shellcheck disable=SC2086 # $run is a pipeline name and flags
        "$bin" run $run --input - --output - --framing y4m < "$clip" > "$tmp/out.y4m" 2> "$tmp/log"
        end=$(date +%s.%N)
        n=$(grep -o '[0-9]* written' "$tmp/log" | grep -o '[0-9]*' | tail -1)
        fps=$(echo "$n / ($end - $start)" | bc -l)
        printf '%-9s %-28s %3d frames  %6.2f frames/s (wall, model load included)  %s\n' \
            "$size" "$run" "$n" "$fps" "$(grep -o '[0-9.]* frames/s)' "$tmp/log" | tail -1)"
    done
done
