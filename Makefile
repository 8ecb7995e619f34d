# `make test` and `make demo` create the environment on first use (.venv) from the lock
# (requirements-lock.txt: every package at the version the suite last passed with, with hashes),
# and install it again when the lock or pyproject.toml changes. `make lock` refreshes the lock;
# `make test-latest` runs the suite on the newest versions pyproject.toml's ranges allow, in
# .venv-latest. docs/faq.md, "Pinning and upgrading".
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements-lock.txt
# the test command's options, the same for `make test` and `make test-latest`
PYTEST_ARGS ?= -q
# The lock covers Python 3.11 and newer: snakemake 9 (the dev extra) needs 3.11.
MIN_PYTHON := 3.11
LATEST_VENV ?= .venv-latest
LATEST_BIN := $(LATEST_VENV)/bin
# `make lock` runs uv (`uv pip compile --universal`: one file for every Python from MIN_PYTHON
# and every platform, in seconds) from a venv of its own; UV=uv uses one on PATH instead.
UV_VERSION := 0.13.8
UV_VENV := .venv-uv
UV ?= $(UV_VENV)/bin/uv
# `make lock` takes the newest versions the ranges allow; `make lock LOCK_UPGRADE=` keeps the
# current pins and changes only what pyproject.toml's changes need.
LOCK_UPGRADE ?= --upgrade
# The lock honours pip's own constraint file where pip has one (a machine's cap on torch), so
# that plain pip can install it there.
PIP_CONSTRAINT_FILE ?= $(shell $(PYTHON) -m pip config list 2>/dev/null | sed -n "s/^[^=]*\.constraint='\(.*\)'$$/\1/p" | head -n 1)

.PHONY: test demo lint bench lock test-latest check-packaging clean

# Our packaging metadata built with the installed setuptools, its deprecation warnings
# (SetuptoolsDeprecationWarning: a TOML-table license, license classifiers, ...) made errors:
# the install step fails on them instead of printing them until the day setuptools drops them.
# Only our own pyproject.toml is built here, so no other package's warnings can fail it.
define CHECK_PACKAGING
import sys, tempfile, warnings
from setuptools.warnings import SetuptoolsDeprecationWarning
warnings.simplefilter("error", SetuptoolsDeprecationWarning)
import setuptools.build_meta as backend
try:
    with tempfile.TemporaryDirectory() as tmp:
        backend.prepare_metadata_for_build_wheel(tmp)
except SetuptoolsDeprecationWarning as e:
    sys.exit(f"error: pyproject.toml uses packaging metadata that setuptools deprecates:\n{e}")
print("packaging metadata: no setuptools deprecation warnings", file=sys.stderr)
endef
export CHECK_PACKAGING

# build-system.requires of pyproject.toml, one a line
define BUILD_REQUIRES
import tomllib
print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], sep="\n")
endef
export BUILD_REQUIRES

# What differs between the lock and the environment that runs it (for this Python and platform)
define DRIFT
import re, sys
from importlib.metadata import distributions
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
lock = {}
for line in open(sys.argv[1]):
    if re.match(r"[A-Za-z0-9]", line):
        req = Requirement(line.split(" \\")[0])
        if req.marker is None or req.marker.evaluate():
            lock[canonicalize_name(req.name)] = str(req.specifier).removeprefix("==")
have = {canonicalize_name(d.metadata["Name"]): d.version for d in distributions()}
have.pop("nerveseg-cli", None)
rows = [(n, lock.get(n, "-"), have.get(n, "-")) for n in sorted(lock.keys() | have.keys())]
rows = [r for r in rows if r[1] != r[2]]
print(f"{len(rows)} packages differ from {sys.argv[1]}" + (" (lock -> latest):" if rows else ""))
for name, old, new in rows:
    print(f"  {name}: {old} -> {new}")
endef
export DRIFT

define NEW_VENV
	test -x $(1)/bin/python || { \
	  $(PYTHON) -c 'import sys; sys.exit(sys.version_info < tuple(map(int, "$(MIN_PYTHON)".split("."))))' \
	  || { echo "error: $(PYTHON) is Python $$($(PYTHON) -c 'import platform; print(platform.python_version())'); nerveseg's test and demo environment needs $(MIN_PYTHON) or newer: make PYTHON=python3.12 ..." >&2; exit 1; }; \
	  $(PYTHON) -m venv $(1); }
endef

# The lock pins pip, setuptools and wheel too. The locked pip installs the rest, checking every
# file's hash; pydensecrf2, an sdist on Linux, is built with the locked setuptools, wheel and
# packaging (--build-constraint), and nerveseg itself with the venv's (--no-build-isolation).
$(STAMP): pyproject.toml $(LOCK)
	$(call NEW_VENV,$(VENV))
	sed -n '/^pip==/{:a;p;/\\$$/{n;ba}}' $(LOCK) | \
	  $(BIN)/python -m pip install --require-hashes --no-deps -r /dev/stdin
	sed -n 's/^\(setuptools\|wheel\|packaging\)==\([^ ;]*\).*/\1==\2/p' $(LOCK) > $(VENV)/build-constraints.txt
	$(BIN)/python -m pip install --require-hashes --build-constraint $(VENV)/build-constraints.txt \
	  -r $(LOCK)
	$(BIN)/python -c "$$CHECK_PACKAGING" > /dev/null
	$(BIN)/python -m pip install --no-deps --no-build-isolation -e .
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/nerveseg demo --overwrite

lint: $(STAMP)
	$(BIN)/ruff check nerveseg_cli tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_rle.py
	$(BIN)/python benchmarks/bench_score.py

check-packaging: $(STAMP)
	$(BIN)/python -c "$$CHECK_PACKAGING" > /dev/null

$(UV):
	$(PYTHON) -m venv $(UV_VENV)
	$(UV_VENV)/bin/python -m pip install 'uv==$(UV_VERSION)'

lock: $(UV)
	{ $(PYTHON) -c "$$BUILD_REQUIRES"; echo pip; echo wheel; } | \
	  $(UV) pip compile pyproject.toml - --extra dev --universal --python-version $(MIN_PYTHON) \
	    --generate-hashes $(LOCK_UPGRADE) $(if $(PIP_CONSTRAINT_FILE),-c $(PIP_CONSTRAINT_FILE)) \
	    --custom-compile-command 'make lock' --quiet -o $(LOCK)

# Always upgrades, so it sees every release since the last run; built with the newest
# setuptools pyproject.toml allows, whose deprecations fail it as in `make test`.
test-latest:
	$(call NEW_VENV,$(LATEST_VENV))
	$(LATEST_BIN)/python -m pip install --upgrade pip wheel
	$(PYTHON) -c "$$BUILD_REQUIRES" | $(LATEST_BIN)/python -m pip install --upgrade -r /dev/stdin
	$(LATEST_BIN)/python -c "$$CHECK_PACKAGING" > /dev/null
	$(LATEST_BIN)/python -m pip install --upgrade --upgrade-strategy eager -e '.[dev]'
	$(LATEST_BIN)/python -c "$$DRIFT" $(LOCK)
	$(LATEST_BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(LATEST_VENV) nerveseg-demo .pytest_cache .ruff_cache
