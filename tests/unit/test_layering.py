"""The protocol library's core does no I/O: no module outside p2p_shared.net imports
asyncio or socket (DESIGN.md principle 8)."""

import ast
from pathlib import Path

import p2p_shared

ROOT = Path(p2p_shared.__file__).parent
FORBIDDEN = {"asyncio", "socket", "selectors", "ssl"}


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_sans_io_modules_import_no_networking():
    core = [p for p in ROOT.rglob("*.py") if "net" not in p.relative_to(ROOT).parts]
    assert len(core) >= 8
    offenders = {p.name: imported_modules(p) & FORBIDDEN for p in core}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_check_would_catch_an_import(tmp_path):
    sample = tmp_path / "x.py"
    sample.write_text("import asyncio.events\nfrom socket import socket\n")
    assert imported_modules(sample) == {"asyncio", "socket"}
