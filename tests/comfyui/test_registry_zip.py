"""The pack as the Comfy Registry ships it, in a real ComfyUI: the zip comfy-cli builds for `comfy node publish`
(tests/test_publish.py checks its file list), unpacked into custom_nodes. It loads all its nodes, serves its
translations, example workflows and thumbnails; the examples' catalog file names pass ComfyUI's validation while the
files are missing and are fetched on first use (offline here: the run stops naming the file and where to get it);
ComfyUI's origin check guards the live panel's routes as it guards /prompt."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
import zipfile

import pytest

from tests.comfyui.conftest import PACK_DIR_NAME, comfyui_python, running_comfyui
from tests.test_publish import ROOT, build_registry_zip

NODES = ["DMD2UNetLoader", "DMD2LoraLoader", "DMD2Scheduler", "DMD2Sampler", "DMD2KSampler", "DMD2LiveSession"]
EXAMPLES = sorted(p.stem for p in (ROOT / "example_workflows").glob("*.json"))


@pytest.fixture(scope="module")
def zip_server(comfyui_path, models, tmp_path_factory):
    folder = tmp_path_factory.mktemp("registry-zip")
    pack = folder / "dmd2-sampler"
    with zipfile.ZipFile(build_registry_zip(folder)) as z:
        z.extractall(pack)
    with running_comfyui(comfyui_path, comfyui_python(), models, tmp_path_factory.mktemp("comfyui-base"), pack=pack,
                         env={"HF_HUB_OFFLINE": "1"}) as srv:
        yield srv


def _request(server, path: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, bytes, dict]:
    request = urllib.request.Request(server.url + path, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def test_the_zip_loads_every_node(zip_server):
    info = zip_server.get("/object_info")
    assert [n for n in NODES if n not in info] == []
    assert "dmd2" in info["KSampler"]["input"]["required"]["sampler_name"][0]
    log = zip_server.log.read_text(errors="replace")
    assert "IMPORT FAILED" not in log and "Cannot import" not in log, zip_server.tail()


def test_the_zip_serves_translations_for_every_input(zip_server):
    info, i18n = zip_server.get("/object_info"), zip_server.get("/i18n")
    for language in ("en", "zh", "ja"):
        ours = json.loads((ROOT / "locales" / language / "nodeDefs.json").read_text(encoding="utf-8"))
        served = i18n[language]["nodeDefs"]
        for node in NODES:
            assert served[node] == ours[node]
            inputs = {**info[node]["input"].get("required", {}), **info[node]["input"].get("optional", {})}
            assert set(inputs) <= set(served[node]["inputs"]), (language, node)
            assert len(served[node].get("outputs", {})) == len(info[node]["output"]), (language, node)


def test_the_zip_serves_example_workflows_and_thumbnails(zip_server):
    assert sorted(zip_server.get("/workflow_templates")[PACK_DIR_NAME]) == EXAMPLES
    for name in EXAMPLES:  # where the template browser asks for them
        status, body, headers = _request(zip_server, f"/api/workflow_templates/{PACK_DIR_NAME}/{name}.jpg")
        assert status == 200 and headers["Content-Type"] == "image/jpeg"
        assert body == (ROOT / "example_workflows" / f"{name}.jpg").read_bytes()
        status, body, _ = _request(zip_server, f"/api/workflow_templates/{PACK_DIR_NAME}/{name}.json")
        assert status == 200 and json.loads(body) == json.loads((ROOT / "example_workflows" / f"{name}.json").read_text(
            encoding="utf-8"))


def _loader_prompt(loader: dict) -> dict:
    """A prompt whose only work is the DMD2 loader `loader` (the live session node is its output)."""
    return {"clip": {"class_type": "CLIPLoader", "inputs": {"clip_name": "e2e_clip_l.safetensors",
                                                            "type": "stable_diffusion"}},
            "vae": {"class_type": "VAELoader", "inputs": {"vae_name": "e2e_sd_vae.safetensors"}},
            "base": {"class_type": "UNETLoader", "inputs": {"unet_name": "e2e_sd15_unet.safetensors",
                                                            "weight_dtype": "default"}},
            "loader": loader,
            "live": {"class_type": "DMD2LiveSession", "inputs": {"model": ["loader", 0], "clip": ["clip", 0],
                                                                 "vae": ["vae", 0], "width": 64, "height": 64,
                                                                 "steps": 1}}}


@pytest.mark.parametrize("loader", [
    {"class_type": "DMD2UNetLoader", "inputs": {"unet_name": "dmd2_sdxl_4step_unet_fp16.safetensors",
                                                "weight_dtype": "default", "plan": "auto"}},
    {"class_type": "DMD2LoraLoader", "inputs": {"model": ["base", 0], "strength": 1.0,
                                                "lora_name": "dmd2_sdxl_4step_lora_fp16.safetensors"}},
], ids=["unet", "lora"])
def test_example_file_names_pass_validation_and_are_fetched_on_first_use(zip_server, loader):
    name = loader["inputs"].get("unet_name") or loader["inputs"]["lora_name"]
    entry = zip_server.wait(zip_server.queue(_loader_prompt(loader)))  # queue() asserts no node_errors
    errors = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
    assert errors and errors[0]["exception_type"].endswith("OfflineError"), entry["status"]
    assert name in errors[0]["exception_message"]
    assert f"https://huggingface.co/tianweiy/DMD2/resolve/main/{name}" in errors[0]["exception_message"]


def test_unknown_file_names_are_refused_before_anything_runs(zip_server):
    loader = {"class_type": "DMD2UNetLoader", "inputs": {"unet_name": "no_such_unet.safetensors",
                                                         "weight_dtype": "default", "plan": "auto"}}
    body = json.dumps({"prompt": _loader_prompt(loader), "client_id": uuid.uuid4().hex}).encode()
    status, reply, _ = _request(zip_server, "/prompt", body, {"Content-Type": "application/json"})
    assert status == 400 and "neither a file" in reply.decode(), reply[:2000]


@pytest.mark.parametrize("method, path", [("POST", "/dmd2/live/frame"), ("GET", "/dmd2/live/status")])
def test_live_routes_refuse_other_origins(zip_server, method, path):
    """A web page on another site cannot drive the live panel's routes through the user's browser: ComfyUI's
    origin check (every route of its server, unless started with --enable-cors-header) answers 403 first."""
    body = b"{not json" if method == "POST" else None
    foreign = _request(zip_server, path, body, {"Origin": "http://evil.example", "Content-Type": "application/json"})
    assert foreign[0] == 403
    own = _request(zip_server, path, body, {"Origin": zip_server.url, "Content-Type": "application/json"})
    assert own[0] == (400 if method == "POST" else 200), own  # reached the handler: 400 is its bad-JSON answer
