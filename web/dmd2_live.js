// DMD2 Live panel (ComfyUI frontend 1.27 to 1.48+): edit prompt / seed / strength, the image follows while you type.
// Talks to the pack's routes: POST /dmd2/live/frame -> image + X-DMD2-Timings, GET /dmd2/live/status.
// Queue a workflow with a "DMD2 Live Session" node once so the server knows which model to use.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const DEBOUNCE_MS = 150;

function el(tag, attrs = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "style") node.style.cssText = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function buildPanel(root) {
  const prompt = el("textarea", { id: "dmd2-live-prompt", rows: "4", placeholder: "Type a prompt…",
    style: "width:100%;box-sizing:border-box;resize:vertical;font:inherit" });
  const seed = el("input", { id: "dmd2-live-seed", type: "number", min: "0", value: "0", style: "width:8em" });
  const strength = el("input", { id: "dmd2-live-strength", type: "range", min: "0.05", max: "1", step: "0.05",
    value: "1", title: "1: a fresh image per edit; lower: repaint the last strength-1 frame of this seed" });
  const strengthValue = el("span", {}, ["1.00"]);
  const image = el("img", { id: "dmd2-live-image", alt: "",
    style: "width:100%;image-rendering:auto;background:#111;min-height:64px;margin-top:6px" });
  const stats = el("div", { id: "dmd2-live-stats", style: "font:12px monospace;opacity:.85;margin-top:4px" },
    ["queue a workflow with a DMD2 Live Session node, then type"]);
  root.append(el("div", { id: "dmd2-live-panel", style: "padding:8px;display:flex;flex-direction:column;gap:6px" }, [
    prompt,
    el("label", {}, ["seed ", seed]),
    el("label", {}, ["strength ", strength, " ", strengthValue]),
    image, stats,
  ]));

  let timer = null, latest = 0, shown = 0, controller = null, lastShownAt = 0, fps = 0;

  async function render() {
    const id = ++latest;
    if (controller) controller.abort();  // the server drops or stops the older one too (latest wins there)
    controller = new AbortController();
    const started = performance.now();
    let response;
    try {
      response = await api.fetchApi("/dmd2/live/frame", {
        method: "POST", signal: controller.signal, headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ prompt: prompt.value, seed: Number(seed.value) || 0,
          strength: Number(strength.value), request_id: id }),
      });
    } catch (e) {
      if (e.name !== "AbortError") stats.textContent = `error: ${e}`;
      return;
    }
    if (id !== latest) return;  // an older answer arriving late: ignore it
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      if (!body.superseded) stats.textContent = body.error || `HTTP ${response.status}`;
      return;
    }
    const blob = await response.blob();
    if (id !== latest || id <= shown) return;
    const t = JSON.parse(response.headers.get("X-DMD2-Timings") || "{}");
    const roundTrip = performance.now() - started;
    const url = URL.createObjectURL(blob);
    image.onload = () => URL.revokeObjectURL(url);
    image.src = url;
    shown = id;
    const now = performance.now();
    // frames actually shown per second, smoothed; unknown until a second frame arrives
    if (lastShownAt) fps = fps ? 0.7 * fps + 0.3 * (1000 / (now - lastShownAt)) : 1000 / (now - lastShownAt);
    lastShownAt = now;
    const transfer = Math.max(0, roundTrip - (t.server || 0));
    const f = (v) => (v === undefined ? "-" : v.toFixed(1));
    stats.textContent = `encode ${f(t.encode)} | unet ${f(t.unet)} | decode ${f(t.decode)} | jpeg ${f(t.image)} | ` +
      `wait ${f(t.wait)} | transfer ${f(transfer)} ms | frame ${f(roundTrip)} ms, ` +
      `${(1000 / roundTrip).toFixed(1)} fps (shown ${fps ? fps.toFixed(1) : "-"}/s)`;
    stats.dataset.requestId = String(id);
  }

  function schedule() {
    clearTimeout(timer);
    timer = setTimeout(render, DEBOUNCE_MS);
  }
  prompt.addEventListener("input", schedule);
  seed.addEventListener("input", schedule);
  strength.addEventListener("input", () => { strengthValue.textContent = Number(strength.value).toFixed(2); schedule(); });
}

function floatingPanel() {
  const box = el("div", { id: "dmd2-live-floating", style: "position:fixed;right:12px;bottom:12px;width:320px;" +
    "z-index:1000;background:var(--comfy-menu-bg,#222);color:var(--fg-color,#ddd);border:1px solid #444;" +
    "border-radius:6px" }, [el("div", { style: "padding:4px 8px;font-weight:bold" }, ["DMD2 Live"])]);
  document.body.append(box);
  buildPanel(box);
}

// The sidebar API of this frontend: `extensionManager.sidebarTab.registerSidebarTab` (current), else the deprecated
// `extensionManager.registerSidebarTab` (older frontends), else none (a floating panel instead).
function sidebarRegistrar(manager) {
  if (typeof manager?.sidebarTab?.registerSidebarTab === "function") {
    return ["sidebarTab.registerSidebarTab", (tab) => manager.sidebarTab.registerSidebarTab(tab)];
  }
  if (typeof manager?.registerSidebarTab === "function") {
    return ["registerSidebarTab (deprecated API)", (tab) => manager.registerSidebarTab(tab)];
  }
  return ["none: floating panel", null];
}

app.registerExtension({
  name: "dmd2.live",
  async setup() {
    const [how, register] = sidebarRegistrar(app.extensionManager);
    if (register) {
      register({
        id: "dmd2-live", icon: "pi pi-bolt", title: "DMD2 Live", tooltip: "DMD2 Live: the image follows your prompt",
        type: "custom", render: (container) => { if (!container.querySelector("#dmd2-live-panel")) buildPanel(container); },
      });
    } else {
      floatingPanel();
    }
    console.info(`[DMD2] live panel: ${how}`);
  },
});
