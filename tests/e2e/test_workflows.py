"""Every shipped workflow (example_workflows/*.json) is served by the template endpoint, loads in the real frontend,
converts to API format there (``app.loadGraphData`` + ``app.graphToPrompt()``, what the browser queues) and runs
on the real server.

At test time the checkpoints are the tiny random-weight ones (devtools/tiny_checkpoint.py): the SD1.5 one for
v1-5-pruned-emaonly-fp16.safetensors, and a tiny SDXL-detected one for sd_xl_base_1.0.safetensors (the host's own
SDXL classes: 131 M UNet parameters, and the full, fixed-size CLIP-L + CLIP-G text encoders, which are most of its
1.8 GB and of the SDXL run's ~15 s on CPU). Latents are shrunk to 64 px and samplers to 4 steps.
"""

from __future__ import annotations

import json
import os
import time

import pytest

from dng_core.transmission import LATE_PUSH_GAIN
from scripts.comfy_workflow import FRONTEND_ONLY, workflow_to_prompt
from devtools.host import CHECKPOINT_NAME, HOST, PACK_NAME
from devtools.workflows import (
    PATCH_NODES, SD15_CKPT, SDXL_CKPT, shipped, shrink_prompt, specs,
    swap_models, widget_inputs, build_workflow, canonical,
)

SDXL_TINY_NAME = "tiny_sdxl.safetensors"
MODELS = {SD15_CKPT: CHECKPOINT_NAME, SDXL_CKPT: SDXL_TINY_NAME}
STEPS = 4
SPECS = {s.name: s for s in specs()}



@pytest.fixture(scope="module")
def tiny_sdxl(comfy_server, rig_timings):
    """The tiny SDXL checkpoint, linked into the running server's models/checkpoints."""
    from devtools.tiny_checkpoint import get_tiny_sdxl_checkpoint

    t0 = time.perf_counter()
    path = get_tiny_sdxl_checkpoint()
    rig_timings.setdefault("tiny SDXL checkpoint (build or cache hit)", time.perf_counter() - t0)
    dst = comfy_server.base_dir / "models" / "checkpoints" / SDXL_TINY_NAME
    if not dst.exists():
        dst.symlink_to(path)
    return dst


@pytest.fixture(scope="module")
def page(browser, comfy_server, server_pack_nodes, tiny_sdxl, rig_timings):
    p = browser.open(comfy_server.url)
    rig_timings.setdefault("browser start (chromium)", browser.startup_s)
    rig_timings.setdefault("frontend page load", p.load_s)
    yield p
    p.close()


def test_shipped_workflows_have_thumbnails_and_include_the_generated_ones():
    """example_workflows/ holds every workflow of the generator (devtools/workflows.py) in its format, and every
    workflow there has the thumbnail the template browser asks for (<name>.jpg)."""
    files = shipped()
    assert set(SPECS) <= set(files), f"not generated yet: {sorted(set(SPECS) - set(files))}"
    for name, path in files.items():
        assert path.with_suffix(".jpg").is_file(), f"{name}: no thumbnail {name}.jpg"
        assert path.with_suffix(".jpg").read_bytes()[:3] == b"\xff\xd8\xff", f"{name}.jpg is not a JPEG"
        wf = json.loads(path.read_text())
        assert wf.get("nodes") and "links" in wf, f"{name}.json is not a UI-format workflow"
        if name in SPECS:
            assert path.read_text() == canonical(wf), f"{name}.json is not in the generator's format"


def test_template_endpoint_lists_and_serves_every_workflow(comfy_server, server_pack_nodes):
    listing = comfy_server.get("/api/workflow_templates")
    assert sorted(listing.get(PACK_NAME, [])) == sorted(shipped())
    for name, path in shipped().items():
        status, raw = comfy_server.request("GET", f"/api/workflow_templates/{PACK_NAME}/{name}.json")
        assert status == 200 and raw == path.read_bytes(), name
        status, raw = comfy_server.request("GET", f"/api/workflow_templates/{PACK_NAME}/{name}.jpg")
        assert status == 200 and raw == path.with_suffix(".jpg").read_bytes(), f"{name}.jpg"


