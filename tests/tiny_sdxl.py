"""A tiny SDXL-shaped diffusers pipeline (random weights, real architectures) built offline for tests."""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

from conftest import randomize_, tiny_sdxl_unet


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


def tiny_sdxl_pipeline(folder: Path):
    """StableDiffusionXLPipeline whose text encoders feed the tiny SDXL UNet (8 + 8 = 16 cross-attention dims)."""
    from diffusers import AutoencoderKL, LCMScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    def text_config(projection_dim):
        return CLIPTextConfig(vocab_size=54, hidden_size=8, intermediate_size=16, num_hidden_layers=2,
                              num_attention_heads=2, max_position_embeddings=16, projection_dim=projection_dim,
                              bos_token_id=0, eos_token_id=1, pad_token_id=1)

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 8, 8),
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        norm_num_groups=4, layers_per_block=1, sample_size=64)
    return StableDiffusionXLPipeline(
        vae=randomize_(vae, seed=3, scale=0.1),
        text_encoder=randomize_(CLIPTextModel(text_config(8)), seed=4, scale=0.3),
        text_encoder_2=randomize_(CLIPTextModelWithProjection(text_config(12)), seed=5, scale=0.3),
        tokenizer=tiny_clip_tokenizer(folder / "tok1"), tokenizer_2=tiny_clip_tokenizer(folder / "tok2"),
        unet=tiny_sdxl_unet(),
        scheduler=LCMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"),
    )
