#!/usr/bin/env bash
# The test command: installs what the tests need on a fresh machine, then runs them.
# Extra arguments go to `cargo test` (e.g. `scripts/test.sh --lib` or `scripts/test.sh --test cli`).
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests run for real: redis-server (tests/redis.rs starts its own
# servers) and chromium (tests/http.rs loads the status page in it headless).
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "installing ${missing[*]} (Debian packages) for the tests" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
redis-server --version >&2
chromium --version >&2

cargo test "$@"
