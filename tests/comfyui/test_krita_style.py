"""The Krita AI Diffusion style in krita/ against a real ComfyUI: the prompts Krita's plugin sends for it run the DMD2
sampler and scheduler on the trained timesteps.

Krita itself (a Qt plugin inside Krita) does not run here. The graphs below are the ones its code builds for a
style, read from Acly/krita-ai-diffusion at 0217cd21: `load_checkpoint_with_lora` (the checkpoint, then each style
LoRA through the stock LoraLoader), `sampler_custom_advanced` (BasicGuider at cfg 1, KSamplerSelect with the preset's
sampler, BasicScheduler with its scheduler, SplitSigmas at start_at_step for a strength below 1, RandomNoise,
SamplerCustomAdvanced, its denoised output) and `apply_strength` for the step arithmetic. The model is the random
SD1.5-shaped UNet of the e2e suite through the stock UNETLoader (Krita also loads diffusion-model files that way),
untagged as Krita's models are, so the `dmd2` scheduler plans it as 4-step.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.comfyui.test_comfyui_e2e import SEED, Graph, assert_close, latent

KRITA = Path(__file__).resolve().parents[2] / "krita"
STYLE = json.loads((KRITA / "dmd2-sdxl-4step-lora.json").read_text())
PRESETS = json.loads((KRITA / "samplers.json").read_text())
PRESET = PRESETS[STYLE["sampler"]]


def apply_strength(strength: float, steps: int, min_steps: int = 0) -> tuple[int, int]:
    """Krita's (total steps, start_at_step) for a strength (ai_diffusion/backend/workflow.py, apply_strength)."""
    start_at_step = round(steps * (1 - strength))
    if min_steps and steps - start_at_step < min_steps:
        steps = math.floor(min_steps / strength)
        start_at_step = steps - min_steps
    return steps, start_at_step


def krita_model(server) -> Graph:
    """Krita's model part for the style: the checkpoint, then the style's LoRA through the stock LoraLoader."""
    g = Graph(server)
    g.nodes["unet"] = {"class_type": "UNETLoader", "inputs": {"unet_name": "e2e_sd15_unet.safetensors",
                                                              "weight_dtype": "default"}}
    lora = g.add("lora", "LoraLoader", model=["unet", 0], clip=["clip", 0], lora_name="e2e_sd15_dmd2_lora.safetensors",
                 strength_model=STYLE["loras"][0]["strength"], strength_clip=STYLE["loras"][0]["strength"])
    g.nodes["model"]["inputs"]["model"] = lora
    g.nodes["pos"]["inputs"]["clip"] = ["lora", 1]
    return g


def krita_sample(g: Graph, strength: float, latent_image: list, tag: str) -> list:
    """Krita's sampling part at `strength` (1: generate; below 1: refine `latent_image`); node ids end in `tag`."""
    assert STYLE["cfg_scale"] == 1.0  # Krita: cfg 1 -> BasicGuider (no negative pass)
    guider = g.add("guider" + tag, "BasicGuider", model=["model", 0], conditioning=["pos", 0])
    minimum = min(PRESET["minimum_steps"], STYLE["sampler_steps"])  # Style.get_steps
    steps, start = apply_strength(strength, STYLE["sampler_steps"], minimum)
    sigmas = g.add("sigmas" + tag, "BasicScheduler", model=["model", 0], scheduler=PRESET["scheduler"], steps=steps,
                   denoise=1.0)
    if start > 0:
        g.add("split" + tag, "SplitSigmas", sigmas=sigmas, step=start)
        sigmas = ["split" + tag, 1]
    sampler = g.add("sampler" + tag, "KSamplerSelect", sampler_name=PRESET["sampler"])
    noise = g.add("noise" + tag, "RandomNoise", noise_seed=SEED)
    g.add("sample" + tag, "SamplerCustomAdvanced", noise=noise, guider=guider, sampler=sampler, sigmas=sigmas,
          latent_image=latent_image)
    return ["sample" + tag, 1]  # Krita takes the denoised output


def test_the_style_uses_our_sampler_and_scheduler():
    assert (PRESET["sampler"], PRESET["scheduler"], PRESET["cfg"]) == ("dmd2", "dmd2", 1.0)
    assert STYLE["live_sampler"] == STYLE["sampler"] and STYLE["architecture"] == "sdxl"
    assert STYLE["loras"][0]["name"] == "dmd2_sdxl_4step_lora_fp16.safetensors"


def test_krita_generate_runs_the_trained_timesteps_as_the_stock_ksampler_does(server):
    krita = krita_model(server)
    out = krita.save(krita_sample(krita, 1.0, ["empty", 0], ""))
    server.run(krita.nodes)
    assert krita.timesteps() == [999, 749, 499, 249]
    stock = krita_model(server)  # the same model and seed through the stock KSampler, sampler and scheduler dmd2
    expected = stock.save(stock.stock_ksampler(steps=4))
    server.run(stock.nodes)
    assert stock.timesteps() == [999, 749, 499, 249]
    assert_close(latent(out), latent(expected))


@pytest.mark.parametrize("strength, timesteps", [(0.5, [499, 249]), (0.25, [249]), (0.75, [749, 499, 249])])
def test_krita_refine_lands_on_trained_timesteps(server, strength, timesteps):
    """Refining (strength below 1) runs the tail of the dmd2 schedule: trained timesteps only."""
    g = krita_model(server)
    image = krita_sample(g, 1.0, ["empty", 0], "_generate")
    g.save(krita_sample(g, strength, image, "_refine"))
    server.run(g.nodes)
    assert g.timesteps() == [999, 749, 499, 249] + timesteps
