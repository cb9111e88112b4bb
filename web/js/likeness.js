// Likeness frontend extension: pictures where they beat text.
//  * Likeness Apply: a small chart of the weight each cross-attention site gets for the chosen weight_type and
//    weight (and style_boost / composition_boost / layer_weights), from the backend (GET /likeness/weights runs the
//    pack's own formulas), updated as they change. Sites whose sides a precise type swaps are drawn hollow.
//  * Likeness Adapter Loader: the detected variant and the encoder it needs (GET /likeness/adapter_info reads the
//    file's header), before a run; after a run, the loader's own summary (its hover text, and the text panel below).
//  * Every Likeness node that sends text after a run (a V3 `ui.PreviewText`: summaries of what a loader found,
//    what an encode or merge did, the checks' reports) shows it in a scrollable panel. Nodes with a `report`
//    output (Identity Score, Subject Score, Reference Pack, Model Doctor) show the panel from the start.
// All are DOM widgets (addDOMWidget), shown by the classic canvas and by the Vue node renderer ("Nodes 2.0") of
// frontends that render DOM widgets there (after 1.27: Comfy-Org/ComfyUI_frontend#6006). The Vue renderer of 1.27
// shows no DOM widgets, its text widgets never show a value set after a node appears, and its chart widget fails to
// import chart.js, so with that renderer on 1.27 the panels stay hidden; nothing breaks.
//  * Menu Extensions > Likeness > "Convert IPAdapter nodes to Likeness": rewrites the open workflow's nodes of the
//    leading IP-Adapter pack (POST /likeness/migrate, nodes/migrate.py) and shows what changed.
// Only the public `app` and `api` modules are imported. Safe to load twice: it registers once.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

const EXTENSION = "likeness.frontend";
const REGISTERED = Symbol.for("likeness.frontend.registered");
const CHART = "likeness_weight_chart";
const INFO = "likeness_adapter_info";
const POLL_MS = 400;
const LAYOUT_NAMES = { sd15: "SD1.5", sdxl: "SDXL" };
const BLOCK_COLOURS = { input: "#4e9ad6", middle: "#d6a24e", output: "#6cbf72" };

const cache = new Map();

async function getJSON(path) {
  if (!cache.has(path)) {
    cache.set(path, api.fetchApi(path).then(async (r) => {
      const body = await r.json().catch(() => ({ error: `HTTP ${r.status}` }));
      if (!r.ok) cache.delete(path);
      return r.ok ? body : { error: body.error || `HTTP ${r.status}` };
    }).catch((e) => {
      cache.delete(path);
      return { error: String(e) };
    }));
  }
  return cache.get(path);
}

const widgetValue = (node, name) => node.widgets?.find((w) => w.name === name)?.value;

function el(tag, attrs = {}, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function svg(tag, attrs = {}) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  return e;
}

function panel(label) {
  const root = el("div", { class: "likeness-panel", role: "group", "aria-label": label });
  root.style.cssText = "box-sizing:border-box;width:100%;height:100%;padding:4px 6px;overflow:hidden;"
    + "font:11px/1.35 sans-serif;color:var(--descrip-text,var(--fg-color,#ccc));"
    + "background:var(--comfy-input-bg,rgba(0,0,0,.25));border-radius:6px;";
  return root;
}

// A fixed height, or (a function) a minimum height with the node's spare room above it (maxHeight null).
function addPanel(node, name, label, height, maxHeight = height) {
  const existing = node.widgets?.find((w) => w.name === name);
  if (existing) return existing.element;
  const root = panel(label);
  if (typeof node.addDOMWidget !== "function") return root;
  const minHeight = typeof height === "function" ? height : () => height;
  const widget = node.addDOMWidget(name, "likeness_panel", root, {
    serialize: false,
    hideOnZoom: false,
    getMinHeight: minHeight,
    getMaxHeight: () => maxHeight ?? undefined,
  });
  widget.serialize = false; // not a saved value, not a prompt input
  if (typeof height !== "function") widget.computeSize = (width) => [width, height];
  return root;
}

