"""The Compose file, the stack file and the Dockerfile follow the conventions of long-running
services, and the Dockerfile keeps each role's code out of the other roles' images
(tests/docker/test_image_layers.py measures that on real builds)."""

import re
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
ROLES = ("tracker", "seeder", "leecher", "peer")


def dockerfile_stages() -> dict[str, dict]:
    """Stage name -> {"base": what its FROM names, "lines": its instructions, continuations joined}."""
    stages: dict[str, dict] = {}
    for line in (REPO / "Dockerfile").read_text().replace("\\\n", " ").splitlines():
        line = line.strip()
        if match := re.fullmatch(r"FROM (\S+) AS (\S+)", line):
            stage = stages[match[2]] = {"base": match[1], "lines": []}
        elif stages and line and not line.startswith("#"):
            stage["lines"].append(line)
    return stages


STAGES = dockerfile_stages()


def from_chain(name: str) -> list[str]:
    """The stage and the stages it is built FROM, the oldest first."""
    chain = []
    while name in STAGES:
        chain.insert(0, name)
        name = STAGES[name]["base"]
    return chain


def stages_behind(name: str) -> set[str]:
    """The stage, the stages it is built from, and those it copies from, all the way down."""
    seen, todo = set(), [name]
    while todo:
        stage = todo.pop()
        if stage in STAGES and stage not in seen:
            seen.add(stage)
            todo.append(STAGES[stage]["base"])
            todo += [m for line in STAGES[stage]["lines"] for m in re.findall(r"^COPY --from=(\S+)", line)]
    return seen


def context_copies(stage: str) -> list[str]:
    """The build-context paths the stage's own COPY instructions take."""
    copies = [line.split()[1:-1] for line in STAGES[stage]["lines"] if line.startswith("COPY ")]
    return [path for args in copies if not args[0].startswith("--from=") for path in args]


def test_long_running_services_restart_and_one_shot_jobs_do_not():
    for name in ("tracker", "redis", "seeder", "peer", "pushgateway", "prometheus", "grafana"):
        assert SERVICES[name]["restart"] in ("unless-stopped", "on-failure"), name
    for name in ("seed-init", "leecher"):
        assert SERVICES[name].get("restart", "no") == "no", name


def test_only_grafana_needs_a_profile_so_plain_up_pulls_nothing_missing():
    assert SERVICES["grafana"]["profiles"] == ["grafana"]
    assert [name for name, service in SERVICES.items() if "profiles" in service] == ["grafana"]
    build = (REPO / "deploy/build-images.sh").read_text()
    assert 'COMPOSE_PROFILES=$([ "$grafana" = 1 ] && echo grafana)' in build


def test_published_ports_are_on_loopback_unless_opened():
    for name in ("prometheus", "grafana"):
        [port] = SERVICES[name]["ports"]
        assert port.startswith(f"${{{name.upper()}_HOST:-127.0.0.1}}:"), port
    # The peer's gateway: a port Docker picks for each replica (a fixed one would collide when
    # scaled), or a range given in PEER_HTTP_PORTS.
    assert SERVICES["peer"]["ports"] == ["${PEER_HTTP_HOST:-127.0.0.1}:${PEER_HTTP_PORTS:-}:7080"]


def test_leecher_needs_no_count_of_seeders_nor_a_uid():
    leecher = SERVICES["leecher"]
    assert leecher["environment"]["P2P_MIN_SEEDERS"] == "${MIN_SEEDERS:-1}"
    assert leecher["depends_on"]["seeder"] == {"condition": "service_healthy"}
    assert "user" not in leecher


def test_healthchecks_are_cheap_and_every_10_to_30_seconds():
    for role in ("tracker", "seeder", "peer"):
        lines = [line for stage in from_chain(role) for line in STAGES[stage]["lines"]]
        [check] = [line for line in lines if line.startswith("HEALTHCHECK ")]
        interval = int(re.search(r"--interval=(\d+)s", check)[1])
        assert 10 <= interval <= 30, role
        assert "python" not in check and "find \"$P2P_HEALTH_FILE\" -newermt" in check, check
        assert any("P2P_HEALTH_FILE=/tmp/p2p-healthy" in line for line in lines if line.startswith("ENV "))
    assert not [line for stage in from_chain("leecher") for line in STAGES[stage]["lines"] if "HEALTH" in line]


def test_each_role_is_a_target_of_the_one_dockerfile():
    for role in ROLES:
        build = SERVICES[role]["build"]
        assert (build["context"], build["target"], "dockerfile" in build) == (".", role, False), role
        assert not (REPO / "services" / role / "Dockerfile").exists()
    assert set(ROLES) <= STAGES.keys()
    assert '--target "$service"' in (REPO / "deploy/build-images.sh").read_text()


