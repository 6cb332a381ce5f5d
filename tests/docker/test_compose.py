"""The compose swarm, for real: five seeders, a real Prometheus and Pushgateway, the leecher job,
then scaling down and a seeder killed mid-download. The tests run in file order on one project."""

import functools
import hashlib
import json
import os
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from testcontainers.compose import DockerCompose

from tests.dashboard import queries_as_grafana_sends
from tests.host_tools import host_tool

from .conftest import REPO

def eventually(check, timeout: float = 60.0, every: float = 0.5):
    """Poll something that has no event to wait on (Prometheus scrapes every few seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
            if value:
                return value
        except (OSError, ValueError, KeyError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout}s: {check.__doc__ or check}")
        time.sleep(every)


class Swarm:
    def __init__(self, compose: DockerCompose, downloads: Path, up: subprocess.Popen, output) -> None:
        self.compose = compose
        self.downloads = downloads
        self.up = up
        self._output = output

    def up_output(self) -> str:
        self._output.seek(0)
        return self._output.read()

    @functools.cached_property
    def prometheus(self) -> str:
        port = eventually(lambda: self.run("port", "prometheus", "9090", check=False).stdout.strip().rsplit(":", 1)[-1])
        return f"http://127.0.0.1:{port}"

    def run(self, *args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [*self.compose.compose_command_property, *args],
            cwd=REPO, capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})},
        )
        if check:
            assert result.returncode == 0, result.stdout + result.stderr
        return result

    def query(self, promql: str) -> list[dict]:
        url = f"{self.prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]["result"]

    def value(self, promql: str) -> float:
        result = self.query(promql)
        return float(result[0]["value"][1]) if result else float("nan")

    def seeders_listed(self) -> int:
        """Live seeders of demo.bin, asked of the tracker itself with `p2p-leecher --list`."""
        out = self.run("run", "--rm", "--no-deps", "-T", "leecher", "--list").stdout
        rows = [line.split() for line in out.splitlines() if line.startswith("demo.bin ")]
        return int(rows[0][2]) if rows else 0

    @functools.cached_property
    def seed_sha256(self) -> str:
        code = "import hashlib;print(hashlib.sha256(open('/seed/demo.bin','rb').read()).hexdigest())"
        return self.run("exec", "-T", "--index", "1", "seeder", "python3", "-c", code).stdout.strip()

    def downloaded_sha256(self) -> str:
        return hashlib.sha256((self.downloads / "demo.bin").read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def swarm(images, tmp_path_factory):
    """The swarm started the way the README says: a plain `docker compose up`, attached; only
    settings change (five seeders, a small file). The download folder does not exist yet, so
    Docker creates it as root, as it does for a user who has none."""
    work = tmp_path_factory.mktemp("compose")
    downloads = work / "downloads"
    settings = {
        **images,
        "COMPOSE_PROJECT_NAME": f"p2ptest{os.getpid()}",
        "SEEDERS": "5",
        "PEERS": "1",  # (two have a project of their own, below)
        "DEMO_SIZE_MIB": "32",
        "HEARTBEAT_INTERVAL": "2",
        "PROMETHEUS_PORT": "0",
        "GRAFANA_PORT": "0",
        "DOWNLOAD_DIR": str(downloads),
    }
    env_file = work / "test.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
    compose = DockerCompose(REPO, env_file=str(env_file))
    output = open(work / "compose-up.log", "w+")
    up = subprocess.Popen([*compose.compose_command_property, "up"], cwd=REPO, stdout=output, stderr=subprocess.STDOUT)
    swarm = Swarm(compose, downloads, up, output)

    def all_healthy():
        """both tracker replicas and five seeders healthy (compose then starts the leecher)"""
        rows = swarm.run("ps", "--format", "{{.Service}} {{.Health}}", "tracker", "seeder", check=False).stdout.split("\n")
        assert up.poll() is None, swarm.up_output()
        return sum(row.endswith(" healthy") for row in rows) == 7

    try:
        eventually(all_healthy, timeout=300, every=1.0)
        yield swarm
    finally:
        up.send_signal(signal.SIGINT)  # Ctrl-C, as a user stops it
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            up.kill()
        subprocess.run(
            [*compose.compose_command_property, "down", "--volumes", "--remove-orphans", "--timeout", "10"],
            cwd=REPO, capture_output=True,
        )
        output.close()


@pytest.fixture(scope="module")
def leecher_job(swarm):
    """The leecher job of that `docker compose up`, to its end."""

    def leecher_exited():
        """the leecher job exited"""
        rows = swarm.run("ps", "--all", "--format", "{{.State}} {{.ExitCode}}", "leecher", check=False).stdout.split()
        assert swarm.up.poll() is None, swarm.up_output()
        return len(rows) == 2 and rows[0] == "exited" and rows

    rows = eventually(leecher_exited, timeout=600, every=1.0)
    logs = swarm.run("logs", "--no-log-prefix", "leecher").stdout
    return int(rows[1]), logs


def test_five_seeders_are_registered_and_scraped(swarm):
    assert eventually(lambda: swarm.seeders_listed() == 5, timeout=30)
    # The five seeders; the peer, registered with nothing in its cache, is a holder of neither kind.
    eventually(lambda: swarm.value('p2p_tracker_live_holders{kind="complete"}') == 5)

    def seeder_targets_up():
        """five seeder targets up in Prometheus"""
        with urllib.request.urlopen(f"{swarm.prometheus}/api/v1/targets", timeout=10) as response:
            targets = json.load(response)["data"]["activeTargets"]
        return sum(t["labels"]["job"] == "seeder" and t["health"] == "up" for t in targets) == 5

    eventually(seeder_targets_up)


def test_leecher_job_downloads_the_exact_file_from_every_seeder(swarm, leecher_job):
    exit_code, logs = leecher_job
    assert exit_code == 0, logs
    assert "Successfully downloaded demo.bin" in logs
    assert swarm.downloaded_sha256() == swarm.seed_sha256
    # No MIN_SEEDERS given: the leecher started once all five were registered, and used them all.
    started = [json.loads(line) for line in logs.splitlines() if '"downloading"' in line]
    assert started and started[0]["seeders"] == 5, logs
    # The folder Docker created as root was handed to the image's user; the file is theirs.
    assert (swarm.downloads / "demo.bin").stat().st_uid == 10001


def test_metrics_are_nonzero_where_they_should_be(swarm, leecher_job):
    eventually(lambda: swarm.value('sum(p2p_tracker_heartbeats_total{result="ok"})') > 0)
    eventually(lambda: swarm.value('sum(p2p_seeder_heartbeats_total{result="ok"})') > 0)
    eventually(lambda: swarm.value("sum(p2p_seeder_chunks_served_total)") >= 64)  # 32 MiB / 512 KiB
    eventually(lambda: swarm.value("sum(p2p_seeder_bytes_served_total)") >= 32 << 20)
    eventually(lambda: swarm.value("p2p_leecher_chunks_received_total") == 64)
    eventually(lambda: swarm.value('p2p_leecher_downloads_total{result="ok"}') == 1)
    # Retries are zero in a healthy run, but the series exist for the dashboard.
    assert len(swarm.query("p2p_leecher_retries_total")) >= 6
    assert swarm.value("sum(p2p_leecher_retries_total)") == 0


def test_every_dashboard_query_returns_data(swarm, leecher_job):
    # The peer's panels need a file through its gateway; the peer then lets it go, so that the
    # seeders are demo.bin's only holders again for the tests below.
    gateway = f"http://{swarm.run('port', 'peer', '7080').stdout.strip()}/files"
    with urllib.request.urlopen(f"{gateway}/demo.bin", timeout=120) as response:
        assert hashlib.sha256(response.read()).hexdigest() == swarm.seed_sha256
        file_id = response.headers["ETag"].strip('"')
    with urllib.request.urlopen(urllib.request.Request(f"{gateway}/{file_id}", method="DELETE"), timeout=30) as response:
        assert response.status == 204
    # The registry mirror's panel: its base answers (no upstream is configured, none is needed).
    with urllib.request.urlopen(gateway.replace("/files", "/v2/"), timeout=30) as response:
        assert response.status == 200
    assert eventually(lambda: swarm.seeders_listed() == 5, timeout=30)
    # As Grafana sends them: $instance is "All" (.*), $__rate_interval 4 x the 5 s scrape interval.
    exprs = queries_as_grafana_sends(scrape_interval=5)
    assert len(exprs) >= 14
    for expr in exprs:
        eventually(lambda: len(swarm.query(expr)) > 0, timeout=90)


def test_prometheus_loads_the_alert_rules(swarm):
    def healths():
        """every shipped rule evaluated once"""
        with urllib.request.urlopen(f"{swarm.prometheus}/api/v1/rules", timeout=10) as response:
            [group] = json.loads(response.read())["data"]["groups"]
        found = [rule["health"] for rule in group["rules"]]
        return "unknown" not in found and found

    found = eventually(healths, timeout=60)
    assert len(found) >= 8 and set(found) == {"ok"}


def test_eight_sharing_leechers_every_copy_exact_and_the_seeders_spared(swarm, leecher_job):
    """`docker compose up --scale leecher=8`: eight leechers into one download folder at once,
    sharing what they verify; the seeders send far less than eight copies."""
    size = 32 << 20

    def served() -> float:
        """the seeders' egress, as Prometheus last scraped it"""
        return swarm.value("sum(p2p_seeder_bytes_served_total)")

    def settled() -> float:
        first = served()
        time.sleep(6)  # one scrape interval (5 s) and a little: the counters have stopped moving
        return first == served() and first

    before = eventually(settled, timeout=60, every=0)
    (swarm.downloads / "demo.bin").unlink()
    swarm.run("up", "--detach", "--no-recreate", "--scale", "leecher=8", "leecher")

    def all_exited():
        """eight leecher containers exited"""
        rows = swarm.run("ps", "--all", "--format", "{{.State}} {{.ExitCode}}", "leecher").stdout.split("\n")
        rows = [r.split() for r in rows if r.strip()]
        return len(rows) == 8 and all(r[0] == "exited" for r in rows) and rows

    rows = eventually(all_exited, timeout=300, every=1.0)
    logs = swarm.run("logs", "--no-log-prefix", "leecher").stdout
    assert [r[1] for r in rows] == ["0"] * 8, logs
    assert swarm.downloaded_sha256() == swarm.seed_sha256
    assert list(swarm.downloads.glob("*.part")) == []  # those that downloaded aside cleaned up
    # (Whether leechers got bytes from each other depends on how their starts overlap: one that
    # starts after the file is complete finds it there and keeps it. The egress is the claim.)
    egress = eventually(lambda: (after := settled()) and after > before and after, timeout=90, every=0) - before
    assert egress < 4 * size, egress / size


