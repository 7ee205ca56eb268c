# The README quick start: `make up` starts the whole local system, `make test` runs the tests.
# Both create .venv and install the locked dependencies on first use (Python 3.11+ only).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.9
STAMP := $(VENV)/.installed

.PHONY: up demo test lint format lock bench clean-data deploy-check contracts reliability-report soak

$(STAMP): requirements.lock pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required")'
	@test -x $(BIN)/python || $(PYTHON) -m venv --without-pip $(VENV)
	@# uv into the venv with the interpreter's own pip (seconds; a pip inside the venv
	@# costs ~10 s more); ensurepip only where that pip cannot target another Python
	@($(BIN)/uv --version 2>/dev/null | grep -q '^uv $(UV_VERSION) ') || \
	  $(PYTHON) -m pip --python $(BIN)/python install --quiet --disable-pip-version-check uv==$(UV_VERSION) || \
	  ($(BIN)/python -m ensurepip --default-pip >/dev/null && \
	   $(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION))
	@# the lock is complete (uv pip compile), so one install without resolving again
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps -r requirements.lock -e .
	@touch $(STAMP)

up: $(STAMP)
	$(BIN)/fusion-prime up

# On the running `make up` (another terminal): accounts, escrows, a 30% price drop, emails.
demo: $(STAMP)
	$(BIN)/fusion-prime demo

test: $(STAMP)
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

lock: $(STAMP)
	$(BIN)/uv pip compile pyproject.toml --extra dev -o requirements.lock

bench: $(STAMP)
	$(BIN)/python -m bench

# The reliability suite (tests/reliability) as one Markdown table in
# .fusion-prime/reliability/report.md; `soak` runs its long sizes (about 15 min).
reliability-report: $(STAMP)
	$(BIN)/python -m bench.reliability_report

soak: $(STAMP)
	$(BIN)/python -m bench.reliability_report --soak

# Offline checks of deploy/ (generated files, audit, terraform fmt, checkov, hadolint);
# the tools are installed once into .cache/deploy-tools.
deploy-check: $(STAMP)
	bash deploy/check.sh

# Rebuild the escrow contracts' committed ABI and bytecode from contracts/ (solc-js, npm).
contracts:
	bash tools/evm/build-contracts.sh

clean-data:
	rm -rf .fusion-prime
