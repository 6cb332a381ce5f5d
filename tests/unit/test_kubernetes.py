"""The Kubernetes manifests (deploy/kubernetes/). Nothing here runs a cluster, so they are
checked three ways: `kubectl kustomize` renders the base and every overlay (Debian's
kubernetes-client, installed by the preflight; missing, these tests skip, or fail under CI);
every rendered object is validated against the Kubernetes OpenAPI schemas of the oldest and the
newest version kubernetes-validate ships, strictly (an unknown field, a misspelt one, fails);
and the properties that matter are asserted on what would be applied. The base's files are plain
manifests, so they are checked the same way without kubectl."""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from p2p_leecher.main import LeecherSettings
from p2p_peer.main import PeerSettings
from p2p_seeder.main import SeederSettings
from p2p_tracker.main import TrackerSettings
from p2p_tracker.redis_store import sentinel_address
from pydantic import ValidationError

from tests.host_tools import host_tool

REPO = Path(__file__).resolve().parents[2]
KUBERNETES = REPO / "deploy" / "kubernetes"
OVERLAYS = ["overlays/dev", "overlays/production"]
SOURCES = ["base files", "base", *OVERLAYS]
# The oldest version the manifests are written for (Pod Security admission became stable in 1.25,
# also the oldest schema kubernetes-validate ships) and the newest it ships.
SCHEMA_VERSIONS = ("1.25", kubernetes_validate.utils.latest_version())
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}
LONG_RUNNING = {"Deployment", "StatefulSet", "DaemonSet"}
SETTINGS = {
    "p2p-tracker": TrackerSettings, "p2p-seeder": SeederSettings, "p2p-leecher": LeecherSettings, "p2p-peer": PeerSettings,
}
# Volume types the restricted Pod Security profile allows.
RESTRICTED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret",
}
HEALTH_PROBE = re.compile(r'find (\S+) -newermt "-20 seconds"')


@functools.cache
def render(target: str, kubectl: str) -> tuple[dict, ...]:
    command = [kubectl, "kustomize", str(KUBERNETES / target)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"kubectl kustomize {target} failed:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def base_files() -> tuple[dict, ...]:
    kustomization = yaml.safe_load((KUBERNETES / "base" / "kustomization.yaml").read_text())
    files = [KUBERNETES / "base" / name for name in kustomization["resources"]]
    return tuple(doc for file in files for doc in yaml.safe_load_all(file.read_text()) if doc)


@pytest.fixture(scope="module")
def kubectl() -> str:
    return host_tool("kubectl", "kubernetes-client")


@pytest.fixture(params=SOURCES)
def docs(request) -> tuple[dict, ...]:
    if request.param == "base files":
        return base_files()
    return render(request.param, request.getfixturevalue("kubectl"))


def named(docs, kind: str, name: str) -> dict:
    [doc] = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def workloads(docs):
    return [d for d in docs if d["kind"] in WORKLOADS]


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def pod_labels(workload: dict) -> dict:
    return workload["spec"]["template"]["metadata"]["labels"]


def containers(workload: dict, init: bool = True) -> list[dict]:
    spec = pod_spec(workload)
    return spec["containers"] + (spec.get("initContainers", []) if init else [])


def env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def env_value(container: dict, name: str) -> str:
    return env(container)[name]["value"]


def role(container: dict) -> str:
    """The compose image a container runs: p2p-tracker, p2p-seeder, p2p-leecher, p2p-peer or redis."""
    return container["image"].rsplit("/", 1)[-1].split(":")[0]


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def quantity(text: str | int) -> float:
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9}
    number, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(text)).groups()
    return float(number) * units.get(unit, 1)


# Schemas and rendering ----------------------------------------------------------------------


@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
def test_every_object_matches_the_kubernetes_schemas(docs, version):
    assert docs
    for doc in docs:
        where = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{where}: {'.'.join(map(str, exc.path))}: {exc.message}", pytrace=False)
        except kubernetes_validate.SchemaNotFoundError as exc:
            pytest.fail(f"{where}: {exc.message}", pytrace=False)


