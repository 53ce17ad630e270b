"""DMD2 in a real ComfyUI: node listing, stock dropdown entries, and prompts run through /prompt on random-weight
SD1.5-shaped models at 64x64 px (8x8 latents). The probe pack records what the UNet received."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

NODES = ["DMD2UNetLoader", "DMD2LoraLoader", "DMD2Scheduler", "DMD2Sampler", "DMD2KSampler"]
SEED = 1234
_runs = itertools.count()


class Graph:
    """A prompt: random-weight UNet through DMD2 Load UNet (+ probe), CLIP-L, VAE, a prompt and an empty latent."""

    def __init__(self, server, plan: str = "auto", batch: int = 1, sleep: float = 0.0, weight_dtype: str = "default"):
        self.dir = server.base / f"run{next(_runs)}"
        self.dir.mkdir()
        self.log = self.dir / "unet.jsonl"
        self.nodes = {
            "unet": {"class_type": "DMD2UNetLoader", "inputs": {"unet_name": "e2e_sd15_unet.safetensors",
                                                                "weight_dtype": weight_dtype, "plan": plan}},
            "model": {"class_type": "DMD2TestProbe", "inputs": {"model": ["unet", 0], "log_path": str(self.log),
                                                                "sleep": sleep}},
            "clip": {"class_type": "CLIPLoader", "inputs": {"clip_name": "e2e_clip_l.safetensors",
                                                            "type": "stable_diffusion"}},
            "pos": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["clip", 0], "text": "a lighthouse at dusk"}},
            "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["clip", 0], "text": ""}},
            "empty": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": batch}},
        }

    def add(self, node_id: str, class_type: str, **inputs) -> list:
        self.nodes[node_id] = {"class_type": class_type, "inputs": inputs}
        return [node_id, 0]

    def dmd2_ksampler(self, steps: int, denoise: float = 1.0, latent=None, seed: int = SEED) -> list:
        return self.add("sample", "DMD2KSampler", model=["model", 0], positive=["pos", 0],
                        latent_image=latent or ["empty", 0], seed=seed, steps=steps, denoise=denoise)

    def stock_ksampler(self, steps: int, denoise: float = 1.0, latent=None, cfg: float = 1.0) -> list:
        return self.add("sample", "KSampler", model=["model", 0], positive=["pos", 0], negative=["neg", 0],
                        latent_image=latent or ["empty", 0], seed=SEED, steps=steps, cfg=cfg, sampler_name="dmd2",
                        scheduler="dmd2", denoise=denoise)

    def custom_sampler(self, steps: int) -> list:
        sigmas = self.add("sigmas", "DMD2Scheduler", model=["model", 0], steps=steps, denoise=1.0)
        sampler = self.add("sampler", "DMD2Sampler")
        return self.add("sample", "SamplerCustom", model=["model", 0], add_noise=True, noise_seed=SEED, cfg=1.0,
                        positive=["pos", 0], negative=["neg", 0], sampler=sampler, sigmas=sigmas,
                        latent_image=["empty", 0])

    def save(self, latent: list, name: str = "out") -> Path:
        path = self.dir / f"{name}.safetensors"
        self.add(f"save_{name}", "DMD2TestSaveLatent", samples=latent, path=str(path))
        return path

    def reference(self, timesteps: str, latent=None) -> Path:
        ref = self.add("reference", "DMD2TestReference", model=["unet", 0], positive=["pos", 0],
                       latent_image=latent or ["empty", 0], seed=SEED, timesteps=timesteps)
        return self.save(ref, "reference")

    def calls(self) -> list[dict]:
        return [json.loads(line) for line in self.log.read_text().splitlines()] if self.log.exists() else []

    def timesteps(self) -> list[int]:
        """The integer timestep of every UNet call (all items of a batch share it)."""
        out = []
        for call in self.calls():
            assert len(set(call["t"])) == 1, call
            out.append(int(call["t"][0]))
        return out

    def first_input(self) -> torch.Tensor:
        return load_file(str(self.log) + ".first.safetensors")["x"]

    def model_info(self) -> dict:
        """The MODEL the probe wrapped: {"dtype": its weight dtype, "patches": how many weights are patched}."""
        return json.loads(Path(str(self.log) + ".model.json").read_text())

    def progress(self) -> list[dict]:
        path = Path(str(self.log) + ".progress")
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def latent(path: Path) -> torch.Tensor:
    return load_file(str(path))["samples"]


def start_noise(batch: int = 1) -> torch.Tensor:
    """ComfyUI's starting noise for SEED (comfy.sample.prepare_noise: CPU generator, one randn of the batch)."""
    return torch.randn((batch, 4, 8, 8), generator=torch.manual_seed(SEED))


