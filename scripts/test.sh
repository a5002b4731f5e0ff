#!/usr/bin/env bash
# The test command: installs what the tests need on a fresh machine, then runs them.
# Extra arguments go to `cargo test` (e.g. `scripts/test.sh --lib` or `scripts/test.sh --test cli`).
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests run for real: redis-server (tests/redis.rs starts its own
# servers), chromium (tests/http.rs loads the status page in it, headless) and ffmpeg
# (tests/video_ffmpeg.rs pipes video through ffmpeg and ffprobe).
# Installs Debian package $1 when command $2 is missing.
need() {
    command -v "$2" >/dev/null 2>&1 && return
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "installing $1 (Debian package) for the tests" >&2
    if [ -z "${APT_UPDATED:-}" ]; then
        $SUDO apt-get update -qq
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$1" >/dev/null
}
need redis-server redis-server
need chromium chromium
need ffmpeg ffmpeg
redis-server --version >&2
chromium --version >&2
ffmpeg -version | sed -n 1p >&2

cargo test "$@"
