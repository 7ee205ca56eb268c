#!/usr/bin/env bash
# Installs Debian's chromium for the console's browser tests (driven by Playwright's Python
# package with executable_path=/usr/bin/chromium: Playwright's own browser download is
# not used). Idempotent; needs root (or sudo) and apt-get. Called by tests/console/browser.py.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
bash "$(dirname "$0")/../apt-install.sh" tools/browser chromium
