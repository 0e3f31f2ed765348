"""The real frontend in headless chromium against the real server: the page loads cleanly with the pack, the
live-curve extension registers, and a workflow queued from the page draws the guidance curve on its node.

Browser: Debian's /usr/bin/chromium driven by playwright (devtools/workflows.py: CHROMIUM_ARGS, a fresh
profile, a new browser context per page). Console errors fail the tests, except the frontend's own messages
listed in devtools/workflows.py (BENIGN_404_PATHS, BENIGN_OFFLINE_HOSTS, BENIGN_ERROR_SIGNATURES), and
each of those only because the same page without the pack shows it too
(test_allowed_console_errors_also_show_without_the_pack loads both and compares):

* "Failed to load resource: 404" for /user.css, /api/userdata/user.css (optional user stylesheet),
  /favicon.ico, /api/userdata?dir=workflows..., /api/userdata?dir=subgraphs... and
  /api/userdata/comfy.templates.json (a new user has none of these);
* "Failed to load resource: net::ERR_NAME_NOT_RESOLVED" for *.comfy.org (the frontend asks the registry about
  comfy-core) and huggingface.co (newer frontends' default workflow checks its model files); this machine is
  offline;
* frontend 1.32.9: "TypeError: Cannot read properties of undefined (reading 'id') at onChange", the start-up race
  in useRenderModeSetting;
* frontend 1.49.6: "ComfyApp graph accessed before initialization" (its setting store reads app.graph early).

Screenshots go to tests/artifacts/ (or $DNG_TEST_ARTIFACTS): live_curve.png (the patch node after a run, zoomed)
and live_curve_page.png (the whole page).
"""

from __future__ import annotations

import io
import itertools
import json

import pytest

from devtools.host import CHECKPOINT_NAME, HOST, PACK_NAME
from devtools.hosts import NEWEST_FRONTEND_VERSION, frontend_static_dir
from devtools.server import ComfyServer, ServerStartError
from devtools.workflows import SD15_CKPT, artifacts_dir, screenshot_nodes, split_console, swap_models

EXTENSION = "dng.live_curve"
CURVE_COLORS = ["#4fc3f7", "#ffb74d", "#81c784", "#e57373"]  # web/dng_live.js COLORS[0:4]



@pytest.fixture(scope="module")
def ui(browser, comfy_server, server_pack_nodes):
    page = browser.open(comfy_server.url)
    page.page.wait_for_load_state("networkidle")
    yield page
    page.close()


def _ids(workflow: dict, node_type: str) -> list[int]:
    return [n["id"] for n in workflow["nodes"] if n["type"] == node_type]


_FRESH_SEEDS = itertools.count(20261124)


def _load_shrunk(ui, name: str, steps: int) -> dict:
    """Open a shipped workflow from the template endpoint with the tiny checkpoint, 64 px latents, ``steps``
    sampler steps and a fresh seed (the server would answer an identical prompt from its cache, without
    sampling), edited in the page like a user would. The seeds are fixed per call order, not random: with
    random weights the two images' curves can coincide for some seeds and hide one colour (a flaky check)."""
    workflow = json.loads(ui.fetch_template(PACK_NAME, name))
    ui.load_workflow(swap_models(workflow, {SD15_CKPT: CHECKPOINT_NAME}), name)
    for nid in _ids(workflow, "EmptyLatentImage"):
        ui.set_widgets(nid, {"width": 64, "height": 64})
    for nid in _ids(workflow, "KSampler"):
        ui.set_widgets(nid, {"steps": steps, "seed": next(_FRESH_SEEDS)})
    return workflow


def _run_from_page(ui, comfy_server, patch_ids: list[int], steps: int) -> dict:
    pid = ui.queue()
    entry = comfy_server.wait(pid, timeout=180)
    assert entry["status"]["status_str"] == "success"
    # the last step event is drawn on the next animation frame
    ui.page.wait_for_function(
        "([ids, n]) => ids.every((id) => window.__DNG_LIVE__?.drawn?.[id]?.steps === n)", arg=[patch_ids, steps],
        timeout=30_000)
    return entry


