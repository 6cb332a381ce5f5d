# p2p file distribution: see README.md
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
PYTEST_ARGS ?=

.PHONY: install test test-unit test-integration swarm clean

$(BIN)/p2p-leecher: constraints.txt shared/pyproject.toml services/*/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt \
		-e shared -e services/tracker -e services/seeder -e services/leecher \
		pytest pytest-asyncio pytest-timeout hypothesis
	touch $@

install: $(BIN)/p2p-leecher

test: install
	$(BIN)/pytest $(PYTEST_ARGS)

test-unit: install
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

test-integration: install
	$(BIN)/pytest tests/integration $(PYTEST_ARGS)

# A tracker, three seeders and a leecher as local processes on a generated demo file.
swarm: install
	$(PY) -m tools.swarm $(SWARM_ARGS)

clean:
	rm -rf $(VENV) .swarm downloads
