# p2p file distribution: see README.md
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
PYTEST_ARGS ?=
SWARM_ARGS ?=
COMPOSE := docker compose $(if $(TLS),-f docker-compose.yml -f docker-compose.tls.yml)

.PHONY: bench bench-net bench-net-clean chaos chaos-clean netbed-tools certs fuzz mutate install preflight test test-unit test-integration test-docker swarm compose-plugin images up down stack stack-down logs clean

$(BIN)/p2p-leecher: constraints.txt shared/pyproject.toml services/*/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt \
		-e shared -e services/tracker -e services/seeder -e services/leecher -e services/peer \
		pytest pytest-asyncio pytest-timeout hypothesis testcontainers pyyaml kubernetes-validate schemathesis bcrypt matplotlib
	touch $@

install: $(BIN)/p2p-leecher

# Checks Docker, Compose, the image route and the host tools the tests use; installs what is
# missing (as root) and says what it found. Missing pieces skip their tests, or fail under CI.
preflight: install
	@deploy/preflight.sh test

test: install preflight
	$(BIN)/pytest $(PYTEST_ARGS)

test-unit: install
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

test-integration: install
	$(BIN)/pytest tests/integration $(PYTEST_ARGS)

test-docker: install preflight
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
images: install
	@deploy/preflight.sh up
	deploy/build-images.sh

# A swarm CA and certificates for TLS on the chunk channel (certs/).
certs: certs/ca.crt

certs/ca.crt:
	deploy/make-certs.sh certs

# The full swarm with monitoring, detached; then follow the leecher job to its end. TLS=1: mutual TLS.
up: images $(if $(TLS),certs)
	@grep -q '^GRAFANA_AVAILABLE=1' .env || \
		echo "Grafana skipped: no Grafana image here and no registry to pull one; Prometheus is on http://127.0.0.1:9090"
	mkdir -p downloads
	$(COMPOSE) up --detach
	$(COMPOSE) logs --follow --no-log-prefix leecher
	@exit $$($(COMPOSE) ps --all --format '{{.ExitCode}}' leecher)

# The peers' caches are anonymous volumes: removed with their containers, or every `up` would
# leave the last ones behind, unnamed.
down:
	$(COMPOSE) rm --force --stop --volumes peer
	$(COMPOSE) down --remove-orphans

# The swarm on Docker Swarm mode (docker-stack.yml), on a swarm this engine belongs to
# (`docker swarm init` makes a one-node one). Settings come from .env, as for compose.
STACK ?= p2p
stack: images
	@test "$$(docker info --format '{{.Swarm.LocalNodeState}}')" = active || \
		{ echo "not part of a swarm: run 'docker swarm init' first (or join one)"; exit 1; }
	mkdir -p downloads
	if [ -f .env ]; then set -a; . ./.env; set +a; fi; \
		DOWNLOAD_DIR=$(CURDIR)/downloads docker stack deploy --compose-file docker-stack.yml $(STACK)

stack-down:
	docker stack rm $(STACK)

logs:
	$(COMPOSE) logs --follow

clean:
	rm -rf $(VENV) .swarm
	find downloads -mindepth 1 ! -name .gitkeep -delete

# The benchmark: baselines and the swarm in one run; table, bench/results/latest.json and charts.
# libtorrent (Debian's) is a yardstick of the CPU part; nginx and curl, of the gateway's.
bench: install
	@/usr/bin/python3 -c 'import libtorrent' 2>/dev/null || [ "$$(id -u)" != 0 ] || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-libtorrent >/dev/null; }
	@command -v nginx >/dev/null && command -v curl >/dev/null || [ "$$(id -u)" != 0 ] || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light curl >/dev/null; }
	$(BIN)/pip install --quiet -c constraints.txt matplotlib
	$(PY) -m bench.run $(BENCH_ARGS)

# Mutation testing of the security-critical protocol code (README, "Mutation testing"). mutmut
# imports the mutated code from ./src of its working folder, so the library and its unit tests
# are staged in .mutate/ with tools/mutmut.toml as its pyproject.toml.
mutate: install
	$(BIN)/pip install --quiet -c constraints.txt mutmut
	rm -rf .mutate && mkdir -p .mutate/tests .mutate/deploy
	cp -r shared/src .mutate/src
	cp -r tests/__init__.py tests/unit .mutate/tests/
	cp deploy/make-certs.sh .mutate/deploy/
	cp tools/mutmut.toml .mutate/pyproject.toml
	cd .mutate && ../$(BIN)/mutmut run >/dev/null && ../$(BIN)/mutmut results --all true >results.txt
	$(PY) -m tools.mutation_score .mutate/results.txt

# Shaped hosts (network namespaces, root): every scenario with our services and with libtorrent
# (about 11 minutes); bench/results/net.json, net.png and the README table. BENCH_NET_ARGS="--only one_to_8".
# Then a new image pulled by 8 hosts' containerd through the registry mirror, and straight from the
# registry (about 8 minutes): bench/results/registry.json. BENCH_REGISTRY_ARGS="--size-mib 64 --hosts 4".
bench-net: install netbed-tools
	@/usr/bin/python3 -c 'import libtorrent' 2>/dev/null || [ "$$(id -u)" != 0 ] || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-libtorrent >/dev/null; }
	@command -v docker-registry >/dev/null && command -v containerd >/dev/null || [ "$$(id -u)" != 0 ] || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-registry containerd >/dev/null; }
	$(BIN)/pip install --quiet -c constraints.txt matplotlib
	$(PY) -m bench.net $(BENCH_NET_ARGS)
	$(PY) -m bench.net registry $(BENCH_REGISTRY_ARGS)

# The swarm simulator (bench/sim): the library's own scheduling code on virtual time, 1 seeder to
# 10 ... 10,000 peers and the named scenarios; bench/results/sim.json, sim.png and a table; then
# the comparison with the shaped testbed (bench/results/net.json). SIM_ARGS="--sizes 10,100,1000".
.PHONY: sim
sim: install
	$(BIN)/pip install --quiet -c constraints.txt matplotlib
	$(PY) -m bench.sim validate
	$(PY) -m bench.sim scale $(SIM_ARGS)

# Remove the namespaces and processes an interrupted bench-net or test run left behind.
bench-net-clean: install
	$(PY) -m bench.net clean

# iproute2 (ip, tc) for the namespace tests and bench-net, when missing and we are root.
netbed-tools:
	@command -v ip >/dev/null && command -v tc >/dev/null || [ "$$(id -u)" != 0 ] || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 >/dev/null; }

# The chaos soak (root; README, "Reliability: the chaos soak"): the swarm on shaped hosts (Redis
# with a replica and Sentinel, 2 tracker replicas, 2 seeders, 8 p2p-peers) under a workload and a
# nemesis for CHAOS_MINUTES, judged by a checker; any seed must pass. bench/results/chaos/:
# history, logs, verdict.txt, timeline.png. Exit 0 only when every property held.
CHAOS_MINUTES ?= 60
CHAOS_SEED ?= 1
chaos: install netbed-tools
	@command -v redis-server >/dev/null && command -v mkfs.ext4 >/dev/null && command -v faketime >/dev/null || \
		[ "$$(id -u)" != 0 ] || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		--no-install-recommends redis-server e2fsprogs faketime >/dev/null; systemctl disable --now redis-server >/dev/null 2>&1 || true; }
	$(BIN)/pip install --quiet -c constraints.txt matplotlib
	$(PY) -m bench.chaos --minutes $(CHAOS_MINUTES) --seed $(CHAOS_SEED) $(CHAOS_ARGS)

# Remove the namespaces, mounts and processes an interrupted soak left behind.
chaos-clean: install
	$(PY) -m bench.chaos clean