def assert_close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    assert torch.isfinite(a).all()
    scale = float(b.abs().max())
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-4 * scale), float((a - b).abs().max())


def test_nodes_and_stock_dropdowns_listed(server):
    info = server.get("/object_info")
    for node in NODES:
        assert node in info, node
        assert info[node]["description"], node
        assert info[node]["category"] in ("loaders/DMD2", "sampling/DMD2")
    for node in ("KSampler", "KSamplerAdvanced"):
        required = info[node]["input"]["required"]
        assert required["sampler_name"][0].count("dmd2") == 1, node
        assert required["scheduler"][0].count("dmd2") == 1, node
    assert info["KSamplerSelect"]["input"]["required"]["sampler_name"][0].count("dmd2") == 1
    assert info["BasicScheduler"]["input"]["required"]["scheduler"][0].count("dmd2") == 1
    ksampler = info["DMD2KSampler"]["input"]
    assert "cfg" not in ksampler["required"] and set(ksampler["optional"]) == {"negative", "cfg"}
    assert any(v.startswith("catalog: dmd2-sdxl-4step-unet") for v in
               info["DMD2UNetLoader"]["input"]["required"]["unet_name"][0])


def test_4step_txt2img_matches_core_and_reproduces(server):
    runs = []
    for _ in range(2):  # a fresh probe path makes ComfyUI execute the sampler again instead of using its cache
        g = Graph(server)
        out = g.save(g.dmd2_ksampler(steps=4))
        ref = g.reference("999,749,499,249")
        server.run(g.nodes)
        runs.append((g, out, ref))
    g, out, ref = runs[0]
    assert g.timesteps() == [999, 749, 499, 249]
    assert torch.allclose(g.first_input(), start_noise(), atol=1e-5)  # the UNet saw the raw unit noise
    assert_close(latent(out), latent(ref))
    assert torch.equal(latent(out), latent(runs[1][1])), "same seed, different result"
    steps = [p for p in g.progress() if p["total"] == 4]
    assert [p["value"] for p in steps] == [1, 2, 3, 4] and all(p["preview"] for p in steps)


@pytest.mark.parametrize("path", ["dmd2_ksampler", "stock_ksampler", "custom_sampler"])
def test_1step_399_unit_variance_on_every_path(server, path):
    g = Graph(server, plan="sdxl_1step")
    out = g.save(getattr(g, path)(1) if path != "dmd2_ksampler" else g.dmd2_ksampler(steps=1))
    ref = g.reference("399")
    server.run(g.nodes)
    assert g.timesteps() == [399]
    first = g.first_input()
    assert torch.allclose(first, start_noise(), atol=1e-5), float(first.std())  # unit variance, not 0.76x
    assert_close(latent(out), latent(ref))
    assert [p["value"] for p in g.progress() if p["total"] == 1] == [1]


def test_stock_ksampler_and_custom_sampler_match_dmd2_ksampler(server):
    outs = []
    for path in ("dmd2_ksampler", "stock_ksampler", "custom_sampler"):
        g = Graph(server)
        outs.append(g.save(getattr(g, path)(4) if path != "dmd2_ksampler" else g.dmd2_ksampler(steps=4)))
        server.run(g.nodes)
        assert g.timesteps() == [999, 749, 499, 249], path
    for other in outs[1:]:
        assert torch.equal(latent(outs[0]), latent(other))


def test_batch_and_denoise_below_one(server):
    g = Graph(server, batch=2)
    first = g.dmd2_ksampler(steps=4)
    out = g.save(first)
    ref = g.reference("999,749,499,249")
    up = g.add("up", "LatentUpscaleBy", samples=first, upscale_method="nearest-exact", scale_by=2.0)
    second = g.add("second", "DMD2KSampler", model=["model", 0], positive=["pos", 0], latent_image=up, seed=7,
                   steps=2, denoise=0.5)
    out2 = g.save(second, "second")
    server.run(g.nodes)
    calls = g.calls()
    assert [c["shape"][0] for c in calls] == [2] * 6
    assert g.timesteps() == [999, 749, 499, 249, 499, 249]
    assert calls[4]["shape"][2:] == [16, 16]
    assert_close(latent(out), latent(ref))
    assert latent(out2).shape == (2, 4, 16, 16) and torch.isfinite(latent(out2)).all()

    g2 = Graph(server, batch=2)  # the stock KSampler at denoise 0.5 keeps the tail of an 8-step plan
    src = g2.add("src", "DMD2KSampler", model=["unet", 0], positive=["pos", 0], latent_image=["empty", 0],
                 seed=SEED, steps=1, denoise=1.0)
    g2.save(g2.stock_ksampler(steps=4, denoise=0.5, latent=src))
    server.run(g2.nodes)
    assert g2.timesteps() == [499, 499, 249, 249]


