"""The example workflows and their pictures are what tests/comfyui/examples.py builds (no ComfyUI needed)."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "comfyui"))
import examples  # noqa: E402


@pytest.mark.parametrize("name", sorted(examples.EXAMPLES))
def test_example_workflow_is_current(name):
    committed = json.loads((ROOT / "example_workflows" / f"{name}.json").read_text())
    assert committed == json.loads(json.dumps(examples.EXAMPLES[name]().to_json())), \
        "run python tests/comfyui/examples.py"
    links = {link[0]: link for link in committed["links"]}
    for node in committed["nodes"]:
        for slot, socket in enumerate(node["inputs"]):
            link = links[socket["link"]]
            assert (link[3], link[4], link[5]) == (node["id"], slot, socket["type"])
    image = ROOT / "docs" / "images" / f"{name}.png"
    assert image.is_file() and image.stat().st_size < 150_000


@pytest.mark.parametrize("name", sorted(examples.EXAMPLES))
def test_thumbnail_for_the_template_browser(name):
    from PIL import Image

    path = ROOT / "example_workflows" / f"{name}.jpg"  # the frontend asks for /workflow_templates/<pack>/<name>.jpg
    with Image.open(path) as image:
        assert image.format == "JPEG" and image.size == (examples.THUMBNAIL, examples.THUMBNAIL)
    assert path.stat().st_size < 100_000


@pytest.mark.parametrize("name", sorted(examples.EXAMPLES))
def test_every_catalog_file_a_workflow_names_can_be_downloaded_from_it(name):
    """Each catalog file a node's widgets name is in that node's properties.models, in the shape the frontend's
    missing-models list reads and downloads: a .safetensors file from huggingface.co, with sha256 and folder."""
    from sampler.models.catalog import load_catalog

    catalog = {e.filename: e for e in load_catalog()}
    workflow = json.loads((ROOT / "example_workflows" / f"{name}.json").read_text())
    named = 0
    for node in workflow["nodes"]:
        files = [catalog[v] for v in node["widgets_values"] if isinstance(v, str) and v in catalog]
        models = node["properties"].get("models", [])
        assert [m["name"] for m in models] == [e.filename for e in files], node["type"]
        for model, entry in zip(models, files):
            assert model == {"name": entry.filename, "url": entry.url, "hash": entry.sha256, "hash_type": "SHA256",
                             "directory": entry.comfyui_folder}
            assert model["url"].startswith("https://huggingface.co/") and model["name"].endswith(".safetensors")
        named += len(files)
        assert node["properties"]["cnr_id"] == (examples.PACK_ID if node["type"] in examples.TITLES else "comfy-core")
    assert named >= 1, "every example loads SDXL base at least"


def test_examples_use_dmd2_everywhere():
    files = sorted((ROOT / "example_workflows").glob("*.json"))
    assert [f.stem for f in files] == sorted(examples.EXAMPLES)
    for f in files:
        types = {n["type"] for n in json.loads(f.read_text())["nodes"]}
        assert types & {"DMD2KSampler", "SamplerCustom", "KSampler"}
