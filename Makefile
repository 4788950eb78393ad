# trio_streams — operate and test the server with ordinary tools.
#   make run    serve on 127.0.0.1:4437 with ./data
#   make test   unit + integration + one crash run + the official conformance suite
#   make verify DATA=dir   check a data directory against its checksums (read-only; may run beside the server)

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 4437
DATA ?= ./data
CONFORMANCE_DIR := tests/conformance

.PHONY: install run test test-all unit conformance conformance-node node-deps bench crash verify lock clean

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

unit: install
	$(PY) -m pytest -q

test: install node-deps
	$(PY) -m mypy
	$(PY) -m pytest -q
	$(PY) scripts/run_conformance.py

# The long run: 50,000 fuzz examples, 300 model histories of 50 steps and 200
# storage simulation seeds (TRIO_STREAMS_SIM_SEED=N replays one), the first two on a
# fresh random seed (printed with any failure; TRIO_STREAMS_FUZZ_SEED=N replays it).
test-all: install node-deps
	$(PY) -m mypy
	TRIO_STREAMS_FUZZ_EXAMPLES=50000 TRIO_STREAMS_MODEL_EXAMPLES=300 TRIO_STREAMS_MODEL_STEPS=50 TRIO_STREAMS_SIM_SEEDS=200 \
		$(PY) -m pytest -q -m ""
	$(PY) scripts/run_conformance.py

conformance: install node-deps
	$(PY) scripts/run_conformance.py

conformance-node: install node-deps
	$(PY) scripts/run_conformance.py --server node

crash: install
	$(PY) -m pytest -q -m "" tests/test_crash.py

bench: install node-deps
	$(PY) scripts/bench.py

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
