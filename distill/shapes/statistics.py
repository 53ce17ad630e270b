"""What a set of shapes images looks like, measured without a network: background level, shape size, shape
position and edge width of every image, and how widely size and position spread against real data.

The Frechet distance says how far generated images are from real ones, not in which way; these numbers say which
way (shapes too large, too centred, too dark, too soft) and make mode collapse a number: a generator that draws
every shape the same size in the same place has a size and position spread near 0 where real data's is 1.

Every image of the shapes world is one shape in one colour on a flat background, so the measurements are direct:
the background is the median colour of the image's outermost pixels (a shape never covers most of them), a pixel's
coverage is its colour distance from that background over the shape's (the 99th percentile of those distances,
robust to a few stray pixels), and the shape is the coverage map.
"""

from __future__ import annotations

from typing import Sequence

import torch

#: Coverage band of an edge pixel: partly shape, partly background.
_EDGE_BAND = (0.1, 0.9)
#: Quantile of the colour distances taken as the shape's own distance from the background.
_SHAPE_QUANTILE = 0.99


def shape_measurements(images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image measurements (each a (B,) tensor) of images (B, 3, H, W) in [-1, 1]:

    - brightness: mean pixel value in [0, 1];
    - background: mean of the background's RGB in [0, 1];
    - size: square root of the shape's area in pixels (sum of coverage), so it scales like the side of a square;
    - centre_x, centre_y: the coverage-weighted centroid in pixels from the top-left corner;
    - edge_width: edge pixels (coverage strictly between 0.1 and 0.9) per pixel of outline length (the total
      variation of the coverage map), about 0.8 for a one-pixel antialiased edge and more for a blurred one;
    - contrast: the shape's colour distance from the background (RGB, in [0, 1] units): over-saturated colours, as
      strong guidance draws them, lie further from the background than the palette's;
    - grain: root-mean-square deviation of the background's pixel values (coverage below 0.1, every channel) from
      the background colour, 0 for the flat backgrounds of real data.
    """
    x = (images.float() + 1) / 2
    border = torch.cat([x[..., 0, :], x[..., -1, :], x[..., 1:-1, 0], x[..., 1:-1, -1]], dim=-1)
    background = border.median(dim=-1).values
    distance = (x - background[..., None, None]).norm(dim=1)
    contrast = distance.flatten(1).quantile(_SHAPE_QUANTILE, dim=1).clamp_min(1e-6)
    coverage = (distance / contrast[:, None, None]).clamp(0, 1)
    area = coverage.sum(dim=(1, 2)).clamp_min(1e-6)
    pixel = torch.arange(x.shape[-1], dtype=torch.float32) + 0.5
    row = torch.arange(x.shape[-2], dtype=torch.float32) + 0.5
    dx, dy = coverage.diff(dim=2)[:, :-1, :], coverage.diff(dim=1)[:, :, :-1]
    outline = (dx.square() + dy.square()).sqrt().sum(dim=(1, 2)).clamp_min(1e-6)
    low, high = _EDGE_BAND
    edge_pixels = ((coverage > low) & (coverage < high)).sum(dim=(1, 2)).float()
    outside = (coverage < low).unsqueeze(1).expand_as(x)
    deviation = (x - background[..., None, None]).square().where(outside, torch.zeros_like(x))
    grain = (deviation.sum(dim=(1, 2, 3)) / outside.sum(dim=(1, 2, 3)).clamp_min(1)).sqrt()
    return {
        "brightness": x.mean(dim=(1, 2, 3)),
        "background": background.mean(dim=1),
        "size": area.sqrt(),
        "centre_x": (coverage * pixel).sum(dim=(1, 2)) / area,
        "centre_y": (coverage * row[:, None]).sum(dim=(1, 2)) / area,
        "edge_width": edge_pixels / outline,
        "contrast": contrast,
        "grain": grain,
    }


def pooled_spread(values: torch.Tensor, groups: Sequence[str]) -> float:
    """Standard deviation within groups (images of one prompt), pooled: sqrt of the mean within-group variance.

    Within a prompt, so that a circle's and a cross's different areas at the same size do not count as diversity.
    """
    labels = sorted(set(groups))
    index = torch.tensor([labels.index(g) for g in groups])
    variances = [values[index == k].var(dim=0).mean() for k in range(len(labels))]
    return float(torch.stack(variances).mean().sqrt())


def summarise(measurements: dict[str, torch.Tensor], real: dict[str, torch.Tensor],
              prompts: Sequence[str]) -> dict[str, float]:
    """Means of a set's measurements, and its size and position spread as multiples of real data's, both sets
    drawn for the same `prompts` (one per image; spreads are pooled within each prompt's images).

    A spread ratio of 1 is real data's diversity; a mode-collapsed generator is near 0. Means are in the units of
    `shape_measurements` (so a size of 1.5x real's is a 1.5x larger shape).
    """
    def spreads(m: dict[str, torch.Tensor]) -> tuple[float, float]:
        centres = torch.stack([m["centre_x"], m["centre_y"]], dim=1)
        return pooled_spread(m["size"], prompts), pooled_spread(centres, prompts)

    (size, position), (real_size, real_position) = spreads(measurements), spreads(real)
    return {
        "brightness": float(measurements["brightness"].mean()),
        "background": float(measurements["background"].mean()),
        "size": float(measurements["size"].mean()),
        "edge_width": float(measurements["edge_width"].mean()),
        "contrast": float(measurements["contrast"].mean()),
        "grain": float(measurements["grain"].mean()),
        "size_spread": size / real_size,
        "position_spread": position / real_position,
    }
