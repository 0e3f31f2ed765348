"""Session fixtures for in-process tests against the real ComfyUI host (devtools/host.py).

    def test_something(prompt_runner, pack_nodes):
        p = txt2img_prompt()
        p["10"] = {"class_type": "DynamicNegativeGuidance", "inputs": {"model": ["1", 0], ...}}
        p["5"]["inputs"]["model"] = ["10", 0]
        res = prompt_runner.run(p, check=True)          # raises with the node's traceback on failure
        latent = prompt_runner.output_of("5")[0][0]["samples"]
"""

from __future__ import annotations

import time

import pytest

from devtools import host as H


@pytest.fixture(scope="session")
def host(host_required, rig_timings):
    """The imported host: namespace with host_dir, base_dir, version, nodes, execution, server,
    folder_paths, recorder, failed_extras."""
    t0 = time.perf_counter()
    h = H.import_host()
    rig_timings.setdefault("import host + comfy_extras (in-process)", time.perf_counter() - t0)
    return h


@pytest.fixture(scope="session")
def tiny_checkpoint(host, rig_timings) -> str:
    """Name of the tiny SD1.5 checkpoint as CheckpointLoaderSimple sees it (built/cached on first use)."""
    t0 = time.perf_counter()
    H.install_checkpoint()
    rig_timings.setdefault("tiny checkpoint (build or cache hit)", time.perf_counter() - t0)
    return H.CHECKPOINT_NAME


@pytest.fixture(scope="session")
def tiny_models(tiny_checkpoint, rig_timings):
    """(model, clip, vae) of the tiny checkpoint, loaded once via comfy.sd.load_checkpoint_guess_config."""
    t0 = time.perf_counter()
    out = H.load_tiny_checkpoint()
    rig_timings.setdefault("load tiny checkpoint (model, clip, vae)", time.perf_counter() - t0)
    return out


@pytest.fixture(scope="session")
def recorder(host) -> H.EventRecorder:
    """The event sink the executor and ``PromptServer.instance`` send to (shared by all runners)."""
    return host.recorder


@pytest.fixture(scope="session")
def prompt_runner(host, tiny_checkpoint) -> H.PromptRunner:
    """One PromptRunner for the session: its executor's output cache persists across prompts and tests, as
    in a long-running server. Use ``new_prompt_runner`` for a cold cache."""
    return H.PromptRunner()


@pytest.fixture
def new_prompt_runner(host, tiny_checkpoint) -> H.PromptRunner:
    """A PromptRunner with a fresh executor (empty output cache)."""
    return H.PromptRunner()


@pytest.fixture(scope="session")
def pack_nodes(host, rig_timings) -> dict:
    """{node_id: class} registered by the pack at the repo root, loaded the way ComfyUI loads custom nodes.
    Skips when there is no pack yet; fails with ComfyUI's log when the pack does not import."""
    t0 = time.perf_counter()
    try:
        nodes = H.load_pack()
    except H.PackMissing as e:
        pytest.skip(f"pack not present: {e}")
    except H.PackImportError as e:
        pytest.fail(str(e), pytrace=False)
    rig_timings.setdefault("load pack (in-process)", time.perf_counter() - t0)
    return nodes
