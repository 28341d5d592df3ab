# make demo: install what is missing, then run the main job on its defaults.
# make test: install what is missing, then run every check and test.
# Both are idempotent and quiet when nothing is missing. Run as root on Debian.

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LOCK := requirements.lock
LOCK_VENV := .lock-venv
PIP_TOOLS := 7.6.2
APT_PACKAGES := python3-venv libseccomp2 fuse3 libfuse3-dev dosfstools iproute2 sqlite3 curl wrk \
  iperf3 iputils-ping tcpdump ethtool netcat-openbsd
PYTEST_ARGS ?=

.PHONY: demo test lint typecheck pytest bench system clean lock

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

# Python packages: a new .venv with exactly the locked set (every version pinned,
# every file hashed), then nooks itself, built with the locked setuptools (no build isolation: nothing
# unlocked is fetched). `make lock` updates the lock from pyproject.toml.
$(STAMP): $(LOCK) pyproject.toml
	@rm -rf $(VENV) && python3 -m venv $(VENV)
	@echo "installing the locked Python packages into $(VENV)"
	@$(PY) -m pip install --disable-pip-version-check --require-hashes -r $(LOCK) 2>&1 \
	  | grep -v '^WARNING: Location'; test $${PIPESTATUS[0]} -eq 0
	@$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e . 2>&1 \
	  | grep -v '^WARNING: Location'; test $${PIPESTATUS[0]} -eq 0
	@$(PY) -m compileall -q src  # every domain starts from bytecode, not from source
	@$(PY) -c 'import nooks, msgspec, rich, pyseccomp, pytest' && touch $(STAMP)

lock:
	@rm -rf $(LOCK_VENV) && python3 -m venv $(LOCK_VENV)
	@$(LOCK_VENV)/bin/pip install -q --disable-pip-version-check pip-tools==$(PIP_TOOLS) 2>&1 \
	  | grep -v '^WARNING: Location' || true
	PIP_CONSTRAINT= $(LOCK_VENV)/bin/pip-compile --quiet --upgrade --generate-hashes \
	  --allow-unsafe --all-build-deps --extra test --extra plot --strip-extras \
	  --no-emit-find-links --no-emit-index-url -o $(LOCK) pyproject.toml
	@rm -rf $(LOCK_VENV)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/lint-imports --no-cache --no-logo

typecheck: $(STAMP)
	$(VENV)/bin/mypy

pytest: $(STAMP)
	@$(VENV)/bin/pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest ran no tests: failing"; exit 1; fi; exit $$rc

bench: system $(STAMP)
	$(PY) -m nooks.bench xpc

clean:
	rm -rf $(VENV) $(LOCK_VENV) .mypy_cache .pytest_cache .ruff_cache
