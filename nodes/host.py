"""Every ComfyUI internal the node classes use, imported lazily, in one place.

The node modules call these small functions instead of importing ComfyUI at module level, so their schemas and the
glue logic can be unit-tested without ComfyUI (tests replace these functions) and a ComfyUI rename breaks one
function here, not every node. Stock-list registration lives apart, in `register.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch


def filename_list(folder: str) -> list[str]:
    """Files ComfyUI lists in a model folder kind ("diffusion_models", "loras", ...), relative names."""
    import folder_paths

    return list(folder_paths.get_filename_list(folder))


def full_path(folder: str, name: str) -> Path | None:
    """Absolute path of a listed file, None if ComfyUI does not know it."""
    import folder_paths

    path = folder_paths.get_full_path(folder, name)
    return Path(path) if path else None


def folder_paths(folder: str) -> list[Path]:
    """Every directory ComfyUI searches for `folder` (models/<folder>, extra_model_paths.yaml entries, ...)."""
    import folder_paths as comfy_folder_paths

    return [Path(p) for p in comfy_folder_paths.get_folder_paths(folder)]


def models_dir() -> Path:
    """ComfyUI's models folder (honours --base-directory); catalog downloads go to its sub-folders."""
    import folder_paths

    return Path(folder_paths.models_dir)


def progress_bar(total: int) -> Any:
    """A ComfyUI ProgressBar (the node's bar in the UI): `.update_absolute(value, total)`."""
    import comfy.utils

    return comfy.utils.ProgressBar(total)


def load_diffusion_model(path: Path, state_dict: dict[str, torch.Tensor] | None, dtype: str) -> Any:
    """A MODEL from a UNet file (diffusers or LDM keys), as UNETLoader does; `state_dict` if already loaded safely."""
    import comfy.sd

    options = weight_dtype_options(dtype)
    if state_dict is None:
        return comfy.sd.load_diffusion_model(str(path), model_options=options)
    model = comfy.sd.load_diffusion_model_state_dict(state_dict, model_options=options)
    if model is None:
        raise RuntimeError(f"ComfyUI could not detect the model type of {path}")
    return model


def _dtypes() -> dict[str, torch.dtype]:
    names = {"fp16": torch.float16, "bf16": torch.bfloat16}
    for name in ("fp8_e4m3fn", "fp8_e5m2"):
        if hasattr(torch, "float8" + name[3:]):
            names[name] = getattr(torch, "float8" + name[3:])
    return names


def weight_dtypes() -> list[str]:
    """Weight dtype choices: default, fp16, bf16, and fp8 where this torch has the fp8 types (as UNETLoader)."""
    names = ["default"] + list(_dtypes())
    if "fp8_e4m3fn" in names:
        names.insert(names.index("fp8_e4m3fn") + 1, "fp8_e4m3fn_fast")
    return names


def weight_dtype_options(dtype: str) -> dict[str, Any]:
    """model_options for comfy.sd.load_diffusion_model for a `weight_dtypes()` choice."""
    if dtype == "default":
        return {}
    if dtype.endswith("_fast"):  # fp8 weights with ComfyUI's fp8 matmul where the GPU has it
        return {"dtype": _dtypes()[dtype[: -len("_fast")]], "fp8_optimizations": True}
    return {"dtype": _dtypes()[dtype]}


def load_lora_file(path: Path) -> dict[str, torch.Tensor]:
    import comfy.utils

    return comfy.utils.load_torch_file(str(path), safe_load=True)


def apply_lora(model: Any, lora: dict[str, torch.Tensor], strength: float) -> Any:
    """The MODEL with the LoRA's UNet weights patched in (as LoraLoaderModelOnly)."""
    import comfy.sd

    return comfy.sd.load_lora_for_models(model, None, lora, strength, 0)[0]


def model_base(model: Any) -> str | None:
    """"sdxl", "sd15" or None for a MODEL, from the UNet config ComfyUI detected."""
    config = getattr(getattr(model.model, "model_config", None), "unet_config", None) or {}
    context, adm = config.get("context_dim"), config.get("adm_in_channels")
    if context == 2048 and adm == 2816:
        return "sdxl"
    if context == 768 and not adm:
        return "sd15"
    return None


def noise_sampler(x: torch.Tensor, seed: int | None) -> Callable[[Any, Any], torch.Tensor]:
    """ComfyUI's seeded noise sampler (the one its ancestral samplers use)."""
    from comfy.k_diffusion.sampling import default_noise_sampler

    return default_noise_sampler(x, seed=seed)


