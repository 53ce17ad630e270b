"""Sample grids of the student during training: fixed prompts and seeds, so grids of different steps compare."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from sampler.app.pipeline import sample_seeded
from sampler.shapes.world import image_grid

from .data import DistillData


@torch.no_grad()
def sample_grid(student: torch.nn.Module, vae: Any, data: DistillData, prompts: Sequence[str],
                trained: Sequence[int], seed: int = 0) -> Any:
    """One PIL image: the student's sample for each prompt (seed `seed + i`) on its trained timesteps, decoded by
    the teacher's VAE, one row."""
    device = next(vae.parameters()).device
    cond = data.cond(list(prompts))
    latents = sample_seeded(student, cond, trained, [seed + i for i in range(len(prompts))], data.latent_shape,
                            progress=False, device=device)
    pixels = vae.decode((latents / vae.config.scaling_factor).to(vae.dtype)).sample.float()
    return image_grid(((pixels + 1) / 2).clamp(0, 1), columns=len(prompts), scale=1)


def save_sample_grid(grid: Any, folder: Path, step: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step-{step:08d}.png"
    grid.save(path)
    return path
