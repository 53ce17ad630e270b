"""The three networks of DMD2 training, all initialised from the teacher UNet.

- generator: the student (a full copy of the teacher, or the teacher plus a LoRA through peft);
- real score: the frozen teacher, queried with classifier-free guidance;
- critic: the trainable fake-score UNet (no CFG) with DMD2's GAN classifier head on its bottleneck.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from sampler.denoiser import DiffusersDenoiser
from sampler.models.convert import DMD2_LORA_TARGETS


def concat_cond(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Stack two UNet conditioning dicts (tensors, possibly nested as in SDXL's added_cond_kwargs) along the batch."""
    out: dict[str, Any] = {}
    for key, value in a.items():
        if isinstance(value, dict):
            out[key] = concat_cond(value, b[key])
        elif isinstance(value, torch.Tensor):
            out[key] = torch.cat([value, b[key]])
        else:
            out[key] = value
    return out


def predict_x0(unet: nn.Module, x: torch.Tensor, sigma: torch.Tensor, cond: dict[str, Any]) -> torch.Tensor:
    """x0 prediction of an epsilon UNet for the variance-exploding input x = x0 + sigma * noise (one sigma per
    sample), on the integer timestep of sigma: the same wrapper `sample_dmd2` runs at inference."""
    return DiffusersDenoiser(unet)(x, sigma, **cond)


def guided_x0(unet: nn.Module, x: torch.Tensor, sigma: torch.Tensor, cond: dict[str, Any],
              uncond: dict[str, Any], guidance_scale: float) -> torch.Tensor:
    """Classifier-free guided x0 of the real-score model: x0_u + s * (x0_c - x0_u), both halves in one batch."""
    if guidance_scale == 1.0:
        return predict_x0(unet, x, sigma, cond)
    both = predict_x0(unet, torch.cat([x, x]), torch.cat([sigma, sigma]), concat_cond(cond, uncond))
    x0_cond, x0_uncond = both.chunk(2)
    return x0_uncond + guidance_scale * (x0_cond - x0_uncond)


class GANHead(nn.Module):
    """DMD2's real-vs-generated classifier: a small conv stack on the fake-score UNet's bottleneck features."""

    def __init__(self, channels: int, hidden: int = 256, groups: int = 8):
        super().__init__()
        hidden = min(hidden, channels)
        self.net = nn.Sequential(
            nn.Conv2d(channels, hidden, 3, stride=2, padding=1), nn.GroupNorm(min(groups, hidden), hidden), nn.SiLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1), nn.GroupNorm(min(groups, hidden), hidden), nn.SiLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(hidden, 1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features.float()).squeeze(1)


class Critic(nn.Module):
    """Fake-score UNet + GAN head: one forward gives the fake score's x0 and the GAN logit of the same noisy input,
    so the discriminator shares the fake score's encoder as in DMD2 (sec. 4.3)."""

    def __init__(self, unet: nn.Module, head: GANHead | None = None):
        super().__init__()
        self.unet = unet
        self.head = head if head is not None else GANHead(unet.config.block_out_channels[-1])
        self._bottleneck: torch.Tensor | None = None
        unet.mid_block.register_forward_hook(self._keep_bottleneck)

    def _keep_bottleneck(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        self._bottleneck = output

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        x0 = predict_x0(self.unet, x, sigma, cond)
        features, self._bottleneck = self._bottleneck, None
        return x0, self.head(features)


def lora_config(rank: int, alpha: float | None = None):
    """peft LoraConfig on the modules DMD2's released LoRA adapts (attention, feed-forward, resnet convs, time
    projections, down/upsamplers of the down/mid/up blocks); alpha defaults to DMD2's 8 at rank 64, scaled."""
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else rank / 8, init_lora_weights="gaussian",
                      target_modules=r".*(down_blocks|mid_block|up_blocks).*\.(" +
                      "|".join(t.replace(".", r"\.") for t in DMD2_LORA_TARGETS) + ")$")


def build_generator(teacher: nn.Module, lora_rank: int | None = None, lora_alpha: float | None = None) -> nn.Module:
    """The student, initialised from the teacher: a trainable full copy, or a frozen copy with a trainable LoRA.

    peft's "gaussian" init leaves lora_B at zero, so a LoRA student starts exactly at the teacher either way.
    """
    generator = copy.deepcopy(teacher).train()
    if lora_rank is None:
        return generator.requires_grad_(True)
    generator.requires_grad_(False)
    generator.add_adapter(lora_config(lora_rank, lora_alpha), adapter_name="dmd2")
    return generator


def build_critic(teacher: nn.Module) -> Critic:
    """A trainable copy of the teacher as the fake-score model, plus a fresh GAN head."""
    return Critic(copy.deepcopy(teacher).requires_grad_(True).train())
