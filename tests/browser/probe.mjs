// Drives headless Chromium against a running ComfyUI (started by tests/test_browser.py) and prints one JSON
// report on the last line of stdout. Environment:
//   LIKENESS_BASE      http://127.0.0.1:<port>
//   LIKENESS_MODULE    the pack's folder name (its templates are served under /api/workflow_templates/<module>/)
//   LIKENESS_WORKFLOWS comma-separated workflow names to load
//   LIKENESS_RUN       the workflow to queue (its model loaders swapped per LIKENESS_SWAPS, a JSON object)
//   LIKENESS_VUE       "1" for the Vue node renderer ("Nodes 2.0"), else the classic canvas
//   LIKENESS_SHOTS     folder for screenshots
//   LIKENESS_CHROMIUM  the Chromium binary
//   LIKENESS_MIGRATE   optional: a JSON file with a workflow of the leading IP-Adapter pack, loaded and converted
//                      with the menu command "Convert IPAdapter nodes to Likeness"
import { readFileSync } from "node:fs";
import { chromium } from "playwright-core";

const env = process.env;
const BASE = env.LIKENESS_BASE;
const MODULE = env.LIKENESS_MODULE;
const WORKFLOWS = env.LIKENESS_WORKFLOWS.split(",").filter(Boolean);
const RUN = env.LIKENESS_RUN;
const SWAPS = JSON.parse(env.LIKENESS_SWAPS || "{}");
const VUE = env.LIKENESS_VUE === "1";
const mode = VUE ? "vue" : "classic";
const t0 = Date.now();
const report = { mode, workflows: {}, consoleErrors: [], baselineErrors: [], run: null, timings: {} };