def test_the_base_files_are_what_kustomize_renders(kubectl):
    def key(doc):
        return (doc["kind"], doc["metadata"]["name"])

    assert sorted(render("base", kubectl), key=key) == sorted(base_files(), key=key)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlays_put_everything_in_their_namespace_under_the_restricted_profile(kubectl, overlay):
    docs = render(overlay, kubectl)
    [namespace] = [d for d in docs if d["kind"] == "Namespace"]
    assert "namespace" not in namespace["metadata"]
    labels = namespace["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == namespace["metadata"]["name"], doc["metadata"]["name"]


def test_every_object_belongs_to_the_swarm(docs):
    for doc in docs:
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "p2p", doc["metadata"]["name"]


def test_selectors_select_their_own_pods(docs):
    pods = [pod_labels(d) for d in workloads(docs)]
    for workload in workloads(docs):
        selector = workload["spec"].get("selector", {}).get("matchLabels")
        if selector is not None:  # a Job's selector is generated
            assert selects(selector, pod_labels(workload)), workload["metadata"]["name"]
    for service in (d for d in docs if d["kind"] in ("Service", "PodDisruptionBudget")):
        selector = service["spec"]["selector"]
        selector = selector.get("matchLabels", selector) if service["kind"] == "PodDisruptionBudget" else selector
        where = f"{service['kind']}/{service['metadata']['name']}"
        assert any(selects(selector, labels) for labels in pods), f"{where} selects no pod"


# The tracker and Redis ----------------------------------------------------------------------


def test_trackers_run_as_two_or_more_replicas_behind_one_udp_service(docs):
    tracker = named(docs, "Deployment", "tracker")
    replicas = tracker["spec"]["replicas"]
    assert replicas == 2 if tracker["metadata"].get("namespace") != "p2p" else replicas >= 2
    [container] = containers(tracker)
    [udp] = [p for p in container["ports"] if p["protocol"] == "UDP"]
    assert udp["containerPort"] == int(env_value(container, "P2P_PORT")) == 6969
    service = named(docs, "Service", "tracker")
    assert selects(service["spec"]["selector"], pod_labels(tracker))
    [port] = service["spec"]["ports"]
    assert (port["port"], port["protocol"], port["targetPort"]) == (6969, "UDP", udp["name"])
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    # Everyone reaches the trackers through that Service.
    for workload in workloads(docs):
        for c in containers(workload):
            if "P2P_TRACKER" in env(c):
                assert env_value(c, "P2P_TRACKER") == "tracker:6969", c["name"]


def test_trackers_share_the_redis_service_as_their_registry(docs):
    """Through the sentinels' Service, which watches the primary the Redis pods start from."""
    [container] = containers(named(docs, "Deployment", "tracker"))
    address = sentinel_address(env_value(container, "P2P_REGISTRY"))
    [(host, port)] = address.sentinels
    assert (address.master, address.db) == ("p2p", 0)
    service = named(docs, "Service", host)
    [service_port] = [p for p in service["spec"]["ports"] if p["port"] == port]
    sentinels = named(docs, "Deployment", host)
    assert selects(service["spec"]["selector"], pod_labels(sentinels))
    assert sentinels["spec"]["replicas"] == 3  # quorum 2 of 3: one may be lost
    [sentinel] = containers(sentinels)
    assert role(sentinel) == "redis"
    assert service_port["targetPort"] in {p["name"] for p in sentinel["ports"]}
    script = sentinel["args"][0]
    monitor = re.search(r"'sentinel monitor (\S+) (\S+) (\d+) 2'", script)
    assert monitor and monitor[1] == address.master
    assert f"'port {port}'" in script and "'sentinel resolve-hostnames yes'" in script
    # The primary it first watches is pod 0 of the Redis StatefulSet, by its name on the headless Service.
    redis = named(docs, "StatefulSet", "redis")
    pod, _, governing = monitor[2].partition(".")
    assert pod == "redis-0" and governing == redis["spec"]["serviceName"] and redis["spec"]["replicas"] >= 2
    headless = named(docs, "Service", governing)
    assert headless["spec"]["clusterIP"] == "None" and selects(headless["spec"]["selector"], pod_labels(redis))
    [server] = containers(redis)
    assert role(server) == "redis"
    assert int(monitor[3]) == next(p["containerPort"] for p in server["ports"] if p["name"] == "redis")
    # A Redis pod replicates the primary the sentinels name; pod 0 is the primary on a first start.
    start = server["args"][0]
    assert "sentinel get-master-addr-by-name p2p" in start and "primary=redis-0.redis" in start
    assert '--replicaof "$primary" 6379' in start and '--save ""' in start


def redis_start(script: str, tmp_path: Path, hostname: str, sentinel_says: str) -> list[str]:
    """The Redis pod's start script, run here with `hostname`, `redis-cli` and `redis-server`
    stand-ins: the arguments it would start redis-server with."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in (("hostname", f"echo {hostname}"), ("redis-cli", f"printf '{sentinel_says}'"),
                       ("redis-server", 'for a in "$@"; do echo "[$a]"; done')):
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    ran = subprocess.run(["sh", "-c", script], env={"PATH": f"{bin_dir}:/usr/bin:/bin"}, capture_output=True, text=True, timeout=10)
    assert ran.returncode == 0, ran.stderr
    return [line[1:-1] for line in ran.stdout.splitlines()]


def test_a_redis_pod_starts_as_the_primary_only_when_no_sentinel_names_another(tmp_path):
    [server] = containers(named(base_files(), "StatefulSet", "redis"))
    script = server["args"][0]
    first = redis_start(script, tmp_path, "redis-0", "")  # no sentinel answers: the first start
    assert "--replicaof" not in first and first[first.index("--replica-announce-ip") + 1] == "redis-0.redis"
    assert redis_start(script, tmp_path, "redis-1", "")[-3:] == ["--replicaof", "redis-0.redis", "6379"]
    # After a failover to redis-1, redis-0 comes back as its replica, not as a second primary.
    assert redis_start(script, tmp_path, "redis-0", "redis-1.redis\\n6379\\n")[-3:] == ["--replicaof", "redis-1.redis", "6379"]
    assert "--replicaof" not in redis_start(script, tmp_path, "redis-1", "redis-1.redis\\n6379\\n")


def test_the_tracker_pdb_keeps_one_up():
    assert named(base_files(), "PodDisruptionBudget", "tracker")["spec"]["minAvailable"] == 1


# Seeders, peers and the leecher -------------------------------------------------------------


def test_seeders_serve_their_own_volume_read_only(docs):
    seeder = named(docs, "StatefulSet", "seeder")
    [claim] = seeder["spec"]["volumeClaimTemplates"]
    assert quantity(claim["spec"]["resources"]["requests"]["storage"]) >= 2**30
    service = named(docs, "Service", seeder["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None"
    [server] = containers(seeder, init=False)
    [mount] = [m for m in server["volumeMounts"] if m["name"] == claim["metadata"]["name"]]
    assert mount["readOnly"] is True and env_value(server, "P2P_FILE") == mount["mountPath"]
    # The demo file is the same on every replica's volume (a fixed seed), and is what the
    # leecher fetches.
    [init] = pod_spec(seeder)["initContainers"]
    script = init["command"][-1]
    assert "random.Random(" in script and "os.urandom" not in script
    [c] = containers(named(docs, "Job", "leecher"))
    assert f'"{env_value(c, "P2P_TARGET")}"' in script


def test_seeders_and_peers_advertise_their_pod_address(docs):
    for workload in (named(docs, "StatefulSet", "seeder"), named(docs, "DaemonSet", "peer"), named(docs, "Job", "leecher")):
        [c] = containers(workload, init=False)
        assert env(c)["P2P_ADVERTISE_HOST"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}


def test_peers_are_p2p_peer_on_the_pod_network_with_a_gateway_for_their_node(docs):
    peer = named(docs, "DaemonSet", "peer")
    [c] = containers(peer)
    assert role(c) == "p2p-peer"
    ports = {p["name"]: p for p in c["ports"]}
    assert ports["peer"]["containerPort"] == int(env_value(c, "P2P_PORT"))
    assert ports["http"]["containerPort"] == int(env_value(c, "P2P_HTTP_PORT"))
    assert ports["metrics"]["containerPort"] == int(env_value(c, "P2P_METRICS_PORT"))
    # No host networking: the gateway is on the pod network, never on the node's address.
    assert not {"hostNetwork", "hostPort"} & pod_spec(peer).keys()
    assert all("hostPort" not in p for p in c["ports"])
    # It listens on the pod's address, and admits loopback, the pod's own subnet (the node's pod
    # range where the network plugin gives one; the wrapper adds it) and what the overlay names.
    assert c["command"] == ["p2p-allow-attached-networks", "p2p-peer"]
    assert env_value(c, "P2P_HTTP_HOST") == "0.0.0.0"
    allowed = env_value(c, "P2P_HTTP_ALLOW")
    namespace = peer["metadata"].get("namespace")
    assert allowed == ("10.244.0.0/16" if namespace == "p2p-dev" else "")
    # Pods reach the peer of their own node by one name.
    gateway = named(docs, "Service", "peer-gateway")["spec"]
    assert selects(gateway["selector"], pod_labels(peer))
    assert gateway["internalTrafficPolicy"] == "Local" and gateway.get("type", "ClusterIP") == "ClusterIP"
    [port] = gateway["ports"]
    assert (port["port"], port["targetPort"], port["protocol"]) == (7080, "http", "TCP")


def test_the_peer_cache_is_an_emptydir_a_little_larger_than_its_cache_size(docs):
    peer = named(docs, "DaemonSet", "peer")
    [c] = containers(peer)
    [mount] = [m for m in c["volumeMounts"] if m["mountPath"] == env_value(c, "P2P_CACHE_DIR")]
    [volume] = [v for v in pod_spec(peer)["volumes"] if v["name"] == mount["name"]]
    limit = quantity(volume["emptyDir"]["sizeLimit"])
    size = PeerSettings(cache_size=env_value(c, "P2P_CACHE_SIZE")).cache_size
    # Room for the manifests above the cache's bound, but not so much that the kubelet's eviction
    # (past the limit) stops meaning "the cache misbehaves".
    assert size < limit <= size + 2 * 2**30, (size, limit)


def test_the_leecher_job_downloads_once_to_a_claim(docs):
    job = named(docs, "Job", "leecher")
    assert pod_spec(job)["restartPolicy"] in ("Never", "OnFailure") and job["spec"]["backoffLimit"] >= 1
    [c] = containers(job)
    [mount] = [m for m in c["volumeMounts"] if m["mountPath"] == env_value(c, "P2P_OUTPUT_DIR")]
    [volume] = [v for v in pod_spec(job)["volumes"] if v["name"] == mount["name"]]
    named(docs, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    assert "P2P_SEED_TIME" not in env(c)


def test_seed_init_writes_the_same_demo_file_on_every_volume_once(tmp_path):
    [init] = pod_spec(named(base_files(), "StatefulSet", "seeder"))["initContainers"]
    assert init["command"][:2] == ["python3", "-c"]

    def seed_init(volume: Path) -> None:
        script = init["command"][2].replace('"/seed"', repr(str(volume)))
        subprocess.run([sys.executable, "-c", script], env={"DEMO_SIZE_MIB": "2"}, check=True, capture_output=True, timeout=60)

    volumes = [tmp_path / "seeder-0", tmp_path / "seeder-1"]
    for volume in volumes:
        volume.mkdir()
        seed_init(volume)
    first, second = ((v / "demo.bin").read_bytes() for v in volumes)
    assert len(first) == 2 << 20 and first == second and len(set(first[:4096])) > 200
    # A volume that holds a file already is left alone.
    (volumes[0] / "demo.bin").unlink()
    (volumes[0] / "mine.iso").write_bytes(b"x")
    seed_init(volumes[0])
    assert [p.name for p in volumes[0].iterdir()] == ["mine.iso"]


def probe(container: dict, kind: str, **variables: str) -> int:
    """Run an exec probe's command here, with the container's variables."""
    variables = {k: e["value"] for k, e in env(container).items() if "value" in e} | variables
    command = container[kind]["exec"]["command"]
    return subprocess.run(command, env={"PATH": os.environ["PATH"], **variables}, timeout=30).returncode


def test_health_probes_pass_on_a_fresh_file_only(tmp_path):
    for name, kind in (("tracker", "Deployment"), ("seeder", "StatefulSet"), ("peer", "DaemonSet"), ("leecher", "Job")):
        [c] = containers(named(base_files(), kind, name), init=False)
        health = tmp_path / f"{name}-healthy"
        for key in ("startupProbe", "readinessProbe", "livenessProbe"):
            if key not in c:
                continue
            assert env_value(c, "P2P_HEALTH_FILE") in " ".join(c[key]["exec"]["command"]), f"{name} {key}"
            c = c | {key: {"exec": {"command": [
                part.replace(env_value(c, "P2P_HEALTH_FILE"), str(health)) for part in c[key]["exec"]["command"]
            ]}}}
            health.unlink(missing_ok=True)
            assert probe(c, key) != 0, f"{name} {key}: no file"
            health.touch()
            assert probe(c, key) == 0, f"{name} {key}: fresh file"
            os.utime(health, (time.time() - 60, time.time() - 60))
            assert probe(c, key) != 0, f"{name} {key}: stale file"


# Every container ------------------------------------------------------------------------------


def test_every_container_has_probes(docs):
    for workload in workloads(docs):
        for c in containers(workload, init=False):
            where = f"{workload['metadata']['name']}/{c['name']}"
            assert "livenessProbe" in c, where
            if workload["kind"] in LONG_RUNNING:
                assert "readinessProbe" in c, where
            declared = {p["name"] for p in c.get("ports", [])}
            for probe in (c.get(k) for k in ("startupProbe", "readinessProbe", "livenessProbe")):
                if probe and "httpGet" in probe:
                    assert probe["httpGet"]["port"] in declared, where
            # The services with a health file are probed on its age, as their image's HEALTHCHECK.
            if "P2P_HEALTH_FILE" in env(c):
                commands = " ".join(" ".join(c[k]["exec"]["command"]) for k in ("readinessProbe", "livenessProbe") if k in c)
                checked = set(HEALTH_PROBE.findall(commands))
                assert checked == {env_value(c, "P2P_HEALTH_FILE")}, where
        for c in pod_spec(workload).get("initContainers", []):  # the API refuses probes there
            assert not {"livenessProbe", "readinessProbe", "startupProbe"} & c.keys(), c["name"]
    for name in ("tracker", "seeder", "peer", "leecher"):
        [workload] = [w for w in workloads(docs) if w["metadata"]["name"] == name]
        assert "P2P_HEALTH_FILE" in env(containers(workload, init=False)[0]), name


def test_every_container_runs_locked_down(docs):
    for workload in workloads(docs):
        spec = pod_spec(workload)
        name = workload["metadata"]["name"]
        assert spec["automountServiceAccountToken"] is False, name
        assert spec["enableServiceLinks"] is False, name  # no TRACKER_PORT=udp://... and the like
        assert not {"hostNetwork", "hostPID", "hostIPC"} & spec.keys(), name
        for volume in spec.get("volumes", []):
            assert set(volume) - {"name"} <= RESTRICTED_VOLUMES, f"{name}: {volume}"
        pod = spec.get("securityContext", {})
        for c in containers(workload):
            where = f"{name}/{c['name']}"
            context = pod | c.get("securityContext", {})
            assert context["runAsNonRoot"] is True, where
            # Numeric, or the kubelet cannot check non-root for an image without USER (the leecher's).
            assert isinstance(context["runAsUser"], int) and context["runAsUser"] > 0, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["capabilities"]["drop"] == ["ALL"] and not context["capabilities"].get("add"), where
            assert context["seccompProfile"]["type"] == "RuntimeDefault", where
            assert not context.get("privileged"), where
            assert all("hostPort" not in p for p in c.get("ports", [])), where


def test_what_services_write_is_on_writable_volumes(docs):
    for workload in workloads(docs):
        for c in containers(workload, init=False):
            writable = [m["mountPath"] for m in c.get("volumeMounts", []) if not m.get("readOnly")]
            paths = [Path(env_value(c, "P2P_HEALTH_FILE")).parent] if "P2P_HEALTH_FILE" in env(c) else []
            paths += [Path(env_value(c, k)) for k in ("P2P_OUTPUT_DIR", "P2P_CACHE_DIR") if k in env(c)]
            for path in paths:
                assert any(path.is_relative_to(m) for m in writable), f"{c['name']}: {path} is on the read-only root"


def test_every_container_has_requests_and_limits(docs):
    for workload in workloads(docs):
        for c in containers(workload):
            resources = c["resources"]
            for resource in ("cpu", "memory"):
                request, limit = resources["requests"][resource], resources["limits"][resource]
                assert quantity(request) <= quantity(limit), f"{c['name']} {resource}"


def test_the_swarm_secret_is_referenced_never_inlined(docs):
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    for workload in workloads(docs):
        for c in containers(workload, init=False):
            if role(c) == "redis":
                continue
            secret = env(c)["P2P_SWARM_SECRET"]
            assert "value" not in secret, c["name"]
            ref = secret["valueFrom"]["secretKeyRef"]
            assert ref["name"].startswith("p2p-swarm") and ref.get("optional") is not True, c["name"]
            if secrets:  # generated by the dev overlay: the reference follows its hashed name
                assert ref["key"] in secrets[ref["name"]].get("data", {}), c["name"]
    # Only the dev overlay carries a (well-known) value; elsewhere the Secret is made by hand.
    namespace = next((d["metadata"].get("namespace") for d in docs if d["kind"] == "Deployment"), None)
    assert bool(secrets) == (namespace == "p2p-dev")


def test_every_setting_is_one_the_service_takes(docs, monkeypatch):
    for workload in workloads(docs):
        for c in containers(workload, init=False):
            model = SETTINGS.get(role(c))
            if model is None:
                continue
            variables = {k: e for k, e in env(c).items() if k.startswith("P2P_")}
            for name in variables:
                if name == "P2P_REGISTRY" and "registry" not in model.model_fields:
                    continue  # the Redis registry is built on its own branch (issue 10)
                assert name.removeprefix("P2P_").lower() in model.model_fields, f"{c['name']}: {name} is no setting"
            for name, entry in variables.items():
                value = entry.get("value", "10.0.0.1" if "fieldRef" in entry.get("valueFrom", {}) else "x" * 32)
                monkeypatch.setenv(name, value)
            try:
                model()
            except ValidationError as exc:
                pytest.fail(f"{c['name']}: {exc}", pytrace=False)
            for name in variables:
                monkeypatch.delenv(name)


def test_images_are_the_ones_compose_builds(docs):
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    built = {s["image"] for s in compose.values() if "build" in s}
    assert built == {f"{name}:latest" for name in SETTINGS}
    redis = compose.get("redis", {}).get("image")
    for workload in workloads(docs):
        for c in containers(workload):
            assert c["imagePullPolicy"] == "IfNotPresent", c["name"]  # `:latest` loaded by hand works
            image = c["image"]
            if role(c) == "redis":
                if redis:  # the same default as Compose's, once it has a Redis
                    assert image == re.sub(r"^\$\{\w+:-(.*)\}$", r"\1", redis)
                continue
            registry, _, local = image.rpartition("/")
            assert local in built, image
            namespace = workload["metadata"].get("namespace")
            assert bool(registry) == (namespace == "p2p"), image  # production pulls from a registry


# Metrics ---------------------------------------------------------------------------------------


def test_scrape_annotations_name_the_metrics_port(docs):
    scraped = set()
    for workload in workloads(docs):
        annotations = workload["spec"]["template"]["metadata"].get("annotations", {})
        if annotations.get("prometheus.io/scrape") != "true":
            continue
        scraped.add(workload["metadata"]["name"])
        [c] = containers(workload, init=False)
        [port] = [p for p in c["ports"] if p["name"] == "metrics"]
        assert int(annotations["prometheus.io/port"]) == port["containerPort"] == int(env_value(c, "P2P_METRICS_PORT"))
    assert {"tracker", "seeder", "peer"} <= scraped


@pytest.fixture(scope="module")
def promtool() -> str:
    return host_tool("promtool", "prometheus")


SCRAPE = KUBERNETES / "prometheus-scrape.yml"


def test_the_scrape_config_passes_promtool(promtool):
    command = [promtool, "check", "config", SCRAPE.name]
    result = subprocess.run(command, cwd=SCRAPE.parent, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_scrape_config_finds_every_pod_through_a_headless_service(kubectl):
    docs = render("overlays/production", kubectl)
    [namespace] = [d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"]
    jobs = {job["job_name"]: job for job in yaml.safe_load(SCRAPE.read_text())["scrape_configs"]}
    assert jobs.keys() == {"tracker", "seeder", "peer"}
    # The job names the alerting rules use are the ones scraped here (deploy/prometheus/rules).
    rules = (REPO / "deploy/prometheus/rules/p2p.rules.yml").read_text()
    assert set(re.findall(r'job="(\w+)"', rules)) - {"pushgateway"} <= jobs.keys()
    for job, config in jobs.items():
        [sd] = config["dns_sd_configs"]
        assert sd["type"] == "SRV"
        [record] = sd["names"]
        port_name, service_name = re.fullmatch(rf"_(\w+)\._tcp\.([\w-]+)\.{namespace}\.svc", record).groups()
        service = named(docs, "Service", service_name)
        assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
        [port] = [p for p in service["spec"]["ports"] if p["name"] == port_name]
        [workload] = [w for w in workloads(docs) if selects(service["spec"]["selector"], pod_labels(w))]
        assert pod_labels(workload)["app.kubernetes.io/component"] == job
        [c] = containers(workload, init=False)
        assert port["targetPort"] == port_name and port["port"] == int(env_value(c, "P2P_METRICS_PORT"))


# Overlays --------------------------------------------------------------------------------------


def test_dev_is_one_small_seeder(kubectl):
    base, dev = render("base", kubectl), render("overlays/dev", kubectl)
    assert named(dev, "StatefulSet", "seeder")["spec"]["replicas"] == 1
    for workload in workloads(dev):
        before = named(base, workload["kind"], workload["metadata"]["name"])
        for c, original in zip(containers(workload, init=False), containers(before, init=False), strict=True):
            for kind in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    assert quantity(c["resources"][kind][resource]) <= quantity(original["resources"][kind][resource])


def test_production_runs_more_with_tls_and_network_policies(kubectl):
    base, production = render("base", kubectl), render("overlays/production", kubectl)
    for kind, name in (("Deployment", "tracker"), ("StatefulSet", "seeder")):
        assert named(production, kind, name)["spec"]["replicas"] > named(base, kind, name)["spec"]["replicas"]
    # Mutual TLS: every peer server and downloader has its certificate, key and the CA, each
    # from the p2p-tls Secret, which never holds the CA's key.
    for workload in workloads(production):
        for c in containers(workload, init=False):
            if role(c) not in ("p2p-seeder", "p2p-leecher", "p2p-peer"):
                continue
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            volumes = {v["name"]: v for v in pod_spec(workload)["volumes"]}
            for variable in ("P2P_TLS_CERT", "P2P_TLS_KEY", "P2P_TLS_CA"):
                path = Path(env_value(c, variable))
                secret = volumes[mounts[str(path.parent)]]["secret"]
                assert secret["secretName"] == "p2p-tls" and path.name in {i["path"] for i in secret["items"]}
                assert "ca.key" not in {i["key"] for i in secret["items"]}
    # Redis and its sentinels answer the trackers and each other only.
    policy = named(production, "NetworkPolicy", "redis")["spec"]
    registry = [pod_labels(named(production, "StatefulSet", "redis")), pod_labels(named(production, "Deployment", "redis-sentinel"))]
    tracker = pod_labels(named(production, "Deployment", "tracker"))
    assert all(selects(policy["podSelector"]["matchLabels"], labels) for labels in registry)
    [rule] = policy["ingress"]
    sources = [source["podSelector"]["matchLabels"] for source in rule["from"]]
    assert any(selects(source, tracker) for source in sources)
    admitted = [w["metadata"]["name"] for w in workloads(production) if any(selects(s, pod_labels(w)) for s in sources)]
    assert sorted(admitted) == ["redis", "redis-sentinel", "tracker"]
    assert {p["port"] for p in rule["ports"]} == {6379, 26379}
    # The policy that opens the swarm's pods to each other leaves the registry's out.
    swarm = named(production, "NetworkPolicy", "swarm")["spec"]["podSelector"]
    [components] = [e["values"] for e in swarm["matchExpressions"] if e["key"] == "app.kubernetes.io/component"]
    assert "redis" not in components
    # The peers' gateways: beyond the swarm's own pods, only pods that say they are its clients.
    policy = named(production, "NetworkPolicy", "peer-gateway")["spec"]
    assert selects(policy["podSelector"]["matchLabels"], pod_labels(named(production, "DaemonSet", "peer")))
    [rule] = policy["ingress"]
    [source] = rule["from"]
    assert source["podSelector"]["matchLabels"] == {"p2p-gateway/client": "true"} and source["namespaceSelector"] == {}
    assert rule["ports"] == [{"protocol": "TCP", "port": "http"}]


def test_the_preflight_installs_kubectl_from_debian():
    preflight = (REPO / "deploy" / "preflight.sh").read_text()
    assert 'need kubectl kubernetes-client "' in preflight


# The registry mirror overlay (production, with every node's containerd pulling through its peer) --


@pytest.fixture(scope="module")
def mirror_docs(kubectl) -> tuple[dict, ...]:
    return render("overlays/registry-mirror", kubectl)


@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
def test_the_mirror_overlay_matches_the_kubernetes_schemas(mirror_docs, version):
    for doc in mirror_docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_mirror_overlay_is_privileged_only_where_it_says_and_still_warns_of_restricted(mirror_docs):
    [namespace] = [d for d in mirror_docs if d["kind"] == "Namespace"]
    labels = namespace["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "privileged"
    assert labels["pod-security.kubernetes.io/warn"] == labels["pod-security.kubernetes.io/audit"] == "restricted"
    peer = named(mirror_docs, "DaemonSet", "peer")
    [init] = pod_spec(peer)["initContainers"]
    [c] = containers(peer, init=False)
    # Only the init container runs as root, with nothing else: no capability, no escalation.
    context = init["securityContext"]
    assert context["runAsUser"] == 0 and context["capabilities"]["drop"] == ["ALL"] and not context["allowPrivilegeEscalation"]
    assert c.get("securityContext", {}).get("runAsUser", pod_spec(peer)["securityContext"]["runAsUser"]) > 0
    assert not {"hostNetwork", "hostPID", "hostIPC"} & pod_spec(peer).keys()
    [host_path] = [v for v in pod_spec(peer)["volumes"] if "hostPath" in v]
    assert host_path["hostPath"]["path"] == "/etc/containerd/certs.d"
    assert [m["name"] for m in init["volumeMounts"]] == [host_path["name"]] and not any(
        m["name"] == host_path["name"] for m in c["volumeMounts"]
    )
    # The other workloads are as production has them.
    for workload in workloads(mirror_docs):
        if workload["metadata"]["name"] != "peer":
            assert all("hostPath" not in v for v in pod_spec(workload).get("volumes", []))


def test_the_mirror_overlay_writes_hosts_toml_for_the_registries_the_peer_mirrors(mirror_docs, tmp_path, monkeypatch):
    peer = named(mirror_docs, "DaemonSet", "peer")
    [init] = pod_spec(peer)["initContainers"]
    [c] = containers(peer, init=False)
    [http] = [p for p in c["ports"] if p["name"] == "http"]
    assert http["hostPort"] == http["containerPort"] == int(env_value(c, "P2P_HTTP_PORT"))
    assert env_value(c, "P2P_HTTP_ALLOW") == "$(NODE_IP)/32"
    assert [e["name"] for e in c["env"]].index("NODE_IP") < [e["name"] for e in c["env"]].index("P2P_HTTP_ALLOW")
    # The peer takes its settings (the node's address as the kubelet expands it).
    for entry in c["env"]:
        if entry["name"].startswith("P2P_"):
            value = entry.get("value", "x" * 32 if "secretKeyRef" in entry.get("valueFrom", {}) else "10.0.0.1")
            monkeypatch.setenv(entry["name"], value.replace("$(NODE_IP)", "10.0.0.7"))
    settings = PeerSettings()
    assert [str(n) for n in settings.http_allow] == ["10.0.0.7/32"]
    # The init container's own command, run here with the node's folder in tmp_path.
    script = init["command"][2].replace("/host/certs.d", str(tmp_path))
    bin_dir = Path(sys.executable).parent
    done = subprocess.run(["sh", "-c", script], env={"PATH": f"{bin_dir}:/usr/bin:/bin", "NODE_IP": "10.0.0.7"},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    written = {p.parent.name: p.read_text() for p in tmp_path.glob("*/hosts.toml")}
    assert set(written) == {entry.partition("=")[0] for entry in settings.registry}
    for entry in settings.registry:
        name, _, url = entry.partition("=")
        assert f'server = "{url}"' in written[name] and '[host."http://10.0.0.7:7080"]' in written[name]
        assert 'capabilities = ["pull", "resolve"]' in written[name]