def test_the_protocol_library_is_installed_from_shared_alone_and_every_role_copies_it():
    [library] = [name for name, stage in STAGES.items() if "pip install /src/shared" in "\n".join(stage["lines"])]
    assert from_chain(library) == [library]
    assert sorted(context_copies(library)) == ["constraints.txt", "deploy/wheels/", "shared/"]
    [runtime] = [name for name, stage in STAGES.items() if f"COPY --from={library} /opt/p2p /opt/p2p" in stage["lines"]]
    for role in ROLES:
        assert runtime in from_chain(role), role


def test_a_role_image_holds_no_other_role_code():
    for role in ROLES:
        copied = [path for stage in stages_behind(role) for path in context_copies(stage)]
        assert [path for path in copied if path.startswith("services/")] == [f"services/{role}/"], role


def test_trackers_are_replicas_sharing_one_redis_registry_found_by_their_service_name():
    tracker, redis = SERVICES["tracker"], SERVICES["redis"]
    assert tracker["environment"]["P2P_REGISTRY"] == "${P2P_REGISTRY:-redis+sentinel://sentinel:26379/p2p/0}"
    assert tracker["depends_on"]["redis"] == tracker["depends_on"]["sentinel"] == {"condition": "service_healthy"}
    assert tracker["deploy"]["replicas"] == "${TRACKERS:-2}"
    # Seeders, leechers and peers name the service, which Docker's DNS resolves to every replica.
    for name in ("seeder", "leecher", "peer"):
        assert SERVICES[name]["environment"]["P2P_TRACKER"] == "tracker:6969", name
    assert "ports" not in redis and redis["image"] == "${REDIS_IMAGE:-redis:7.2-bookworm}"
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    build = (REPO / "deploy/build-images.sh").read_text()
    assert "deploy/redis/Dockerfile.redis" in build and "REDIS_IMAGE=$REDIS_IMAGE" in build
    assert " redis async-timeout setuptools" in build  # redis-py (and what it needs on Python 3.11.2) among the wheels
    assert 'need redis-server redis-server' in (REPO / "deploy/preflight.sh").read_text()


SENTINEL_URL = re.compile(r"redis\+sentinel://(\w+):(\d+)/(\w+)/0")


@pytest.mark.parametrize("file", ["docker-compose.yml", "docker-stack.yml"])
def test_the_registry_is_a_primary_a_replica_and_three_sentinels_the_trackers_ask(file):
    services = yaml.safe_load((REPO / file).read_text())["services"]
    url = re.sub(r"^\$\{\w+:-(.*)\}$", r"\1", services["tracker"]["environment"]["P2P_REGISTRY"])
    sentinel_service, port, master = SENTINEL_URL.fullmatch(url).groups()
    sentinel, replica = services[sentinel_service], services["redis-replica"]
    assert sentinel["deploy"]["replicas"] == 3  # quorum 2 of 3: one sentinel may be lost
    # Both servers start alike (redis_start below); the replica's first primary is `redis`.
    assert replica["command"] == services["redis"]["command"] and replica["entrypoint"] == ["sh", "-c"]
    assert replica["environment"]["FIRST_PRIMARY"] == "redis" and "FIRST_PRIMARY" not in services["redis"].get("environment", {})
    assert sentinel["image"] == replica["image"] == services["redis"]["image"]
    script = sentinel["command"][0]
    assert f"'port {port}'" in script and f"'sentinel monitor {master} redis 6379 2'" in script
    assert "'sentinel resolve-hostnames yes'" in script  # it names the primary by its service name
    assert script.rstrip().endswith("exec redis-server /tmp/sentinel.conf --sentinel")


def redis_start(tmp_path: Path, file: str, service: str, my_ip: str, sentinel_says: str) -> list[str]:
    """A Redis service's start script, run here with `hostname`, `redis-cli` and `redis-server`
    stand-ins: the arguments redis-server would get."""
    definition = yaml.safe_load((REPO / file).read_text())["services"][service]
    script = definition["command"][0].replace("$$", "$")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in (("hostname", f"echo {my_ip}"), ("redis-cli", f"printf '{sentinel_says}'"),
                       ("redis-server", 'for a in "$@"; do echo "[$a]"; done')):
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    variables = {k: str(v) for k, v in definition.get("environment", {}).items()}
    ran = subprocess.run(["sh", "-c", script], env={"PATH": f"{bin_dir}:/usr/bin:/bin", **variables},
                         capture_output=True, text=True, timeout=10)
    assert ran.returncode == 0, ran.stderr
    return [line[1:-1] for line in ran.stdout.splitlines()]


