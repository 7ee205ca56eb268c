#!/usr/bin/env bash
# Installs Debian's libfaketime for the reliability suite's clock-skew cases: a service
# process is started with LD_PRELOAD=<libfaketime.so.1> and FAKETIME="+5m" (its wall clock
# moved, its monotonic clock left real). Idempotent; needs root (or sudo) and apt-get.
# Prints the library's path. Called by tests/reliability/skew.py.
set -euo pipefail
find_lib() {
    for p in /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 \
        /usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1 \
        /usr/lib/faketime/libfaketime.so.1 /usr/lib64/faketime/libfaketime.so.1; do
        if [ -f "$p" ]; then
            echo "$p"
            return 0
        fi
    done
    return 1
}
if find_lib; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "tools/faketime: apt-get not found: install libfaketime with this system's package manager" >&2
    exit 2
fi
sudo=""
if [ "$(id -u)" != "0" ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo="sudo -n"
    else
        echo "tools/faketime: installing libfaketime needs root (or password-less sudo)" >&2
        exit 2
    fi
fi
root="$(cd "$(dirname "$0")/../.." && pwd)"
mkdir -p "$root/.cache"
exec 9>"$root/.cache/faketime-install.lock"
flock 9 2>/dev/null || true
find_lib && exit 0
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq >&2
$sudo apt-get install -y -qq --no-install-recommends libfaketime >&2
find_lib
