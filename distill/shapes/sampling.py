"""Teacher baselines: DDIM with classifier-free guidance through diffusers' own DDIMScheduler.

Deliberately independent of the DMD2 core (sampler/), so the teacher rows of a comparison do not share a bug with
the student rows. Timesteps are spaced "trailing": the first step is t=999, where pure noise really lives (the
"leading" spacing starts 4 steps at t=750 and gives the naive few-step teacher an unfair mismatch), and the 4-step
teacher then runs exactly DMD2's 4-step timesteps 999, 749, 499, 249.
"""

from __future__ import annotations

from typing import Sequence

import torch
from tqdm.auto import tqdm

from sampler.schedule import BETA_END, BETA_START, NUM_TRAIN_TIMESTEPS
from sampler.shapes import IMAGE_SIZE, PromptEncoder, tokenize


def ddim_scheduler():
    """DDIMScheduler on the SD scaled-linear schedule (eta 0: deterministic given the starting noise)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, beta_schedule="scaled_linear",
                         beta_start=BETA_START, beta_end=BETA_END, clip_sample=False, set_alpha_to_one=False,
                         timestep_spacing="trailing")


def seeded_noise(seed: int, count: int) -> torch.Tensor:
    """Starting noise (count, 3, 32, 32); image i from its own CPU generator seeded seed + i."""
    return torch.stack([torch.randn(3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(seed + i))
                        for i in range(count)])


@torch.no_grad()
def teacher_sample(unet: torch.nn.Module, encoder: PromptEncoder, prompts: Sequence[str], steps: int,
                   guidance_scale: float, seed: int = 0, progress: bool = False) -> torch.Tensor:
    """Images (B, 3, 32, 32) in [-1, 1] from `steps` DDIM steps with classifier-free guidance.

    eps = eps("") + guidance_scale * (eps(prompt) - eps("")); the unconditional and conditional passes run as one
    batch. Image i starts from noise seeded seed + i, so it does not depend on the rest of the batch.
    """
    device = next(unet.parameters()).device
    scheduler = ddim_scheduler()
    scheduler.set_timesteps(steps)
    x = seeded_noise(seed, len(prompts)).to(device) * scheduler.init_noise_sigma
    cond = encoder(tokenize(prompts).to(device))
    both = torch.cat([encoder(tokenize([""] * len(prompts)).to(device)), cond])
    for t in tqdm(scheduler.timesteps, disable=not progress, desc=f"teacher {steps} steps"):
        eps_uncond, eps_cond = unet(torch.cat([x, x]), t, encoder_hidden_states=both, return_dict=False)[0].chunk(2)
        eps = eps_uncond + guidance_scale * (eps_cond - eps_uncond)
        x = scheduler.step(eps, t, x).prev_sample
    return x.clamp(-1, 1)
