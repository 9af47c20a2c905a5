# rrcloud: set-up, run and test from the project's own files.
#   make run    install everything and run the main job
#   make test   install everything plus the test needs and run the whole suite
# Works as root or with sudo on a fresh Debian machine.

PYTHON   ?= python3
VENV     := $(CURDIR)/.venv
VPY      := $(VENV)/bin/python
SUDO     := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PACKAGES := openscad slic3r povray printrun lighttpd apache2
RUNDIR   := $(CURDIR)/build/run

.PHONY: all install system-deps python-deps test-deps run test clean

all: install

# Debian packages: the real tools and web servers.  apt-get runs only when
# something is missing, so a machine that has them all needs no network.
system-deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends $$missing; \
	fi
	@command -v npm >/dev/null || { $(SUDO) apt-get update && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends nodejs npm; }
	@command -v openjscad >/dev/null || $(SUDO) npm install -g --no-fund --no-audit @jscad/cli@1

# A virtual environment with rrcloud installed (the commands land in .venv/bin).
$(VPY):
	$(PYTHON) -m venv $(VENV) || { $(SUDO) apt-get update && $(SUDO) apt-get install -y python3-venv && $(PYTHON) -m venv $(VENV); }

python-deps: $(VPY)
	$(VPY) -m pip install --quiet --disable-pip-version-check -e .

install: system-deps python-deps

test-deps: install
	$(VPY) -m pip install --quiet --disable-pip-version-check -r requirements-test.txt

# The main job: a real OpenSCAD model rendered through rrcloud, result shown.
run: install
	@mkdir -p $(RUNDIR) && cp tests/data/cube.scad $(RUNDIR)/
	cd $(RUNDIR) && $(VENV)/bin/openscad.cloud cube.scad -ocube.stl
	@echo "--- result: $(RUNDIR)/cube.stl"; ls -l $(RUNDIR)/cube.stl; head -n 3 $(RUNDIR)/cube.stl
	cd $(RUNDIR) && $(VENV)/bin/rrcloud info

test: test-deps
	$(VPY) -m pytest -q tests

clean:
	rm -rf build .venv *.egg-info tasks .pytest_cache
