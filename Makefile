# Two entry points, both doing all set-up first (idempotent): `make demo` and `make test`.
VENV := .venv
export PYOPENGL_PLATFORM ?= osmesa

.PHONY: setup demo test bench
setup:
	bash scripts/setup.sh

demo: setup
	$(VENV)/bin/cyclecorr demo --out outputs/demo

test: setup
	$(VENV)/bin/python -m pytest -q

bench: setup
	for b in bench/*.py; do $(VENV)/bin/python $$b || exit 1; done
