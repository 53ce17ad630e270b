"""What a checkpoint file is, and turning a model spec (catalog id or path) into a file on disk.

What a file is (UNet in diffusers or LDM layout, full checkpoint, LoRA in kohya / PEFT / diffusers layout, VAE,
TAESD) and which base it is for (SD1.5 or SDXL) is read from key names and tensor shapes, from the safetensors header
alone where possible, so a 10 GB file is inspected without loading it. Released DMD2 files are recognised (by
sha256, else by name) so hosts can apply their trained timesteps automatically. Reading the bytes safely (never
running code from a pickle) is `files.py`'s job.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import BaseMismatchError, CorruptFileError, UnknownModelError, WrongKindError
from .catalog import Catalog, Entry, load_catalog
from .download import ProgressCallback, cached_sha256, check_disk_space, fetch_entry, file_sha256
from .files import (PICKLE_SUFFIXES, TensorSource, check_readable_file, is_pickle_file, load_state_dict,
                    read_safetensors_header, write_safetensors)
from .stamps import TRAINED_TIMESTEPS_KEY, timesteps_from_metadata

BASE_LABELS = {"sdxl": "SDXL", "sd15": "SD1.5"}
#: Text-encoder width each base uses for cross-attention (the in-features of every attn2.to_k).
_CROSS_ATTENTION_DIM = {2048: "sdxl", 768: "sd15"}
_LORA_MARKERS = (".lora_down.", ".lora_up.", ".lora_A.", ".lora_B.", ".lora.down.", ".lora.up.", "_lora.down.",
                 "_lora.up.")
@dataclass(frozen=True)
class FileInfo:
    """What a checkpoint holds, read from its keys and shapes.

    kind: "unet", "checkpoint" (UNet + text encoders + VAE), "lora", "vae", "taesd" or "unknown".
    base: "sdxl", "sd15" or None when the keys do not say. format: the key layout ("diffusers", "ldm", "kohya",
    "peft", "taesd"). entry: the catalog entry it was recognised as (matched_by "sha256", "metadata" for files we
    converted, or "name"), whose plan gives the trained timesteps.
    """

    kind: str
    base: str | None
    format: str
    num_tensors: int
    name: str | None = None
    entry: Entry | None = None
    matched_by: str | None = None
    stamped_timesteps: tuple[int, ...] | None = None

    @property
    def trained_timesteps(self) -> tuple[int, ...] | None:
        """Trained timesteps of a DMD2 file: stamped in its metadata by our trainer, else those of the recognised
        release; None otherwise (the host's own schedule then applies)."""
        if self.stamped_timesteps:
            return self.stamped_timesteps
        return self.entry.trained_timesteps if self.entry else None

    @property
    def timesteps_source(self) -> str | None:
        """Where `trained_timesteps` came from, for log lines and infotext."""
        if self.stamped_timesteps:
            return f"{TRAINED_TIMESTEPS_KEY} metadata of {self.name}"
        return self.entry.id if self.entry else None


@dataclass(frozen=True)
class ResolvedModel:
    """A model spec resolved to a verified local file (`source`: the pickle it was converted from, if any)."""

    path: Path
    info: FileInfo
    entry: Entry | None = None
    source: Path | None = None


def _shapes(sd: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in sd.items() if hasattr(v, "shape")}


def _cross_attention_base(shapes: Mapping[str, Sequence[int]], down_suffixes: Sequence[str]) -> str | None:
    """Base from the in-features of a cross-attention key projection (2048: SDXL's two text encoders, 768: SD1.5)."""
    for key, shape in shapes.items():
        if "attn2" in key and "to_k" in key and key.endswith(tuple(down_suffixes)) and len(shape) >= 2:
            base = _CROSS_ATTENTION_DIM.get(shape[1])
            if base:
                return base
    return None


def _unet_base(shapes: Mapping[str, Sequence[int]], prefix: str = "") -> str | None:
    """Base of a UNet in either layout: SDXL has the added (pooled text + size) embedding, SD1.5 does not."""
    if any(k.startswith((prefix + "add_embedding.", prefix + "label_emb.")) for k in shapes):
        return "sdxl"
    return _cross_attention_base({k: v for k, v in shapes.items() if k.startswith(prefix)}, ("to_k.weight",))


def _lora_base(shapes: Mapping[str, Sequence[int]]) -> str | None:
    """Base of a LoRA: cross-attention width first, then layout facts (SDXL: two text encoders, up to 10 transformer
    blocks per attention; SD1.5: one text encoder, four down blocks)."""
    base = _cross_attention_base(shapes, ("lora_down.weight", "lora_A.weight", "lora.down.weight",
                                          "_lora.down.weight"))
    if base:
        return base
    keys = list(shapes)
    if any(k.startswith(("lora_te1_", "lora_te2_")) or "transformer_blocks_1_" in k or "transformer_blocks.1." in k
           for k in keys):
        return "sdxl"
    if any(k.startswith("lora_te_") or "down_blocks_3_" in k or "down_blocks.3." in k for k in keys):
        return "sd15"
    return None


def _detect(shapes: Mapping[str, Sequence[int]]) -> tuple[str, str | None, str]:
    """(kind, base, format) of a state dict from its keys and shapes."""
    keys = set(shapes)
    if any(m in k for k in keys for m in _LORA_MARKERS):
        if any(k.startswith(("lora_unet_", "lora_te")) for k in keys):
            fmt = "kohya"
        elif any(".lora_A." in k or ".lora_B." in k for k in keys):
            fmt = "peft"
        else:
            fmt = "diffusers"
        return "lora", _lora_base(shapes), fmt
    if any(k.startswith("model.diffusion_model.") for k in keys):
        if any(k.startswith("conditioner.embedders.") for k in keys):
            base = "sdxl"
        elif any(k.startswith("cond_stage_model.transformer.") for k in keys):
            base = "sd15"
        else:
            base = _unet_base(shapes, "model.diffusion_model.")
        return "checkpoint", base, "ldm"
    if "input_blocks.0.0.weight" in keys and "out.2.weight" in keys:
        return "unet", _unet_base(shapes), "ldm"
    if "conv_in.weight" in keys and "time_embedding.linear_1.weight" in keys:
        return "unet", _unet_base(shapes), "diffusers"
    if "decoder.conv_in.weight" in keys and ("decoder.up.0.block.0.conv1.weight" in keys
                                            or "decoder.up_blocks.0.resnets.0.conv1.weight" in keys):
        return "vae", None, "ldm" if "decoder.up.0.block.0.conv1.weight" in keys else "diffusers"
    if {"3.conv.4.bias", "8.conv.0.weight"} <= keys or "decoder.layers.3.conv.4.bias" in keys:
        return "taesd", None, "taesd"
    return "unknown", None, "unknown"


def _match_entry(catalog: Catalog, kind: str, base: str | None, name: str | None, sha256: str | None,
                 metadata: Mapping[str, str]) -> tuple[Entry | None, str | None]:
    """Recognise a catalog file: by sha256, else by the catalog id our conversion wrote, else by file name."""
    if sha256:
        entry = catalog.by_sha256(sha256)
        if entry:
            return entry, "sha256"

    def agrees(e: Entry) -> bool:  # a name or stamp never turns an SD1.5 UNet into an SDXL DMD2 entry
        return e.kind == kind and (base is None or e.base == base)

    if metadata.get("dmd2_catalog_id") in catalog.ids:
        entry = catalog.get(metadata["dmd2_catalog_id"])
        if agrees(entry):
            return entry, "metadata"
    if name:
        entry = catalog.by_filename(name)
        if entry and agrees(entry):
            return entry, "name"
        lowered = name.lower()
        if "dmd2" in lowered:
            plan = "1step" if "1step" in lowered else "4step" if "4step" in lowered else None
            for e in catalog.dmd2():
                if plan and e.plan.endswith(plan) and agrees(e):
                    return e, "name"
    return None, None


def inspect_state_dict(sd: Mapping[str, Any], name: str | None = None, *, catalog: Catalog | None = None,
                       sha256: str | None = None, metadata: Mapping[str, str] | None = None) -> FileInfo:
    """Inspect a state dict (real, meta-device, or anything with `.shape`) without touching its values."""
    return _inspect_shapes(_shapes(sd), name, catalog=catalog, sha256=sha256, metadata=metadata or {})


def _inspect_shapes(shapes: Mapping[str, Sequence[int]], name: str | None, *, catalog: Catalog | None,
                    sha256: str | None, metadata: Mapping[str, str]) -> FileInfo:
    kind, base, fmt = _detect(shapes)
    entry, matched_by = _match_entry(catalog or load_catalog(), kind, base, name, sha256, metadata)
    if base is None and entry is not None and kind == entry.kind:
        base = entry.base  # a TAESD or VAE looks the same for both bases; a released file says which it is
    return FileInfo(kind=kind, base=base, format=fmt, num_tensors=len(shapes), name=name, entry=entry,
                    matched_by=matched_by, stamped_timesteps=timesteps_from_metadata(metadata, name))


def inspect_file(path: Path | str, *, catalog: Catalog | None = None, hash_file: bool = False,
                 progress: ProgressCallback | None = None) -> FileInfo:
    """Inspect a checkpoint file: safetensors from the header alone, pickles through weights-only loading.

    The sha256 comes from the folder's hash record (written when the file was downloaded or verified); with
    `hash_file` it is computed when missing (seconds per GB), otherwise recognition falls back to the file name.
    """
    path = check_readable_file(path)
    sha256 = file_sha256(path, progress) if hash_file else cached_sha256(path)
    if is_pickle_file(path):
        shapes, metadata = _shapes(load_state_dict(path)), {}
    else:
        header = read_safetensors_header(path)
        metadata = header.pop("__metadata__", None) or {}
        shapes = {k: tuple(v["shape"]) for k, v in header.items()}
    return _inspect_shapes(shapes, path.name, catalog=catalog, sha256=sha256, metadata=metadata)


_KIND_HELP = {
    "checkpoint": ("a full checkpoint (UNet + text encoders + VAE)",
                   "load it with the checkpoint loader (ComfyUI: Load Checkpoint, models/checkpoints; A1111: "
                   "models/Stable-diffusion)"),
    "unet": ("a UNet only, with no text encoders or VAE",
             "load it with ComfyUI's Load Diffusion Model (models/diffusion_models) and take CLIP and VAE from "
             "SDXL base 1.0 (catalog id sdxl-base-1.0) through Load Checkpoint; A1111 cannot load a UNet-only file: "
             "merge it into an SDXL checkpoint (`python -m sampler merge` or the DMD2 tab) or use the DMD2 LoRA "
             "(dmd2-sdxl-4step-lora-fp16) there"),
    "lora": ("a LoRA", "apply it to a model with a LoRA loader (ComfyUI: LoraLoader, models/loras; A1111: "
                       "models/Lora and <lora:name:1> in the prompt)"),
    "vae": ("a VAE", "load it with a VAE loader (ComfyUI: Load VAE, models/vae; A1111: models/VAE)"),
    "taesd": ("a TAESD preview decoder", "put it in ComfyUI's models/vae_approx for previews"),
}


_KIND_NAMES = {"unet": "a UNet", "lora": "a LoRA", "checkpoint": "a full checkpoint", "vae": "a VAE",
               "taesd": "a TAESD decoder"}


def check_compatible(info: FileInfo, expected_kind: str, base: str | None = None) -> None:
    """Raise a clear error unless `info` is a `expected_kind` file for `base` (when both bases are known).

    The messages name what the file is and what to do with it instead: the most common mistake with DMD2 is a
    UNet-only file in a full-checkpoint loader, or the reverse.
    """
    name = info.name or "this file"
    if info.kind != expected_kind:
        wanted = _KIND_HELP.get(expected_kind, (f"a {expected_kind}",))[0]
        if info.kind == "unknown":
            raise WrongKindError(f"{name} is not a model file this pack recognises; {wanted} is needed here")
        what, instead = _KIND_HELP[info.kind]
        raise WrongKindError(f"{name} is {what}, but {wanted} is needed here: {instead}")
    if base is not None and info.base is not None and info.base != base:
        label, want = BASE_LABELS[info.base], BASE_LABELS.get(base, base)
        hint = " (for SDXL: dmd2-sdxl-4step-lora-fp16 or a DMD2 SDXL UNet)" if base == "sdxl" else ""
        raise BaseMismatchError(f"{name} is a {label} {info.kind}, but the model it is used with is {want}: "
                                f"use a {want} {info.kind}{hint}, or a {label} model")


def convert_to_safetensors(src: Path | str, entry: Entry, dest: Path | str | None = None) -> Path:
    """Write a verified pickle's tensors once to a .safetensors file next to it, atomically and one tensor at a
    time (the merge tool's writer); return its path.

    Hosts then load the safetensors copy (no pickle at all); the catalog id and source sha256 go into its metadata,
    so it is recognised without hashing it again.
    """
    src = Path(src)
    dest = Path(dest) if dest is not None else src.with_name(entry.converted_filename)
    sd = load_state_dict(src)
    check_disk_space(dest.parent, src.stat().st_size, f"converting {src.name} to safetensors")
    tensors = {k: TensorSource(v.dtype, tuple(v.shape), (lambda v=v: v)) for k, v in sd.items()}
    return write_safetensors(dest, tensors, {"format": "pt", "dmd2_catalog_id": entry.id,
                                             "dmd2_source_sha256": entry.sha256})


def _converted_copy(entry: Entry, folder: Path) -> Path | None:
    """The safetensors copy of a pickle entry, if one made from a file with the entry's sha256 is already there."""
    path = folder / entry.converted_filename
    if not path.is_file():
        return None
    try:
        meta = read_safetensors_header(path).get("__metadata__") or {}
    except CorruptFileError:  # our own derived copy, damaged: made again from the verified source
        return None
    return path if meta.get("dmd2_source_sha256") == entry.sha256 else None


def check_entry_kind(entry: Entry, kinds: Sequence[str], base: str | None = None) -> None:
    """Raise WrongKindError / BaseMismatchError unless a catalog entry is one of `kinds` for `base`: checked from
    the catalog alone, before anything is downloaded."""
    if entry.kind not in kinds:
        wanted = " or ".join(_KIND_NAMES[k] for k in kinds)
        raise WrongKindError(f"catalog id {entry.id} is {_KIND_HELP[entry.kind][0]}, but {wanted} is needed here; "
                             f"nothing was downloaded")
    if base is not None and entry.base != base:
        raise BaseMismatchError(f"catalog id {entry.id} is for {BASE_LABELS[entry.base]}, but {BASE_LABELS[base]} "
                                f"is needed here; nothing was downloaded")


def resolve_model(spec: str, models_dir: Path | str, progress: ProgressCallback | None = None, *,
                  catalog: Catalog | None = None, endpoint: str | None = None, kinds: Sequence[str] | None = None,
                  base: str | None = None) -> ResolvedModel:
    """Turn a model spec into a verified local file: an existing path is inspected; a catalog id is downloaded into
    models_dir/<ComfyUI folder name> if needed (a pickle entry is converted to .safetensors once).

    `kinds` / `base`: what the caller can use; a catalog id of another kind or base is refused before downloading
    (a local file is inspected, and its kind checked by the caller with check_compatible)."""
    catalog = catalog or load_catalog()
    path = Path(spec).expanduser()
    local = os.path.lexists(path) and not (spec in catalog.ids and path.is_dir())  # a link too, broken or looping
    if local or spec not in catalog.ids:
        if local or os.sep in spec or "/" in spec or path.suffix.lower() in (".safetensors",) + PICKLE_SUFFIXES:
            return ResolvedModel(path=path, info=inspect_file(path, catalog=catalog))  # says why it is unreadable
        raise UnknownModelError(f"{spec!r} is neither a file nor a catalog id; the catalog has: "
                                f"{', '.join(catalog.ids)}")
    entry = catalog.get(spec)
    if kinds is not None:
        check_entry_kind(entry, kinds, base)
    folder = Path(models_dir) / entry.comfyui_folder
    source = None
    if entry.is_pickle:
        path = _converted_copy(entry, folder)
        if path is None:
            source = fetch_entry(entry, folder, progress, endpoint=endpoint)
            path = convert_to_safetensors(source, entry)
    else:
        path = fetch_entry(entry, folder, progress, endpoint=endpoint)
    return ResolvedModel(path=path, info=inspect_file(path, catalog=catalog), entry=entry, source=source)