def test_interrupt_stops_between_steps(server):
    g = Graph(server, sleep=2.0)
    g.save(g.dmd2_ksampler(steps=8))
    prompt_id = server.queue(g.nodes)
    deadline = time.monotonic() + 300
    while not g.calls():
        assert time.monotonic() < deadline, server.tail()
        time.sleep(0.2)
    server.post("/interrupt", {})
    entry = server.wait(prompt_id)
    assert entry["status"]["status_str"] != "success"
    assert any(m[0] == "execution_interrupted" for m in entry["status"]["messages"]), entry["status"]
    assert 1 <= len(g.calls()) < 8
    g2 = Graph(server)  # and the server still samples afterwards
    g2.save(g2.dmd2_ksampler(steps=1))
    server.run(g2.nodes)


def test_sd15_model_with_sdxl_lora_fails_clearly(server):
    g = Graph(server)
    lora = g.add("lora", "DMD2LoraLoader", model=["unet", 0], lora_name="e2e_sdxl_lora.safetensors", strength=1.0)
    g.nodes["model"]["inputs"]["model"] = lora
    g.save(g.dmd2_ksampler(steps=1))
    entry = server.wait(server.queue(g.nodes))
    text = json.dumps(entry["status"]["messages"])
    assert entry["status"]["status_str"] == "error"
    assert "BaseMismatchError" in text and "SDXL lora" in text and "SD1.5" in text, text[-2000:]


WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")


@pytest.mark.parametrize("name", ["dmd2_sdxl_4step_lora", "dmd2_sdxl_4step_unet", "dmd2_sdxl_1step_unet",
                                  "dmd2_sdxl_2pass_upscale", "dmd2_stock_ksampler"])
def test_example_workflows_match_this_comfyui(server, name):
    """Every node of the example exists here, with as many widget values as it has widgets and valid choices."""
    assert name in server.get("/workflow_templates")["comfyui-dmd2"]
    workflow = json.loads((Path(__file__).resolve().parents[2] / "example_workflows" / f"{name}.json").read_text())
    info = server.get("/object_info")
    for node in workflow["nodes"]:
        spec = info[node["type"]]["input"]
        widgets = []
        for group in ("required", "optional"):
            for input_name, (kind, *options) in spec.get(group, {}).items():
                if isinstance(kind, list) or kind in WIDGET_TYPES:
                    widgets.append((input_name, kind))
                    if options and options[0].get("control_after_generate"):
                        widgets.append(("control_after_generate", ["fixed", "increment", "decrement", "randomize"]))
        values = node["widgets_values"]
        assert len(values) == len(widgets), (node["type"], values, widgets)
        downloadable = {m["name"] for m in node["properties"].get("models", [])}  # missing here, offered for download
        for (input_name, kind), value in zip(widgets, values):
            if isinstance(kind, list) and value not in downloadable:
                assert value in kind, (node["type"], input_name, value)


SD15_LORA = "e2e_sd15_dmd2_lora.safetensors"


def run_logged(server, graph: dict) -> str:
    """Run a prompt; the server log lines it wrote (up to ComfyUI's "Prompt executed" line, which follows it)."""
    before = server.log.read_text(errors="replace")
    server.run(graph)
    deadline = time.monotonic() + 30
    while True:
        text = server.log.read_text(errors="replace")
        if text.count("Prompt executed") > before.count("Prompt executed"):
            return text[len(before):]
        assert time.monotonic() < deadline, server.tail()
        time.sleep(0.2)


def lora_graph(server, strength: float | None) -> tuple[Graph, Path]:
    """4 steps through the stock KSampler (sampler and scheduler dmd2); the UNet is loaded with the 1-step plan (399)
    so only the LoRA loader's tag gives 999/749/499/249. strength None: no LoRA, the UNet planned 4-step itself."""
    g = Graph(server, plan="sdxl_4step" if strength is None else "sdxl_1step")
    if strength is not None:
        lora = g.add("lora", "DMD2LoraLoader", model=["unet", 0], lora_name=SD15_LORA, strength=strength)
        g.nodes["model"]["inputs"]["model"] = lora
    return g, g.save(g.stock_ksampler(steps=4))


