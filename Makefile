# Two entry points, both doing all set-up first (idempotent): `make demo` and `make test`.
VENV := .venv
export PYOPENGL_PLATFORM ?= osmesa

.PHONY: setup demo test lint bench
setup:
	bash scripts/setup.sh

demo: setup
	$(VENV)/bin/cyclecorr demo --out outputs/demo

test: setup lint
	$(VENV)/bin/python -m pytest -q

# the linter configured in pyproject.toml ([tool.ruff]); `make test` (and so CI) runs it first
lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	for b in bench/*.py; do $(VENV)/bin/python $$b || exit 1; done
