# Every target runs set-up first; set-up is idempotent and quick once done.
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: setup demo test bench clean cleanup

setup:
	@bash scripts/setup.sh

demo: setup
	$(PY) -m enforcer demo

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

# Every benchmark (datapath, then compiler); the last line is one JSON object.
bench: setup
	$(PY) bench/run_all.py

cleanup: setup
	$(PY) -m enforcer cleanup

clean:
	rm -rf .venv build *.egg-info .pytest_cache
