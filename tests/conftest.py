"""Shared fixtures: tiny real diffusers UNets (random weights) for reference tests."""

from __future__ import annotations

import pytest
import torch


def randomize_(module: torch.nn.Module, seed: int = 0, scale: float = 0.12) -> torch.nn.Module:
    """Give every parameter random values large enough that an off-by-one timestep visibly changes the output
    (diffusers zero-initialises some layers, and small weights mute the timestep embedding)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return module.eval()


def tiny_sd15_unet():
    """SD1.5-shaped (epsilon, cross-attention) UNet2DConditionModel with tiny widths."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=8, norm_num_groups=8,
    )
    return randomize_(unet)


def tiny_sdxl_unet():
    """SDXL-shaped UNet (text_time added conditioning: pooled text embeds + 6 micro-conditioning ids), tiny."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, attention_head_dim=8, norm_num_groups=8, transformer_layers_per_block=1,
        addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=8 * 6 + 12,
    )
    return randomize_(unet, seed=1)


@pytest.fixture(scope="session")
def sd15_unet():
    return tiny_sd15_unet()


@pytest.fixture(scope="session")
def sdxl_unet():
    return tiny_sdxl_unet()
