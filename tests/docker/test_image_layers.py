"""The Dockerfile's layering, measured on real builds: every role's image starts with the same
layers up to and including the protocol library's venv, and a change to one service's code
rebuilds that role's image only; the others keep their image ids and the library layer is
reused. Builds run in a copy of the build context, so the repository and the p2p-*:latest images
are left alone. The change is always the same text, so a rerun finds its builds in the cache."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROLES = ("tracker", "seeder", "leecher", "peer")
# Everything .dockerignore lets into the context, and the Dockerfile.
CONTEXT = ("Dockerfile", ".dockerignore", "constraints.txt", "shared", "services", "deploy/wheels",
           "deploy/leecher-entrypoint.sh", "deploy/attached-networks.py")


@pytest.fixture
def context(images, tmp_path) -> Path:
    root = tmp_path / "context"
    for name in CONTEXT:
        source, copy = REPO / name, root / name
        copy.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, copy, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
        else:
            shutil.copy2(source, copy)
    return root


def build(context: Path, target: str, images: dict[str, str]) -> str:
    """The id of the image `docker build --target TARGET` makes of CONTEXT, with `make images`' settings."""
    iidfile = context.parent / f"{target}.iid"
    result = subprocess.run(
        ["docker", "build", "--quiet", "--target", target, "--iidfile", str(iidfile),
         "--build-arg", f"BASE_IMAGE={images['BASE_IMAGE']}", "--build-arg", f"OFFLINE={images['OFFLINE']}",
         str(context)],
        capture_output=True, text=True, timeout=1200,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return iidfile.read_text().strip()


def layers(image: str) -> list[str]:
    """The image's layers by content digest, the base image's first."""
    result = subprocess.run(["docker", "image", "inspect", "--format", "{{json .RootFS.Layers}}", image],
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


def test_every_role_adds_its_own_layers_to_one_shared_runtime(images, context):
    """The runtime stage is the base, the p2p user and one layer with the protocol library and its
    dependencies (no service); each role's image is that runtime plus a few layers of its own."""
    runtime = build(context, "runtime", images)
    common, base = layers(runtime), layers(images["BASE_IMAGE"])
    assert common[: len(base)] == base and len(common) == len(base) + 2
    modules = ("p2p_shared", "pydantic", "structlog", "p2p_tracker", "p2p_seeder", "p2p_leecher", "rich", "p2p_peer", "aiohttp")
    found = subprocess.run(
        ["docker", "run", "--rm", "--entrypoint", "python3", runtime, "-c",
         f"import importlib.util as u; print(*[m for m in {modules!r} if u.find_spec(m)])"],
        capture_output=True, text=True,
    )
    assert found.stdout.split() == ["p2p_shared", "pydantic", "structlog"], found.stderr
    for role in ROLES:
        own = layers(build(context, role, images))
        assert own[: len(common)] == common, role
        assert 1 <= len(own) - len(common) <= 4, role


@pytest.mark.parametrize("changed", ROLES)
def test_a_change_to_one_service_rebuilds_that_image_only(images, context, changed):
    targets = ("runtime", *ROLES)
    before = {target: build(context, target, images) for target in targets}
    source = context / "services" / changed / "src" / f"p2p_{changed}" / "__init__.py"
    source.write_text(source.read_text() + f"\n# changed by {__name__}, to see what gets rebuilt\n")
    after = {target: build(context, target, images) for target in targets}

    assert after[changed] != before[changed]  # the change reached the image ...
    unchanged = [target for target in targets if target != changed]
    assert {t: after[t] for t in unchanged} == {t: before[t] for t in unchanged}  # ... and no other
    common = layers(before["runtime"])
    assert layers(after[changed])[: len(common)] == common  # the library's layer is reused
    assert layers(after[changed])[len(common):] != layers(before[changed])[len(common):]
