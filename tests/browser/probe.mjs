// Drives headless Chromium against a running ComfyUI (started by tests/test_browser.py) and prints one JSON
// report on the last line of stdout. Environment:
//   LIKENESS_BASE      http://127.0.0.1:<port>
//   LIKENESS_MODULE    the pack's folder name (its templates are served under /api/workflow_templates/<module>/)
//   LIKENESS_WORKFLOWS comma-separated workflow names to load
//   LIKENESS_RUN       the workflow to queue (its model loaders swapped per LIKENESS_SWAPS, a JSON object)
//   LIKENESS_VUE       "1" for the Vue node renderer ("Nodes 2.0"), else the classic canvas
//   LIKENESS_SHOTS     folder for screenshots
//   LIKENESS_CHROMIUM  the Chromium binary
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
      const dialogs = [...document.querySelectorAll("[role=dialog]")].map((d) => d.innerText.slice(0, 300));
      const prompt = (await app.graphToPrompt()).output;
      return { nodes, dialogs, prompt, saved: app.graph.serialize(), follows, reportShown };
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

  if (RUN) {
    report.run = await page.evaluate(async ({ module, name, swaps }) => {
      const { app } = window.comfyAPI.app;
      const { api } = window.comfyAPI.api;
      const wf = await (await fetch(`/api/workflow_templates/${module}/${name}.json`)).json();
      await app.loadGraphData(wf, true, true, name);
      const p = await app.graphToPrompt();
      for (const node of Object.values(p.output)) node.class_type = swaps[node.class_type] ?? node.class_type;
      const done = new Promise((resolve) => {
        let id = null;
        const timer = setTimeout(() => resolve({ status: "timeout" }), 150000);
        const finish = (r) => { clearTimeout(timer); resolve(r); };
        api.addEventListener("execution_success", (e) => (!id || e.detail.prompt_id === id) && finish({ status: "success" }));
        api.addEventListener("execution_error", (e) => finish({ status: "error", detail: e.detail }));
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
