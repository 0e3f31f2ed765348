"""scripts/fetch_host.sh: where the main host's source comes from, and what a user sees when it can't be had.

No ComfyUI import; these run the script as `make test` would (bash), with git pointed at an unreachable URL so the
"no network" case is the same on every machine.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from devtools.hosts import REPO_ROOT, pins

SCRIPT = REPO_ROOT / "scripts" / "fetch_host.sh"
# git rewrites the upstream URL to a path that does not exist: the clone fails at once, as offline
OFFLINE_GIT = {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "url.file:///nonexistent/upstream/.insteadOf",
               "GIT_CONFIG_VALUE_0": "https://github.com/"}


def _fetch(dest: Path, archive: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, DNG_HOST_ARCHIVE=str(archive), **OFFLINE_GIT)
    return subprocess.run(["bash", str(SCRIPT), "main", str(dest)], capture_output=True, text=True, env=env,
                          timeout=timeout)


def test_missing_archive_and_no_git_gives_a_clear_message(tmp_path):
    out = _fetch(tmp_path / "host", tmp_path / "missing.tar.gz")
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert "cannot get ComfyUI 0.33.0" in out.stderr and str(tmp_path / "missing.tar.gz") in out.stderr
    assert pins()["MAIN_COMFYUI_SHA256"] in out.stderr and "DNG_HOST_ARCHIVE" in out.stderr
    assert not (tmp_path / "host").exists()


def test_an_archive_with_the_wrong_checksum_is_refused(tmp_path):
    fake = tmp_path / "comfyui-0.33.0.tar.gz"
    fake.write_bytes(b"not the host")
    out = _fetch(tmp_path / "host", fake)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "expected " + pins()["MAIN_COMFYUI_SHA256"] in out.stderr
    assert not (tmp_path / "host").exists()


def test_the_pinned_archive_gives_the_pinned_version(tmp_path):
    archive = (REPO_ROOT / pins()["MAIN_COMFYUI_ARCHIVE"]).resolve()
    if not archive.is_file():
        pytest.skip(f"no source archive at {archive} (the set-up then takes upstream git)")
    out = _fetch(tmp_path / "host", archive)
    assert out.returncode == 0, out.stderr
    text = (tmp_path / "host" / "comfyui_version.py").read_text()
    assert f'"{pins()["MAIN_COMFYUI_VERSION"]}"' in text and (tmp_path / "host" / "main.py").is_file()
