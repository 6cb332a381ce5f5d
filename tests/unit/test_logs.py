"""Our events and our dependencies' standard-library records come out as the same lines."""

import io
import json
import logging

import pytest
import structlog

from p2p_shared.logs import configure_logging


@pytest.fixture(autouse=True)
def restore_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def json_lines():
    stream = io.StringIO()
    configure_logging("json", "info", stream=stream)
    return lambda: [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_dependency_warning_is_a_json_line_like_ours(json_lines):
    structlog.get_logger().info("seeder registered", port=7000)
    logging.getLogger("some.dependency").warning("connection pool is full, discarding %s", "conn-3")
    ours, theirs = json_lines()
    assert ours["event"] == "seeder registered" and ours["port"] == 7000 and ours["level"] == "info"
    assert theirs["event"] == "connection pool is full, discarding conn-3"
    assert theirs["level"] == "warning" and theirs["logger"] == "some.dependency"
    assert set(ours) - {"port"} <= set(theirs)  # same timestamp and level fields
    assert theirs["timestamp"].endswith("Z")


def test_the_level_applies_to_dependencies_too():
    stream = io.StringIO()
    configure_logging("json", "warning", stream=stream)
    logging.getLogger("some.dependency").info("chatty detail")
    structlog.get_logger().info("ours, too detailed")
    logging.getLogger("some.dependency").error("real trouble")
    assert [json.loads(line)["event"] for line in stream.getvalue().splitlines()] == ["real trouble"]


def test_a_dependency_traceback_stays_inside_one_json_line(json_lines):
    try:
        raise ValueError("bad frame")
    except ValueError:
        logging.getLogger("asyncio").exception("Exception in callback")
    [line] = json_lines()
    assert line["event"] == "Exception in callback" and line["level"] == "error"
    assert "ValueError: bad frame" in line["exception"]


def test_console_format_renders_dependency_records_as_console_lines():
    stream = io.StringIO()
    configure_logging("console", "info", stream=stream)
    logging.getLogger("urllib3.connectionpool").warning("Retrying after connection broken")
    [line] = stream.getvalue().splitlines()
    assert "[warning  ]" in line and "Retrying after connection broken" in line and "urllib3.connectionpool" in line
