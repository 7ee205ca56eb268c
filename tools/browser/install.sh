#!/usr/bin/env bash
# Installs Debian's chromium for the console's browser tests (driven by Playwright's Python
# package with executable_path=/usr/bin/chromium: Playwright's own browser download is
# not used). Idempotent; needs root (or sudo) and apt-get. Called by tests/console/browser.py.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "tools/browser: apt-get not found: install chromium with this system's package manager" >&2
    exit 2
fi
sudo=""
if [ "$(id -u)" != "0" ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo="sudo -n"
    else
        echo "tools/browser: installing chromium needs root (or password-less sudo)" >&2
        exit 2
    fi
fi
root="$(cd "$(dirname "$0")/../.." && pwd)"
mkdir -p "$root/.cache"
exec 9>"$root/.cache/browser-install.lock"
flock 9 2>/dev/null || true
[ -x /usr/bin/chromium ] && exit 0
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq >&2
$sudo apt-get install -y -qq --no-install-recommends chromium >&2
