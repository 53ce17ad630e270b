"""models.json: valid against its JSON Schema, the released DMD2 files exactly, one definition of trained timesteps,
and entries that could write outside the models folder or name something other than a Hub repo refused."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest

from sampler.models.catalog import Catalog, Entry, load_catalog
from sampler.errors import CatalogError, UnknownModelError
from sampler.plans import TRAINED_TIMESTEPS

ROOT = Path(__file__).resolve().parent.parent
DATA = json.loads((ROOT / "models.json").read_text())
SCHEMA = json.loads((ROOT / "models.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)

# DESIGN.md section 2 (tianweiy/DMD2): file -> (bytes or None where only "~5.14 GB" is known, sha256).
RELEASED = {
    "dmd2_sdxl_4step_unet_fp16.safetensors": (5_135_149_736,
                                              "3549f1726d24afa4a26493c9049af8fb74108ff0a36f67ced0d3b4aa164cce92"),
    "dmd2_sdxl_4step_unet_fp16.bin": (None, "5c2d55d5844bc1387f59ef76d2dcca4557bfce7fb426ac5a34bd23f6372bf9f6"),
    "dmd2_sdxl_1step_unet_fp16.bin": (None, "facefb60b3e7b1d4ad70f16628fe153672b0749842e2cbe20f8da9f281acf8ba"),
    "dmd2_sdxl_4step_unet.bin": (10_270_866_889, "f94ffd4eeaee84ab37a3f07df6e56b3b9573aef65ce6360355e2fdac0e44974e"),
    "dmd2_sdxl_1step_unet.bin": (10_270_866_889, "51fd734a362a1def3863d3a52c347fd0a9f8bcb25c9ec4e7cb7cfbe2b82d5551"),
    "dmd2_sdxl_4step_lora_fp16.safetensors": (393_854_592,
                                              "b3d9173815a4b595991c3a7a0e0e63ad821080f314a0b2a3cc31ecd7fcf2cbb8"),
    "dmd2_sdxl_4step_lora.safetensors": (787_359_616,
                                         "a374289e9446d7f14d2037c4b3770756b7b52c292142a691377c3c755010a1bb"),
}


def test_models_json_matches_its_schema():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    VALIDATOR.validate(DATA)


def test_every_released_dmd2_file_exactly():
    catalog = load_catalog()
    dmd2 = {e.filename: e for e in catalog.dmd2()}
    assert set(dmd2) == set(RELEASED)
    for filename, (size, sha) in RELEASED.items():
        e = dmd2[filename]
        assert (e.repo, e.size, e.sha256, e.license, e.base) == ("tianweiy/DMD2", size, sha, "cc-by-nc-4.0", "sdxl")
        assert e.recommended.cfg == 1.0
    assert dmd2["dmd2_sdxl_4step_lora_fp16.safetensors"].recommended.lora_strength == 1.0


def test_companions():
    catalog = load_catalog()
    kinds = {e.id: (e.kind, e.base, e.comfyui_folder, e.a1111_folder) for e in catalog if e.group == "companion"}
    assert kinds == {
        "sdxl-base-1.0": ("checkpoint", "sdxl", "checkpoints", "Stable-diffusion"),
        "sdxl-vae-fp16-fix": ("vae", "sdxl", "vae", "VAE"),
        "taesd": ("taesd", "sd15", "vae_approx", None),
        "taesdxl": ("taesd", "sdxl", "vae_approx", None),
    }


def test_trained_timesteps_have_one_definition():
    for e in load_catalog().dmd2():
        assert e.plan in TRAINED_TIMESTEPS and e.trained_timesteps == TRAINED_TIMESTEPS[e.plan]
        assert e.steps == len(e.trained_timesteps)
        assert ("1step" in e.filename) == (e.plan == "sdxl_1step")
    # The schema names the same plans and step counts as sampler.plans.
    entry_schema = SCHEMA["$defs"]["entry"]
    assert set(entry_schema["properties"]["plan"]["enum"]) - {None} == set(TRAINED_TIMESTEPS)
    for rule in entry_schema["allOf"][1:]:
        plans = rule["if"]["properties"]["plan"]
        for plan in plans.get("enum", [plans.get("const")]):
            assert rule["then"]["properties"]["steps"]["const"] == len(TRAINED_TIMESTEPS[plan])


def test_unknown_id_lists_the_valid_ones():
    with pytest.raises(UnknownModelError, match="dmd2-sdxl-4step-lora-fp16.*taesdxl"):
        load_catalog().get("dmd2-sdxl-2step")


def with_entry(**changes) -> dict:
    data = copy.deepcopy(DATA)
    data["models"][0].update(changes)
    return data


BAD_ENTRIES = [
    {"filename": "../../.bashrc"},
    {"filename": "../dmd2.safetensors"},
    {"filename": "/etc/passwd"},
    {"filename": "sub/dir.safetensors"},
    {"filename": "..\\evil.safetensors"},
    {"filename": ".hidden.safetensors"},
    {"repo": "https://evil.example/x.safetensors"},
    {"repo": "tianweiy/DMD2/../../other"},
    {"repo": "../DMD2"},
    {"repo": "DMD2"},
    {"repo": "a/b/c"},
    {"sha256": "ABC"},
    {"plan": "sdxl_8step"},
    {"steps": 2},
    {"kind": "controlnet"},
    {"hosts": {"comfyui": "../../", "a1111": None}},
]


@pytest.mark.parametrize("change", BAD_ENTRIES, ids=lambda c: f"{list(c)[0]}={list(c.values())[0]}")
def test_bad_entries_refused_by_schema_and_at_run_time(change, tmp_path):
    data = with_entry(**change)
    assert not VALIDATOR.is_valid(data)
    path = tmp_path / "models.json"
    path.write_text(json.dumps(data))
    with pytest.raises(CatalogError, match="catalog entry 'dmd2-sdxl-4step-unet-fp16'"):
        load_catalog(path)


def test_bad_catalog_files(tmp_path):
    path = tmp_path / "models.json"
    path.write_text("{not json")
    with pytest.raises(CatalogError, match="not valid JSON"):
        load_catalog(path)
    with pytest.raises(CatalogError, match="not found"):
        load_catalog(tmp_path / "missing.json")
    data = copy.deepcopy(DATA)
    data["models"].append(data["models"][0])
    path.write_text(json.dumps(data))
    with pytest.raises(CatalogError, match="appears twice"):
        load_catalog(path)


def test_entries_built_in_code_are_checked_too():
    entry = load_catalog().get("taesd")
    fields = {f: getattr(entry, f) for f in Entry.__dataclass_fields__}
    with pytest.raises(CatalogError, match="cannot leave the models folder"):
        Entry(**{**fields, "filename": "../x.safetensors"})
    assert len(Catalog((entry,))) == 1


TYPE_ERRORS = [
    ({"recommended": {"cfg": 1.0, "lora_strength_finetune": 5}}, "recommended.lora_strength_finetune"),
    ({"recommended": {"cfg": 1.0, "lora_strength_finetune": [0.5, "x"]}}, "recommended.lora_strength_finetune"),
    ({"recommended": {"cfg": "x"}}, "recommended.cfg"),
    ({"recommended": {"cfg": True}}, "recommended.cfg"),
    ({"recommended": {"lora_strength": 1.0}}, "recommended must be an object with cfg"),
    ({"recommended": {"cfg": 1.0, "lora_strength": False}}, "recommended.lora_strength"),
    ({"recommended": [1.0]}, "recommended must be an object"),
    ({"size": True}, "size"),
    ({"size": 1.5}, "size"),
    ({"size": "5135149736"}, "size"),
    ({"steps": True}, "steps"),
    ({"name": 3}, "name"),
    ({"name": ""}, "name"),
    ({"license": None}, "license"),
    ({"notes": None}, "notes"),
    ({"plan": ["sdxl_4step"]}, "plan"),
    ({"kind": ["unet"]}, "kind"),
    ({"revision": 5}, "revision"),
    ({"sha256": None}, "sha256"),
    ({"hosts": {"comfyui": ["loras"], "a1111": None}}, "hosts.comfyui"),
    ({"hosts": {"comfyui": "diffusion_models", "a1111": 7}}, "hosts.a1111"),
]


@pytest.mark.parametrize("change, field", TYPE_ERRORS, ids=lambda c: str(c)[:60])
def test_type_errors_name_the_entry_and_the_field(change, field, tmp_path):
    """Every wrong type in models.json is refused with the entry and the field (the schema agrees: it is the
    independent statement of the same rules); a bool is never taken for a number."""
    data = with_entry(**change)
    assert not VALIDATOR.is_valid(data)
    path = tmp_path / "models.json"
    path.write_text(json.dumps(data))
    with pytest.raises(CatalogError) as err:
        load_catalog(path)
    message = str(err.value)
    assert "models[0]: catalog entry 'dmd2-sdxl-4step-unet-fp16'" in message and field in message, message


def test_a_finetune_range_runs_low_to_high(tmp_path):
    """The one rule JSON Schema cannot state: [low, high] in order."""
    path = tmp_path / "models.json"
    path.write_text(json.dumps(with_entry(recommended={"cfg": 1.0, "lora_strength_finetune": [0.75, 0.5]})))
    with pytest.raises(CatalogError, match="'dmd2-sdxl-4step-unet-fp16'.*low <= high"):
        load_catalog(path)


def test_entries_that_are_not_objects_and_unreadable_catalogs(tmp_path):
    path = tmp_path / "models.json"
    for models, words in (([5], "models[0]: catalog entry must be an object"),
                          ([DATA["models"][0], "x"], "models[1]: catalog entry must be an object")):
        path.write_text(json.dumps({"version": 1, "models": models}))
        with pytest.raises(CatalogError, match=words.replace("[", r"\[").replace("]", r"\]")):
            load_catalog(path)
    path.write_bytes(b"\xff\xfe{}")
    with pytest.raises(CatalogError, match="not valid JSON"):
        load_catalog(path)
    with pytest.raises(CatalogError, match="cannot be read"):
        load_catalog(tmp_path)  # a folder


def test_download_urls_are_the_hubs_own():
    """Entry.url (example workflows, manual-download hints) is the URL huggingface_hub itself builds."""
    from huggingface_hub import hf_hub_url

    for entry in load_catalog():
        hub = hf_hub_url(entry.repo, entry.filename, revision=entry.revision, endpoint="https://huggingface.co")
        assert entry.url == hub
