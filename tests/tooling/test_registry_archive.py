"""What a user downloads: the git-tracked files minus ``.comfyignore`` (what ``comfy node publish`` zips).

The archive must hold everything the nodes import and the demo needs, nothing of the development side (tests,
benchmarks, devtools), stay under 7 MiB (the two offline models' weights are 2.8 + 2.7 MB of it), and the shipped
code must not import what is left out.
"""

from __future__ import annotations

import fnmatch
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAX_BYTES = 7 * 1024 * 1024
LEFT_OUT_PACKAGES = ("tests", "benchmarks", "devtools", "scripts")


def _patterns() -> list[str]:
    lines = (ROOT / ".comfyignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def _ignored(path: str, patterns: list[str]) -> bool:
    """gitignore semantics for the pattern kinds .comfyignore uses: 'dir/', a root-relative path or glob with a
    slash, a bare name or glob matching at any depth."""
    for pat in patterns:
        if pat.endswith("/"):
            if path.startswith(pat) or f"/{pat}" in f"/{path}":
                return True
        elif "/" in pat:
            if fnmatch.fnmatchcase(path, pat.lstrip("/")):
                return True
        elif any(fnmatch.fnmatchcase(part, pat) for part in path.split("/")):
            return True
    return False


def _archive() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    patterns = _patterns()
    return [p for p in out.splitlines() if not _ignored(p, patterns) and (ROOT / p).is_file()]


def test_the_registry_archive_is_small_and_holds_what_users_need():
    files = _archive()
    size = sum((ROOT / p).stat().st_size for p in files)
    print(f"registry archive: {len(files)} files, {size / 1e6:.2f} MB")
    assert size <= MAX_BYTES, f"{size / 1e6:.2f} MB > {MAX_BYTES / 1e6:.2f} MB"
    needed = ["__init__.py", "pyproject.toml", "requirements.txt", "README.md", "LICENSE",
              "reference_model/weights/digits8_unet.safetensors", "example_workflows/dng_reference_demo.json",
              "reference_model/weights/shapes16_unet.safetensors",
              "example_workflows/dng_reference_composition.json",
              "web/dng_live.js", "web/docs/DynamicNegativeGuidance.md", "dng_core/posterior.py", "nodes/patch.py"]
    assert not [p for p in needed if p not in files], "the archive lacks files the pack needs"
    assert not [p for p in files if p.split("/")[0] in LEFT_OUT_PACKAGES]


def test_shipped_code_imports_nothing_that_is_left_out():
    imports = re.compile(r"^\s*(?:from|import)\s+\.*(" + "|".join(LEFT_OUT_PACKAGES) + r")\b", re.M)
    offenders = [p for p in _archive() if p.endswith(".py") and imports.search((ROOT / p).read_text())]
    assert not offenders, f"shipped modules import development-only packages: {offenders}"
