"""The Compose file and the Dockerfile follow the conventions of long-running services, and the
Dockerfile keeps each role's code out of the other roles' images (tests/docker/test_image_layers.py
measures that on real builds)."""

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
ROLES = ("tracker", "seeder", "leecher")


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
    for name in ("tracker", "redis", "seeder", "pushgateway", "prometheus", "grafana"):
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


def test_leecher_needs_no_count_of_seeders_nor_a_uid():
    leecher = SERVICES["leecher"]
    assert leecher["environment"]["P2P_MIN_SEEDERS"] == "${MIN_SEEDERS:-1}"
    assert leecher["depends_on"]["seeder"] == {"condition": "service_healthy"}
    assert "user" not in leecher


def test_healthchecks_are_cheap_and_every_10_to_30_seconds():
    for role in ("tracker", "seeder"):
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
    assert tracker["environment"]["P2P_REGISTRY"] == "${P2P_REGISTRY:-redis://redis:6379/0}"
    assert tracker["depends_on"]["redis"] == {"condition": "service_healthy"}
    assert tracker["deploy"]["replicas"] == "${TRACKERS:-2}"
    # Seeders and leechers name the service, which Docker's DNS resolves to every replica.
    assert SERVICES["seeder"]["environment"]["P2P_TRACKER"] == SERVICES["leecher"]["environment"]["P2P_TRACKER"] == "tracker:6969"
    assert "ports" not in redis and redis["image"] == "${REDIS_IMAGE:-redis:7.2-bookworm}"
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    build = (REPO / "deploy/build-images.sh").read_text()
    assert "deploy/redis/Dockerfile.redis" in build and "REDIS_IMAGE=$REDIS_IMAGE" in build
    assert " redis async-timeout setuptools" in build  # redis-py (and what it needs on Python 3.11.2) among the wheels
    assert 'need redis-server redis-server' in (REPO / "deploy/preflight.sh").read_text()
