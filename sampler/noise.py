"""Seeded noise for DMD2 sampling.

DMD2 draws fresh noise at every step (the backward-simulation re-noise), so reproducibility needs a noise source,
not only a starting latent. Each image of a batch gets its own CPU generator seeded `seed + i`: the same seed
reproduces the image on any device, and image i of a batch equals a single run with seed `seed + i`.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

NoiseSampler = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class SeededNoise:
    """A stream of standard-normal noise per batch item, drawn on CPU from per-item generators."""

    def __init__(self, seeds: Sequence[int], shape: Sequence[int], device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32):
        """`seeds`: one seed per batch item; `shape`: the shape of one item (C, H, W)."""
        if len(seeds) == 0:
            raise ValueError("need at least one seed")
        self.generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        self.shape = tuple(shape)
        self.device = torch.device(device)
        self.dtype = dtype

    def draw(self) -> torch.Tensor:
        """The next noise tensor for the whole batch, shape (len(seeds), *shape)."""
        items = [torch.randn(self.shape, generator=g, dtype=torch.float32) for g in self.generators]
        return torch.stack(items).to(self.device, self.dtype)

    def __call__(self, sigma: torch.Tensor | None = None, sigma_next: torch.Tensor | None = None) -> torch.Tensor:
        """k-diffusion noise-sampler signature; the sigmas are ignored (DMD2 re-noises with independent noise)."""
        return self.draw()


def batch_seeds(seed: int, batch_size: int) -> list[int]:
    """Seeds of a batch that starts at `seed`: seed, seed + 1, ..."""
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    return [seed + i for i in range(batch_size)]
