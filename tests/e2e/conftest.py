"""A real ComfyUI server for the whole e2e session (devtools/server.py).

    def test_something(comfy_server):
        entry = comfy_server.run(prompt)                    # POST /prompt, poll /history; raises on error
        png = comfy_server.view(entry["outputs"]["7"]["images"][0])
"""

from __future__ import annotations

import os
import re
import time

import pytest

from devtools.host import PACK_NAME, pack_available
from devtools.server import ComfyServer, ServerStartError
from devtools.tiny_checkpoint import get_tiny_checkpoint


@pytest.fixture(scope="session")
def comfy_server(host_required, rig_timings):
    """ComfyUI 0.3.75 on a free loopback port (--cpu, in-memory DB, temp base dir) with the pack symlinked as
    custom_nodes/ComfyUI-DNG (when present) and the tiny SD1.5 checkpoint as tiny_sd15.safetensors."""
    t0 = time.perf_counter()
    get_tiny_checkpoint()  # built outside the server's start-up timeout
    rig_timings.setdefault("tiny checkpoint (e2e, build or cache hit)", time.perf_counter() - t0)
    srv = ComfyServer(install_pack=pack_available())
    try:
        srv.start()
    except ServerStartError as e:
        pytest.fail(str(e), pytrace=False)
    rig_timings.setdefault("server start (to /system_stats)", srv.startup_s)
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def server_pack_nodes(comfy_server) -> dict:
    """{node_id: object_info} of the pack's nodes in the running server. Skips without a pack; fails with the
    server log if ComfyUI reported IMPORT FAILED for it."""
    if not pack_available():
        pytest.skip("pack not present at the repo root")
    log = comfy_server.log_text()
    if re.search(rf"IMPORT FAILED\): .*custom_nodes/{re.escape(PACK_NAME)}\s*$", log, re.M):
        pytest.fail(f"ComfyUI could not import the pack:\n{comfy_server.log_tail(80)}", pytrace=False)
    info = comfy_server.object_info()
    mine = {k: v for k, v in info.items() if v.get("python_module") == f"custom_nodes.{PACK_NAME}"}
    if not mine:
        pytest.fail(f"the server lists no nodes from custom_nodes.{PACK_NAME}:\n{comfy_server.log_tail(80)}",
                    pytrace=False)
    return mine


@pytest.fixture(scope="session")
def browser():
    """One headless chromium with the real frontend's pages (devtools/workflows.py: Browser)."""
    from devtools.workflows import Browser, browser_missing_reason

    reason = browser_missing_reason()
    if reason:
        # make test installs both (scripts/setup_env.sh); in CI a missing browser is a failure, not a skip
        (pytest.fail if os.environ.get("CI") else pytest.skip)(reason)
    return Browser.get()