const browser = await chromium.launch({
  executablePath: env.LIKENESS_CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1600, height: 1000 } });
  const errors = [];
  page.on("console", (m) => m.type() === "error" && errors.push(m.text()));
  page.on("pageerror", (e) => errors.push(`pageerror: ${e}`));
  page.on("response", (r) => r.status() >= 400 && errors.push(`HTTP ${r.status()} ${r.url()}`));

  await page.goto(BASE, { waitUntil: "domcontentloaded" });
  const types = await page.evaluate(async ({ module, names }) => {
    const all = new Set();
    for (const name of names) {
      const wf = await (await fetch(`/api/workflow_templates/${module}/${name}.json`)).json();
      for (const n of wf.nodes) all.add(n.type);
    }
    return [...all];
  }, { module: MODULE, names: WORKFLOWS });
  // Ready when the app exists and every node type the workflows use is registered (else "missing nodes" races).
  await page.waitForFunction((t) => window.comfyAPI?.app?.app?.graph
    && t.every((x) => window.LiteGraph?.registered_node_types?.[x]), types, { timeout: 120000 });
  await page.waitForTimeout(1500);
  report.timings.ready_s = (Date.now() - t0) / 1000;
  report.frontendVersion = await page.evaluate(() => window.__COMFYUI_FRONTEND_VERSION__ ?? null);
  report.baselineErrors = errors.splice(0);
  report.templates = await page.evaluate(async () => (await (await fetch("/api/workflow_templates")).json()));
  report.extensionLoaded = await page.evaluate(async () => {
    const urls = await (await fetch("/api/extensions")).json();
    return urls.filter((u) => u.includes("likeness"));
  });

  // The pack loaded twice (two folder names, or a frontend that re-imports extensions): the second copy of the
  // module must neither throw nor register a second extension.
  report.doubleLoad = await page.evaluate(async (module) => {
    await import(`/extensions/${module}/js/likeness.js?second-copy=1`);
    const { app } = window.comfyAPI.app;
    return (app.extensions || []).filter((e) => e.name === "likeness.frontend").length;
  }, MODULE);
  report.doubleLoadErrors = errors.splice(0);

  // Node boxes as drawn, in graph units: the graph's own bounds (title bar included; the Vue renderer writes its
  // measured sizes back), and in the Vue renderer also the DOM elements' rectangles mapped back to graph units.
  // The Vue renderer of frontend 1.27 draws (and measures) only nodes in view: then the view pans over the graph
  // and each node keeps the box it had when drawn.
  await page.evaluate(() => {
    window.__likenessBoxes = async () => {
      const app = window.comfyAPI.app.app;
      const ds = app.canvas.ds;
      const canvasRect = app.canvas.canvas.getBoundingClientRect();
      const graph = new Map(), dom = new Map();
      const look = async () => {
        app.canvas.setDirty(true, true);
        await new Promise((r) => setTimeout(r, 600));
        for (const n of app.graph.nodes) {
          const box = Array.from(n.getBounding());
          if (box[2] > 0 && box[3] > 0) graph.set(String(n.id), { id: n.id, type: n.type, box });
        }
        for (const el of document.querySelectorAll("[data-node-id]")) {
          const r = el.getBoundingClientRect();
          if (r.width <= 0 || r.height <= 0) continue;
          const x = (r.left - canvasRect.left) / ds.scale - ds.offset[0];
          const y = (r.top - canvasRect.top) / ds.scale - ds.offset[1];
          dom.set(el.getAttribute("data-node-id"), { id: el.getAttribute("data-node-id"),
                                                      box: [x, y, r.width / ds.scale, r.height / ds.scale] });
        }
      };
      await look();
      const unseen = () => app.graph.nodes.filter((n) => !graph.has(String(n.id)));
      if (unseen().length) {
        const view = [ds.offset[0], ds.offset[1]];
        const w = canvasRect.width / ds.scale, h = canvasRect.height / ds.scale;
        const xs = app.graph.nodes.map((n) => n.pos[0]), ys = app.graph.nodes.map((n) => n.pos[1]);
        for (let y = Math.min(...ys) - 100; y <= Math.max(...ys) && unseen().length; y += h * 0.8) {
          for (let x = Math.min(...xs) - 100; x <= Math.max(...xs) && unseen().length; x += w * 0.8) {
            ds.offset[0] = -x;
            ds.offset[1] = -y;
            await look();
          }
        }
        [ds.offset[0], ds.offset[1]] = view;
        app.canvas.setDirty(true, true);
      }
      const missing = unseen().map((n) => ({ id: n.id, type: n.type, box: [n.pos[0], n.pos[1], 0, 0] }));
      return { graph: [...graph.values(), ...missing], dom: [...dom.values()] };
    };
  });

  for (const name of WORKFLOWS) {
    const result = await page.evaluate(async ({ module, name, vue, check }) => {
      const app = window.comfyAPI.app.app;
      const wf = await (await fetch(`/api/workflow_templates/${module}/${name}.json`)).json();
      await app.loadGraphData(wf, true, true, name);
      if (vue) { // Vue nodes hide non-essential widgets (text, DOM) at 80% zoom and below
        app.canvas.ds.scale = 1;
        app.canvas.setDirty(true, true);
      }
      await new Promise((r) => setTimeout(r, 1200)); // let the extension's requests land
      const nodes = app.graph.nodes.map((n) => {
        const chart = n.widgets?.find((w) => w.name === "likeness_weight_chart")?.element;
        const info = n.widgets?.find((w) => w.name === "likeness_adapter_info")?.element;
        const report = n.widgets?.find((w) => w.name === "likeness_report")?.element;
        return {
          id: n.id, type: n.type, hasErrors: !!n.has_errors,
          registered: !!window.LiteGraph.registered_node_types[n.type],
          chart: chart ? { active: chart.dataset.active ?? null, layout: chart.dataset.layout ?? null,
            text: chart.textContent, shown: !!chart.isConnected && chart.getClientRects().length > 0 } : null,
          info: info ? { family: info.dataset.family ?? null, text: info.textContent,
            shown: !!info.isConnected && info.getClientRects().length > 0 } : null,
          report: report ? { text: report.textContent,
            shown: !!report.isConnected && report.getClientRects().length > 0 } : null,
        };
      });
      // The chart follows the widgets (checked on the RUN workflow): change weight_type and weight, then put them back.
      let follows = null;
      const apply = check && app.graph.nodes.find((n) => n.type === "LikenessApply");
      if (apply) {
        const w = (k) => apply.widgets.find((x) => x.name === k);
        const chart = w("likeness_weight_chart").element;
        const before = [w("weight_type").value, w("weight").value];
        w("weight_type").value = "composition";
        w("weight").value = 0.5;
        await new Promise((r) => setTimeout(r, 1500));
        follows = { active: chart.dataset.active, text: chart.textContent.split("output").pop() };
        // layer_weights replaces the weight type's spread: two transformers, at 0.5 x 1 and 0.5 x 2.
        const layersBefore = w("layer_weights").value;
        w("weight_type").value = "linear";
        w("layer_weights").value = "0:1, 3:2";
        await new Promise((r) => setTimeout(r, 1500));
        follows.layers = { active: chart.dataset.active, text: chart.textContent.split("output").pop() };
        w("layer_weights").value = layersBefore;
        [w("weight_type").value, w("weight").value] = before;
        await new Promise((r) => setTimeout(r, 1000));
      }
      // The identity checks sit at the end of their graphs, off screen: bring one into view to see its report.
      let reportShown = null;
      const checkNode = app.graph.nodes.find((n) => n.widgets?.some((w) => w.name === "likeness_report"));
      if (checkNode) {
        app.canvas.centerOnNode(checkNode);
        app.canvas.setDirty(true, true);
        await new Promise((r) => setTimeout(r, 800));
        const panel = checkNode.widgets.find((w) => w.name === "likeness_report").element;
        reportShown = !!panel.isConnected && panel.getClientRects().length > 0;
      }
      // A panel on a node outside the view is not drawn (large graphs): bring such a node into view and look again.
      for (const [i, n] of app.graph.nodes.entries()) {
        const seen = nodes[i];
        const panels = [seen.chart, seen.info, seen.report].filter((p) => p && !p.shown);
        if (!panels.length) continue;
        app.canvas.centerOnNode(n);
        app.canvas.setDirty(true, true);
        await new Promise((r) => setTimeout(r, 600));
        for (const [key, widget] of [["chart", "likeness_weight_chart"], ["info", "likeness_adapter_info"],
                                     ["report", "likeness_report"]]) {
          const el = n.widgets?.find((w) => w.name === widget)?.element;
          if (seen[key] && el) seen[key].shown = !!el.isConnected && el.getClientRects().length > 0;
        }
      }
      const dialogs = [...document.querySelectorAll("[role=dialog]")].map((d) => d.innerText.slice(0, 300));
      const prompt = (await app.graphToPrompt()).output;
      const boxes = await window.__likenessBoxes();
      return { nodes, dialogs, prompt, saved: app.graph.serialize(), follows, reportShown, boxes };
    }, { module: MODULE, name, vue: VUE, check: name === RUN });
    result.errors = errors.splice(0);
    report.workflows[name] = result;
    await page.screenshot({ path: `${env.LIKENESS_SHOTS}/${mode}-${name}.png` });
    for (const d of result.dialogs) {
      // close dialogs so the next workflow starts clean
      await page.keyboard.press("Escape");
    }
  }
  report.timings.loaded_s = (Date.now() - t0) / 1000;

  if (env.LIKENESS_MIGRATE) {
    const old = JSON.parse(readFileSync(env.LIKENESS_MIGRATE, "utf8"));
    await page.evaluate(async (wf) => {
      await window.comfyAPI.app.app.loadGraphData(wf, true, true, "leading-pack");
    }, old);
    await page.waitForTimeout(800);
    for (let i = 0; i < 3; i++) await page.keyboard.press("Escape"); // the missing-nodes dialog
    report.migrate = await page.evaluate(async () => {
      const { app } = window.comfyAPI.app;
      const ext = (app.extensions || []).find((e) => e.name === "likeness.frontend");
      const command = ext?.commands?.find((c) => c.id === "Likeness.ConvertIPAdapterNodes");
      const menu = ext?.menuCommands?.find((m) => m.commands.includes(command?.id))?.path ?? null;
      if (!command) return { command: null };
      await command.function();
      const nodes = app.graph.nodes.map((n) => ({ id: n.id, type: n.type,
        registered: !!window.LiteGraph.registered_node_types[n.type] }));
      const prompt = (await app.graphToPrompt()).output;
      return { command: command.label, menu, summary: window.__likenessLastMigration ?? null, nodes, prompt,
               boxes: await window.__likenessBoxes() };
    });
    report.migrate.errors = errors.splice(0);
    await page.screenshot({ path: `${env.LIKENESS_SHOTS}/${mode}-migrated.png` });
  }

  if (RUN) {
    report.run = await page.evaluate(async ({ module, name, swaps }) => {
      const { app } = window.comfyAPI.app;
      const { api } = window.comfyAPI.api;
      const wf = await (await fetch(`/api/workflow_templates/${module}/${name}.json`)).json();
      await app.loadGraphData(wf, true, true, name);
      const p = await app.graphToPrompt();
      for (const node of Object.values(p.output)) node.class_type = swaps[node.class_type] ?? node.class_type;
      // The other renderer's probe ran this prompt on the same server: cached nodes send no text again, so empty
      // the server's caches first (the worker wakes for the flag, and is given a moment before the prompt).
      await api.fetchApi("/free", { method: "POST", headers: { "Content-Type": "application/json" },
                                    body: JSON.stringify({ free_memory: true }) });
      await new Promise((r) => setTimeout(r, 1500));
      const done = new Promise((resolve) => {
        let id = null;
        const timer = setTimeout(() => resolve({ status: "timeout" }), 150000);
        const finish = (r) => { clearTimeout(timer); resolve(r); };
        api.addEventListener("execution_success", (e) => (!id || e.detail.prompt_id === id) && finish({ status: "success" }));
        api.addEventListener("execution_error", (e) => finish({ status: "error", detail: e.detail }));
        api.addEventListener("execution_cached", (e) => { window.__likenessCached = e.detail?.nodes ?? null; });
        window.__likenessSetId = (x) => { id = x; };
      });
      let queued;
      try {
        queued = await api.queuePrompt(0, p);
      } catch (e) {
        return { status: "rejected", detail: String(e), nodeErrors: e?.response?.node_errors ?? null };
      }
      window.__likenessSetId(queued.prompt_id);
      const result = await done;
      result.cached = window.__likenessCached ?? null;  // nodes the server did not run (they send no text)
      // ComfyUI stores the history just after it sends execution_success: ask until it is there.
      for (let i = 0; i < 60 && !result.outputs; i++) {
        const history = await (await fetch(`/api/history/${queued.prompt_id}`)).json();
        result.outputs = history[queued.prompt_id]?.outputs ?? null;
        if (!result.outputs) await new Promise((r) => setTimeout(r, 250));
      }
      // Panels are made from the "executed" messages; on a busy machine they may trail the history a little.
      const sentText = Object.entries(result.outputs ?? {}).filter(([, o]) => o?.text).map(([id]) => id);
      const hasPanel = (id) => app.graph.getNodeById(Number(id))?.widgets?.some((w) => w.name === "likeness_report");
      for (let i = 0; i < 40 && !sentText.every(hasPanel); i++) await new Promise((r) => setTimeout(r, 250));
      await new Promise((r) => setTimeout(r, 800));
      result.debug = { nodes: app.graph.nodes.map((n) => `${n.id}:${n.type}:${(n.widgets ?? []).map((w) => w.name).join("|")}`),
        stored: Object.keys(app.nodeOutputs ?? {}) };
      // The text each node sent (V3 ui.PreviewText) as its panel shows it, each node brought into view in turn.
      result.panels = [];
      for (const node of app.graph.nodes) {
        const panel = node.widgets?.find((w) => w.name === "likeness_report")?.element;
        if (!panel) continue;
        app.canvas.ds.scale = 1; // the Vue renderer hides DOM widgets at 80% zoom and below
        app.canvas.centerOnNode(node);
        app.canvas.setDirty(true, true);
        await new Promise((r) => setTimeout(r, 600));
        result.panels.push({ id: String(node.id), type: node.type, text: panel.textContent,
          shown: !!panel.isConnected && panel.getClientRects().length > 0 });
      }
      return result;
    }, { module: MODULE, name: RUN, swaps: SWAPS });
    report.run.errors = errors.splice(0);
    await page.screenshot({ path: `${env.LIKENESS_SHOTS}/${mode}-run-${RUN}.png` });
  }
  report.timings.total_s = (Date.now() - t0) / 1000;
} finally {
  await browser.close();
}
console.log(JSON.stringify(report));