@pytest.mark.parametrize("file", ["docker-compose.yml", "docker-stack.yml"])
def test_a_redis_server_replicates_the_primary_the_sentinels_name_whatever_it_started_as(tmp_path, file):
    # The first start: no sentinel answers; `redis` is the primary, `redis-replica` its replica.
    first = redis_start(tmp_path, file, "redis", "10.0.0.2", "")
    assert "--replicaof" not in first and first[first.index("--dir") + 1] == "/tmp"  # a replica loads its copy there
    assert redis_start(tmp_path, file, "redis-replica", "10.0.0.3", "")[-3:] == ["--replicaof", "redis", "6379"]
    # After a failover to redis-replica (10.0.0.3), it restarts as the primary, not as a replica of
    # the replica it left behind (found by the chaos soak: no primary, every failover aborted)...
    assert "--replicaof" not in redis_start(tmp_path, file, "redis-replica", "10.0.0.3", "10.0.0.3\\n6379\\n")
    # ...and `redis` comes back as its replica, not as a second primary.
    assert redis_start(tmp_path, file, "redis", "10.0.0.2", "10.0.0.3\\n6379\\n")[-3:] == ["--replicaof", "10.0.0.3", "6379"]


def stage_env(role: str) -> dict[str, str]:
    """The ENV settings of a role's image, through the stages it is built from."""
    found = {}
    for line in (line for stage in from_chain(role) for line in STAGES[stage]["lines"]):
        if line.startswith("ENV "):
            found |= dict(pair.split("=", 1) for pair in line.split()[1:])
    return found


def test_the_peer_image_listens_on_its_network_and_admits_only_loopback_by_default():
    lines = STAGES["peer"]["lines"]
    env = stage_env("peer")
    assert env["P2P_HTTP_HOST"] == "0.0.0.0" and "P2P_HTTP_ALLOW" not in env
    assert env["P2P_HEALTH_FILE"] == "/tmp/p2p-healthy"
    assert f"RUN mkdir -p {env['P2P_CACHE_DIR']} && chown p2p:p2p {env['P2P_CACHE_DIR']}" in lines
    assert "USER p2p" in lines and "EXPOSE 7001 7080 9104" in lines
    assert lines[-1] == 'ENTRYPOINT ["p2p-peer"]'
    assert "COPY deploy/attached-networks.py /usr/local/bin/p2p-allow-attached-networks" in lines
    assert "!deploy/attached-networks.py" in (REPO / ".dockerignore").read_text().splitlines()
    assert "for service in tracker seeder leecher peer; do" in (REPO / "deploy/build-images.sh").read_text()


def test_peers_scale_each_with_its_own_cache_and_a_gateway_for_the_project():
    peer = SERVICES["peer"]
    assert peer["deploy"]["replicas"] == "${PEERS:-1}"
    # An anonymous volume: one per container, so `--scale peer=N` gives each replica its own cache.
    assert peer["volumes"] == [stage_env("peer")["P2P_CACHE_DIR"]]
    # The gateway admits the project's network (the wrapper adds the container's own subnets),
    # and what PEER_HTTP_ALLOW adds; nothing else.
    assert peer["entrypoint"] == ["p2p-allow-attached-networks", "p2p-peer"]
    assert peer["environment"]["P2P_HTTP_ALLOW"] == "${PEER_HTTP_ALLOW:-}"
    assert peer["depends_on"] == {"tracker": {"condition": "service_healthy"}}
    assert "healthcheck" not in peer  # the image's, on the health file
    assert peer["stop_grace_period"] and "user" not in peer
    # Prometheus finds every replica by the service name, on the port the peer serves metrics.
    config = yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text())
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == "peer"]
    [sd] = job["dns_sd_configs"]
    assert sd["names"] == ["peer"] and sd["port"] == int(peer["environment"]["P2P_METRICS_PORT"]) == 9104
    # Under TLS a peer serves and fetches with a certificate the swarm CA signed.
    tls = yaml.safe_load((REPO / "docker-compose.tls.yml").read_text())["services"]["peer"]["environment"]
    assert {"P2P_TLS_CERT", "P2P_TLS_KEY", "P2P_TLS_CA"} <= tls.keys()


def test_the_stack_runs_one_peer_per_node_published_on_the_node_in_host_mode():
    stack = yaml.safe_load((REPO / "docker-stack.yml").read_text())["services"]
    peer = stack["peer"]
    assert peer["image"] == "p2p-peer:latest" and peer["deploy"]["mode"] == "global"
    assert peer["entrypoint"] == ["p2p-allow-attached-networks", "p2p-peer"]
    # Host mode keeps a client's address, which the allow list judges; the routing mesh (ingress)
    # would hand every outside client over from an address of the ingress network.
    [port] = peer["ports"]
    assert (port["target"], port["mode"], port["published"]) == (7080, "host", "${PEER_HTTP_PORT:-7080}")
    assert peer["environment"]["P2P_HTTP_ALLOW"] == "${PEER_HTTP_ALLOW:-}"
    assert peer["volumes"] == [f"peer-cache:{stage_env('peer')['P2P_CACHE_DIR']}"]
