# The two commands of the README:
#   make up    create the virtualenv, install mesh, start a node
#   make test  install what the tests need (Python and system packages), run the whole suite

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# System packages the tests use; installed with apt-get when missing and we are root.
SYSTEM_PACKAGES := b3sum

.PHONY: up test venv test-deps system-deps bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

venv: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .

up: venv
	@echo "mesh $$($(BIN)/mesh --version | cut -d' ' -f2) is installed: $(BIN)/mesh"
	@echo "The node (mesh up) is not built yet; until it is, the store works locally:"
	@echo "  $(BIN)/mesh snapshot DIR      store a tree, print its id"
	@echo "  $(BIN)/mesh checkout ID DIR   write it back out"
	@echo "  $(BIN)/mesh --help            everything else"

system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do command -v $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing system packages:$$missing"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	else \
		echo "warning: missing system packages:$$missing (not root or no apt-get); tests that need them will say so"; \
	fi

test-deps: $(BIN)/python system-deps
	$(BIN)/python -m pip install --quiet -e '.[test]'

test: test-deps
	$(BIN)/python -m pytest

bench: venv system-deps
	$(BIN)/python bench/hash.py
	$(BIN)/python bench/snapshot.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
