# Every target runs set-up first; set-up is idempotent and quick once done.
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: setup demo lint test unit bench clean cleanup

setup:
	@bash scripts/setup.sh

demo: setup
	$(PY) -m enforcer demo

# The suite mostly waits (probes that must time out, daemons starting), so it
# runs in parallel workers even on two cores (tests/conftest.py: how they
# stay apart). TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 4
test: setup lint
	@start=$$(date +%s); \
	$(PY) -m pytest $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS)) $(PYTEST_ARGS); \
	status=$$?; end=$$(date +%s); \
	echo "make test: $$(( (end - start) / 60 ))m$$(( (end - start) % 60 ))s wall ($(TEST_WORKERS) workers), exit status $$status"; \
	exit $$status

# ruff (style, imports, likely bugs) and mypy (types) over the package, the
# tests and the benchmarks, and import-linter's layer contracts (also checked
# by tests/test_architecture.py): configured in pyproject.toml.
lint: setup
	$(PY) -m ruff check enforcer tests bench
	$(PY) -m mypy
	.venv/bin/lint-imports --no-cache

# The unit tests alone (tests/conftest.py: UNIT_PATHS), in seconds: no root,
# BPF or network namespaces. Started as root, they run as nobody, so none of
# them can lean on root. No set-up (it needs root): the venv must exist.
UNIT_WORKERS ?= 2
unit:
	@test -x $(PY) || { echo "make unit: no $(PY): run make setup (as root) once" >&2; exit 1; }
	@if [ "$$(id -u)" = 0 ]; then as="runuser -u nobody --"; else as=""; fi; \
	paths=$$($(PY) -c 'import tests.conftest as c; print(" ".join(c.UNIT_PATHS))') || exit 1; \
	$$as $(PY) -m pytest -p no:cacheprovider -m unit $(if $(filter 0,$(UNIT_WORKERS)),,-n $(UNIT_WORKERS)) \
		$(PYTEST_ARGS) $$paths

# Every benchmark (datapath, compiler, prefix, tiers, revoke); the last line is one JSON object.
bench: setup
	$(PY) bench/run_all.py

cleanup: setup
	$(PY) -m enforcer cleanup

clean:
	rm -rf .venv build *.egg-info .pytest_cache
