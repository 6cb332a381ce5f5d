"""The Compose file and Dockerfiles follow the conventions of long-running services."""

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


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
        dockerfile = (REPO / f"services/{role}/Dockerfile").read_text()
        [check] = re.findall(r"HEALTHCHECK (.*?)\n(?!\s)", dockerfile.replace("\\\n", " "), re.S)
        interval = int(re.search(r"--interval=(\d+)s", check)[1])
        assert 10 <= interval <= 30, role
        assert "python" not in check and "find \"$P2P_HEALTH_FILE\" -newermt" in check, check
        assert "P2P_HEALTH_FILE=/tmp/p2p-healthy" in dockerfile


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
