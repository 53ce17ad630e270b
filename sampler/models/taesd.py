"""TAESD / TAESDXL tiny decoder (Bohan Ollin Boer Bohan, "Tiny AutoEncoder for Stable Diffusion").

A 2.4 M-parameter stand-in for the SD / SDXL VAE decoder, about 18x cheaper in FLOPs: live frames decode in a few
milliseconds on a GPU instead of tens. It reads the UNet's latents as they are (no VAE scaling factor) and returns
RGB in [0, 1]. The module layout follows the released `taesd_decoder` / `taesdxl_decoder` files, so their state
dicts load by key.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import WrongKindError, first_line
from ..models.files import load_state_dict

WIDTH = 64


def _conv(n_in: int, n_out: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, bias=bias)


class _SoftClamp(nn.Module):
    """Squash latents smoothly into (-3, 3): out-of-range values from a one-step generator stay finite."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class _ResidualBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.conv = nn.Sequential(_conv(width, width), nn.ReLU(), _conv(width, width), nn.ReLU(), _conv(width, width))
        self.skip = nn.Identity()
        self.fuse = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(self.conv(x) + self.skip(x))


def tiny_decoder(latent_channels: int = 4) -> nn.Sequential:
    """The decoder: clamp, stem, then three x2 upsampling stages of three residual blocks each, and an RGB head."""
    layers: list[nn.Module] = [_SoftClamp(), _conv(latent_channels, WIDTH), nn.ReLU()]
    for _ in range(3):
        layers += [_ResidualBlock(WIDTH) for _ in range(3)]
        layers += [nn.Upsample(scale_factor=2), _conv(WIDTH, WIDTH, bias=False)]
    layers += [_ResidualBlock(WIDTH), _conv(WIDTH, 3)]
    return nn.Sequential(*layers)


def load_tiny_decoder(path: Path | str, device: torch.device | str = "cpu",
                      dtype: torch.dtype = torch.float32) -> nn.Sequential:
    """A tiny decoder with the weights of a taesd(xl)_decoder file (loaded safely, see files.load_state_dict)."""
    decoder = tiny_decoder()
    try:
        decoder.load_state_dict(load_state_dict(path))
    except RuntimeError as e:
        raise WrongKindError(f"{Path(path).name} is not a TAESD decoder ({first_line(e)}): use the catalog's "
                             f"taesd / taesdxl entries (taesd_decoder / taesdxl_decoder files)") from None
    return decoder.to(device, dtype).eval()


@torch.no_grad()
def decode_tiny(decoder: nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """RGB images in [0, 1], shape (B, 3, 8H, 8W), from UNet-space latents."""
    param = next(decoder.parameters())
    return decoder(latents.to(param.device, param.dtype)).float().clamp(0, 1)
