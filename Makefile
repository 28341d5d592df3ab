# make demo: install what is missing, then run the main job on its defaults.
# make test: install what is missing, then run every check and test.
# Both are idempotent and quiet when nothing is missing. Run as root on Debian.

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
APT_PACKAGES := python3-venv libseccomp2 fuse3 libfuse3-dev dosfstools iproute2 sqlite3 curl wrk
PYTEST_ARGS ?=

.PHONY: demo test lint typecheck pytest bench system clean

demo: system $(STAMP)
	$(PY) -m nooks demo

test: system $(STAMP) lint typecheck pytest

system:
	@missing=$$(for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed$$' || echo $$p; \
	done); \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:" $$missing; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check -e '.[test]' 2>&1 | grep -v '^WARNING: Location' || true
	@$(PY) -c 'import nooks, msgspec, rich, pyseccomp, pytest' && touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests

typecheck: $(STAMP)
	$(VENV)/bin/mypy

pytest: $(STAMP)
	@$(VENV)/bin/pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest ran no tests: failing"; exit 1; fi; exit $$rc

bench: system $(STAMP)
	$(PY) -m nooks.bench xpc

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
