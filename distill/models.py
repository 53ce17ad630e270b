"""The three networks of DMD2 training, all initialised from the teacher UNet.

- generator: the student (a full copy of the teacher, or the teacher plus a LoRA through peft);
- real score: the frozen teacher, queried with classifier-free guidance;
- critic: the trainable fake-score UNet (no CFG) with DMD2's GAN classifier head on its bottleneck.

The official code these follow is tianweiy/DMD2 (main/sd_guidance.py, main/sd_unified_model.py); docs/training.md
lists every number with its file and line.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from sampler.denoiser import DiffusersDenoiser, unet_inputs
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


def bottleneck_size(unet: nn.Module, latent_hw: tuple[int, int]) -> tuple[int, int]:
    """Height and width of the UNet's mid-block features for a latent of `latent_hw` (each downsampler is a
    stride-2 3x3 convolution with padding 1: n -> ceil(n / 2))."""
    h, w = latent_hw
    for block in unet.down_blocks:
        if getattr(block, "downsamplers", None):
            h, w = -(-h // 2), -(-w // 2)
    return h, w


class GANHead(nn.Module):
    """DMD2's real-vs-generated classifier on the fake-score UNet's bottleneck (official main/sd_guidance.py:107-133):
    4x4 stride-2 convolutions + GroupNorm(32) + SiLU until the map is at most 4x4, one convolution the size of the
    remaining map down to 1x1 (+ GroupNorm + SiLU), then a 1x1 convolution to one logit. All convolutions keep the
    bottleneck's width (1280 for SD1.5 and SDXL). SDXL at 1024 px (32x32 bottleneck) gets 3 stride-2 layers and SD1.5
    at 512 px (8x8) one, exactly the official heads; other sizes follow the same rule.
    """

    def __init__(self, channels: int, size: tuple[int, int]):
        super().__init__()
        groups = math.gcd(32, channels)
        h, w = size
        layers: list[nn.Module] = []
        while max(h, w) > 4:
            if min(h, w) < 2:
                raise ValueError(f"a {size[0]}x{size[1]} bottleneck is too elongated for the GAN head")
            layers += [nn.Conv2d(channels, channels, 4, stride=2, padding=1), nn.GroupNorm(groups, channels), nn.SiLU()]
            h, w = h // 2, w // 2
        layers += [nn.Conv2d(channels, channels, (h, w), stride=(h, w)), nn.GroupNorm(groups, channels), nn.SiLU(),
                   nn.Conv2d(channels, 1, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features.float()).flatten()


def unet_bottleneck(unet: nn.Module, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                    added_cond_kwargs: dict[str, Any] | None = None) -> torch.Tensor:
    """The mid block's output of a diffusers UNet2DConditionModel: its forward up to the bottleneck, the up blocks
    skipped (what DMD2's classify mode returns last, official main/sd_unet_forward.py:249-251).

    Uses the UNet's own embedding helpers and blocks; the test checks the result against the mid block's output in a
    full forward. ControlNet / adapter residuals, attention masks, class labels and image hints are not supported:
    SD1.5 and SDXL use none of them.
    """
    if unet.config.center_input_sample or unet.config.class_embed_type or \
            unet.config.addition_embed_type not in (None, "text_time"):
        raise ValueError("the GAN head supports SD1.5 / SDXL-style UNets (no class embedding, no image hint)")
    emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timestep), None)
    aug = unet.get_aug_embed(emb=emb, encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added_cond_kwargs)
    emb = emb + aug if aug is not None else emb
    if unet.time_embed_act is not None:
        emb = unet.time_embed_act(emb)
    context = unet.process_encoder_hidden_states(encoder_hidden_states=encoder_hidden_states,
                                                 added_cond_kwargs=added_cond_kwargs)
    h = unet.conv_in(sample)
    for block in (*unet.down_blocks, unet.mid_block):
        cross = {"encoder_hidden_states": context} if getattr(block, "has_cross_attention", False) else {}
        h = block(h, emb, **cross)
        if block is not unet.mid_block:
            h = h[0]  # down blocks also return their skip connections, which only the up blocks read
    return h


class Critic(nn.Module):
    """Fake-score UNet + (optional) GAN head. One forward serves a whole update, so under DDP / FSDP every call uses
    every parameter the update trains:

    - `denoise=(x, sigma, cond)`: the fake score's x0 for x = x0 + sigma * noise (the full UNet);
    - `classify=(x, sigma, cond)`: GAN logits of noisy samples from the bottleneck only (the up blocks skipped, as
      the official code does): the discriminator shares the fake score's encoder (DMD2 sec. 4.3).
    """

    def __init__(self, unet: nn.Module, head: GANHead | None):
        super().__init__()
        self.unet = unet
        self.head = head

    def forward(self, denoise: tuple | None = None, classify: tuple | None = None
                ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        x0 = predict_x0(self.unet, *denoise) if denoise is not None else None
        if classify is None:
            return x0, None
        if self.head is None:
            raise ValueError("this critic has no GAN head (built without the GAN)")
        x, sigma, cond = classify
        sample, timestep = unet_inputs(x, sigma, next(self.unet.parameters()).dtype)
        features = unet_bottleneck(self.unet, sample, timestep, cond["encoder_hidden_states"].to(sample.dtype),
                                   cond.get("added_cond_kwargs"))
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


def build_critic(teacher: nn.Module, latent_shape: tuple[int, int, int] | None) -> Critic:
    """A trainable copy of the teacher as the fake-score model, plus a fresh GAN head for latents of `latent_shape`
    (C, H, W); None: no GAN head."""
    unet = copy.deepcopy(teacher).requires_grad_(True).train()
    head = None
    if latent_shape is not None:
        head = GANHead(unet.config.block_out_channels[-1], bottleneck_size(unet, latent_shape[1:]))
    return Critic(unet, head)
