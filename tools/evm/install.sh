#!/usr/bin/env bash
# Installs the local EVM test tools from npm at the versions of package-lock.json:
# anvil (@foundry-rs/anvil, a local Ethereum node) and solc-js (the Solidity compiler).
# Idempotent and offline after the first run (npm cache under .cache/npm). Called by the
# test harness (tests/evm.py); CI runs it through `make test`.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$here"
stamp="node_modules/.fp-installed"
if [ -f "$stamp" ] && [ "$stamp" -nt package-lock.json ] && [ -x node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil ]; then
    exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
    echo "tools/evm: npm (Node.js 20+) is required to install anvil and solc for the tests" >&2
    exit 1
fi
mkdir -p "$root/.cache/npm"
exec 9>"$root/.cache/evm-install.lock"
flock 9 2>/dev/null || true
npm ci --no-audit --no-fund --prefer-offline --cache "$root/.cache/npm" >&2
touch "$stamp"
