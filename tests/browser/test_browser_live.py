"""The pack in a real ComfyUI frontend (comfyui-frontend-package) driven by headless Chromium: node search, an
example workflow run to an image, and the DMD2 Live panel showing a frame after a prompt edit. Screenshots go to
the artefacts folder ($DMD2_TEST_ARTEFACTS or a printed temporary folder)."""

from __future__ import annotations

import json
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = "dmd2_sdxl_4step_unet"
WIDGETS = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")


def to_api(workflow: dict, info: dict) -> dict:
    """The API-format prompt of a UI-format workflow: links become [node, slot], widget values get their names."""
    links = {link[0]: link for link in workflow["links"]}
    api = {}
    for node in workflow["nodes"]:
        spec, names = info[node["type"]]["input"], []
        for group in ("required", "optional"):
            for name, (kind, *options) in spec.get(group, {}).items():
                if isinstance(kind, list) or kind in WIDGETS:
                    names.append(name)
                    if options and options[0].get("control_after_generate"):
                        names.append(None)  # the "randomize / fixed" widget: a UI control, not an input
        inputs = {n: v for n, v in zip(names, node.get("widgets_values", [])) if n}
        for socket in node.get("inputs", []):
            if socket.get("link") is not None:
                _, source, slot, *_ = links[socket["link"]]
                inputs[socket["name"]] = [str(source), slot]
        api[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return api


def with_random_models(api: dict) -> dict:
    """The example on the e2e random SD1.5 models at 64x64, plus a DMD2 Live Session on the same model."""
    ckpt = next(k for k, n in api.items() if n["class_type"] == "CheckpointLoaderSimple")
    unet = next(k for k, n in api.items() if n["class_type"] == "DMD2UNetLoader")
    del api[ckpt]
    api["clip"] = {"class_type": "CLIPLoader", "inputs": {"clip_name": "e2e_clip_l.safetensors",
                                                          "type": "stable_diffusion"}}
    api["vae"] = {"class_type": "VAELoader", "inputs": {"vae_name": "e2e_sd_vae.safetensors"}}
    for node in api.values():
        for name, value in node["inputs"].items():
            if isinstance(value, list) and value[0] == ckpt:
                node["inputs"][name] = ["clip", 0] if value[1] == 1 else ["vae", 0]
        if node["class_type"] == "EmptyLatentImage":
            node["inputs"].update(width=64, height=64)
    api[unet]["inputs"].update(unet_name="e2e_sd15_unet.safetensors", plan="sd15_1step")
    api["live"] = {"class_type": "DMD2LiveSession", "inputs": {"model": [unet, 0], "clip": ["clip", 0],
                                                               "vae": ["vae", 0], "width": 64, "height": 64,
                                                               "steps": 1}}
    return api


SEARCH_BOX = ("!!document.querySelector('.comfy-vue-node-search-container input, input.p-autocomplete-input, "
              "[role=search] input')")  # frontend 1.27 search box; 1.48's new search dialog (role=search)


def open_node_search(browser, tries: int = 4) -> None:
    """Double-click the canvas until the node search box opens: on a busy machine the frontend can still be
    settling (a settings write in flight) and swallow the first double-click."""
    for attempt in range(tries):
        browser.click(700, 450, count=2)
        try:
            browser.wait_for(SEARCH_BOX, 8, "the node search box")
            return
        except AssertionError:
            if attempt == tries - 1:
                raise


def test_node_search_example_workflow_and_live_panel(server, browser, artefacts):
    server.post("/settings/Comfy.TutorialCompleted", True)  # no first-run template browser over the canvas
    browser.call("Page.navigate", url=server.url)
    browser.wait_for("!!(window.app && window.app.graph && window.app.extensionManager && "
                     "document.querySelector('canvas'))", 120, "the ComfyUI frontend")
    browser.wait_for("!!window.LiteGraph?.registered_node_types?.DMD2LiveSession", 60, "our node definitions")
    print(f"\nartefacts: {artefacts}")

    # 0. the live panel took the frontend's current sidebar API where it exists (1.27+), not the deprecated one
    current = browser.evaluate("typeof app.extensionManager.sidebarTab?.registerSidebarTab === 'function'")
    how = "sidebarTab.registerSidebarTab" if current else "registerSidebarTab (deprecated API)"
    browser.wait_for("app.extensionManager.getSidebarTabs?.().some(t => t.id === 'dmd2-live') || "
                     "app.extensionManager.sidebarTab?.sidebarTabs?.some(t => t.id === 'dmd2-live')", 20,
                     "the DMD2 Live sidebar tab")
    assert f"[DMD2] live panel: {how}" in browser.console, browser.console[-20:]

    # 1. the node search box (double-click on the canvas) finds DMD2 KSampler
    browser.evaluate("app.graph.clear(), true")
    open_node_search(browser)
    browser.type("DMD2 KSampler")
    found = browser.wait_for("""(() => { const t = [...document.querySelectorAll(
        '.p-autocomplete-option, .comfy-vue-node-search-box li, [role=option]')].map(e => e.textContent);
        return t.some(s => s.includes('DMD2 KSampler')) && t; })()""", 20, "DMD2 KSampler in the search results")
    browser.screenshot(artefacts / "node_search.png")
    assert any("DMD2 KSampler" in t for t in found)
    browser.key("Escape", "Escape", 27)

    # 2. the example workflow (random models swapped in) loads and runs to an image
    workflow = json.loads((REPO / "example_workflows" / f"{EXAMPLE}.json").read_text())
    api = with_random_models(to_api(workflow, server.get("/object_info")))
    browser.evaluate(f"app.loadApiJson({json.dumps(api)}, {json.dumps(EXAMPLE)}), true")
    types = browser.evaluate("app.graph._nodes.map(n => n.type)")
    assert {"DMD2UNetLoader", "DMD2KSampler", "SaveImage", "DMD2LiveSession"} <= set(types), types
    before = set(server.get("/history"))
    browser.evaluate("""(() => { window.__dmd2Executed = []; const api = window.comfyAPI?.api?.api || app.api;
        api.addEventListener('executed', e => window.__dmd2Executed.push(e.detail)); return true; })()""")
    browser.evaluate("app.queuePrompt(0, 1).then(() => true)")
    deadline, entry = time.monotonic() + 600, None
    while entry is None:
        assert time.monotonic() < deadline, server.tail()
        new = {k: v for k, v in server.get("/history").items() if k not in before}
        entry = next(iter(new.values()), None)
        time.sleep(0.5)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[-3000:]
    images = [i for out in entry["outputs"].values() for i in out.get("images", [])]
    assert images and images[0]["filename"].endswith(".png"), entry["outputs"]
    shown = browser.wait_for("window.__dmd2Executed.flatMap(d => d.output?.images || []).map(i => i.filename)",
                             60, "the frontend's 'executed' event with the image")
    assert images[0]["filename"] in shown, shown
    browser.screenshot(artefacts / "example_workflow.png")

    # 3. the live panel shows a frame after typing a prompt
    browser.evaluate("""(() => { const b = document.querySelector('.dmd2-live-tab-button');
        if (b) b.click(); else app.extensionManager.sidebarTab.toggleSidebarTab('dmd2-live'); return true; })()""")
    browser.wait_for("!!document.querySelector('#dmd2-live-prompt')", 20, "the DMD2 Live panel")
    browser.evaluate("document.querySelector('#dmd2-live-prompt').focus(), true")
    browser.type("a lighthouse at dusk")
    stats = browser.wait_for("""(() => { const i = document.querySelector('#dmd2-live-image'),
        s = document.querySelector('#dmd2-live-stats'); return i.naturalWidth > 0 && s.dataset.requestId &&
        s.textContent; })()""", 120, "a live frame")
    assert "unet" in stats and "transfer" in stats and "fps" in stats, stats
    assert browser.evaluate("document.querySelector('#dmd2-live-image').naturalWidth") == 64
    path = browser.screenshot(artefacts / "live_panel.png")
    print(f"live panel: {stats}\nscreenshot: {path}")
