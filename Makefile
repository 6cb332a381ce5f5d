# p2p file distribution: see README.md
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
PYTEST_ARGS ?=
SWARM_ARGS ?=
COMPOSE := docker compose $(if $(TLS),-f docker-compose.yml -f docker-compose.tls.yml)
# The leecher container writes ./downloads as the user who runs make.
export P2P_UID := $(shell id -u)
export P2P_GID := $(shell id -g)

.PHONY: bench bench-net bench-net-clean netbed-tools certs fuzz install test test-unit test-integration test-docker swarm compose-plugin images up down logs clean

$(BIN)/p2p-leecher: constraints.txt shared/pyproject.toml services/*/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt \
		-e shared -e services/tracker -e services/seeder -e services/leecher \
		pytest pytest-asyncio pytest-timeout hypothesis testcontainers pyyaml
	touch $@

install: $(BIN)/p2p-leecher

test: install netbed-tools
	-@deploy/install-compose.sh >/dev/null
	$(BIN)/pytest $(PYTEST_ARGS)

test-unit: install
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

test-integration: install
	$(BIN)/pytest tests/integration $(PYTEST_ARGS)

test-docker: install compose-plugin
	$(BIN)/pytest tests/docker $(PYTEST_ARGS)

# A tracker, three seeders and a leecher as local processes on a generated demo file.
# The decoders fuzzed far longer than in `make test` (FUZZ_EXAMPLES inputs per test, 20000 by default).
fuzz: install
	HYPOTHESIS_PROFILE=fuzz $(BIN)/pytest tests/unit -k fuzz -q --hypothesis-show-statistics $(PYTEST_ARGS)

swarm: install
	$(PY) -m tools.swarm $(SWARM_ARGS)

compose-plugin: install
	@deploy/install-compose.sh >/dev/null

# Every image `docker compose up` needs; air-gapped machines get local Debian-based images.
images: install compose-plugin
	deploy/build-images.sh

# A swarm CA and certificates for TLS on the chunk channel (certs/).
certs: certs/ca.crt

certs/ca.crt:
	deploy/make-certs.sh certs

# The full swarm with monitoring, detached; then follow the leecher job to its end. TLS=1: mutual TLS.
up: images $(if $(TLS),certs)
	mkdir -p downloads
	@if grep -q '^GRAFANA_AVAILABLE=1' .env; then \
		$(COMPOSE) up --detach; \
	else \
		echo "Grafana skipped: no Grafana image here and no registry to pull one; Prometheus is on http://localhost:9090"; \
		$(COMPOSE) up --detach tracker seeder pushgateway prometheus leecher; \
	fi
	$(COMPOSE) logs --follow --no-log-prefix leecher
	@exit $$($(COMPOSE) ps --all --format '{{.ExitCode}}' leecher)

down:
	$(COMPOSE) down --remove-orphans

logs:
	$(COMPOSE) logs --follow

clean:
	rm -rf $(VENV) .swarm downloads

# The benchmark: baselines and the swarm in one run; table, bench/results/latest.json and charts.
bench: install
	$(BIN)/pip install --quiet -c constraints.txt matplotlib
	$(PY) -m bench.run $(BENCH_ARGS)

# Shaped hosts (network namespaces, root): every scenario with our services and with libtorrent
# (about 11 minutes); bench/results/net.json, net.png and the README table. BENCH_NET_ARGS="--only one_to_8".
bench-net: install netbed-tools
	@/usr/bin/python3 -c 'import libtorrent' 2>/dev/null || [ "$$(id -u)" != 0 ] || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-libtorrent >/dev/null; }
	$(BIN)/pip install --quiet -c constraints.txt matplotlib
	$(PY) -m bench.net $(BENCH_NET_ARGS)

# Remove the namespaces and processes an interrupted bench-net or test run left behind.
bench-net-clean: install
	$(PY) -m bench.net clean

# iproute2 (ip, tc) for the namespace tests and bench-net, when missing and we are root.
netbed-tools:
	@command -v ip >/dev/null && command -v tc >/dev/null || [ "$$(id -u)" != 0 ] || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 >/dev/null; }
