"""DMD2UNetLoader and DMD2LoraLoader: load a DMD2 file (catalog download or local file) and tag the MODEL."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..sampler.models.catalog import Entry, load_catalog
from ..sampler.models.checkpoints import FileInfo, check_compatible, inspect_file
from ..sampler.models.files import broken_link, is_pickle_file, load_state_dict
from ..sampler.models.checkpoints import resolve_model
from ..sampler.errors import DMD2Error, ModelNotFoundError
from ..sampler.plans import DEFAULT_TRAINED, TRAINED_TIMESTEPS
from . import host
from .tags import DMD2Facts, tag_model

log = logging.getLogger("dmd2")
CATALOG_PREFIX = "catalog: "
PLANS = ["auto"] + list(TRAINED_TIMESTEPS)


def catalog_choices(kind: str) -> list[str]:
    """Dropdown values for the catalog's DMD2 files of `kind` ("unet" or "lora")."""
    return [CATALOG_PREFIX + e.id for e in load_catalog().dmd2() if e.kind == kind]


def download_progress() -> Any:
    """A core download progress callback that drives the node's progress bar (bytes, per stage)."""
    bars: dict[str, Any] = {}

    def report(stage: str, done: int, total: int | None) -> None:
        if total:
            bar = bars.get(stage) or bars.setdefault(stage, host.progress_bar(total))
            bar.update_absolute(done, total)
        log.debug("[DMD2] %s %s/%s bytes", stage, done, total)

    return report


def catalog_entry(choice: str, kind: str) -> Entry | None:
    """The catalog entry a dropdown value names: "catalog: <id>", or the released file name of a catalog file of
    `kind` (what the example workflows use, so that ComfyUI's frontend offers the download when it is missing)."""
    for entry in load_catalog():
        names = (CATALOG_PREFIX + entry.id, entry.filename) + ((entry.converted_filename,) if entry.is_pickle else ())
        if entry.kind == kind and choice in names:
            return entry
    return None


def check_choice(folder: str, kind: str, choice: str) -> bool | str:
    """ComfyUI's input validation for a loader's file input: a file ComfyUI lists in `folder` or a catalog file of
    `kind` (by "catalog: <id>" or its file name, fetched on first use); otherwise the message ComfyUI shows."""
    if choice in host.filename_list(folder) or catalog_entry(choice, kind) is not None:
        return True
    return (f"{choice!r} is neither a file in ComfyUI's {folder} folders nor a DMD2 catalog file "
            f"(refresh the node list, or pick a 'catalog: ...' entry)")


def resolve_choice(folder: str, kind: str, choice: str) -> tuple[Path, FileInfo]:
    """(path, FileInfo) of a dropdown value: a file ComfyUI lists in `folder`, else a catalog entry (found in any
    `folder` path, else downloaded and verified into ComfyUI's models folder)."""
    if not choice.startswith(CATALOG_PREFIX):
        path = host.full_path(folder, choice)
        if path is not None:
            return path, inspect_file(path)
        for link in (broken_link(Path(where) / choice) for where in host.folder_paths(folder)):
            if link:  # ComfyUI lists a symlink to nothing (or a loop) but cannot open it: say which link to fix
                raise ModelNotFoundError(f"cannot open {choice}: {link}. Fix or remove the link")
    entry = catalog_entry(choice, kind)
    if entry is None:
        raise FileNotFoundError(f"{choice!r} is not in ComfyUI's {folder} folders (refresh the node list?)")
    names = set(host.filename_list(folder))
    for name in (entry.converted_filename if entry.is_pickle else None, entry.filename):
        path = host.full_path(folder, name) if name in names else None
        if path is not None and not is_pickle_file(path):
            return path, inspect_file(path)
    log.info("[DMD2] fetching %s (%s) into %s", entry.id, entry.filename, host.models_dir() / entry.comfyui_folder)
    resolved = resolve_model(entry.id, host.models_dir(), download_progress())
    return resolved.path, resolved.info


