"""Seeded noise for DMD2 sampling.

DMD2 draws fresh noise at every step (the backward-simulation re-noise), so reproducibility needs a noise source,
not only a starting latent. Each image of a batch gets its own CPU generator: the same seed reproduces the image on
any device. In the command line and pipeline image i of a batch is seeded `seed + i` (`batch_seeds`), so it equals
a single run with that seed; in a host that draws the starting noise itself, `renoise_seeds` ties each image's
re-noise stream to that image's starting noise instead, so it follows the host's batch convention.
"""

from __future__ import annotations

import hashlib
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


def renoise_seeds(seed: int, start_noise: torch.Tensor | None, batch_size: int) -> list[int]:
    """One seed per batch item for its re-noise stream, from the run's `seed` and the item's own starting noise.

    A host that draws the starting noise itself gives each batch item its noise by its own rule (ComfyUI:
    `prepare_noise(latent, seed, batch_index)`, so an item taken out of a batch gets the noise it had in the batch).
    Seeding each item's re-noise from that noise makes the whole image follow the same rule on every path, with no
    batch index passed around: whatever reproduces an item's starting noise reproduces its image. The item's noise
    is read as float32 on the CPU, so the seeds do not depend on the device it lies on. Items without starting noise
    (None, or all zeros: the host's noise was disabled) are told apart by their position in the batch instead.

    Args:
        seed: the run's seed (any integer; taken modulo 2**64).
        start_noise: the starting noise, shape (batch_size, ...), or None.
        batch_size: the number of items.
    """
    if start_noise is not None and start_noise.shape[0] != batch_size:
        raise ValueError(f"starting noise has {start_noise.shape[0]} items, the batch {batch_size}")
    items = (None,) * batch_size if start_noise is None else start_noise.detach().to("cpu", torch.float32)
    seeds = []
    for position, item in enumerate(items):
        digest = hashlib.blake2b((int(seed) % 2**64).to_bytes(8, "little"), digest_size=8)
        if item is not None and bool(item.any()):
            digest.update(item.contiguous().numpy().tobytes())
        else:
            digest.update(b"position" + position.to_bytes(8, "little"))
        seeds.append(int.from_bytes(digest.digest(), "little"))
    return seeds