def _color_pixels(png: bytes, hex_color: str, tol: int = 40) -> int:
    from PIL import Image

    target = tuple(int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
    with Image.open(io.BytesIO(png)) as im:
        px = list(im.convert("RGB").tobytes())
        px = zip(px[0::3], px[1::3], px[2::3])
        return sum(1 for p in px if all(abs(a - b) <= tol for a, b in zip(p, target)))


def test_page_loads_without_console_errors(ui):
    # the frontend this host is tested with (its own pin; scripts/host.env)
    assert ui.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__") == HOST.frontend_version
    # the extension's module was fetched from the pack's web directory
    assert any(status == 200 and url.endswith(f"/extensions/{PACK_NAME}/dng_live.js")
               for status, url in ui.responses), [u for _, u in ui.responses if "/extensions/" in u]
    errors = ui.errors()
    assert not errors, "console errors:\n" + "\n".join(map(str, errors))
    # what was ignored is only the documented frontend noise
    for e in ui.ignored():
        assert "dng" not in e.text.lower() and PACK_NAME not in e.url, e


def _console_errors_of_a_fresh_page(browser, server) -> list:
    page = browser.open(server.url)
    try:
        page.page.wait_for_load_state("networkidle")
        # the default workflow's model-file check (huggingface.co, offline here) comes seconds after the page is
        # idle: measured 0.5 s after idle it had not shown on a page without the pack, 5 s after it had
        page.page.wait_for_timeout(5000)
        return [e for e in page.console if e.kind in ("error", "pageerror")]
    finally:
        page.close()


def test_allowed_console_errors_also_show_without_the_pack(browser, comfy_server, server_pack_nodes):
    """The honest allow-list: every console error the tests let pass on a page with the pack also shows on the
    same page (same host, same frontend) served without the pack."""
    with_pack = _console_errors_of_a_fresh_page(browser, comfy_server)
    with ComfyServer(install_pack=False, checkpoint=False) as bare:
        without = {e.key(bare.url) for e in _console_errors_of_a_fresh_page(browser, bare)}
    errors, allowed = split_console(with_pack, comfy_server.url)
    assert not errors, "console errors:\n" + "\n".join(map(str, errors))
    not_shown_without = [e for e in allowed if e.key(comfy_server.url) not in without]
    assert not not_shown_without, ("allowed console errors that a page without the pack does not show:\n"
                                   + "\n".join(map(str, not_shown_without)))


def test_extension_registers_and_adds_the_curve_widget(ui):
    assert EXTENSION in ui.extension_names()
    info = ui.evaluate(
        """() => ['DynamicNegativeGuidance', 'DNGSampler', 'DNGGuider', 'DNGNegativePrompting',
                  'DNGSafeLatentDiffusion', 'DNGTracePlot'].map((type) => {
             const n = LiteGraph.createNode(type);
             const has = !!n.widgets?.some((w) => w.name === 'dng_live_curve');
             const values = n.serialize().widgets_values ?? [];
             return [type, has, values.some((v) => v === null || typeof v === 'object')];
           })""")
    for node_type, has_widget, serialized_junk in info:
        assert has_widget == (node_type != "DNGTracePlot"), node_type
        assert not serialized_junk, f"{node_type}: the curve widget leaks into widgets_values"


def test_queued_workflow_draws_the_live_curve(ui, comfy_server, rig_timings):
    steps = 10
    workflow = _load_shrunk(ui, "dng_sd15_txt2img", steps)
    (dng,) = _ids(workflow, "DynamicNegativeGuidance")
    (latent,) = _ids(workflow, "EmptyLatentImage")
    batch = next(n for n in workflow["nodes"] if n["id"] == latent)["widgets_values"][2]
    assert batch == 2

    entry = _run_from_page(ui, comfy_server, [dng], steps)
    live = ui.evaluate("() => window.__DNG_LIVE__")
    run = live["runs"][str(dng)]
    assert run["method"] == "dng" and run["total_steps"] == steps
    assert [s["step"] for s in run["steps"]] == list(range(steps))
    assert all(len(s["scale"][0]) == batch and len(s["p"][0]) == batch for s in run["steps"])
    drawn = live["drawn"][str(dng)]
    assert drawn["steps"] == steps
    assert drawn["lines"] == batch * 2  # lambda_t and p_t, one line per image
    assert drawn["points"] == batch * 2 * steps
    assert drawn["lastScale"] == pytest.approx([s for s in run["steps"][-1]["scale"][0]], rel=1e-6)
    # euler_ancestral with the late push (the default): the steps above sigma 2 are shaded on the lambda panel
    assert run["push_cut"] == 2.0
    above = [s["step"] for s in run["steps"] if s["sigma"] > 2.0]
    assert 0 < len(above) < steps and drawn["cutSteps"] == len(above)
    assert live["warnings"] == []

    # the trace plot's preview reached the page too
    (plot,) = _ids(workflow, "DNGTracePlot")
    assert entry["outputs"][str(plot)]["images"]
    ui.page.wait_for_function("(id) => app.nodeOutputs?.[String(id)]?.images?.length > 0", arg=plot, timeout=10_000)

    # what a user sees: the curve on the node (pixels of the first two line colours inside the node)
    (artifacts_dir() / "live_curve_page.png").write_bytes(ui.page.screenshot(type="png"))
    png = screenshot_nodes(ui, [dng], scale=1.6)
    (artifacts_dir() / "live_curve.png").write_bytes(png)
    for color in CURVE_COLORS[:batch]:
        assert _color_pixels(png, color) > 30, f"no {color} line drawn on the node"
    assert not ui.errors(), "console errors:\n" + "\n".join(map(str, ui.errors()))


def test_each_guidance_node_draws_its_own_curve(ui, comfy_server):
    """The comparison workflow: NP, SLD and DNG patch nodes each get their own run; NP/SLD draw only the scale,
    DNG also p_t."""
    steps = 4
    workflow = _load_shrunk(ui, "dng_compare_methods", steps)
    nodes = {t: _ids(workflow, t)[0] for t in ("DNGNegativePrompting", "DNGSafeLatentDiffusion",
                                               "DynamicNegativeGuidance")}
    _run_from_page(ui, comfy_server, list(nodes.values()), steps)
    live = ui.evaluate("() => window.__DNG_LIVE__")
    methods = {t: live["runs"][str(i)]["method"] for t, i in nodes.items()}
    assert methods["DynamicNegativeGuidance"] == "dng"
    assert len(set(methods.values())) == 3, methods
    for t, i in nodes.items():
        drawn = live["drawn"][str(i)]
        assert drawn["steps"] == steps, t
        assert drawn["lines"] == (2 if t == "DynamicNegativeGuidance" else 1), t
    assert not ui.errors(), "console errors:\n" + "\n".join(map(str, ui.errors()))


def _draw_curve_in_renderer(page, server, vue: bool, steps: int = 6) -> None:
    workflow = _load_shrunk(page, "dng_sd15_txt2img", steps)
    (dng,) = _ids(workflow, "DynamicNegativeGuidance")
    _run_from_page(page, server, [dng], steps)
    drawn = page.evaluate("(id) => window.__DNG_LIVE__.drawn[id]", dng)
    assert drawn["lines"] == 4 and drawn["points"] == 4 * steps
    if vue:
        png = page.page.locator(f'[data-node-id="{dng}"]').screenshot(type="png")
    else:
        png = screenshot_nodes(page, [dng], scale=1.6)
    return png


def test_live_curve_with_nodes_2_0(browser, comfy_server, server_pack_nodes):
    """With the frontend's Vue node renderer ("Nodes 2.0") the curve widget is painted on a canvas of its
    own, repainted only when the widget asks for it (web/dng_live.js calls triggerDraw)."""
    page = browser.open(comfy_server.url, settings={"Comfy.VueNodes.Enabled": True})
    try:
        png = _draw_curve_in_renderer(page, comfy_server, vue=True)
        (artifacts_dir() / "live_curve_nodes_2_0.png").write_bytes(png)
        assert _color_pixels(png, CURVE_COLORS[1]) > 30, "no curve drawn on the Vue node"
        assert not page.errors(), "console errors:\n" + "\n".join(map(str, page.errors()))
    finally:
        page.close()


_SUBGRAPH_JS = """(id) => {
  const g = app.rootGraph ?? app.graph;
  const res = g.convertToSubgraph(new Set([g.getNodeById(id)]));
  const sg = res?.node ?? g.nodes.find((n) => n.subgraph);
  const inner = sg.subgraph.nodes.find((n) => n.type === 'DynamicNegativeGuidance');
  // a root-graph node of the same type whose id is the inner node's: resolving "outer:inner" by its last part
  // alone would draw on it
  const decoy = LiteGraph.createNode('DynamicNegativeGuidance');
  decoy.id = inner.id;
  g.add(decoy);
  app.canvas.setDirty(true, true);
  return { subgraph: sg.id, inner: inner.id, decoy: decoy.id };
}"""


@pytest.mark.parametrize("renderer", ["classic", "nodes_2_0"])
def test_live_curve_of_a_node_inside_a_subgraph(browser, comfy_server, server_pack_nodes, renderer):
    """A DNG node converted into a subgraph: its events arrive as "<subgraph node>:<inner node>", and the curve
    goes to the inner node, not to a root node that happens to share the inner id."""
    page = browser.open(comfy_server.url, settings={"Comfy.VueNodes.Enabled": renderer == "nodes_2_0"})
    try:
        steps = 4
        workflow = _load_shrunk(page, "dng_sd15_txt2img", steps)
        (dng,) = _ids(workflow, "DynamicNegativeGuidance")
        ids = page.evaluate(_SUBGRAPH_JS, dng)
        assert ids["decoy"] == ids["inner"], ids
        exec_id = f"{ids['subgraph']}:{ids['inner']}"
        _run_from_page(page, comfy_server, [exec_id], steps)
        state = page.evaluate(
            """([sg, inner, decoy, execId]) => {
                 const g = app.rootGraph ?? app.graph;
                 const node = g.getNodeById(sg).subgraph.getNodeById(inner);
                 const root = g.getNodeById(decoy);
                 return { inner: node.__dngExecId ?? null, innerSteps: node.__dngRun?.steps.length ?? 0,
                          decoy: root.__dngRun ? root.__dngRun.steps.length : null,
                          runs: Object.keys(window.__DNG_LIVE__.runs) };
               }""", [ids["subgraph"], ids["inner"], ids["decoy"], exec_id])
        assert state["inner"] == exec_id and state["innerSteps"] == steps, state
        assert state["decoy"] is None, "the root node with the inner node's id got the subgraph's curve"
        assert exec_id in state["runs"]
        assert not page.errors(), "console errors:\n" + "\n".join(map(str, page.errors()))
    finally:
        page.close()


def test_the_page_keeps_a_bounded_number_of_runs(ui):
    """Runs of nodes the page no longer shows are dropped, oldest first (web/dng_live.js: MAX_RUNS)."""
    kept = ui.evaluate(
        """() => {
             const events = [];
             for (let i = 0; i < 200; i++) {
               app.api.dispatchEvent(new CustomEvent('dng.run_start', { detail: {
                 node: `9${i}:1`, method: 'dng', total_steps: 1, steps: [] } }));
             }
             const live = window.__DNG_LIVE__;
             return { runs: Object.keys(live.runs).length, order: live.order.length,
                      newest: live.order[live.order.length - 1] };
           }""")
    assert kept["runs"] == kept["order"] == 64 and kept["newest"] == "9199:1", kept


@pytest.fixture(scope="module")
def newest_frontend_server(comfy_server, server_pack_nodes):
    """The main host with the newest frontend (scripts/host.env: NEWEST_FRONTEND_VERSION) instead of its pin."""
    if HOST.role != "main":
        pytest.skip(f"the newest frontend is tested on the main host (this run: {HOST.role} {HOST.version})")
    srv = ComfyServer(front_end_root=frontend_static_dir(NEWEST_FRONTEND_VERSION))
    try:
        srv.start()
    except ServerStartError as e:
        pytest.fail(str(e), pytrace=False)
    yield srv
    srv.stop()


@pytest.mark.parametrize("renderer", ["classic", "nodes_2_0"])
def test_live_curve_on_the_newest_frontend(browser, newest_frontend_server, renderer):
    """The live curve in both renderers of the newest frontend, with no console errors beyond the frontend's own
    (the allowed ones checked against a page of the same frontend without the pack)."""
    srv = newest_frontend_server
    vue = renderer == "nodes_2_0"
    page = browser.open(srv.url, settings={"Comfy.VueNodes.Enabled": vue})
    try:
        version = page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__ ?? null")
        assert version == NEWEST_FRONTEND_VERSION, version
        png = _draw_curve_in_renderer(page, srv, vue=vue)
        (artifacts_dir() / f"live_curve_{NEWEST_FRONTEND_VERSION}_{renderer}.png").write_bytes(png)
        # both images' lines are drawn (drawn["lines"] == 4 above); with random weights their curves may
        # coincide, so the pixels are counted over both colours
        assert sum(_color_pixels(png, c) for c in CURVE_COLORS[:2]) > 30, f"no curve drawn on the node ({renderer})"
        errors, allowed = split_console(page.console, srv.url)
        assert not errors, "console errors:\n" + "\n".join(map(str, errors))
    finally:
        page.close()
    if allowed:
        with ComfyServer(install_pack=False, checkpoint=False, front_end_root=srv.front_end_root) as bare:
            without = {e.key(bare.url) for e in _console_errors_of_a_fresh_page(browser, bare)}
        missing = [e for e in allowed if e.key(srv.url) not in without]
        assert not missing, "allowed errors not shown without the pack:\n" + "\n".join(map(str, missing))


def test_live_curve_of_several_concepts(ui, comfy_server):
    """The three-concept reference workflow: one line per concept and image in each panel, a legend with the
    concepts' labels, and a hollow marker for every pruned (concept, image, step) the trace reports."""
    steps, batch = 12, 3
    workflow = json.loads(ui.fetch_template(PACK_NAME, "dng_reference_concepts"))
    ui.load_workflow(workflow, "dng_reference_concepts")
    for nid in _ids(workflow, "DNGEmptyDigitLatent"):
        ui.set_widgets(nid, {"batch_size": batch})
    for nid in _ids(workflow, "KSampler"):
        ui.set_widgets(nid, {"steps": steps, "seed": next(_FRESH_SEEDS)})
    (dng,) = _ids(workflow, "DynamicNegativeGuidance")
    _run_from_page(ui, comfy_server, [dng], steps)
    live = ui.evaluate("() => window.__DNG_LIVE__")
    drawn, run = live["drawn"][str(dng)], live["runs"][str(dng)]
    assert run["concepts"] == 3
    assert drawn["labels"] == ["negative prompt", "digit 3", "digit 5"]
    assert drawn["lines"] == 2 * 3 * batch  # lambda_t and p_t, one line per concept and image
    pruned_points = sum(batch for rec in run["steps"] for wanted in (rec.get("predicted") or []) if wanted is False)
    assert drawn["pruned"] == 2 * pruned_points
    assert not ui.errors(), "console errors:\n" + "\n".join(map(str, ui.errors()))