def test_dmd2_format_lora_applies_every_module_and_tags_the_model(server, models):
    modules = sum(k.endswith(".alpha") for k in load_file(str(models["sd15_lora"])))
    assert modules > 250  # every module DMD2 adapts in the SD1.5 UNet

    g, with_lora = lora_graph(server, 1.0)
    text = run_logged(server, g.nodes)
    assert f"{SD15_LORA} is not a recognised DMD2 release" in text  # the log slice holds the loader's warnings
    assert "lora key not loaded" not in text, [line for line in text.splitlines() if "lora key not loaded" in line]
    assert g.model_info()["patches"] == modules  # one patched weight per LoRA module
    assert g.timesteps() == [999, 749, 499, 249]

    g0, zero = lora_graph(server, 0.0)
    run_logged(server, g0.nodes)
    assert g0.model_info()["patches"] == 0
    assert g0.timesteps() == [999, 749, 499, 249]

    base, without = lora_graph(server, None)
    server.run(base.nodes)
    assert base.timesteps() == [999, 749, 499, 249]

    assert torch.isfinite(latent(with_lora)).all()
    assert torch.equal(latent(zero), latent(without)), "strength 0 changed the result"
    diff = float((latent(with_lora) - latent(without)).abs().max())
    assert diff > 1e-3 * float(latent(without).abs().max()), diff


DTYPES = {"fp16": "torch.float16", "bf16": "torch.bfloat16"}


@pytest.mark.parametrize("weight_dtype", list(DTYPES))
def test_unet_loader_weight_dtype_runs_to_an_image(server, weight_dtype):
    g = Graph(server, weight_dtype=weight_dtype)
    out = g.save(g.dmd2_ksampler(steps=4))
    vae = g.add("vae", "VAELoader", vae_name="e2e_sd_vae.safetensors")
    image = g.add("decode", "VAEDecode", samples=["sample", 0], vae=vae)
    g.add("preview", "PreviewImage", images=image)
    entry = server.run(g.nodes)
    assert g.model_info()["dtype"] == DTYPES[weight_dtype]
    assert g.timesteps() == [999, 749, 499, 249]
    assert torch.isfinite(latent(out)).all() and latent(out).shape == (1, 4, 8, 8)
    images = entry["outputs"]["preview"]["images"]
    assert len(images) == 1 and images[0]["filename"].endswith(".png")
    if weight_dtype == "fp16":  # the file is fp16: the same weights as the default (fp32 on CPU) load
        default = Graph(server)
        ref = default.save(default.dmd2_ksampler(steps=4))
        server.run(default.nodes)
        assert default.model_info()["dtype"] != DTYPES["fp16"]
        assert_close(latent(out), latent(ref))


def test_damaged_and_looping_model_files_fail_in_the_core_s_words(server):
    """A damaged header and a symlink loop in models/diffusion_models: ComfyUI lists both; the node's error is the
    core's one-line message (the one `python -m sampler` prints), and the server goes on sampling."""
    import os

    from sampler.errors import DMD2Error
    from sampler.models.checkpoints import inspect_file

    folder = server.base / "models" / "diffusion_models"
    raw = (folder / "e2e_sd15_unet.safetensors").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    first = next(k for k in header if k != "__metadata__")
    del header[first]["data_offsets"]
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    damaged = folder / "e2e_damaged.safetensors"
    damaged.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + n:])
    loop = folder / "e2e_loop.safetensors"
    os.symlink(loop.name, loop)
    try:
        for path, words in ((damaged, "data_offsets None"), (loop, "symbolic link that loops")):
            g = Graph(server)
            g.nodes["unet"]["inputs"]["unet_name"] = path.name
            g.save(g.dmd2_ksampler(steps=1))
            entry = server.wait(server.queue(g.nodes))
            (error,) = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
            assert error["node_type"] == "DMD2UNetLoader" and words in error["exception_message"], error
            if path == damaged:
                with pytest.raises(DMD2Error) as core:
                    inspect_file(path)
                assert error["exception_message"].strip() == str(core.value)
    finally:
        damaged.unlink()
        loop.unlink()
    g = Graph(server)
    g.save(g.dmd2_ksampler(steps=1))
    server.run(g.nodes)
