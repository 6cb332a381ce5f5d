import os

import pytest

from hypothesis import settings

# Property tests run 300 examples each in `make test`; `make fuzz` runs the decoders far longer.
settings.register_profile("default", max_examples=300, deadline=None)
settings.register_profile("fuzz", max_examples=int(os.environ.get("FUZZ_EXAMPLES", "20000")), deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A real redis-server for the tests of the Redis store (skipped without one, failing under CI)."""
    from tests.host_tools import host_tool
    from tools.localswarm import RedisServer

    host_tool("redis-server", "redis-server")
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(params=["memory", "redis"])
async def make_store(request):
    """Make empty registry stores of the kind under test: `await make_store(ttl, **caps)`, each
    a registry of its own."""
    async for make in _stores(request, request.param, separate=True):
        yield make


@pytest.fixture
async def redis_stores(request):
    """Make Redis stores on one registry, as tracker replicas use it."""
    async for make in _stores(request, "redis", separate=False):
        yield make


async def _stores(request, kind: str, separate: bool):
    import random

    from p2p_tracker.redis_store import RedisStore
    from p2p_tracker.store import Limits, MemoryStore

    made = []

    async def make(ttl: float, rng: random.Random | None = None, **caps):
        limits = Limits(ttl, **caps)
        if kind == "memory":
            return MemoryStore(limits, rng or random.Random(0))
        server = request.getfixturevalue("redis_server")
        prefix = f"p2p{len(made)}:" if separate else "p2p:"
        store = await RedisStore.connect(server.url, limits, timeout=5.0, rng=rng or random.Random(0), prefix=prefix)
        if not made:
            await store.client.flushall()
        made.append(store)
        return store

    make.kind = kind
    yield make
    for store in made:
        await store.close()


@pytest.fixture(autouse=True)
def _structlog_as_it_was():
    """A test that configures structlog (a command's main) leaves it as it found it: later
    tests assert on captured log lines."""
    import structlog

    saved = structlog.get_config()
    yield
    structlog.configure(**saved)
