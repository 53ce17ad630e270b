"""Opening an example workflow whose models are missing: ComfyUI's frontend lists every SDXL / DMD2 file the workflow
names (its nodes' properties.models) with its download, in a real frontend driven by headless Chromium.

The workflows are opened as the template browser opens them: fetched from the pack's template route and handed to
app.loadGraphData. Frontend v1.27 (ComfyUI 0.3.64) shows its missing-models dialog; v1.4x (ComfyUI 0.33) shows an
error overlay whose "see errors" opens the Errors panel, one row per missing model with a Download button. The test
server has none of these files (only the e2e suite's random models), so every listed file must appear.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACK = "comfyui-dmd2"  # the custom_nodes folder the harness installs the pack as
EXAMPLES = sorted(p.stem for p in (REPO / "example_workflows").glob("*.json"))
LEGACY_DIALOG = ".comfy-missing-models"  # v1.27: MissingModelsWarning.vue
OVERLAY = '[data-testid="error-overlay"]'  # v1.4x: ErrorOverlay.vue
DOWNLOAD = '[data-testid="missing-model-download"]'  # v1.4x: MissingModelRow.vue


def missing_models(name: str) -> set[tuple[str, str]]:
    """(directory, file) of every model the example's nodes name in properties.models."""
    workflow = json.loads((REPO / "example_workflows" / f"{name}.json").read_text())
    return {(m["directory"], m["name"]) for n in workflow["nodes"] for m in n["properties"].get("models", [])}


def open_template(browser, name: str) -> None:
    browser.evaluate(f"""fetch('api/workflow_templates/{PACK}/{name}.json').then(r => r.json())
        .then(w => app.loadGraphData(w, true, true, {json.dumps(name)})).then(() => true)""")


def legacy_dialog_rows(browser, expected: set[tuple[str, str]]) -> list[str]:
    """v1.27: the dialog's rows ("<directory> / <file>", then its download control or an error) once they name
    exactly the expected files."""
    labels = json.dumps(sorted(f"{directory} / {file}" for directory, file in expected))
    rows = f"""[...(document.querySelector('{LEGACY_DIALOG}')?.querySelectorAll('li') || [])]
        .map(li => li.textContent.trim())"""
    try:
        return browser.wait_for(f"""(() => {{ const rows = {rows}, want = {labels};
            return rows.length === want.length && want.every(w => rows.some(r => r.startsWith(w))) && rows; }})()""",
                                60, "the missing-models dialog listing the files")
    except AssertionError:
        raise AssertionError(f"dialog rows: {browser.evaluate(rows)}; expected {labels}") from None


def errors_panel_downloads(browser, expected: set[str]) -> list[str]:
    """v1.4x: open the Errors panel from the overlay; the Download buttons' labels once they are the expected ones."""
    browser.wait_for(f"!!document.querySelector('{OVERLAY}')", 60, "the error overlay")
    browser.evaluate("document.querySelector('[data-testid=\"error-overlay-see-errors\"]').click(), true")
    want = json.dumps(json.dumps(sorted(f"Download {name}" for name in expected), separators=(",", ":")))
    labels = f"[...document.querySelectorAll('{DOWNLOAD}')].map(b => b.getAttribute('aria-label')).sort()"
    try:
        return browser.wait_for(f"(() => {{ const l = {labels}; return JSON.stringify(l) === {want} && l; }})()",
                                60, "a Download button for each missing model")
    except AssertionError:
        raise AssertionError(f"Download buttons: {browser.evaluate(labels)}; expected {want}") from None


@pytest.mark.parametrize("name", EXAMPLES)
def test_opening_an_example_lists_its_missing_models_with_downloads(server, browser, artefacts, name):
    expected = missing_models(name)
    assert ("checkpoints", "sd_xl_base_1.0.safetensors") in expected  # every example takes CLIP / VAE from SDXL base
    server.post("/settings/Comfy.TutorialCompleted", True)  # no first-run template browser over the canvas
    server.post("/settings/Comfy.Workflow.Persist", False)  # no restored workflow of an earlier test (its warnings)
    browser.call("Page.navigate", url=server.url)
    browser.wait_for("!!(window.app && window.app.graph && document.querySelector('canvas'))", 120,
                     "the ComfyUI frontend")
    browser.wait_for("!!window.LiteGraph?.registered_node_types?.DMD2KSampler", 60, "our node definitions")
    open_template(browser, name)
    ui = browser.wait_for(f"""document.querySelector('{LEGACY_DIALOG}') ? 'dialog' :
        document.querySelector('{OVERLAY}') ? 'errors panel' : ''""", 60, "a missing-models list")
    if ui == "dialog":
        for row in legacy_dialog_rows(browser, expected):  # each with its Download control, none with an error
            assert "Download" in row and not any(e in row for e in ("not allowed", "Invalid directory", "suffixes"))
    else:
        errors_panel_downloads(browser, {file for _, file in expected})
        for _, file in expected:  # the row names the file
            assert browser.evaluate(f"document.body.innerText.includes({json.dumps(file)})"), file
    path = browser.screenshot(artefacts / f"missing_models_{name}.png")
    print(f"\n{name}: {ui} lists {sorted(expected)}; screenshot {path}")
