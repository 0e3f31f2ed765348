// Live guidance curve for the Dynamic Negative Guidance pack.
// The server sends one "dng.step" event per sampler step (to the client that queued the prompt) and a
// "dng.run_start" event when a sampling pass begins; this extension draws lambda_t (and p_t for DNG) on the
// node that made the guidance patch, one line per batch element (and per concept, coloured by concept and
// labelled, when a DNG node has several), cleared when a new run starts (a pass that continues a split schedule
// brings the earlier steps along). Steps at which a concept was pruned (not predicted: its p frozen, its scale 0)
// are drawn as hollow grey squares. "dng.warning" events become toasts.
//
// Events name nodes by execution id: "12" for a node of the root graph, "5:12" for node 12 inside the subgraph
// node 5 (and so on, one id per level). The curve is a DOM widget (a <canvas> element), which both the classic
// canvas and the Vue node renderer ("Nodes 2.0") show.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const NODE_TYPES = new Set([
  "DynamicNegativeGuidance", "DNGSampler", "DNGGuider", "DNGNegativePrompting", "DNGSafeLatentDiffusion",
]);
const WIDGET = "dng_live_curve";
const COLORS = ["#4fc3f7", "#ffb74d", "#81c784", "#e57373", "#ba68c8", "#fff176", "#4db6ac", "#f06292"];
const PLOT_HEIGHT = 130;
const MAX_RUNS = 64; // runs kept in the page, oldest dropped (one per guidance node and prompt)
const MAX_WARNINGS = 50;

// Exposed for debugging and the browser tests: the runs received (by execution id), what was last drawn (by
// execution id) and the warnings shown.
const live = (window.__DNG_LIVE__ = window.__DNG_LIVE__ || { runs: {}, order: [], drawn: {}, warnings: [] });

function rootGraph() {
  return app.rootGraph ?? app.graph;
}

// The node an execution id names, walking down through subgraph nodes; null when it is not in the open workflow.
function resolveExecutionId(id) {
  if (id === null || id === undefined) return null;
  let graph = rootGraph();
  const parts = String(id).split(":");
  for (let i = 0; i < parts.length; i++) {
    const node = graph?.getNodeById?.(Number(parts[i])) ?? graph?.getNodeById?.(parts[i]) ?? null;
    if (!node || i === parts.length - 1) return node;
    graph = node.subgraph; // a subgraph node holds the graph its inner ids refer to
  }
  return null;
}

function remember(id, run) {
  const key = String(id);
  if (key in live.runs) live.order.splice(live.order.indexOf(key), 1);
  live.runs[key] = run;
  live.order.push(key);
  while (live.order.length > MAX_RUNS) {
    const old = live.order.shift();
    delete live.runs[old];
    delete live.drawn[old];
  }
}

function series(run, key) {
  // run.steps[i][key]: [concepts][batch] -> list of lines, each a list of [step, value, pruned], with the
  // concept index of each line in lines.concept
  const lines = [];
  lines.concept = [];
  run.steps.forEach((rec) => {
    const rows = rec[key];
    if (!rows) return;
    let n = 0;
    rows.forEach((row, k) => row.forEach((v) => {
      const pruned = rec.predicted ? rec.predicted[k] === false : false;
      (lines[n] = lines[n] || []).push([rec.step, v, pruned]);
      lines.concept[n] = k;
      n += 1;
    }));
  });
  return lines;
}

function lineColor(lines, i, concepts) {
  // several concepts: one colour per concept (its images share it); one concept: one colour per image
  return COLORS[(concepts > 1 ? lines.concept[i] : i) % COLORS.length];
}

