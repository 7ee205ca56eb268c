#!/usr/bin/env bash
# Builds contracts/EscrowFactory.sol with solc-js (the version pinned in package-lock.json)
# into src/fusion_prime/settlement/contracts/EscrowFactory.json: {contract: {abi, bytecode}}
# for the deployable contracts, the file the relayer decodes logs with. `make contracts`
# runs it; tests/settlement/test_contracts.py fails when the committed file differs.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bash "$here/install.sh"
out="$root/src/fusion_prime/settlement/contracts/EscrowFactory.json"
cd "$here"
node compile.js "$root/contracts/EscrowFactory.sol" | python3 -c '
import json, sys
built = json.load(sys.stdin)
keep = {name: art for name, art in sorted(built.items()) if art["bytecode"] != "0x"}
sys.stdout.write(json.dumps(keep, indent=1, sort_keys=True) + "\n")
' > "$out.tmp"
mv "$out.tmp" "$out"
echo "wrote $out"
