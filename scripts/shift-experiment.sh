#!/usr/bin/env bash
# Online fine-tuning under a content shift, as issue 5 measures it: a `denoise` daemon with
# `--finetune` gets STREAM's clean frames renamed into its input over ~30 s, runs 3 more
# minutes, is stopped with SIGTERM; then the shipped weights and the newest checkpoint are
# scored on HELD at σ = 25.
#
# usage: scripts/shift-experiment.sh STREAM_DIR HELD_DIR WORK_DIR [extra `aestream run` args]
# env:   AESTREAM (binary, default target/release/aestream), PIPE (default denoise),
#        SETTLE (seconds after the last frame, default 180), FEED_DELAY (seconds between
#        frames, default 0.1; 0 drops them in at once to measure serving throughput),
#        FINETUNE (default 1; 0 serves the shipped weights alone, for comparison),
#        QUICK (1: stop as soon as every frame has its output, for throughput runs)
set -euo pipefail
[ $# -ge 3 ] || { sed -n 2,13p "$0"; exit 2; }
STREAM=$1 HELD=$2 WORK=$3; shift 3
BIN=${AESTREAM:-target/release/aestream}
PIPE=${PIPE:-denoise}
rm -rf "$WORK"; mkdir -p "$WORK"/{in,out,state,ck}
tune=()
[ "${FINETUNE:-1}" = 1 ] && tune=(--finetune --checkpoints "$WORK/ck")
"$BIN" run "$PIPE" --input "$WORK/in" --output "$WORK/out" --state "$WORK/state" \
    "${tune[@]}" "$@" > "$WORK/log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
sleep 3
frames=("$STREAM"/*)
start=$(date +%s.%N)
# About 30 s for 300 frames, written then renamed so that the watcher sees whole files.
for f in "${frames[@]}"; do
    n=$(basename "$f")
    cp "$f" "$WORK/in/.part-$n" && mv "$WORK/in/.part-$n" "$WORK/in/$n"
    sleep "${FEED_DELAY:-0.1}"
done
# Serving rate: from the first frame in to the last output.
settle=${SETTLE:-180}
for ((t = 0; t < settle * 10; t++)); do
    [ "$(ls "$WORK/out" | wc -l)" -ge ${#frames[@]} ] && break
    kill -0 $PID 2>/dev/null || { echo "the daemon exited early:"; tail -3 "$WORK/log"; exit 1; }
    sleep 0.1
done
served=$(date +%s.%N)
echo "all ${#frames[@]} outputs after $(awk "BEGIN{printf \"%.1f\", $served - $start}") s" \
    "($(awk "BEGIN{printf \"%.2f\", ${#frames[@]} / ($served - $start)}") frames/s)"
[ "${QUICK:-0}" = 1 ] || sleep "$(awk "BEGIN{r = $settle - ($served - $start) + 30; print (r > 0 ? r : 0)}")"
kill -TERM $PID; wait $PID && rc=0 || rc=$?
trap - EXIT
end=$(date +%s.%N)
echo "exit $rc after $(awk "BEGIN{printf \"%.0f\", $end - $start}") s; ${#frames[@]} frames in, $(ls "$WORK/out" | wc -l) out"
grep -c "swapped in" "$WORK/log" | sed 's/^/swaps: /' || true
newest=$(ls -v "$WORK"/ck/*-v*.safetensors 2>/dev/null | grep -v '\.opt\.' | tail -1 || true)
# The first psnr pair of eval's JSON is the mean over HELD (per-image ones follow).
score() { "$BIN" eval "$PIPE" --data "$HELD" --noise gaussian:25 --json "$@" 2>/dev/null | tail -1 |
    grep -o '"psnr_input":[0-9.]*,"psnr":[0-9.]*' | head -1; }
echo "shipped weights: $(score)"
[ -n "$newest" ] && echo "newest checkpoint $(basename "$newest"): $(score --weights "$newest")"
