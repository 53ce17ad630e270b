"""DMD2Scheduler, DMD2Sampler and DMD2KSampler: thin nodes over `sampling.py` and the core."""

from __future__ import annotations

from typing import Any

from . import host
from .sampling import node_sigmas, sample_dmd2, warn_once

MAX_SEED = 0xFFFFFFFFFFFFFFFF
STEPS = {"default": 4, "min": 1, "max": 8,
         "tooltip": "UNet passes. DMD2 runs only on its trained timesteps: 4 for the 4-step models (999, 749, 499, "
                    "249), 1 for the 1-step model (399); more steps repeat trained timesteps, fewer skip some."}
DENOISE = {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
           "tooltip": "Strength: 1.0 starts from pure noise; below 1 (img2img, upscale second pass) starts at the "
                      "trained timestep nearest to it (0.5 -> 499)."}


class DMD2Scheduler:
    DESCRIPTION = ("SIGMAS on the MODEL's trained DMD2 timesteps (from the DMD2 loaders' tag; 999/749/499/249 if "
                   "untagged), for SamplerCustom / SamplerCustomAdvanced.")
    CATEGORY = "sampling/DMD2"
    RETURN_TYPES = ("SIGMAS",)
    OUTPUT_TOOLTIPS = ("One sigma per step on a trained timestep, then 0.",)
    FUNCTION = "get_sigmas"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "model": ("MODEL", {"tooltip": "The DMD2 model; its tag says which timesteps it was trained on."}),
            "steps": ("INT", STEPS),
            "denoise": ("FLOAT", DENOISE),
        }}

    def get_sigmas(self, model: Any, steps: int, denoise: float) -> tuple[Any]:
        return (node_sigmas(model, steps, denoise),)


class DMD2Sampler:
    DESCRIPTION = ("The DMD2 sampler for SamplerCustom / SamplerCustomAdvanced: predicts x0 at each trained "
                   "timestep and re-noises it with fresh seeded noise (backward simulation); the first step sees "
                   "unit-variance noise for any first timestep, 399 included.")
    CATEGORY = "sampling/DMD2"
    RETURN_TYPES = ("SAMPLER",)
    OUTPUT_TOOLTIPS = ("The DMD2 sampler.",)
    FUNCTION = "get_sampler"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {}}

    def get_sampler(self) -> tuple[Any]:
        return (host.ksampler(sample_dmd2),)


class DMD2KSampler:
    DESCRIPTION = ("DMD2 in one node: samples on the MODEL's trained timesteps with the DMD2 sampler, no CFG (DMD2 "
                   "was trained without it). Connect a negative and raise cfg only to trade double cost for it.")
    CATEGORY = "sampling/DMD2"
    RETURN_TYPES = ("LATENT",)
    OUTPUT_TOOLTIPS = ("The denoised latent.",)
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "A model from DMD2 Load UNet or DMD2 LoRA."}),
                "positive": ("CONDITIONING", {"tooltip": "The prompt."}),
                "latent_image": ("LATENT", {"tooltip": "Empty Latent Image for txt2img, or an encoded image."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True,
                                 "tooltip": "Seed of the starting noise and of every re-noise step."}),
                "steps": ("INT", STEPS),
                "denoise": ("FLOAT", DENOISE),
            },
            "optional": {
                "negative": ("CONDITIONING", {"tooltip": "Only used with cfg > 1 (each step then costs two UNet "
                                                         "passes). DMD2 needs no negative prompt."}),
                "cfg": ("FLOAT", {"default": 1.0, "min": 1.0, "max": 30.0, "step": 0.1, "round": 0.01,
                                  "tooltip": "Classifier-free guidance, used only with a negative. 1.0 = off (DMD2 "
                                             "was trained without it)."}),
            },
        }

    def sample(self, model: Any, positive: Any, latent_image: dict[str, Any], seed: int, steps: int, denoise: float,
               negative: Any = None, cfg: float = 1.0) -> tuple[dict[str, Any]]:
        if negative is None:
            if cfg > 1.0:
                warn_once("cfg-no-negative", "DMD2 KSampler: cfg is ignored without a negative conditioning")
            negative, cfg = positive, 1.0  # at cfg 1 ComfyUI never runs the negative pass
        sigmas = node_sigmas(model, steps, denoise)
        if len(sigmas) == 0:
            return (latent_image,)
        sampler = host.ksampler(sample_dmd2)
        return (host.sample(model, seed, sigmas, sampler, positive, negative, cfg, latent_image),)
