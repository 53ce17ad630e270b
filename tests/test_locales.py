"""Node translations (locales/<lang>/nodeDefs.json), in the format ComfyUI's frontend reads.

ComfyUI serves every pack's locales/ at GET /i18n; the frontend merges it into its messages and looks up
`nodeDefs.<node id>.display_name`, `.description`, `.inputs.<input>.name|tooltip` and `.outputs.<index>.tooltip`,
falling back to the server's English. English is derived from the node classes (run `python tests/test_locales.py`
after changing a node); every other language must cover exactly the same keys.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOCALES = ROOT / "locales"
LANGUAGES = ("en", "zh", "ja")
#: The frontend's own widget after a seed with control_after_generate ("fixed / increment / ... / randomize").
CONTROL = "control_after_generate"


def english_node_defs() -> dict:
    """nodeDefs.json for English: display names, descriptions and tooltips exactly as the node classes give them."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tests.test_nodes import _import_pack, host

    nodes = _import_pack()
    listing, host.filename_list = host.filename_list, lambda folder: []  # choices are not translated: no ComfyUI
    try:
        schemas = {node_id: cls.INPUT_TYPES() for node_id, cls in nodes.NODE_CLASS_MAPPINGS.items()}
    finally:
        host.filename_list = listing
    defs = {}
    for node_id, cls in nodes.NODE_CLASS_MAPPINGS.items():
        inputs = {}
        for group in ("required", "optional"):
            for name, (_, options) in schemas[node_id].get(group, {}).items():
                inputs[name] = {"name": name, "tooltip": options["tooltip"]}
                if options.get(CONTROL):
                    inputs[CONTROL] = {"name": "control after generate"}
        defs[node_id] = {"display_name": nodes.NODE_DISPLAY_NAME_MAPPINGS[node_id], "description": cls.DESCRIPTION,
                         "inputs": inputs}
        if cls.RETURN_TYPES:
            defs[node_id]["outputs"] = {str(i): {"tooltip": tip} for i, tip in enumerate(cls.OUTPUT_TOOLTIPS)}
    return defs


def _read(language: str) -> dict:
    return json.loads((LOCALES / language / "nodeDefs.json").read_text(encoding="utf-8"))


def _lookup(tree: dict, key: str):
    for part in key.split("."):
        tree = tree[part]
    return tree


def _keys(tree: dict, prefix: str = "") -> set[str]:
    """Every leaf key path of a nodeDefs tree, e.g. 'DMD2KSampler.inputs.seed.tooltip'."""
    keys = set()
    for key, value in tree.items():
        keys |= _keys(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key}
    return keys


def test_english_is_what_the_nodes_say():
    assert _read("en") == english_node_defs(), "run: python tests/test_locales.py"


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_node_input_and_output_has_an_entry(language):
    defs = _read(language)
    english = english_node_defs()
    assert sorted(defs) == sorted(english)
    assert _keys(defs) == _keys(english), f"{language}: missing {sorted(_keys(english) - _keys(defs))}, " \
                                          f"unknown {sorted(_keys(defs) - _keys(english))}"
    for key in _keys(defs):
        value = _lookup(defs, key)
        assert isinstance(value, str) and value.strip(), f"{language}: {key} is empty"


@pytest.mark.parametrize("language", ("zh", "ja"))
def test_translations_are_translated(language):
    """A copied English text is not a translation: every description and tooltip must differ from English."""
    english, defs = english_node_defs(), _read(language)
    same = sorted(key for key in _keys(english) if key.endswith(("description", "tooltip"))
                  and _lookup(defs, key) == _lookup(english, key))
    assert not same, f"{language}: still English: {same}"


def test_locale_folders_are_the_checked_languages():
    """Folder names are the frontend's locale codes (en, zh, ja); a folder this file does not check could rot."""
    assert sorted(p.name for p in LOCALES.iterdir()) == sorted(LANGUAGES)


if __name__ == "__main__":
    path = LOCALES / "en" / "nodeDefs.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(english_node_defs(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {path}")
