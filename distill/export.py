"""Export a distilled student: a full UNet (.safetensors, diffusers keys) or a LoRA in DMD2's released kohya format.

Both carry the trained timesteps in their metadata (`dmd2_trained_timesteps`), so our ComfyUI loaders, the
A1111 extension and `python -m sampler generate` run them on the timesteps they were trained on.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import nn

from sampler.models.checkpoints import inspect_state_dict
from sampler.models.stamps import timesteps_metadata
from sampler.models.files import TensorSource, write_safetensors
from sampler.errors import DMD2Error

ADAPTER = "dmd2"


def has_lora(unet: nn.Module) -> bool:
    return ADAPTER in (getattr(unet, "peft_config", None) or {})


def _sources(sd: Mapping[str, torch.Tensor], dtype: torch.dtype) -> dict[str, TensorSource]:
    return {k: TensorSource(dtype, tuple(v.shape), lambda v=v: v.detach().to(dtype)) for k, v in sd.items()}


def _metadata(sd: Mapping[str, torch.Tensor], trained: Sequence[int], note: str) -> dict[str, str]:
    base = inspect_state_dict(sd).base
    meta = {"format": "pt", **timesteps_metadata(trained), "dmd2_trainer": "distill (this pack)"}
    if base:
        meta["dmd2_base"] = base
    if note:
        meta["dmd2_note"] = note
    return meta


def merged_unet(unet: nn.Module) -> nn.Module:
    """A plain UNet with the student's LoRA (if any) folded into its weights; `unet` itself is left untouched."""
    if not has_lora(unet):
        return unet
    merged = copy.deepcopy(unet)
    merged.fuse_lora(adapter_names=[ADAPTER])
    merged.unload_lora()
    return merged


def export_unet(unet: nn.Module, path: Path | str, trained: Sequence[int], dtype: torch.dtype = torch.float16,
                note: str = "") -> Path:
    """Write the student as a full UNet in diffusers key layout (LoRA students are merged first)."""
    sd = merged_unet(unet).state_dict()
    return write_safetensors(path, _sources(sd, dtype), _metadata(sd, trained, note))


def kohya_lora_state_dict(unet: nn.Module) -> dict[str, torch.Tensor]:
    """The student's LoRA in DMD2's released key format: lora_unet_<module path with _>.lora_down.weight /
    .lora_up.weight / .alpha (peft's lora_A is kohya's lora_down, lora_B its lora_up; scale = alpha / rank in both)."""
    from peft.utils import get_peft_model_state_dict

    if not has_lora(unet):
        raise DMD2Error("this student was trained as a full UNet, so it has no LoRA to export: export it as a UNet, "
                        "or train with a LoRA rank")
    alpha = float(unet.peft_config[ADAPTER].lora_alpha)
    sd = {}
    for key, value in get_peft_model_state_dict(unet, adapter_name=ADAPTER).items():
        module, kind = key.rsplit(".lora_", 1)
        name = "lora_unet_" + module.replace(".", "_")
        sd[f"{name}.lora_down.weight" if kind == "A.weight" else f"{name}.lora_up.weight"] = value
        sd[f"{name}.alpha"] = torch.tensor(alpha)
    return sd


def export_lora(unet: nn.Module, path: Path | str, trained: Sequence[int], dtype: torch.dtype = torch.float16,
                note: str = "") -> Path:
    """Write the student's LoRA in DMD2's kohya format (loads wherever the released DMD2 LoRA does)."""
    sd = kohya_lora_state_dict(unet)
    return write_safetensors(path, _sources(sd, dtype), _metadata(sd, trained, note))
