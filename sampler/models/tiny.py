"""Real diffusers architectures at toy widths with random weights.

Tests, benchmarks and smoke runs use them to exercise the exact code paths of SD1.5 / SDXL models offline and in
seconds on a CPU. Their images are noise: they check arithmetic, not quality.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

from .convert import DMD2_LORA_TARGETS


def randomize_(module: torch.nn.Module, seed: int = 0, scale: float = 0.12) -> torch.nn.Module:
    """Give every parameter random values large enough that an off-by-one timestep visibly changes the output
    (diffusers zero-initialises some layers, and small weights mute the timestep embedding)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return module.eval()


def tiny_sd15_unet(seed: int = 0, widths: tuple[int, ...] = (32, 64)) -> torch.nn.Module:
    """SD1.5-shaped (epsilon, cross-attention 16) UNet2DConditionModel."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=widths,
        down_block_types=("CrossAttnDownBlock2D",) + ("DownBlock2D",) * (len(widths) - 1),
        up_block_types=("UpBlock2D",) * (len(widths) - 1) + ("CrossAttnUpBlock2D",),
        cross_attention_dim=16, attention_head_dim=8, norm_num_groups=8,
    )
    return randomize_(unet, seed)


def tiny_sdxl_unet(seed: int = 1) -> torch.nn.Module:
    """SDXL-shaped UNet: text_time added conditioning (12-dim pooled text + 6 micro-conditioning ids)."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, attention_head_dim=8, norm_num_groups=8, transformer_layers_per_block=1,
        addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=8 * 6 + 12,
    )
    return randomize_(unet, seed)


def tiny_clip_tokenizer(folder: Path):
    """A real CLIPTokenizer over a vocabulary of single letters (no merges), written to `folder`."""
    from transformers import CLIPTokenizer

    letters = list(string.ascii_lowercase)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for token in letters + [c + "</w>" for c in letters]:
        vocab[token] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16)


def _tiny_text_config(hidden_size: int, projection_dim: int):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=54, hidden_size=hidden_size, intermediate_size=16, num_hidden_layers=2,
                          num_attention_heads=2, max_position_embeddings=16, projection_dim=projection_dim,
                          bos_token_id=0, eos_token_id=1, pad_token_id=1)


def _tiny_vae():
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 8, 8),
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        norm_num_groups=4, layers_per_block=1, sample_size=64)
    return randomize_(vae, seed=3, scale=0.1)


def _tiny_scheduler():
    from diffusers import LCMScheduler

    return LCMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def tiny_sdxl_pipeline(folder: Path):
    """StableDiffusionXLPipeline whose two text encoders (8 + 8 dims) feed the tiny SDXL UNet; `folder` holds the
    tokenizer files."""
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    return StableDiffusionXLPipeline(
        vae=_tiny_vae(),
        text_encoder=randomize_(CLIPTextModel(_tiny_text_config(8, 8)), seed=4, scale=0.3),
        text_encoder_2=randomize_(CLIPTextModelWithProjection(_tiny_text_config(8, 12)), seed=5, scale=0.3),
        tokenizer=tiny_clip_tokenizer(folder / "tokenizer"), tokenizer_2=tiny_clip_tokenizer(folder / "tokenizer_2"),
        unet=tiny_sdxl_unet(), scheduler=_tiny_scheduler(),
    )


def tiny_sd15_pipeline(folder: Path):
    """StableDiffusionPipeline whose text encoder (16 dims) feeds the tiny SD1.5 UNet; `folder` holds the tokenizer
    files. No safety checker."""
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTextModel

    return StableDiffusionPipeline(
        vae=_tiny_vae(), text_encoder=randomize_(CLIPTextModel(_tiny_text_config(16, 16)), seed=4, scale=0.3),
        tokenizer=tiny_clip_tokenizer(folder / "tokenizer"), unet=tiny_sd15_unet(), scheduler=_tiny_scheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def dmd2_format_lora(unet: torch.nn.Module, rank: int = 64, alpha: float = 8.0, device: str = "cpu",
                     seed: int = 0, scale: float = 0.05) -> dict[str, torch.Tensor]:
    """A LoRA for `unet` in DMD2's exact key format: lora_unet_<diffusers module path with _>.lora_down.weight /
    .lora_up.weight / .alpha. Random values (device "meta": shapes only, for detection tests on full-size UNets)."""
    g = torch.Generator().manual_seed(seed)

    def tensor(*shape: int) -> torch.Tensor:
        if device == "meta":
            return torch.empty(shape, device="meta")
        return torch.randn(shape, generator=g) * scale

    sd = {}
    for name, module in unet.named_modules():
        if not (isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and name.endswith(DMD2_LORA_TARGETS)
                and name.startswith(("down_blocks", "up_blocks", "mid_block"))):
            continue
        key = "lora_unet_" + name.replace(".", "_")
        if isinstance(module, torch.nn.Linear):
            down, up = (rank, module.in_features), (module.out_features, rank)
        else:
            down, up = (rank, module.in_channels, *module.kernel_size), (module.out_channels, rank, 1, 1)
        sd[key + ".lora_down.weight"] = tensor(*down)
        sd[key + ".lora_up.weight"] = tensor(*up)
        sd[key + ".alpha"] = torch.empty((), device="meta") if device == "meta" else torch.tensor(float(alpha))
    return sd
