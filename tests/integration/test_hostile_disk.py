"""Hostile disks and seeded folders (issue 12, items 5-8, 12 and 13), on real processes."""

import os
from pathlib import Path

import pytest

from tools.localswarm import LocalSwarm, random_file

MiB = 1 << 20


def error_lines(service) -> list[str]:
    return [e["event"] for e in service.events() if e.get("level") == "error"]


@pytest.mark.parametrize("planted", ["symlink", "hardlink"])
def test_a_planted_link_at_the_part_file_is_refused_and_nothing_outside_is_written(tmp_path, planted):
    """Item 8: NAME.part planted as a link to a file outside -o."""
    data = random_file(tmp_path / "seed" / "s.bin", 2 * MiB)
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious, outside the output folder\n")
    part = out / "s.bin.part"
    if planted == "symlink":
        part.symlink_to(victim)
    else:
        os.link(victim, part)
    with LocalSwarm(tmp_path) as swarm:
        swarm.start_tracker()
        swarm.add_seeder([data])
        leecher = swarm.leecher("s.bin", out)
        assert leecher.wait(60) == 1
    assert victim.read_bytes() == b"precious, outside the output folder\n"
    assert not os.path.lexists(out / "s.bin")
    [line] = error_lines(leecher)
    assert "s.bin.part" in line and "refusing" in line, line
    assert "Traceback" not in leecher.output
