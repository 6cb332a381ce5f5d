"""Work counted, not timed: how many Python calls an action makes does not drift with the
machine or its load, so complexity can be asserted in unit tests (issue 12, items 16 and 17)."""

import sys

from p2p_shared.messages import FileEntry
from p2p_shared.registry import HolderRegistry


def python_calls(action) -> int:
    """Python function calls made by `action` (C code does not count): work, not time."""
    calls = 0

    def count(frame, event, arg) -> None:
        nonlocal calls
        calls += event == "call"

    sys.setprofile(count)
    try:
        action()
    finally:
        sys.setprofile(None)
    return calls


def crowded(ids: int) -> HolderRegistry:
    """`ids` file ids under one name, one holder each, but the last one, with two."""
    reg = HolderRegistry(ttl=1000, max_files_per_address=None, max_holders_per_address=None)
    for start in range(0, ids, 1000):
        reg.register(("h", start), [_entry(n) for n in range(start, min(ids, start + 1000))], now=0)
    reg.register(("h", ids), [_entry(ids - 1)], now=0)
    return reg


def _entry(n: int) -> FileEntry:
    return FileEntry(file_id=f"{n:064x}", name="crowded", size=1, chunk_size=1)
