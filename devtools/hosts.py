"""The pinned ComfyUI hosts and frontends (``scripts/host.env``), and which host this process runs on.

Two hosts are set up by ``scripts/setup_env.sh``:

* ``main``  - ComfyUI 0.33.0 in ``.host/ComfyUI-0.33.0``, with the frontend its requirements pin (in ``.venv``);
* ``floor`` - ComfyUI 0.3.75 in ``.host/ComfyUI-0.3.75``, with its own pinned frontend in ``.host/frontend-1.32.9``.

A process tests one host (ComfyUI is imported in-process, once): ``DNG_HOST=floor`` selects the floor, anything
else or nothing the main host. ``DNG_COMFYUI_DIR`` points the rig at any other ComfyUI tree (its frontend is then
the one in the venv). Standard library only: imported before the host is.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
HOST_ENV = REPO_ROOT / "scripts" / "host.env"
HOSTS_ROOT = REPO_ROOT / ".host"


def pins(path: Path = HOST_ENV) -> dict[str, str]:
    """``KEY=value`` lines of host.env (comments and blank lines skipped)."""
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        m = re.match(r"\s*([A-Z0-9_]+)=(\S*)", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


@dataclass(frozen=True)
class HostSpec:
    role: str  # "main" or "floor" ("custom" for DNG_COMFYUI_DIR)
    version: str  # as pinned (DNG_COMFYUI_DIR: read from its comfyui_version.py)
    dir: Path
    frontend_version: str | None  # the frontend this host is tested with (None: whatever the venv has)

    @property
    def frontend_root(self) -> Path | None:
        """``--front-end-root`` for this host's frontend; None where it is the venv's package (main host)."""
        if self.role != "floor" or not self.frontend_version:
            return None
        return frontend_static_dir(self.frontend_version)


def frontend_static_dir(version: str) -> Path:
    """The ``static/`` folder of a frontend set up beside the venv (``.host/frontend-<version>``)."""
    return HOSTS_ROOT / f"frontend-{version}" / "comfyui_frontend_package" / "static"


def host_spec(role: str) -> HostSpec:
    p = pins()
    if role == "floor":
        v = p["FLOOR_COMFYUI_VERSION"]
        return HostSpec("floor", v, HOSTS_ROOT / f"ComfyUI-{v}", p["FLOOR_FRONTEND_VERSION"])
    v = p["MAIN_COMFYUI_VERSION"]
    return HostSpec("main", v, HOSTS_ROOT / f"ComfyUI-{v}", p["MAIN_FRONTEND_VERSION"])


def selected_host() -> HostSpec:
    custom = os.environ.get("DNG_COMFYUI_DIR")
    if custom:
        d = Path(custom).resolve()
        vf = d / "comfyui_version.py"
        m = re.search(r"__version__\s*=\s*[\"']([^\"']+)", vf.read_text()) if vf.is_file() else None
        return HostSpec("custom", m.group(1) if m else "unknown", d, None)
    return host_spec("floor" if os.environ.get("DNG_HOST", "main").strip().lower() == "floor" else "main")


NEWEST_FRONTEND_VERSION = pins()["NEWEST_FRONTEND_VERSION"]
