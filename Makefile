# The two commands of the README:
#   make up    create the virtualenv, install mesh, start a node
#   make test  install what the tests need (Python and system packages), run the whole suite

PYTHON ?= python3
# editable_mode=compat: a plain path in a .pth file instead of an import hook, which
# costs every `mesh` command ~20 ms of start-up.
VENV   ?= .venv
BIN    := $(VENV)/bin
# System packages the tests use, as COMMAND:PACKAGE; installed with apt-get when the
# command is missing and we are root. ip (iproute2): the network namespaces of the mesh tests.
# bwrap: the sandbox executor. podman, runc, busybox (busybox-static installs /bin/busybox):
# the docker executor's tests, which start a private `podman system service` with a test image
# made from busybox for the session and stop it afterwards (tests/podmanutil.py). npm: it
# installs the NPM_PACKAGES below. openssl: the certificate of the STARTTLS test of email
# notifications (tests/test_notify.py). promtool, prometheus (Debian's prometheus): /metrics
# is linted and scraped by a real Prometheus (tests/test_metrics.py, test_metrics_prometheus.py).
# chromium: the web UI's browser tests (tests/test_ui_e2e.py), driven by the playwright Python
# package of the test extra, which never downloads a browser of its own.
# gcc, g++, make: the C and C++ projects mesh cc's tests build (tests/test_cc_*.py); clang: the same with
# clang; cmake and ninja (ninja-build): a CMake project built with mesh cc as its compiler launcher.
SYSTEM_PACKAGES := b3sum:b3sum npm:npm ip:iproute2 bwrap:bubblewrap podman:podman runc:runc busybox:busybox-static openssl:openssl promtool:prometheus chromium:chromium gcc:gcc make:make clang:clang g++:g++ cmake:cmake ninja:ninja-build
# Libraries, as SONAME:PACKAGE, looked for with ldconfig. libseccomp.so.2: the sandbox's seccomp
# filter (mesh/exec/seccomp.py loads it through pyseccomp; apt itself depends on it on Debian).
SYSTEM_LIBRARIES := libseccomp.so.2:libseccomp2
# npm packages the tests read as data, as NAME@VERSION, installed under tests/.npm (git-ignored)
# when not there at that version. @octokit/webhooks-examples: GitHub's real webhook payloads,
# which tests/test_hooks.py parses (it fails, naming this step, when they are missing).
NPM_PACKAGES := @octokit/webhooks-examples@7.6.1
NPM_PREFIX   := tests/.npm

# A real C project for mesh cc's mesh test and bench/cc.py: brotli's source distribution
# from PyPI (its 35 C files under c/), fetched once into tests/.data (git-ignored).
BROTLI_SDIST := tests/.data/brotli-1.2.1.tar.gz

.PHONY: up test venv test-deps system-deps npm-deps cc-deps bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

venv: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e . --config-settings editable_mode=compat
	$(BIN)/python -m compileall -q mesh  # bytecode now, even where PYTHONDONTWRITEBYTECODE is set

# Starts a node in the foreground on 127.0.0.1:7474 (Ctrl-C stops it). mDNS stays off
# here: discovery comes with the mesh and never multicasts from `make up` on these machines.
up: venv
	@echo "mesh $$($(BIN)/mesh --version | cut -d' ' -f2) is installed: $(BIN)/mesh"
	@echo "starting a node; in another shell: $(BIN)/mesh exec -- make -j8"
	MESH_MDNS=0 exec $(BIN)/mesh up

system-deps:
	@missing=""; for pair in $(SYSTEM_PACKAGES); do command -v $${pair%%:*} >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; done; \
	for pair in $(SYSTEM_LIBRARIES); do /sbin/ldconfig -p 2>/dev/null | grep -q "$${pair%%:*} " || missing="$$missing $${pair#*:}"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing system packages:$$missing"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	else \
		echo "warning: missing system packages:$$missing (not root or no apt-get); tests that need them will say so"; \
	fi

npm-deps: system-deps
	@for spec in $(NPM_PACKAGES); do name=$${spec%@*}; version=$${spec##*@}; \
		grep -qs "\"version\": \"$$version\"" $(NPM_PREFIX)/node_modules/$$name/package.json && continue; \
		if command -v npm >/dev/null 2>&1; then \
			echo "installing npm package $$spec under $(NPM_PREFIX)"; \
			npm install --prefix $(NPM_PREFIX) --no-save --no-audit --no-fund --loglevel=error $$spec >/dev/null || exit 1; \
		else \
			echo "warning: npm is missing: $$spec is not installed; tests that read it will fail and say so"; \
		fi; \
	done

cc-deps: $(BIN)/python
	@test -f $(BROTLI_SDIST) || $(BIN)/python -m pip download --quiet --no-deps --no-binary :all: \
		-d tests/.data brotli==1.2.1 || echo "warning: $(BROTLI_SDIST) could not be fetched; tests/test_cc_netns.py will say so"

test-deps: $(BIN)/python system-deps npm-deps cc-deps
	$(BIN)/python -m pip install --quiet -e '.[test]' --config-settings editable_mode=compat
	$(BIN)/python -m compileall -q mesh

test: test-deps
	$(BIN)/python -m pytest

bench: venv system-deps
	$(BIN)/python bench/hash.py
	$(BIN)/python bench/snapshot.py
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/mesh.py
	$(BIN)/python bench/exec.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
