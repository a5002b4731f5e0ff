#!/usr/bin/env bash
# The test command: installs what the tests need on a fresh machine, then runs them.
# tests/redis.rs starts its own redis-server processes on free loopback ports, so the only
# thing to bring is the redis-server binary (Debian's package). Extra arguments go to
# `cargo test` (e.g. `scripts/test.sh --lib` or `scripts/test.sh --test cli`).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "installing redis-server (Debian package) for tests/redis.rs" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
fi
redis-server --version >&2

cargo test "$@"
