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


def test_examples_use_dmd2_everywhere():
    files = sorted((ROOT / "example_workflows").glob("*.json"))
    assert [f.stem for f in files] == sorted(examples.EXAMPLES)
    for f in files:
        types = {n["type"] for n in json.loads(f.read_text())["nodes"]}
        assert types & {"DMD2KSampler", "SamplerCustom", "KSampler"}