def test_template_browser_shows_the_pack_with_thumbnails(page):
    """The frontend's own template store lists the pack's workflows, and their thumbnails load in the page."""
    found = page.evaluate(
        """async (pack) => {
             const all = await app.api.getWorkflowTemplates();
             const names = all[pack] ?? [];
             const sizes = await Promise.all(names.map((n) => new Promise((resolve) => {
               const img = new Image();
               img.onload = () => resolve([n, img.naturalWidth, img.naturalHeight]);
               img.onerror = () => resolve([n, 0, 0]);
               img.src = app.api.apiURL(`/workflow_templates/${pack}/${n}.jpg`);  // the template browser's URL
             })));
             return sizes;
           }""", PACK_NAME)
    assert sorted(n for n, _, _ in found) == sorted(shipped())
    assert all(w >= 256 and h >= 256 for _, w, h in found), found


def test_committed_files_match_the_generator(page):
    """Rebuilding each workflow in this frontend gives the committed JSON (regenerate with
    ``python -m devtools.workflows`` after changing a workflow or the pinned frontend). The files are saved by
    the main host's frontend; other frontends save another form (e.g. ``widgets_values_named``), and the floor only
    has to load and run them (test_workflow_loads_converts_and_runs)."""
    if HOST.role != "main":
        pytest.skip(f"the workflows are generated with the main host's frontend, not {HOST.frontend_version}")
    stale = []
    for name, spec in SPECS.items():
        if canonical(build_workflow(page, spec)) != shipped()[name].read_text():
            stale.append(name)
    assert not stale, f"out of date, run `python -m devtools.workflows`: {stale}"


@pytest.mark.parametrize("name", sorted(shipped()))
def test_workflow_loads_converts_and_runs(name, page, comfy_server, rig_timings):
    spec = SPECS.get(name)  # None: a hand-made workflow; checked the same way, less the generator comparisons
    path = shipped()[name]
    # 1. as the template browser gets it
    text = page.fetch_template(PACK_NAME, name)
    assert text == path.read_text()
    workflow = json.loads(text)
    notes = [n for n in workflow["nodes"] if n["type"] == "Note"]
    assert notes and all(n["widgets_values"][0].strip() for n in notes), "every workflow explains itself in a Note"
    if spec is not None:
        note = notes[0]["widgets_values"][0]
        offline_loaders = ("DNGReferenceModelLoader", "DNGShapesModelLoader")
        if any(n["type"] in offline_loaders for n in workflow["nodes"]):  # offline: a shipped model
            assert "reference model" in note and "download" in note, "the note says the model ships with the pack"
        else:
            assert any(ckpt in note for ckpt in MODELS), "the note names the model to load"

    # 2. loaded and converted by the frontend, with the tiny checkpoints in place of the real ones
    swapped = swap_models(workflow, MODELS)
    page.load_workflow(swapped, name)
    prompt = page.graph_to_prompt()["output"]
    non_virtual = {str(n["id"]) for n in workflow["nodes"] if n["type"] not in FRONTEND_ONLY}
    assert set(prompt) == non_virtual
    if spec is not None:  # the frontend's prompt is the generator's source prompt
        expected = widget_inputs(spec.prompt)
        for nid, inputs in widget_inputs(prompt).items():
            want = {k: MODELS.get(v, v) for k, v in expected[nid].items()}
            assert inputs == want, f"node {nid} ({prompt[nid]['class_type']}): widget values differ from the source"
        for nid, node in spec.prompt.items():
            links = {k: v for k, v in node["inputs"].items() if isinstance(v, list)}
            assert {k: v for k, v in prompt[nid]["inputs"].items() if isinstance(v, list)} == links, nid
    # the browser-free converter (scripts/comfy_workflow.py, used by the demo) agrees with the frontend
    converted = workflow_to_prompt(swapped, object_info(comfy_server))
    assert converted == {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in prompt.items()}
    assert not page.errors(), "console errors:\n" + "\n".join(map(str, page.errors()))

    # 3. executed by the server, with the live events going to a websocket client
    prompt = shrink_prompt(prompt, steps=STEPS, size=64)
    t0 = time.perf_counter()
    with comfy_server.websocket() as ws:
        pid = comfy_server.queue(prompt, client_id=ws.client_id)
        ws.wait_done(pid, timeout=300)
        entry = comfy_server.wait(pid, timeout=120)
        events = ws.of("dng.step")
        starts = ws.of("dng.run_start")
    rig_timings.setdefault(f"workflow {name} (queue -> history)", time.perf_counter() - t0)
    assert entry["status"]["status_str"] == "success"

    outputs = entry["outputs"]
    for nid, node in prompt.items():
        if node["class_type"] == "SaveImage":
            latent = _latent_of(prompt, nid)
            batch = prompt[latent]["inputs"]["batch_size"] if latent else len(outputs[nid]["images"])
            assert len(outputs[nid]["images"]) == batch >= 1, nid
            assert comfy_server.view(outputs[nid]["images"][0])[:4] == b"\x89PNG"
        if node["class_type"] == "DNGTracePlot":
            (plot,) = outputs[nid]["images"]
            assert comfy_server.view(plot)[:4] == b"\x89PNG"
    patches = sorted(nid for nid, node in prompt.items() if node["class_type"] in PATCH_NODES)
    assert patches, "every workflow uses a guidance node"
    assert sorted(m["data"]["node"] for m in starts) == patches
    if spec is not None:
        for nid in patches:
            steps = [e["data"] for e in events if e["data"]["node"] == nid]
            assert [s["step"] for s in steps] == list(range(STEPS)), nid
    _check_semantics(name, prompt, events, comfy_server)


