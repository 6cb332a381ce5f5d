from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items):
    """Mark every test by its folder, so `-m integration` or `-m "not docker"` select by kind."""
    for item in items:
        kind = Path(item.fspath).relative_to(HERE).parts[0]
        if kind in ("integration", "docker"):
            item.add_marker(getattr(pytest.mark, kind))
