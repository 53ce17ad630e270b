"""The official DMD2 training recipes (tianweiy/DMD2, experiments/), as DistillConfig settings.

Every number is the official run's; docs/training.md gives the file and line of each. A recipe is a starting point:
the command line overrides any of its settings (`--recipe sdxl-lora --lr-generator 1e-5`).

What a recipe cannot carry is the hardware: the official runs used 64 GPUs (8 nodes x 8), so their global batch is
64x the per-GPU batch below (128 for SDXL, 2048 for SD1.5), at 1024 px (SDXL) / 512 px (SD1.5). With fewer GPUs the
global batch is smaller by that factor; the learning rates were not tuned for that.
"""

from __future__ import annotations

from typing import Any

from sampler.plans import TRAINED_TIMESTEPS

_SDXL = dict(
    trained_timesteps=TRAINED_TIMESTEPS["sdxl_4step"],  # --denoising --num_denoising_step 4: 999, 749, 499, 249
    guidance_scale=8.0,
    batch_size=2,
    ttur=5,
    gan_generator_weight=5e-3,
    gan_discriminator_weight=1e-2,
    mixed_precision="bf16",  # --use_fp16: bf16 autocast, the real score in bf16
)

RECIPES: dict[str, dict[str, Any]] = {
    # experiments/sdxl/sdxl_cond999_8node_lr5e-5_denoising4step_..._lora.sh (the released DMD2 SDXL LoRA)
    "sdxl-lora": {**_SDXL, "lr_generator": 5e-5, "lr_critic": 5e-5, "lora_rank": 64, "lora_alpha": 8.0},
    # experiments/sdxl/sdxl_cond999_8node_lr5e-7_denoising4step_..._backsim_scratch.sh (the released 4-step UNet)
    "sdxl-full": {**_SDXL, "lr_generator": 5e-7, "lr_critic": 5e-7, "lora_rank": None, "lora_alpha": None},
    # experiments/sdv1.5/laion6.25_sd_baseline_8node_guidance1.75_lr5e-7_..._gan1e-3_..._resume_fixdata.sh: the GAN
    # stage. The official run first trained 39k steps at lr 1e-5 without the GAN (..._lr1e-5_..._from_scratch.sh):
    # `--recipe sd15 --lr-generator 1e-5 --lr-critic 1e-5 --no-gan`.
    "sd15": dict(
        trained_timesteps=TRAINED_TIMESTEPS["sd15_1step"], guidance_scale=1.75, batch_size=32, ttur=10,
        lr_generator=5e-7, lr_critic=5e-7, gan_generator_weight=1e-3, gan_discriminator_weight=1e-2,
        mixed_precision="bf16", gradient_checkpointing=True, lora_rank=None, lora_alpha=None,
    ),
}


def recipe_for(base: str, lora: bool) -> str:
    """The recipe for a teacher of `base` ("sdxl" / "sd15"): SDXL's LoRA or full-UNet recipe, or SD1.5's."""
    if base == "sd15":
        return "sd15"
    return "sdxl-lora" if lora else "sdxl-full"
