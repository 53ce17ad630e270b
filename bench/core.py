"""Core sampler cost on a tiny SD1.5-shaped UNet on CPU, all ratios measured side by side in one run.

(a) sample_dmd2 with N steps over N bare UNet forwards: the sampler's own overhead (target <= 1.02).
(b) a 50-step Euler teacher loop with CFG (100 UNet passes) over DMD2 4-step and 1-step generation.
"""

from __future__ import annotations

import torch

from sampler import sample_dmd2, sigmas_for_timesteps, timesteps_for
from sampler.denoiser import DiffusersDenoiser
from sampler.models.tiny import tiny_sd15_unet

from .timing import best_times

LATENT = (1, 4, 32, 32)
TEACHER_STEPS = 50
TEACHER_CFG = 7.0


def teacher_schedule(steps: int) -> torch.Tensor:
    """The teacher's schedule: `steps` timesteps evenly spaced from 999 to 0 (as A1111/ComfyUI 'simple'), then 0."""
    timesteps = torch.linspace(999, 0, steps).round().long().tolist()
    return sigmas_for_timesteps(timesteps).float()


@torch.no_grad()
def teacher_cfg_loop(denoiser, x, sigmas, cond, uncond, cfg):
    """Euler sampling with classifier-free guidance: two UNet passes per step, as a non-distilled model needs."""
    for i in range(len(sigmas) - 1):
        s = sigmas[i] * x.new_ones(x.shape[0])
        d_cond = denoiser(x, s, **cond)
        d_uncond = denoiser(x, s, **uncond)
        denoised = d_uncond + cfg * (d_cond - d_uncond)
        x = x + (x - denoised) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
    return x


def run() -> list[tuple[str, str, str]]:
    torch.manual_seed(0)
    unet = tiny_sd15_unet(widths=(64, 128))
    denoiser = DiffusersDenoiser(unet)
    cond = {"encoder_hidden_states": torch.randn(1, 77, 16)}
    uncond = {"encoder_hidden_states": torch.zeros(1, 77, 16)}
    x = torch.randn(LATENT)
    rows = []

    @torch.no_grad()
    def bare_forwards(timesteps):
        for t in timesteps:
            unet(x, torch.tensor([t]), **cond, return_dict=False)

    def dmd2(steps):
        sigmas = sigmas_for_timesteps(timesteps_for(steps)).float()
        return lambda: sample_dmd2(denoiser, x * sigmas[0], sigmas, cond, disable=True, pure_noise=True)

    for steps in (1, 4):
        plan = timesteps_for(steps)
        t = best_times({"dmd2": dmd2(steps), "bare": lambda: bare_forwards(plan)}, rounds=20)
        rows.append((f"sample_dmd2 {steps}-step / {steps} bare UNet forwards", f"{t['dmd2'] / t['bare']:.3f}",
                     "<= 1.02"))

    teacher_sigmas = teacher_schedule(TEACHER_STEPS)
    t = best_times({"teacher": lambda: teacher_cfg_loop(denoiser, x * teacher_sigmas[0], teacher_sigmas, cond, uncond,
                                                        TEACHER_CFG),
                    "dmd2_4": dmd2(4), "dmd2_1": dmd2(1)}, rounds=3)
    rows.append(("50-step CFG teacher / DMD2 4-step", f"{t['teacher'] / t['dmd2_4']:.1f}x", "~25x"))
    rows.append(("50-step CFG teacher / DMD2 1-step", f"{t['teacher'] / t['dmd2_1']:.1f}x", "~100x"))
    return rows
