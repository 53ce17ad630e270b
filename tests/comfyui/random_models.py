"""Random-weight models of real SD1.5 shapes for the end-to-end suite, built once and cached outside the repo.

ComfyUI detects a diffusers UNet by matching its exact config, so the UNet is full-size SD1.5 (860M parameters,
fp16, 1.7 GB); CLIP-L (HF keys) and the SD VAE (diffusers keys) load through CLIPLoader and VAELoader. Weights come
from fixed seeds, so every machine builds the same files. An SDXL-shaped LoRA stub (one module) checks the base
mismatch message; an SD1.5 LoRA in DMD2's kohya key format (every module DMD2 adapts, rank 4, a few MB) covers the
UNet of the same SD1.5 config.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import save_file

VERSION = "1"
FILES = {"unet": "diffusion_models/e2e_sd15_unet.safetensors", "clip": "text_encoders/e2e_clip_l.safetensors",
         "vae": "vae/e2e_sd_vae.safetensors", "sdxl_lora": "loras/e2e_sdxl_lora.safetensors",
         "sd15_lora": "loras/e2e_sd15_dmd2_lora.safetensors"}
SD15_UNET_CONFIG = dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8)


def cache_dir() -> Path:
    """$DMD2_E2E_CACHE, else ~/.cache/dmd2-e2e (a few GB; never inside the repository)."""
    return Path(os.environ.get("DMD2_E2E_CACHE") or Path.home() / ".cache" / "dmd2-e2e") / f"v{VERSION}"


def _save(sd: dict[str, torch.Tensor], path: Path, dtype: torch.dtype) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().to(dtype).contiguous() for k, v in sd.items()}, tmp)
    os.replace(tmp, path)


def build(root: Path | None = None) -> dict[str, Path]:
    """Paths of the cached models (relative layout = ComfyUI models folder), building the missing ones."""
    root = root or cache_dir()
    paths = {k: root / v for k, v in FILES.items()}
    if not paths["unet"].exists():
        from diffusers import UNet2DConditionModel

        torch.manual_seed(0)
        unet = UNet2DConditionModel(**SD15_UNET_CONFIG)  # SD1.5 config
        _save(unet.state_dict(), paths["unet"], torch.float16)
    if not paths["clip"].exists():
        from transformers import CLIPTextConfig, CLIPTextModel

        torch.manual_seed(1)
        config = CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu")
        sd = {k if k.startswith("text_model.") else "text_model." + k: v  # HF layout, whatever transformers saves
              for k, v in CLIPTextModel(config).state_dict().items() if not k.endswith("position_ids")}
        sd["text_projection.weight"] = torch.eye(768)
        _save(sd, paths["clip"], torch.float16)
    if not paths["vae"].exists():
        from diffusers import AutoencoderKL

        torch.manual_seed(2)
        vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4)
        _save(vae.state_dict(), paths["vae"], torch.float32)
    if not paths["sdxl_lora"].exists():
        key = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"
        g = torch.Generator().manual_seed(3)
        _save({f"{key}.lora_down.weight": torch.randn(4, 2048, generator=g) * 0.01,
               f"{key}.lora_up.weight": torch.zeros(640, 4), f"{key}.alpha": torch.tensor(4.0)},
              paths["sdxl_lora"], torch.float16)
    if not paths["sd15_lora"].exists():
        _save(sd15_dmd2_lora(), paths["sd15_lora"], torch.float16)
    return paths


def sd15_dmd2_lora(rank: int = 4) -> dict[str, torch.Tensor]:
    """A LoRA in DMD2's exact kohya key format (sampler.models.tiny.dmd2_format_lora) over the SD1.5 diffusers UNet above;
    the UNet is built on the meta device (module shapes only, no weights). Values ~0.05 so the update is visible."""
    import sys

    from diffusers import UNet2DConditionModel

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from sampler.models.tiny import dmd2_format_lora

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD15_UNET_CONFIG)
    return dmd2_format_lora(unet, rank=rank, alpha=float(rank), seed=4)
