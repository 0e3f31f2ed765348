// Live guidance curve for the Dynamic Negative Guidance pack.
// The server sends one "dng.step" event per sampler step (to the client that queued the prompt) and a
// "dng.run_start" event when a sampling run begins; this extension draws lambda_t (and p_t for DNG) on the
// node that made the guidance patch, one line per batch element, cleared when a new run starts.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const NODE_TYPES = new Set([
  "DynamicNegativeGuidance", "DNGSampler", "DNGGuider", "DNGNegativePrompting", "DNGSafeLatentDiffusion",
]);
const COLORS = ["#4fc3f7", "#ffb74d", "#81c784", "#e57373", "#ba68c8", "#fff176", "#4db6ac", "#f06292"];
const PLOT_HEIGHT = 130;

// Exposed for debugging and the browser tests: the data each node has received and what was last drawn.
const live = (window.__DNG_LIVE__ = window.__DNG_LIVE__ || { runs: {}, drawn: {}, warnings: [] });

function findNode(id) {
  const graph = app.graph;
  if (!graph || id === null || id === undefined) return null;
  const key = String(id).split(":").pop(); // nodes inside subgraphs arrive as "outer:inner"
  return graph.getNodeById(Number(key)) ?? graph.getNodeById(key) ?? null;
}

function series(run, key) {
  // run[key]: list over steps of [concepts][batch] -> list of lines, each a list of [step, value]
  const lines = [];
  run.steps.forEach((rec, i) => {
    const rows = rec[key];
    if (!rows) return;
    let n = 0;
    rows.forEach((row) => row.forEach((v) => {
      (lines[n] = lines[n] || []).push([rec.step, v]);
      n += 1;
    }));
  });
  return lines;
}

function drawPanel(ctx, lines, x, y, w, h, label, maxStep) {
  ctx.save();
  ctx.fillStyle = "rgba(0,0,0,0.35)";
  ctx.fillRect(x, y, w, h);
  ctx.strokeStyle = "rgba(255,255,255,0.25)";
  ctx.strokeRect(x, y, w, h);
  let vmax = 0;
  lines.forEach((l) => l.forEach(([, v]) => { if (Number.isFinite(v)) vmax = Math.max(vmax, v); }));
  vmax = vmax > 0 ? vmax : 1;
  ctx.fillStyle = "#ddd";
  ctx.font = "10px sans-serif";
  ctx.fillText(`${label}  max ${vmax.toPrecision(3)}`, x + 4, y + 11);
  const sx = (s) => x + 4 + ((w - 8) * s) / Math.max(1, maxStep);
  const sy = (v) => y + h - 3 - ((h - 18) * Math.min(v, vmax)) / vmax;
  let points = 0;
  lines.forEach((line, i) => {
    ctx.strokeStyle = COLORS[i % COLORS.length];
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    line.forEach(([s, v], j) => {
      const px = sx(s), py = sy(Number.isFinite(v) ? v : 0);
      if (j === 0) ctx.moveTo(px, py); else ctx.lineTo(px, py);
      points += 1;
    });
    ctx.stroke();
  });
  ctx.restore();
  return points;
}

function curveWidget(node) {
  return {
    name: "dng_live_curve",
    type: "dng_live_curve",
    value: null,
    options: { serialize: false },
    serialize: false,
    computeSize(width) { return [width, PLOT_HEIGHT]; },
    draw(ctx, node, width, y) {
      const run = node.__dngRun;
      const x = 10, w = width - 20;
      if (!run || run.steps.length === 0) {
        ctx.save();
        ctx.fillStyle = "#888";
        ctx.font = "11px sans-serif";
        ctx.fillText("guidance curve appears here while sampling", x, y + 20);
        ctx.restore();
        return;
      }
      const maxStep = Math.max(run.total_steps ? run.total_steps - 1 : 0, ...run.steps.map((r) => r.step));
      const scale = series(run, "scale");
      const p = series(run, "p");
      const hasP = p.length > 0;
      const h = hasP ? (PLOT_HEIGHT - 12) / 2 : PLOT_HEIGHT - 8;
      let points = drawPanel(ctx, scale, x, y + 2, w, h, run.method === "dng" ? "lambda_t" : "scale", maxStep);
      if (hasP) points += drawPanel(ctx, p, x, y + 6 + h, w, h, "p_t", maxStep);
      live.drawn[node.id] = { lines: scale.length + p.length, points, steps: run.steps.length,
                              lastScale: scale.map((l) => l[l.length - 1][1]) };
    },
  };
}

function redraw(node) {
  node.setDirtyCanvas(true, true);
  // Nodes 2.0 (Vue nodes) draws canvas widgets on a canvas of their own, repainted only on triggerDraw()
  node.widgets?.find((w) => w.name === "dng_live_curve")?.triggerDraw?.();
}

function ensureWidget(node) {
  if (!node.widgets?.some((w) => w.name === "dng_live_curve")) {
    node.addCustomWidget(curveWidget(node));
    const size = node.computeSize();
    node.setSize([Math.max(node.size[0], size[0]), Math.max(node.size[1], size[1])]);
  }
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
      const run = { method: detail.method, total_steps: detail.total_steps, steps: [] };
      live.runs[detail.node] = run;
      const node = findNode(detail.node);
      if (node) { node.__dngRun = run; ensureWidget(node); redraw(node); }
    });
    api.addEventListener("dng.step", ({ detail }) => {
      const run = (live.runs[detail.node] = live.runs[detail.node] ||
        { method: detail.method, total_steps: detail.total_steps, steps: [] });
      run.steps.push({ step: detail.step, sigma: detail.sigma, scale: detail.scale, p: detail.p });
      const node = findNode(detail.node);
      if (node) { node.__dngRun = run; redraw(node); }
    });
    api.addEventListener("dng.warning", ({ detail }) => {
      live.warnings.push(detail.message);
      const toast = app.extensionManager?.toast;
      if (toast?.add) toast.add({ severity: "warn", summary: "Dynamic Negative Guidance", detail: detail.message, life: 10000 });
      else console.warn("[DNG]", detail.message);
    });
  },
});