function drawPanel(ctx, lines, x, y, w, h, label, maxStep, concepts, cutSteps = []) {
  ctx.save();
  ctx.fillStyle = "rgba(0,0,0,0.35)";
  ctx.fillRect(x, y, w, h);
  ctx.strokeStyle = "rgba(255,255,255,0.25)";
  ctx.strokeRect(x, y, w, h);
  if (cutSteps.length) {
    // the late push (stochastic_push / deterministic_push 'late'): no push at these steps, so lambda is 0 there by the setting
    const step = (w - 8) / Math.max(1, maxStep);
    const x0 = x + 4 + step * (Math.min(...cutSteps) - 0.5);
    const x1 = x + 4 + step * (Math.max(...cutSteps) + 0.5);
    ctx.fillStyle = "rgba(120,150,190,0.25)";
    ctx.fillRect(Math.max(x, x0), y, Math.min(x + w, x1) - Math.max(x, x0), h);
    ctx.fillStyle = "#aab";
    ctx.font = "9px sans-serif";
    ctx.fillText("no push above sigma 2 s", x + 4, y + 23);
  }
  let vmax = 0;
  lines.forEach((l) => l.forEach(([, v]) => { if (Number.isFinite(v)) vmax = Math.max(vmax, v); }));
  vmax = vmax > 0 ? vmax : 1;
  ctx.fillStyle = "#ddd";
  ctx.font = "10px sans-serif";
  ctx.fillText(`${label}  max ${vmax.toPrecision(3)}`, x + 4, y + 11);
  const sx = (s) => x + 4 + ((w - 8) * s) / Math.max(1, maxStep);
  const sy = (v) => y + h - 3 - ((h - 18) * Math.min(v, vmax)) / vmax;
  let points = 0;
  let pruned = 0;
  lines.forEach((line, i) => {
    ctx.strokeStyle = lineColor(lines, i, concepts);
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    line.forEach(([s, v], j) => {
      const px = sx(s), py = sy(Number.isFinite(v) ? v : 0);
      if (j === 0) ctx.moveTo(px, py); else ctx.lineTo(px, py);
      points += 1;
    });
    ctx.stroke();
    ctx.strokeStyle = "#888";
    ctx.lineWidth = 1;
    line.forEach(([s, v, isPruned]) => {
      if (!isPruned) return;
      ctx.strokeRect(sx(s) - 2.5, sy(Number.isFinite(v) ? v : 0) - 2.5, 5, 5);
      pruned += 1;
    });
  });
  ctx.restore();
  return { points, pruned };
}

function drawLegend(ctx, labels, x, y) {
  // one entry per concept, in its colour
  ctx.save();
  ctx.font = "10px sans-serif";
  let cx = x;
  labels.forEach((text, k) => {
    ctx.fillStyle = COLORS[k % COLORS.length];
    ctx.fillRect(cx, y - 7, 8, 8);
    ctx.fillStyle = "#ddd";
    ctx.fillText(text, cx + 11, y);
    cx += 16 + ctx.measureText(text).width;
  });
  ctx.restore();
}

