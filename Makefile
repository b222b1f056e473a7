# Every target bootstraps the virtual environment itself: a fresh clone needs only `make demo`
# or `make test`. exospherehost needs Python >= 3.12; .python-version asks pyenv for 3.12.
PYTHON ?= $(shell for p in python3.12 python3.13 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null \
	&& { echo $$p; break; }; done)
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test test-upstream lint bench bench-exact clean

$(STAMP): pyproject.toml demo/pyproject.toml
	@test -n "$(PYTHON)" || { echo "Python >= 3.12 is needed (try: pyenv install 3.12)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e '.[test]' -e './demo[prometheus]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/exo-otel demo

# The tests marked `upstream` run against the real upstream state manager (tests/helpers/upstream_harness), from
# UPSTREAM_GIT_DIR, UPSTREAM_SRC, UPSTREAM_ARCHIVE or the snapshot in ../shared/upstream-src. Without
# the source they are skipped with the reason; in CI (CI set) a missing source fails the run instead.
UPSTREAM_SOURCE := cd tests && ../$(VENV)/bin/python -m helpers.upstream_harness source
PART = @echo "== $(1): $$(date -u +%T)"

test: $(STAMP)
	$(call PART,lint and types)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy
	@$(UPSTREAM_SOURCE) || { [ -z "$$CI" ] || { echo "CI: the upstream source is missing"; exit 1; }; }
	$(call PART,tests without the real server)
	$(VENV)/bin/python -m pytest -m "not upstream"
	$(call PART,tests on the real upstream state manager)
	$(VENV)/bin/python -m pytest -m "upstream and not long_load" --durations=15
	$(call PART,done)

# Every real-server test, the 200-run loads included; fails where the upstream source is missing.
test-upstream: $(STAMP)
	$(UPSTREAM_SOURCE)
	$(VENV)/bin/python -m pytest -m upstream --durations=15

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/runtime_overhead.py --rounds 15
	$(VENV)/bin/python benchmarks/runtime_overhead.py --rounds 15 --work-ms 1
	@if [ -n "$$UPSTREAM_GIT_DIR$$UPSTREAM_SRC" ]; then $(VENV)/bin/python benchmarks/state_manager_side.py; \
	else echo "state manager side: not measured (set UPSTREAM_GIT_DIR or UPSTREAM_SRC: it runs the real server)"; fi

# exo_otel's cost per node execution in instructions under callgrind (needs valgrind): the parts measured
# twice, their difference, added / SDK floor, and a profile by function. About 4 minutes on 2 cores.
bench-exact: $(STAMP)
	$(VENV)/bin/python benchmarks/exact_cost.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info demo/src/*.egg-info
