"""Standalone DMD2 text-to-image with diffusers components and our sampler (no ComfyUI or A1111).

Text encoders and VAE come from SDXL base 1.0; the UNet is the DMD2 UNet, or SDXL base's own UNet with the DMD2
LoRA fused in. diffusers is imported lazily so the rest of the core stays torch-only.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..denoiser import DiffusersDenoiser
from ..errors import OfflineError, WrongKindError, first_line
from ..models.checkpoints import check_compatible, resolve_model
from ..models.files import check_output_folder, check_output_path, load_state_dict
from ..noise import SeededNoise
from ..plans import DEFAULT_TRAINED
from ..sampling import sample_dmd2
from ..schedule import sigmas_for_timesteps
from .memory import ALL_ON_DEVICE, MemoryPlan, apply_memory_plan

VAE_DOWNSCALE = 8


def pick_device_and_dtype(device: str | None = None, dtype: str | None = None) -> tuple[torch.device, torch.dtype]:
    """CUDA with fp16 when available, else CPU with fp32 (CPU half precision is slow and poorly supported)."""
    try:
        chosen = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError as e:
        raise ValueError(f"--device {device!r} is not a device PyTorch knows ({first_line(e)}); use "
                         f"cuda, cuda:1, cpu, mps, ...") from None
    if dtype is None:
        return chosen, torch.float16 if chosen.type == "cuda" else torch.float32
    dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
    if dtype not in dtypes:
        raise ValueError(f"dtype must be one of {sorted(dtypes)}, got {dtype!r}")
    return chosen, dtypes[dtype]


def check_size(width: int, height: int) -> None:
    """SD-family UNets need both sides divisible by 8 * 2**downsamplings; 64 covers SD1.5 and SDXL."""
    for name, value in (("width", width), ("height", height)):
        if value < 64 or value % 64:
            raise ValueError(f"{name} must be a multiple of 64 and at least 64, got {value}")


def execution_device(pipe: Any) -> torch.device:
    """Where a diffusers pipeline computes: its GPU even when offload hooks keep the weights on the CPU or the meta
    device, where `pipe.unet.device` says "cpu" or "meta" (diffusers' `_execution_device` reads the hooks)."""
    return pipe._execution_device


def sdxl_conditioning(pipe: Any, prompts: Sequence[str], width: int, height: int) -> dict[str, Any]:
    """UNet conditioning for SDXL without classifier-free guidance (DMD2 uses none).

    Micro-conditioning time_ids are (H, W, 0, 0, H, W): original size = target size, no crop, as DMD2 trained.
    """
    device = execution_device(pipe)
    prompt_embeds, _, pooled, _ = pipe.encode_prompt(list(prompts), device=device, do_classifier_free_guidance=False)
    time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=prompt_embeds.dtype, device=device)
    return {"encoder_hidden_states": prompt_embeds,
            "added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids.repeat(len(prompts), 1)}}


def generate_latents(unet: torch.nn.Module, cond: dict[str, Any], timesteps: Sequence[int], seeds: Sequence[int],
                     width: int, height: int, callback: Callable[[dict[str, Any]], None] | None = None,
                     progress: bool = True, device: torch.device | None = None) -> torch.Tensor:
    """Run DMD2 on `timesteps` from seeded unit-variance noise; one seed per image. Returns float32 latents.

    `device`: where noise and latents live, by default the UNet's; pass `execution_device(pipe)` for an offloaded
    UNet, whose own parameters sit on the CPU or the meta device.
    """
    check_size(width, height)
    shape = (unet.config.in_channels, height // VAE_DOWNSCALE, width // VAE_DOWNSCALE)
    return sample_seeded(unet, cond, timesteps, seeds, shape, callback, progress, device)


def sample_seeded(unet: torch.nn.Module, cond: dict[str, Any], timesteps: Sequence[int], seeds: Sequence[int],
                  shape: Sequence[int], callback: Callable[[dict[str, Any]], None] | None = None,
                  progress: bool = True, device: torch.device | None = None) -> torch.Tensor:
    """DMD2 on `timesteps` for an epsilon UNet whose input has `shape` (C, H, W) per image, from seeded
    unit-variance noise (image i: seed `seeds[i]`). No size rule: also pixel-space UNets of any size."""
    device = device or unet.device
    noise = SeededNoise(seeds, shape, device)
    sigmas = sigmas_for_timesteps(timesteps).to(device, torch.float32)
    return sample_dmd2(DiffusersDenoiser(unet), noise.draw() * sigmas[0], sigmas, extra_args=cond,
                       callback=callback, disable=not progress, noise_sampler=noise, pure_noise=True)


def to_pil_images(rgb: torch.Tensor) -> list:
    """PIL images from RGB tensors in [0, 1], shape (B, 3, H, W)."""
    from PIL import Image

    pixels = (rgb.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(p) for p in pixels]


@torch.no_grad()
def decode_to_images(vae: torch.nn.Module, latents: torch.Tensor, device: torch.device | None = None) -> list:
    """Decode latents to PIL images. The stock SDXL VAE overflows in fp16, so it decodes in fp32 when it says so.

    `device`: where to decode, by default the VAE's own; pass `execution_device(pipe)` for an offloaded VAE (its
    offload hook moves the weights there, not the latents).
    """
    if vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
        vae = vae.to(torch.float32)
    latents = (latents / vae.config.scaling_factor).to(device or vae.device, vae.dtype)
    pixels = vae.decode(latents, return_dict=False)[0]
    return to_pil_images((pixels.float() + 1) / 2)


#: Image formats --output may name (.png first: the default), where this PIL build can write them.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def image_suffixes() -> tuple[str, ...]:
    """The IMAGE_SUFFIXES this PIL can save (WebP needs libwebp, for one)."""
    from PIL import Image

    Image.init()
    formats = Image.registered_extensions()
    return tuple(ext for ext in IMAGE_SUFFIXES if formats.get(ext) in Image.SAVE)


#: Where images go when no --output is given, numbered like ComfyUI's SaveImage: outputs/dmd2_00001_.png, ...
DEFAULT_OUTPUT_FOLDER, DEFAULT_OUTPUT_PREFIX = Path("outputs"), "dmd2"


def numbered_paths(folder: Path, prefix: str, count: int, suffix: str = ".png") -> list[Path]:
    """`count` new file names <prefix>_NNNNN_<suffix> in `folder`, numbered on from the highest already there
    (ComfyUI's SaveImage scheme), so a run never replaces an earlier run's images."""
    check_output_folder(folder)
    pattern = re.compile(re.escape(prefix) + r"_(\d{5,})_\.\w+")
    taken = [int(m.group(1)) for p in (folder.iterdir() if folder.is_dir() else ()) if (m := pattern.fullmatch(p.name))]
    start = max(taken, default=0) + 1
    return [folder / f"{prefix}_{n:05d}_{suffix}" for n in range(start, start + count)]


def output_paths(output: Path | None, count: int, overwrite: bool = False) -> list[Path]:
    """Where `count` images go, checked before any work (OutputPathError): `output` itself for one image,
    <stem>-0, <stem>-1, ... for several; numbered new files in outputs/ when `output` is None. An existing file is
    replaced only with `overwrite`."""
    if output is None:
        return numbered_paths(DEFAULT_OUTPUT_FOLDER, DEFAULT_OUTPUT_PREFIX, count)
    paths = [output] if count == 1 else [output.with_name(f"{output.stem}-{i}{output.suffix}") for i in range(count)]
    for path in paths:
        check_output_path(path, image_suffixes(), overwrite=overwrite,
                          exists_hint="choose another --output, leave it out (new numbered files in outputs/), or "
                                      "pass --overwrite")
    return paths


def save_images(images: Sequence, paths: Sequence[Path]) -> list[Path]:
    """Save images[i] to paths[i], creating folders as needed; returns the paths written."""
    for image, path in zip(images, paths, strict=True):
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
    return list(paths)


#: The catalog entry whose text encoders and VAE every SDXL DMD2 generator uses.
SDXL_BASE_ID = "sdxl-base-1.0"
DEFAULT_MODEL_ID = "dmd2-sdxl-4step-lora-fp16"


def sdxl_from_checkpoint(path: Path, dtype: torch.dtype) -> Any:
    """StableDiffusionXLPipeline from the single-file SDXL base checkpoint.

    diffusers reads the model configs and tokenizers of stabilityai/stable-diffusion-xl-base-1.0 (a few MB, cached
    by huggingface_hub after the first run) to lay the single file out; without them it cannot build the pipeline.
    """
    from diffusers import StableDiffusionXLPipeline


    try:
        return StableDiffusionXLPipeline.from_single_file(str(path), torch_dtype=dtype)
    except OSError as e:
        raise OfflineError(f"building the SDXL pipeline from {path} needs the config and tokenizer files of "
                           f"stabilityai/stable-diffusion-xl-base-1.0 from the Hugging Face Hub (fetched once, then "
                           f"cached), and they could not be read: {first_line(e)}") from None


def load_dmd2_sdxl(model: str, models_dir: Path, device: torch.device, dtype: torch.dtype,
                   lora_strength: float = 1.0, progress: Any = None,
                   memory: MemoryPlan | None = None) -> tuple[Any, tuple[int, ...]]:
    """SDXL base with the DMD2 UNet swapped in or the DMD2 LoRA fused; returns (pipeline, trained timesteps).

    `model` is a catalog id or a local file. Files this pack does not recognise as DMD2 get the 4-step plan.
    `memory`: how the pipeline goes onto `device` (`memory.plan_for_device`); by default all of it.
    """

    dmd2 = resolve_model(model, models_dir, progress, kinds=("unet", "lora"), base="sdxl")  # checked before download
    check_compatible(dmd2.info, "lora" if dmd2.info.kind == "lora" else "unet", "sdxl")
    base = resolve_model(SDXL_BASE_ID, models_dir, progress)
    pipe = sdxl_from_checkpoint(base.path, dtype)
    apply_dmd2_weights(pipe, dmd2.path, dmd2.info, lora_strength)
    apply_memory_plan(pipe, memory or ALL_ON_DEVICE, device)
    return pipe, dmd2.info.trained_timesteps or DEFAULT_TRAINED


def apply_dmd2_weights(pipe: Any, path: Path, info: Any, lora_strength: float = 1.0) -> None:
    """Load a DMD2 UNet into `pipe.unet`, or fuse a DMD2 LoRA into it (fused: no per-step LoRA cost)."""

    if info.kind == "unet":
        if info.format != "diffusers":
            raise WrongKindError(f"{path.name} is an {info.format}-format UNet; the command line loads "
                                 f"diffusers-format UNets (the released DMD2 files) or the DMD2 LoRA")
        pipe.unet.load_state_dict(load_state_dict(path))
    else:
        pipe.load_lora_weights(load_state_dict(path), adapter_name="dmd2")
        pipe.fuse_lora(lora_scale=lora_strength)
        pipe.unload_lora_weights()