def ksampler(function: Callable[..., torch.Tensor]) -> Any:
    """A SAMPLER object running a k-diffusion style sampler function."""
    import comfy.samplers

    return comfy.samplers.KSAMPLER(function)


def sample(model: Any, seed: int, sigmas: torch.Tensor, sampler: Any, positive: Any, negative: Any, cfg: float,
           latent: dict[str, Any]) -> dict[str, Any]:
    """Run `sampler` on `sigmas` as SamplerCustom does: seeded noise, previews, progress bar, interrupt."""
    import comfy.sample
    import comfy.utils
    import latent_preview

    samples = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    noise = comfy.sample.prepare_noise(samples, seed, latent.get("batch_index"))
    callback = latent_preview.prepare_callback(model, sigmas.shape[-1] - 1)
    out = comfy.sample.sample_custom(model, noise, cfg, sampler, sigmas, positive, negative, samples,
                                     noise_mask=latent.get("noise_mask"), callback=callback,
                                     disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
    result = latent.copy()
    result["samples"] = out
    return result


# --- DMD2 Live (nodes/live.py): server routes, the prompt queue gate, one-frame sampling and decoding ---------------

def server_routes() -> Any:
    """The aiohttp RouteTableDef of ComfyUI's PromptServer (routes added before the server starts are served)."""
    from server import PromptServer

    return PromptServer.instance.routes


def _prompt_queue() -> Any:
    from server import PromptServer

    return PromptServer.instance.prompt_queue


def queue_busy() -> bool:
    """True while ComfyUI's prompt queue holds or runs a prompt (a running prompt counts until it is done)."""
    return _prompt_queue().get_tasks_remaining() > 0


def install_queue_gate(lock: Any) -> bool:
    """Make ComfyUI's prompt worker take `lock` (and drop it at once) after it takes a prompt off the queue and
    before it runs it, so a prompt never starts during a live frame and waits at most one frame. Returns False,
    changing nothing, if the queue no longer has the `get` / `get_tasks_remaining` this relies on."""
    queue = _prompt_queue()
    original = getattr(queue, "get", None)
    if not callable(original) or not callable(getattr(queue, "get_tasks_remaining", None)):
        return False
    if getattr(original, "dmd2_gate", False):
        return True

    def get(*args: Any, **kwargs: Any) -> Any:
        item = original(*args, **kwargs)
        if item is not None:  # the prompt now counts as running: no new frame starts; wait for one in flight
            with lock:
                pass
        return item

    get.dmd2_gate = True  # type: ignore[attr-defined]
    queue.get = get
    return True


def torch_device() -> torch.device:
    import comfy.model_management

    return comfy.model_management.get_torch_device()


def encode_prompt(clip: Any, text: str) -> Any:
    """CONDITIONING for `text`, as CLIPTextEncode computes it."""
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


def sample_frame(model: Any, seed: int, sigmas: torch.Tensor, sampler: Any, positive: Any, latent: torch.Tensor,
                 callback: Callable[..., None]) -> torch.Tensor:
    """One frame's latent: `sampler` on `sigmas` at cfg 1 with seeded noise; no progress bar or preview is sent to
    the UI (that belongs to the queue); `callback(step, x0, x, total)` runs after every step."""
    import comfy.sample

    samples = comfy.sample.fix_empty_latent_channels(model, latent)
    noise = comfy.sample.prepare_noise(samples, seed)
    return comfy.sample.sample_custom(model, noise, 1.0, sampler, sigmas, positive, positive, samples,
                                      callback=callback, disable_pbar=True, seed=seed)


def vae_decode(vae: Any, samples: torch.Tensor) -> torch.Tensor:
    """The first image of a latent batch as (H, W, 3) in [0, 1], with the full VAE (as VAEDecode)."""
    images = vae.decode(samples)
    while images.dim() > 4:  # video VAEs add a frame axis
        images = images[0]
    return images[0]


def latent_for_unet(model: Any, samples: torch.Tensor) -> torch.Tensor:
    """Latents as the UNet sees them (ComfyUI's LATENTs are divided by the VAE scale factor); TAESD reads these."""
    return model.model.process_latent_in(samples)


def tiny_decoder_file(base: str | None) -> Path | None:
    """models/vae_approx/taesd_decoder.* (SD1.5) or taesdxl_decoder.* (SDXL), None if absent."""
    import folder_paths

    if base not in ("sd15", "sdxl"):
        return None
    stem = "taesd_decoder" if base == "sd15" else "taesdxl_decoder"
    for name in folder_paths.get_filename_list("vae_approx"):
        if Path(name).stem == stem:
            path = folder_paths.get_full_path("vae_approx", name)
            return Path(path) if path else None
    return None