_OBJECT_INFO: dict = {}


def object_info(server) -> dict:
    if not _OBJECT_INFO:
        _OBJECT_INFO.update(server.object_info())
    return _OBJECT_INFO


def _latent_of(prompt: dict, save_id: str) -> str | None:
    """The EmptyLatentImage upstream of a SaveImage (None if there is none)."""
    todo, seen = [save_id], set()
    while todo:
        nid = todo.pop()
        if nid in seen:
            continue
        seen.add(nid)
        if prompt[nid]["class_type"] == "EmptyLatentImage":
            return nid
        todo += [v[0] for v in prompt[nid]["inputs"].values() if isinstance(v, list)]
    return None


def _check_semantics(name, prompt, events, server):
    by_node = {}
    for e in events:
        by_node.setdefault(e["data"]["node"], []).append(e["data"])
    kinds = {nid: prompt[nid]["class_type"] for nid in by_node}
    for nid, steps in by_node.items():
        if kinds[nid] == "DNGNegativePrompting":
            # a constant scale at every step, whatever the image
            assert all(v == pytest.approx(prompt[nid]["inputs"]["scale"]) for s in steps for v in s["scale"][0])
        if kinds[nid] in ("DynamicNegativeGuidance", "DNGGuider"):
            i = prompt[nid]["inputs"]
            assert all(i["p_min"] <= p <= i["p_max"] for s in steps for p in s["p"][0])
            if i.get("stochastic_push", "late") == "full":
                first = i["lambda0"] * i["prior"] / (1 - i["prior"])
                assert steps[0]["scale"][0] == pytest.approx([first] * len(steps[0]["scale"][0]), rel=1e-4)
                continue
            # the late push (the default; every shipped workflow samples with euler_ancestral, on models whose
            # sigma_data is 1): no push above sigma 2, at most 6 x lambda0 p / (1 - p) below (less where it is held
            # within sigma: on the random-weight SD checkpoints everywhere; equality is tested in tests/core and
            # tests/host on cases where it is reached)
            assert steps[0]["sigma"] > 2.0 and any(s["sigma"] <= 2.0 for s in steps)
            assert all(v == 0 for s in steps if s["sigma"] > 2.0 for row in s["scale"] for v in row)
            assert all(v <= LATE_PUSH_GAIN * i["lambda0"] * p / (1 - p) * (1 + 1e-4)
                       for s in steps if s["sigma"] <= 2.0 for v, p in zip(s["scale"][0], s["p"][0]))
    if name == "dng_sdxl":
        assert "model_type EPS" in server.log_text()
        assert "Requested to load SDXL" in server.log_text(), "the tiny SDXL checkpoint was not loaded as SDXL"


def test_registry_metadata_validates(repo_root, tmp_path):
    """``comfy node validate`` (comfy-cli, the registry's own check of pyproject.toml; offline) passes without
    warnings. comfy-cli is a large install that CI does not need: the test runs where ``comfy`` is on PATH or
    $DNG_COMFY_CLI points at it (e.g. python -m venv /tmp/comfycli && /tmp/comfycli/bin/pip install comfy-cli)."""
    import shutil
    import subprocess

    comfy = os.environ.get("DNG_COMFY_CLI") or shutil.which("comfy")
    if not comfy:
        pytest.skip("comfy-cli not installed (set DNG_COMFY_CLI=/path/to/comfy)")
    env = dict(os.environ, XDG_CONFIG_HOME=str(tmp_path), HOME=str(tmp_path))
    r = subprocess.run([comfy, "--skip-prompt", "--no-enable-telemetry", "node", "validate"], cwd=repo_root,
                       env=env, capture_output=True, text=True, timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "passed" in out and "Warning" not in out and "Security warnings" not in out, out
