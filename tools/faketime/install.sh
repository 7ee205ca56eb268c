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
bash "$(dirname "$0")/../apt-install.sh" tools/faketime libfaketime
find_lib