function paint(node) {
  const canvas = node.__dngCanvas;
  if (!canvas) return;
  // layout size (CSS pixels, before the graph's zoom transform); a hidden widget has none: use the node's
  const width = Math.max(60, canvas.clientWidth || node.size[0] - 20);
  const height = Math.max(40, canvas.clientHeight || PLOT_HEIGHT);
  const dpr = window.devicePixelRatio || 1;
  if (canvas.width !== Math.round(width * dpr) || canvas.height !== Math.round(height * dpr)) {
    canvas.width = Math.round(width * dpr);
    canvas.height = Math.round(height * dpr);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, width, height);
  const run = node.__dngRun;
  if (!run || run.steps.length === 0) {
    ctx.fillStyle = "#888";
    ctx.font = "11px sans-serif";
    ctx.fillText("guidance curve appears here while sampling", 4, 20);
    return;
  }
  const maxStep = Math.max(run.total_steps ? run.total_steps - 1 : 0, ...run.steps.map((r) => r.step));
  const scale = series(run, "scale");
  const p = series(run, "p");
  const concepts = run.concepts || 1;
  const labels = concepts > 1 ? (run.concept_labels || []).slice(0, concepts) : [];
  const hasP = p.length > 0;
  const legend = labels.length ? 12 : 0;
  const h = hasP ? (height - 8 - legend) / 2 : height - 4 - legend;
  // steps above the late push's cut (the run's push_cut_model_sigma, in the sampler's own sigma)
  const cutSteps = run.push_cut == null ? [] : run.steps.filter((r) => r.sigma > run.push_cut).map((r) => r.step);
  const a = drawPanel(ctx, scale, 1, 1, width - 2, h, run.method === "dng" ? "lambda_t" : "scale", maxStep, concepts,
                      cutSteps);
  const b = hasP ? drawPanel(ctx, p, 1, 5 + h, width - 2, h, "p_t", maxStep, concepts) : { points: 0, pruned: 0 };
  if (labels.length) drawLegend(ctx, labels, 4, height - 3);
  live.drawn[node.__dngExecId ?? String(node.id)] = {
    lines: scale.length + p.length, points: a.points + b.points, pruned: a.pruned + b.pruned, labels,
    steps: run.steps.length, lastScale: scale.map((l) => l[l.length - 1][1]), cutSteps: cutSteps.length,
  };
}

function ensureWidget(node) {
  if (node.widgets?.some((w) => w.name === WIDGET)) return;
  const canvas = document.createElement("canvas");
  canvas.className = "dng-live-curve";
  Object.assign(canvas.style, { width: "100%", height: `${PLOT_HEIGHT}px`, display: "block" });
  const widget = node.addDOMWidget(WIDGET, WIDGET, canvas, {
    serialize: false,
    hideOnZoom: false,
    getMinHeight: () => PLOT_HEIGHT,
    getMaxHeight: () => PLOT_HEIGHT,
  });
  widget.serialize = false; // not part of the workflow's widgets_values
  node.__dngCanvas = canvas;
  if (typeof ResizeObserver !== "undefined") new ResizeObserver(() => paint(node)).observe(canvas);
  const size = node.computeSize();
  node.setSize([Math.max(node.size[0], size[0]), Math.max(node.size[1], size[1])]);
  paint(node);
}

function show(id, run) {
  const node = resolveExecutionId(id);
  if (!node || !NODE_TYPES.has(node.comfyClass ?? node.type)) return;
  node.__dngRun = run;
  node.__dngExecId = String(id);
  ensureWidget(node);
  paint(node);
  node.setDirtyCanvas?.(true, true);
}

app.registerExtension({
  name: "dng.live_curve",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!NODE_TYPES.has(nodeData.name)) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const r = onNodeCreated?.apply(this, arguments);
      ensureWidget(this);
      return r;
    };
  },
  setup() {
    api.addEventListener("dng.run_start", ({ detail }) => {
      const run = { method: detail.method, total_steps: detail.total_steps, steps: [...(detail.steps ?? [])],
                    concepts: detail.concepts, concept_labels: detail.concept_labels,
                    push_cut: detail.push_cut_model_sigma ?? null };
      remember(detail.node, run);
      show(detail.node, run);
    });
    api.addEventListener("dng.step", ({ detail }) => {
      let run = live.runs[String(detail.node)];
      if (!run) {
        run = { method: detail.method, total_steps: detail.total_steps, steps: [] };
        remember(detail.node, run);
      }
      run.steps.push({ step: detail.step, sigma: detail.sigma, scale: detail.scale, p: detail.p,
                       predicted: detail.predicted });
      show(detail.node, run);
    });
    api.addEventListener("dng.warning", ({ detail }) => {
      live.warnings.push(detail.message);
      if (live.warnings.length > MAX_WARNINGS) live.warnings.shift();
      const toast = app.extensionManager?.toast;
      if (toast?.add) toast.add({ severity: "warn", summary: "Dynamic Negative Guidance", detail: detail.message, life: 10000 });
      else console.warn("[DNG]", detail.message);
    });
  },
});
