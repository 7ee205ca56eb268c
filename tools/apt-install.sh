#!/usr/bin/env bash
# apt-get install PACKAGE for a tool the tests need (LABEL names it in the messages), as
# root or through password-less sudo, one install at a time per checkout. Exit 2 with a
# message where it cannot be done (no apt-get, no root). Used by tools/*/install.sh.
set -euo pipefail
label="$1"
package="$2"
if ! command -v apt-get >/dev/null 2>&1; then
    echo "$label: apt-get not found: install $package with this system's package manager" >&2
    exit 2
fi
sudo=""
if [ "$(id -u)" != "0" ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo="sudo -n"
    else
        echo "$label: installing $package needs root (or password-less sudo)" >&2
        exit 2
    fi
fi
root="$(cd "$(dirname "$0")/.." && pwd)"
mkdir -p "$root/.cache"
exec 9>"$root/.cache/apt-install.lock"
flock 9 2>/dev/null || true
export DEBIAN_FRONTEND=noninteractive
if dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    exit 0  # installed meanwhile, by another test under the lock
fi
$sudo apt-get update -qq >&2
$sudo apt-get install -y -qq --no-install-recommends "$package" >&2