def test_scale_down_the_tracker_forgets_and_a_new_run_succeeds(swarm, leecher_job):
    swarm.run("up", "--detach", "--wait", "--no-recreate", "--scale", "seeder=2", "seeder")
    assert eventually(lambda: swarm.seeders_listed() == 2, timeout=30)
    (swarm.downloads / "demo.bin").unlink()
    result = swarm.run("run", "--rm", "-T", "leecher", check=False)  # no setting follows the scale
    assert result.returncode == 0, result.stdout + result.stderr
    assert swarm.downloaded_sha256() == swarm.seed_sha256


def test_seeder_killed_mid_download_the_leecher_still_succeeds(swarm):
    # Slow seeders (3 MB/s each) so the download lasts seconds and a kill lands in the middle.
    slow = {"SEEDER_MAX_UPLOAD_RATE": "3000000"}
    swarm.run("up", "--detach", "--wait", "--scale", "seeder=3", "seeder", env=slow)
    assert eventually(lambda: swarm.seeders_listed() == 3, timeout=30)
    expected = swarm.seed_sha256
    (swarm.downloads / "demo.bin").unlink(missing_ok=True)
    with subprocess.Popen(
        [*swarm.compose.compose_command_property, "run", "--rm", "-T", "-e", "P2P_MIN_SEEDERS=3", "leecher"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **slow},
    ) as leecher:
        lines = []
        for line in leecher.stdout:
            lines.append(line)
            if '"downloading"' in line:
                break
        victim = swarm.run("ps", "--quiet", "seeder").stdout.split()[0]
        subprocess.run(["docker", "kill", victim], check=True, capture_output=True)
        lines += leecher.stdout.readlines()
    assert leecher.returncode == 0, "".join(lines)
    assert any('"peer failed"' in line for line in lines), "".join(lines)
    assert swarm.downloaded_sha256() == expected