def facts_for(info: FileInfo, plan: str = "auto") -> DMD2Facts:
    """DMD2 facts for a loaded file: the plan chosen on the node, else the recognised release's, else 4-step."""
    if plan != "auto":
        return DMD2Facts(TRAINED_TIMESTEPS[plan], source=f"plan {plan} chosen on the node")
    if info.trained_timesteps:
        return DMD2Facts(info.trained_timesteps, source=info.timesteps_source)
    log.warning("[DMD2] %s is not a recognised DMD2 release (by checksum or name): planning with the 4-step "
                "timesteps 999/749/499/249; pick the plan on the loader if it is a 1-step model", info.name)
    return DMD2Facts(DEFAULT_TRAINED, source="default 4-step plan")


def warn_misplaced_unets() -> list[str]:
    """Log one line per DMD2 UNet-only file in models/checkpoints, where the stock Load Checkpoint would fail on it
    with "Could not detect model type"; returns their names. Reads safetensors headers of files named *dmd2* only."""
    misplaced = []
    for name in host.filename_list("checkpoints"):
        path = host.full_path("checkpoints", name) if "dmd2" in name.lower() else None
        if path is None or is_pickle_file(path):
            continue
        try:
            info = inspect_file(path)
        except DMD2Error:
            continue
        if info.kind == "unet":
            misplaced.append(name)
            log.warning("[DMD2] %s in models/checkpoints is a UNet only (no text encoders or VAE): Load Checkpoint "
                        "cannot load it. Move it to models/diffusion_models, load it with 'DMD2 Load UNet' and take "
                        "CLIP and VAE from SDXL base 1.0", name)
    return misplaced


class DMD2UNetLoader:
    DESCRIPTION = ("Loads a DMD2 UNet (diffusers or LDM keys; catalog files are downloaded on first use and their "
                   "sha256 checked) and tags the MODEL with its trained timesteps for the DMD2 scheduler and sampler. "
                   "CLIP and VAE come from SDXL base 1.0 (Load Checkpoint).")
    CATEGORY = "loaders/DMD2"
    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("The DMD2 UNet, tagged with its trained timesteps.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "unet_name": (catalog_choices("unet") + host.filename_list("diffusion_models"), {
                "tooltip": "A catalog entry (downloaded into models/diffusion_models on first use) or a UNet file in "
                           "models/diffusion_models or models/unet."}),
            "weight_dtype": (host.weight_dtypes(), {
                "tooltip": "Weight dtype in memory: default lets ComfyUI choose; fp8 halves memory where supported."}),
            "plan": (PLANS, {
                "tooltip": "Trained timesteps. auto: from the recognised DMD2 release (sdxl_4step 999/749/499/249, "
                           "sdxl_1step 399); set it for a renamed or converted file."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, unet_name: str) -> bool | str:
        return check_choice("diffusion_models", "unet", unet_name)

    def load(self, unet_name: str, weight_dtype: str, plan: str = "auto") -> tuple[Any]:
        path, info = resolve_choice("diffusion_models", "unet", unet_name)
        check_compatible(info, "unet")
        state_dict = load_state_dict(path) if is_pickle_file(path) else None  # pickles only through weights-only
        model = host.load_diffusion_model(path, state_dict, weight_dtype)
        return (tag_model(model, facts_for(info, plan)),)


class DMD2LoraLoader:
    DESCRIPTION = ("Applies the DMD2 LoRA (catalog download or a file in models/loras) to a MODEL and tags it with "
                   "the LoRA's trained timesteps (999/749/499/249) for the DMD2 scheduler and sampler.")
    CATEGORY = "loaders/DMD2"
    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("The model with the DMD2 LoRA applied, tagged with its trained timesteps.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "model": ("MODEL", {"tooltip": "An SDXL model (e.g. SDXL base 1.0 or a finetune) from Load Checkpoint."}),
            "lora_name": (catalog_choices("lora") + host.filename_list("loras"), {
                "tooltip": "A catalog entry (downloaded into models/loras on first use) or a LoRA in models/loras."}),
            "strength": ("FLOAT", {
                "default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01,
                "tooltip": "LoRA strength: 1.0 on SDXL base; 0.5-0.75 for community finetunes."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, lora_name: str) -> bool | str:
        return check_choice("loras", "lora", lora_name)

    def load(self, model: Any, lora_name: str, strength: float) -> tuple[Any]:
        path, info = resolve_choice("loras", "lora", lora_name)
        check_compatible(info, "lora", host.model_base(model))
        patched = host.apply_lora(model, host.load_lora_file(path), strength) if strength != 0 else model
        return (tag_model(patched, facts_for(info)),)
