"""Procedural training data of the shapes world: one coloured shape on a dark background per 32x32 image.

Shapes are drawn from signed distance functions on a pixel-centre grid, with a one-pixel antialiased edge
(coverage = clamp(0.5 - distance, 0, 1)), so everything is a few vectorised torch operations and exactly
reproducible from a generator. Shapes are axis-aligned: size, position and background vary, orientation does not,
which keeps the teacher's job small enough to learn in minutes on a CPU.
"""

from __future__ import annotations

from typing import Sequence

import torch

from sampler.shapes import COLOURS, IMAGE_SIZE, PROMPTS, SHAPES

MIN_SIZE, MAX_SIZE = 10.0, 24.0
#: Background grey level range: dark, with a little variation between images.
BACKGROUND = (0.02, 0.18)
#: Half-extent of each shape over its size (how far it reaches from its centre), to keep it inside the image.
_REACH = {"circle": 0.5, "square": 0.5, "triangle": 3**-0.5, "cross": 0.5}


def _box(p: torch.Tensor, half_x: torch.Tensor, half_y: torch.Tensor) -> torch.Tensor:
    """Signed distance to an axis-aligned box centred at the origin; p is (..., 2), halves broadcast."""
    q = p.abs() - torch.stack([half_x, half_y], dim=-1)
    return q.clamp(min=0).norm(dim=-1) + q.amax(dim=-1).clamp(max=0)


def _triangle(p: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
    """Distance-like field of an upright equilateral triangle centred on its centroid: the largest distance past
    its three edges (exact inside and along the edges, which is all a one-pixel antialiased edge needs)."""
    inradius = side / (2 * 3**0.5)
    # Outward edge normals in image coordinates (y grows downwards): the base, then the two slanted sides.
    normals = torch.tensor([[0.0, 1.0], [3**0.5 / 2, -0.5], [-(3**0.5) / 2, -0.5]])
    return (p @ normals.T).amax(dim=-1) - inradius


def _cross(p: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """Signed distance to a plus sign: two crossed bars, `size` long and a third of it wide."""
    half = size / 2
    return torch.minimum(_box(p, half, half / 3), _box(p, half / 3, half))


#: Signed distance field of each shape, f(p, size) with p (..., 2) relative to the shape's centre.
_FIELDS = {
    "circle": lambda p, size: p.norm(dim=-1) - size / 2,
    "square": lambda p, size: _box(p, size / 2, size / 2),
    "triangle": _triangle,
    "cross": _cross,
}


def render(prompts: Sequence[str], generator: torch.Generator) -> torch.Tensor:
    """Images (B, 3, 32, 32) in [-1, 1] of the prompted shape in the prompted colour, at a random size
    (10-24 px across) and position (wholly inside the image) on a dark background of random brightness."""
    words = [p.split() for p in prompts]
    if any(len(w) != 2 or w[0] not in COLOURS or w[1] not in SHAPES for w in words):
        raise ValueError(f"render needs '<colour> <shape>' prompts (one of {', '.join(PROMPTS)}), got {list(prompts)}")
    n = len(prompts)
    shape_ids = torch.tensor([SHAPES.index(w[1]) for w in words])
    colour = torch.tensor([COLOURS[w[0]] for w in words]).reshape(n, 3, 1, 1)
    size = MIN_SIZE + (MAX_SIZE - MIN_SIZE) * torch.rand(n, generator=generator)
    reach = torch.tensor([_REACH[w[1]] for w in words]) * size
    centre = reach[:, None] + (IMAGE_SIZE - 2 * reach[:, None]) * torch.rand(n, 2, generator=generator)
    low, high = BACKGROUND
    background = (low + (high - low) * torch.rand(n, generator=generator)).reshape(n, 1, 1, 1)
    pixel = torch.arange(IMAGE_SIZE, dtype=torch.float32) + 0.5
    grid = torch.stack(torch.meshgrid(pixel, pixel, indexing="xy"), dim=-1)  # (H, W, 2) as (x, y)
    p = grid - centre[:, None, None, :]
    distance = torch.empty(n, IMAGE_SIZE, IMAGE_SIZE)
    for k, name in enumerate(SHAPES):  # each image's own field only
        mask = shape_ids == k
        distance[mask] = _FIELDS[name](p[mask], size[mask][:, None, None])
    coverage = (0.5 - distance).clamp(0, 1)[:, None]
    return (background + (colour - background) * coverage) * 2 - 1


def sample_batch(n: int, generator: torch.Generator) -> tuple[torch.Tensor, list[str]]:
    """`n` images of uniformly random prompts, and the prompts."""
    prompts = [PROMPTS[i] for i in torch.randint(len(PROMPTS), (n,), generator=generator).tolist()]
    return render(prompts, generator), prompts
