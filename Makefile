# trio_streams — operate and test the server with ordinary tools.
#   make run    serve on 127.0.0.1:4437 with ./data
#   make test   unit + integration + short crash runs (streams, subscriptions) + the official suite (all 338), ~10 min on 2 cores
#   make verify DATA=dir   check a data directory against its checksums (read-only; may run beside the server)
#   make backup DEST=dir|file.tar [URL=http://host:port]   consistent backup of the running server
#   make backup-offline DEST=dir|file.tar DATA=dir   backup of a stopped server's data directory
#   make restore SRC=dir|file.tar DATA=dir   restore into a new or empty directory, then verify it
#   make stats DATA=dir    streams, bytes, WAL, checkpoint, largest streams (read-only)
#   make checkpoint [URL=…]   ask the running server for a checkpoint now
#   make status [URL=…]    the running server's readiness, pretty-printed
#   make conformance-edge   the official suite through nginx with deploy/nginx/edge.conf (~80 s)
#   make bench [BENCH_ARGS=--quick]   ours beside the Node reference, rakaia-streams and the HTTP floor
#   make conformance-sharded   the official suite through nginx in front of three sharded nodes (~1 min)
#   make conformance-sharded-segments   the same, keyed by one path segment instead of a pattern

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 4437
DATA ?= ./data
URL ?= http://$(HOST):$(PORT)
TRIO_STREAMS := $(VENV)/bin/trio-streams
CONFORMANCE_DIR := tests/conformance
# pytest-xdist workers for the suite (0: in this process). Each test file runs
# whole on one worker, so a module's shared server is started once.
PYTEST_WORKERS ?= auto
PYTEST := $(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile

.PHONY: install run test test-all unit conformance conformance-auth conformance-node node-deps bench crash verify lock clean
.PHONY: backup backup-offline restore stats checkpoint status

install: $(VENV)/.installed

$(VENV)/.installed: requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

node-deps: $(CONFORMANCE_DIR)/node_modules/.installed

# `npm install` with the committed lock installs exactly the locked versions;
# --no-save keeps it from rewriting the lock with platform entries.
# (`npm ci` refuses this lock: the registry lacks some optional platform
# binaries of a transitive dependency, so the lock cannot list them.)
$(CONFORMANCE_DIR)/node_modules/.installed: $(CONFORMANCE_DIR)/package-lock.json
	cd $(CONFORMANCE_DIR) && npm install --no-save --no-audit --no-fund --loglevel=error
	touch $@

run: install
	$(VENV)/bin/trio-streams serve --host $(HOST) --port $(PORT) --data-dir $(DATA)

verify: install
	$(VENV)/bin/trio-streams verify $(DATA)

# Operations (README "Operations"). A backup of a running server goes through
# GET /admin/backup (local requests only until auth is configured).
backup: install
	@test -n "$(DEST)" || { echo "usage: make backup DEST=dir|file.tar|- [URL=$(URL)]" >&2; exit 2; }
	$(TRIO_STREAMS) backup --url $(URL) $(DEST)

backup-offline: install
	@test -n "$(DEST)" || { echo "usage: make backup-offline DEST=dir|file.tar|- DATA=dir" >&2; exit 2; }
	$(TRIO_STREAMS) backup --data-dir $(DATA) $(DEST)

restore: install
	@test -n "$(SRC)" || { echo "usage: make restore SRC=dir|file.tar DATA=dir" >&2; exit 2; }
	$(TRIO_STREAMS) restore $(SRC) $(DATA)

stats: install
	$(TRIO_STREAMS) stats $(DATA)

checkpoint: install
	$(TRIO_STREAMS) checkpoint --url $(URL)

status: install
	$(TRIO_STREAMS) status --url $(URL)

unit: install
	$(PYTEST)

test: install node-deps
	$(PY) -m mypy
	$(PYTEST)
	$(PY) scripts/run_conformance.py --subscriptions

# The long run: 50,000 fuzz examples, 300 model histories of 50 steps and 200
# storage simulation seeds (TRIO_STREAMS_SIM_SEED=N replays one), the first two on a
# fresh random seed (printed with any failure; TRIO_STREAMS_FUZZ_SEED=N replays it).
test-all: install node-deps
	$(PY) -m mypy
	TRIO_STREAMS_FUZZ_EXAMPLES=50000 TRIO_STREAMS_MODEL_EXAMPLES=300 TRIO_STREAMS_MODEL_STEPS=50 TRIO_STREAMS_SIM_SEEDS=200 \
		$(PYTEST) -m ""
	$(PY) scripts/run_conformance.py --subscriptions
	$(PY) scripts/run_conformance_sharded.py --shard-key-pattern '$(SHARD_KEY_PATTERN)'
	$(PY) scripts/run_conformance_sharded.py

conformance: install node-deps
	$(PY) scripts/run_conformance.py --subscriptions

# The same suite against a server with access control on, every request carrying a token.
conformance-auth: install node-deps
	$(PY) scripts/run_conformance.py --auth --subscriptions

# Scale-out (docs/deployment.md, "Scale-out"): the suite through deploy/nginx/sharded.conf and
# three nodes (scripts/run_conformance_sharded.py). conformance-sharded keys by the pattern
# below, under which the suite's forks (fork-…-src-N → fork-…-fork-N) stay on one node and must
# pass (331 of 338); only its subscriptions (events/* with wake/…) and its one fork from a
# source named otherwise cross keys and must fail with the shard refusal.
# conformance-sharded-segments keys by one path segment: the forks cross keys too (260 pass).
SHARD_KEY_PATTERN := ^([^/-]+)
.PHONY: conformance-sharded conformance-sharded-segments
conformance-sharded: install node-deps
	$(PY) scripts/run_conformance_sharded.py --shard-key-pattern '$(SHARD_KEY_PATTERN)'

conformance-sharded-segments: install node-deps
	$(PY) scripts/run_conformance_sharded.py

conformance-node: install node-deps
	$(PY) scripts/run_conformance.py --server node

# The edge (deploy/nginx/edge.conf): the same suite through a real nginx in front of
# our server, about 80 s (scripts/conformance_edge.py; installs nginx when missing).
# `make test-all` runs it too (tests/test_edge.py, marked slow).
.PHONY: conformance-edge
conformance-edge: install node-deps
	$(PY) scripts/conformance_edge.py --subscriptions

crash: install
	$(PY) -m pytest -q -m "" tests/test_crash.py

# The side-by-side benchmark (docs/benchmarks.md): 30–80 minutes (more on a busy machine); BENCH_ARGS=--quick for a short run.
# It installs matplotlib (pyproject's `bench` extra) into .venv and rakaia-streams into build/rakaia-venv.
BENCH_ARGS ?=
bench: install node-deps
	$(PY) -m scripts.bench $(BENCH_ARGS)

lock:
	$(PYTHON) -m venv /tmp/trio-streams-lock
	/tmp/trio-streams-lock/bin/pip install --quiet -e '.[server,test]'
	/tmp/trio-streams-lock/bin/pip freeze --exclude-editable | grep -v '^-e' > requirements.lock.new
	mv requirements.lock.new requirements.lock

clean:
	rm -rf $(VENV) $(CONFORMANCE_DIR)/node_modules

# The server image (deploy/Dockerfile; docs/deployment.md). Needs a Docker engine.
.PHONY: docker
IMAGE ?= trio-streams:latest
docker:
	docker build -f deploy/Dockerfile -t $(IMAGE) .