// Follow the `adapter` input back to a Likeness Adapter Loader, to know SD1.5 from SDXL.
function adapterName(node) {
  const slot = node.inputs?.findIndex((i) => i.name === "adapter") ?? -1;
  if (slot < 0) return null;
  const source = node.getInputNode?.(slot);
  return source?.comfyClass === "LikenessAdapterLoader" ? widgetValue(source, "adapter_name") ?? null : null;
}

function drawChart(root, table, note) {
  root.replaceChildren();
  const sites = table.sites;
  const W = 300, H = 56, gap = sites.length > 30 ? 0.5 : 1.5;
  const max = Math.max(1e-6, ...sites.map((s) => Math.abs(s.weight)));
  const zero = sites.some((s) => s.weight < 0) ? H / 2 : H;
  const scale = (zero === H ? H - 2 : H / 2 - 2) / max;
  const bw = W / sites.length;
  const active = sites.filter((s) => Math.abs(s.weight) > 1e-9).length;
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H + 12}`, width: "100%", height: 68, role: "img",
    "aria-label": `${active} of ${sites.length} cross-attention sites active; largest weight ${max.toFixed(2)}` });
  sites.forEach((s, i) => {
    const h = Math.abs(s.weight) * scale;
    const bar = svg("rect", { x: i * bw + gap / 2, width: Math.max(bw - gap, 0.5), y: s.weight >= 0 ? zero - h : zero,
      height: Math.max(h, s.weight === 0 ? 0 : 0.5), fill: BLOCK_COLOURS[s.block] || "#999" });
    if (s.swapped && s.weight !== 0) {
      // precise weight types: this site pushes away from the reference (its sides are swapped)
      bar.setAttribute("fill-opacity", "0.35");
      bar.setAttribute("stroke", BLOCK_COLOURS[s.block] || "#999");
      bar.setAttribute("stroke-dasharray", "2 1");
      bar.setAttribute("stroke-width", "0.6");
    }
    const tip = svg("title");
    tip.textContent = `${s.block} ${s.block_id}` + (sites.length > 16 ? `.${s.index}` : "") + ` (t${s.transformer})`
      + `: ${s.weight.toFixed(3)}` + (s.swapped && s.weight !== 0 ? " · sides swapped (pushes away)" : "");
    bar.appendChild(tip);
    chart.appendChild(bar);
  });
  chart.appendChild(svg("line", { x1: 0, x2: W, y1: zero, y2: zero, stroke: "currentColor", "stroke-opacity": 0.4 }));
  let x = 0;
  for (const block of ["input", "middle", "output"]) {
    const n = sites.filter((s) => s.block === block).length;
    if (!n) continue;
    const label = svg("text", { x: x + (n * bw) / 2, y: H + 10, "text-anchor": "middle", "font-size": 9, fill: "currentColor" });
    label.textContent = block === "middle" ? "mid" : block;
    chart.appendChild(label);
    x += n * bw;
  }
  const swapped = sites.filter((s) => s.swapped && Math.abs(s.weight) > 1e-9).length;
  const kind = table.layer_weights ? `layer weights${table.weight_type.endsWith("precise") ? ` (${table.weight_type})` : ""}` : table.weight_type;
  const caption = el("div", {}, `${LAYOUT_NAMES[table.layout]} · ${kind} · ${active}/${sites.length} sites`
    + (swapped ? ` (${swapped} swapped)` : "") + ` · max ${max.toFixed(2)}${note}`);
  caption.style.cssText = "white-space:nowrap;overflow:hidden;text-overflow:ellipsis;";
  root.append(chart, caption);
  root.dataset.active = String(active);
  root.dataset.layout = table.layout;
}

// PuLID-FLUX has no cross-attention sites to chart: its modules sit between FLUX blocks, all at one weight.
function drawFluxNote(root, info, weight) {
  root.textContent = "";
  const text = el("div", {}, `FLUX · PuLID: ${info.modules} identity modules (after every 2nd double block and ` +
    `every 4th single block), each at weight ${weight.toFixed(2)}; weight_type applies only to SD1.5 / SDXL.`);
  text.style.cssText = "white-space:normal;font-size:11px;opacity:0.85;";
  root.append(text);
  root.dataset.active = String(weight === 0 ? 0 : info.modules);
  root.dataset.layout = "flux";
}

function setupApply(node) {
  const root = addPanel(node, CHART, "Weight per cross-attention site", 108);
  let shown = "", manualLayout = null;
  root.title = "Weight each cross-attention site gets (input blocks, middle, output blocks). Click to switch SD1.5 / SDXL when no adapter loader is connected.";
  root.style.cursor = "pointer";
  root.tabIndex = 0;
  const toggle = () => {
    manualLayout = (root.dataset.layout || "sd15") === "sd15" ? "sdxl" : "sd15";
    shown = "";
    refresh();
  };
  root.addEventListener("click", toggle);
  root.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      toggle();
    }
  });
  async function refresh() {
    const weight = Number(widgetValue(node, "weight") ?? 1), weightType = widgetValue(node, "weight_type") ?? "linear";
    const styleBoost = Number(widgetValue(node, "style_boost") ?? 1);
    const compositionBoost = Number(widgetValue(node, "composition_boost") ?? 0);
    const layerWeights = String(widgetValue(node, "layer_weights") ?? "");
    const name = adapterName(node);
    const key = `${weight}|${weightType}|${styleBoost}|${compositionBoost}|${layerWeights}|${name}|${manualLayout}`;
    if (key === shown) return;
    shown = key;
    let layout = manualLayout || "sd15", note = manualLayout ? "" : " (guessed: connect the adapter loader)";
    if (name) {
      const info = await getJSON(`/likeness/adapter_info?name=${encodeURIComponent(name)}`);
      if (shown !== key) return;
      if (info.layout === "flux") { drawFluxNote(root, info, weight); return; }
      if (info.layout) { layout = info.layout; note = ""; }
    }
    const extra = `&style_boost=${encodeURIComponent(styleBoost)}&composition_boost=${encodeURIComponent(compositionBoost)}`
      + (layerWeights.trim() ? `&layer_weights=${encodeURIComponent(layerWeights)}` : "");
    const table = await getJSON(`/likeness/weights?layout=${layout}&weight=${encodeURIComponent(weight)}&weight_type=${encodeURIComponent(weightType)}${extra}`);
    if (shown !== key) return; // a newer change won
    if (table.error) { root.textContent = table.error; return; }
    drawChart(root, table, note);
  }
  return refresh;
}

function setupLoader(node) {
  const root = addPanel(node, INFO, "Detected adapter", 64);
  let shown = "";
  async function refresh(force) {
    const name = widgetValue(node, "adapter_name");
    if (!name || (name === shown && !force)) return;
    shown = name;
    const info = await getJSON(`/likeness/adapter_info?name=${encodeURIComponent(name)}`);
    if (shown !== name) return;
    showInfo(root, info);
  }
  return refresh;
}

function showInfo(root, info) {
  root.replaceChildren();
  if (info.error) {
    root.append(el("div", {}, info.error));
    root.dataset.line = info.error;
    return;
  }
  const head = `${info.title || "Unlisted adapter"} · ${info.family}` + (info.tokens ? ` · ${info.tokens} tokens` : "");
  const encoder = info.encoder_requirement ? `needs ${info.encoder_requirement}`
    : "needs an identity embedding from a face model (FaceID nodes)" + (info.encoder ? ` and ${info.encoder}` : "");
  const a = el("div", {}, head), b = el("div", {}, encoder);
  root.dataset.line = `${head} · ${encoder}`;
  a.style.fontWeight = "bold";
  root.append(a, b);
  root.title = info.summary || "";
  root.dataset.family = info.family || "";
  root.dataset.layout = info.layout || "";
}

function watch(node, refresh) {
  setTimeout(refresh, 0); // after a loaded workflow has set the saved widget values, not on the defaults
  const timer = setInterval(() => {
    if (!node.graph) return; // removed, or not yet added
    refresh();
  }, POLL_MS);
  const onRemoved = node.onRemoved;
  node.onRemoved = function () {
    clearInterval(timer);
    return onRemoved?.apply(this, arguments);
  };
}

const SETUP = { LikenessApply: setupApply, LikenessAdapterLoader: setupLoader };

// "Convert IPAdapter nodes to Likeness": the open workflow goes to POST /likeness/migrate (nodes/migrate.py does
// the rewrite), the converted graph replaces it, and the summary says what changed and which numbers may differ.
const MIGRATE_COMMAND = "Likeness.ConvertIPAdapterNodes";

function notify(severity, summary, detail) {
  const toast = app.extensionManager?.toast;
  if (toast?.add) toast.add({ severity, summary, detail, life: severity === "error" ? 15000 : 20000 });
  else window.alert(`${summary}\n\n${detail}`);
}

async function convertOpenWorkflow() {
  const workflow = app.graph.serialize();
  let answer;
  try {
    const response = await api.fetchApi("/likeness/migrate", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(workflow),
    });
    answer = await response.json();
    if (!response.ok) throw new Error(answer?.error || `HTTP ${response.status}`);
  } catch (e) {
    notify("error", "Likeness: the workflow was not converted", String(e?.message ?? e));
    return null;
  }
  const summary = answer.summary;
  globalThis.__likenessLastMigration = summary;  // read by the browser test
  if (!summary.converted.length) {
    notify("info", "Likeness: no IPAdapter nodes to convert", summary.text);
    return summary;
  }
  await app.loadGraphData(answer.workflow, true, true, null);
  notify(summary.kept.length ? "warn" : "success", "Likeness: converted IPAdapter nodes", summary.text);
  return summary;
}

// Text a node sends after it runs (V3 `ui.PreviewText`: the `text` of its "executed" message). The frontend shows
// such text only where an extension displays it, so every Likeness node that sends text shows it here: one scrollable
// panel, made when the first text arrives. Nodes whose job is a report (a `report` output: the checks, the reference
// pack, the doctor) have the panel from the start, at a fixed height, saying what will appear there.
const REPORT = "likeness_report";
const REPORT_HEIGHT = 150;
const TEXT_LINE_PX = 15, TEXT_MIN_LINES = 2, TEXT_MAX_LINES = 8, TEXT_CHAR_PX = 6.2, TEXT_PAD_PX = 18;
const TEXT_CLASS = "likeness-text";
// The Vue node renderer sizes a DOM widget by its content (a long report would make the node as tall as the text):
// there the panels keep the heights the canvas gives them, and scroll.
const VUE_TEXT_CSS = `.lg-node .${TEXT_CLASS}{min-height:var(--likeness-text-min);max-height:var(--likeness-text-max)}`;

function reportWaiting(nodeData) {
  const slot = (nodeData?.output_name ?? []).indexOf("report");
  if (slot < 0) return null;
  const what = nodeData.output_tooltips?.[slot];
  return "The report appears here after a run." + (what ? ` ${what}` : "");
}

// Room for the text as the node's width wraps it, between 2 and 8 lines; longer text scrolls (or enlarge the node).
function textHeight(node, text) {
  const perLine = Math.max(20, Math.floor(((node.size?.[0] ?? 300) - 24) / TEXT_CHAR_PX));
  const lines = String(text).split("\n").reduce((n, line) => n + Math.max(1, Math.ceil(line.length / perLine)), 0);
  return Math.min(TEXT_MAX_LINES, Math.max(TEXT_MIN_LINES, lines)) * TEXT_LINE_PX + TEXT_PAD_PX; // padding, margin
}

function textPanel(node, waiting) {
  const existing = node.widgets?.find((w) => w.name === REPORT)?.element;
  if (existing) return existing;
  let root = null;
  root = waiting === null
    ? addPanel(node, REPORT, "Likeness node output", () => textHeight(node, root?.textContent ?? ""), null)
    : addPanel(node, REPORT, "Likeness report", REPORT_HEIGHT);
  root.classList.add(TEXT_CLASS);
  root.style.setProperty("--likeness-text-min", `${waiting === null ? 0 : REPORT_HEIGHT}px`);
  root.style.setProperty("--likeness-text-max",
    `${waiting === null ? TEXT_MAX_LINES * TEXT_LINE_PX + TEXT_PAD_PX : REPORT_HEIGHT}px`);
  root.setAttribute("role", "log");
  root.tabIndex = 0;
  root.style.overflow = "auto";
  root.style.whiteSpace = "pre-wrap";
  root.style.userSelect = "text";
  root.textContent = waiting ?? "";
  return root;
}

// The canvas does not resize a node for a widget added after it was made: grow it (never shrink, never widen, so
// that it keeps clear of its neighbours as far as the text allows).
function fitHeight(node) {
  const min = node.computeSize?.();
  if (min && node.size && min[1] > node.size[1]) node.setSize?.([node.size[0], min[1]]);
  node.setDirtyCanvas?.(true, true);
}

function patchText(nodeType, nodeData) {
  const waiting = reportWaiting(nodeData);
  if (waiting !== null) {
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      textPanel(this, waiting);
      return result;
    };
  }
  const onExecuted = nodeType.prototype.onExecuted;
  nodeType.prototype.onExecuted = function (message) {
    const result = onExecuted?.apply(this, arguments);
    const text = [].concat(message?.text ?? []).join("\n");
    if (text) {
      textPanel(this, waiting).textContent = text;
      fitHeight(this);
    }
    return result;
  };
}

if (!globalThis[REGISTERED]) {
  globalThis[REGISTERED] = true;
  document.head.append(el("style", { id: "likeness-text-style" }, VUE_TEXT_CSS));
  app.registerExtension({
    name: EXTENSION,
    commands: [{ id: MIGRATE_COMMAND, label: "Convert IPAdapter nodes to Likeness", icon: "pi pi-sync",
                 function: convertOpenWorkflow }],
    menuCommands: [{ path: ["Extensions", "Likeness"], commands: [MIGRATE_COMMAND] }],
    // The frontend hands stored outputs back when it rebuilds a graph (a workflow tab reopened, the graph reloaded
    // while a run was finishing): the nodes it made then never saw their "executed" message, so show the text here.
    onNodeOutputsUpdated(outputs) {
      for (const [id, output] of Object.entries(outputs ?? {})) {
        const node = app.graph?.getNodeById?.(Number(id));
        const text = [].concat(output?.text ?? []).join("\n");
        if (!text || !String(node?.type).startsWith("Likeness") || !node.constructor?.prototype?.__likenessText) continue;
        textPanel(node, reportWaiting(node.constructor.nodeData)).textContent = text;
        fitHeight(node);
      }
    },
    async beforeRegisterNodeDef(nodeType, nodeData) {
      if (String(nodeData?.name).startsWith("Likeness") && !nodeType.prototype.__likenessText) {
        nodeType.prototype.__likenessText = true;
        patchText(nodeType, nodeData);
      }
      const setup = SETUP[nodeData?.name];
      if (!setup || nodeType.prototype.__likenessPatched) return;
      nodeType.prototype.__likenessPatched = true;
      const onNodeCreated = nodeType.prototype.onNodeCreated;
      nodeType.prototype.onNodeCreated = function () {
        const result = onNodeCreated?.apply(this, arguments);
        if (!this.__likeness) {
          this.__likeness = setup(this);
          watch(this, this.__likeness);
        }
        return result;
      };
      if (nodeData.name === "LikenessAdapterLoader") {
        const onExecuted = nodeType.prototype.onExecuted;
        nodeType.prototype.onExecuted = function (message) {
          const result = onExecuted?.apply(this, arguments);
          const text = [].concat(message?.text ?? []).join("\n");
          const root = this.widgets?.find((w) => w.name === INFO)?.element;
          if (text && root) root.title = text;
          return result;
        };
      }
    },
  });
}