def test_both_tracker_replicas_are_scraped_and_one_frozen_is_not_missed(swarm, leecher_job):
    def trackers_up():
        """two tracker targets up in Prometheus"""
        with urllib.request.urlopen(f"{swarm.prometheus}/api/v1/targets", timeout=10) as response:
            targets = json.load(response)["data"]["activeTargets"]
        return sum(t["labels"]["job"] == "tracker" and t["health"] == "up" for t in targets) == 2

    eventually(trackers_up)
    frozen = swarm.run("ps", "--quiet", "tracker").stdout.split()[0]
    subprocess.run(["docker", "pause", frozen], check=True, capture_output=True)
    try:  # the seeders' beats and the new leecher's lookups go to the other replica, on the same Redis
        expected = swarm.seed_sha256
        (swarm.downloads / "demo.bin").unlink(missing_ok=True)
        # (--no-deps: compose would try to start the paused replica, as a dependency)
        result = swarm.run("run", "--rm", "--no-deps", "-T", "leecher", check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        assert swarm.downloaded_sha256() == expected
    finally:
        subprocess.run(["docker", "unpause", frozen], check=True, capture_output=True)


def test_compose_swarm_with_mutual_tls_and_a_swarm_secret(images, tmp_path):
    """The TLS override and a swarm secret: seeders serve only over mutual TLS to members, and
    the leecher job still succeeds."""
    if not (REPO / "certs" / "ca.crt").exists():
        subprocess.run([str(REPO / "deploy" / "make-certs.sh"), str(REPO / "certs")], check=True, capture_output=True)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    settings = {**images, "COMPOSE_PROJECT_NAME": f"p2ptls{os.getpid()}", "SEEDERS": "2", "MIN_SEEDERS": "2",
                "DEMO_SIZE_MIB": "8", "PROMETHEUS_PORT": "0", "DOWNLOAD_DIR": str(downloads),
                "P2P_SWARM_SECRET": "a compose test secret"}
    env_file = tmp_path / "tls.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
    compose = DockerCompose(REPO, compose_file_name=["docker-compose.yml", "docker-compose.tls.yml"],
                            env_file=str(env_file), services=["tracker", "seeder", "pushgateway"], wait=True)
    compose.start()
    try:
        base = compose.compose_command_property
        run = lambda *a: subprocess.run([*base, *a], cwd=REPO, capture_output=True, text=True, timeout=300)  # noqa: E731
        logs = run("logs", "seeder", "tracker").stdout
        assert '"tls": "mutual"' in logs, logs
        assert "no swarm secret" not in logs
        result = run("run", "--rm", "-T", "leecher")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Successfully downloaded demo.bin" in result.stdout + result.stderr
        plain = run("run", "--rm", "-T", "-e", "P2P_TLS_CA=", "-e", "P2P_WAIT=2", "leecher", "--output-dir", "/tmp")
        assert plain.returncode == 1  # without TLS the seeders serve nothing
        assert "no seeder sent a valid manifest" in plain.stdout + plain.stderr
    finally:
        subprocess.run([*compose.compose_command_property, "down", "--volumes", "--remove-orphans", "--timeout", "10"],
                       cwd=REPO, capture_output=True)


def test_two_peers_each_with_its_cache_answer_the_host_on_loopback_and_the_project_by_name(images, tmp_path):
    """`docker compose up` with two per-host peers (PEERS=2): each has its own cache volume and its
    own port on 127.0.0.1 (`docker compose port --index N peer 7080`); curl on the host through
    either gateway gets the exact file; a container of the project gets it by the service name;
    Prometheus scrapes both peers."""
    curl = host_tool("curl", "curl")
    settings = {**images, "COMPOSE_PROJECT_NAME": f"p2ppeer{os.getpid()}", "SEEDERS": "1", "PEERS": "2",
                "DEMO_SIZE_MIB": "16", "HEARTBEAT_INTERVAL": "2", "PROMETHEUS_PORT": "0",
                "DOWNLOAD_DIR": str(tmp_path / "downloads")}
    env_file = tmp_path / "peers.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
    compose = DockerCompose(REPO, env_file=str(env_file), services=["tracker", "seeder", "peer", "prometheus"], wait=True)
    compose.start()
    try:
        swarm = Swarm(compose, tmp_path / "downloads", up=None, output=None)
        expected = swarm.seed_sha256
        gateways = []
        for index in (1, 2):
            host, _, port = swarm.run("port", "--index", str(index), "peer", "7080").stdout.strip().rpartition(":")
            assert host == "127.0.0.1"  # published on the host's loopback only
            gateways.append(f"http://127.0.0.1:{port}")
        assert len(set(gateways)) == 2  # a port of its own for each replica
        for gateway in gateways:  # (the second may take chunks from the first: both are peers)
            fetched = subprocess.run([curl, "--silent", "--show-error", "--fail", f"{gateway}/files/demo.bin"],
                                     capture_output=True, timeout=300)
            assert fetched.returncode == 0, fetched.stderr.decode()
            assert hashlib.sha256(fetched.stdout).hexdigest() == expected
        # Each replica keeps its cache on a volume of its own.
        mounts = set()
        for container in swarm.run("ps", "--quiet", "peer").stdout.split():
            [mount] = json.loads(subprocess.run(["docker", "inspect", "--format", "{{json .Mounts}}", container],
                                                capture_output=True, text=True, check=True).stdout)
            assert mount["Destination"] == "/cache" and mount["Type"] == "volume"
            mounts.add(mount["Name"])
        assert len(mounts) == 2
        # Another container of the project, by the service name (the project's network is admitted).
        code = ("import hashlib, urllib.request; "
                "print(hashlib.sha256(urllib.request.urlopen('http://peer:7080/files/demo.bin').read()).hexdigest())")
        inside = swarm.run("run", "--rm", "--no-deps", "-T", "--entrypoint", "python3", "leecher", "-c", code)
        assert inside.stdout.split()[-1] == expected

        def peers_scraped():
            """two peer targets up in Prometheus"""
            with urllib.request.urlopen(f"{swarm.prometheus}/api/v1/targets", timeout=10) as response:
                targets = json.load(response)["data"]["activeTargets"]
            return sum(t["labels"]["job"] == "peer" and t["health"] == "up" for t in targets) == 2

        eventually(peers_scraped)
        eventually(lambda: swarm.value('sum(p2p_peer_http_requests_total{route="file", code="200"})') == 3)
    finally:
        subprocess.run([*compose.compose_command_property, "down", "--volumes", "--remove-orphans", "--timeout", "10"],
                       cwd=REPO, capture_output=True)


def test_make_up_ends_with_a_verified_download_and_exit_code_0(images, tmp_path):
    """The README's `make up`: images, the swarm detached, the leecher followed to its end; its
    exit code is the leecher's."""
    downloads = tmp_path / "downloads"
    env = {**os.environ, "COMPOSE_PROJECT_NAME": f"p2pmakeup{os.getpid()}", "DEMO_SIZE_MIB": "8",
           "PROMETHEUS_PORT": "0", "DOWNLOAD_DIR": str(downloads), "SEEDERS": "2"}
    try:
        result = subprocess.run(["make", "up"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Successfully downloaded demo.bin" in result.stdout
        assert (downloads / "demo.bin").stat().st_size == 8 << 20
    finally:
        subprocess.run(["make", "down"], cwd=REPO, env=env, capture_output=True, timeout=300)
        subprocess.run(["docker", "volume", "rm", f"{env['COMPOSE_PROJECT_NAME']}_seed-data"], capture_output=True)
