"""DMD2 weights for hosts that want LDM layout (A1111, Forge): UNet key map, checkpoint merge, LoRA key conversion.

A1111 and Forge load full checkpoints in the original (LDM / "CompVis") layout, `model.diffusion_model.*`, and
cannot load DMD2's diffusers-format UNet. Their Lora extension maps diffusers-style LoRA names with an SD1.5 rule
that sends SDXL's first up-block upsampler to a module that does not exist, silently dropping it.

The key map here is built from the UNet's structure (how many resnets per block, which blocks have attention), the
same way both layouts are generated:

  diffusers                                   LDM (ldm.modules.diffusionmodules.openaimodel / sgm)
  conv_in                                     input_blocks.0.0
  time_embedding.linear_{1,2}                 time_embed.{0,2}
  add_embedding.linear_{1,2}       (SDXL)     label_emb.0.{0,2}
  down_blocks.i.resnets.j                     input_blocks.(1 + i*(L+1) + j).0
  down_blocks.i.attentions.j                  input_blocks.(1 + i*(L+1) + j).1
  down_blocks.i.downsamplers.0.conv           input_blocks.((i+1)*(L+1)).0.op
  mid_block.resnets.j / attentions.0          middle_block.(2j) / middle_block.1
  up_blocks.i.resnets.j      (j = 0..L)       output_blocks.(i*(L+1) + j).0
  up_blocks.i.attentions.j                    output_blocks.(i*(L+1) + j).1
  up_blocks.i.upsamplers.0.conv               output_blocks.(i*(L+1) + L).(2 if block i has attention else 1).conv
  conv_norm_out / conv_out                    out.0 / out.2
  resnet norm1, conv1, time_emb_proj,         in_layers.0, in_layers.2, emb_layers.1,
         norm2, conv2, conv_shortcut          out_layers.0, out_layers.3, skip_connection

Attention blocks (norm, proj_in, transformer_blocks.k.*, proj_out) keep their inner names. L is layers per block
(2 in SD1.5 and SDXL). Module for module the shapes are the same (SDXL's proj_in/out are Linear in both layouts;
SD1.5's are 1x1 convolutions in both), so tensors are renamed, never reshaped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

import torch

from ..errors import BaseMismatchError, DMD2Error, WrongKindError
from ..plans import TRAINED_TIMESTEPS
from .catalog import load_catalog
from .checkpoints import check_compatible, inspect_state_dict
from .download import cached_sha256
from .files import LazyFile, TensorSource, write_safetensors
from .stamps import PLAN_KEY

LDM_UNET_PREFIX = "model.diffusion_model."
_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
           "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_TOP = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2", "add_embedding.linear_1": "label_emb.0.0",
        "add_embedding.linear_2": "label_emb.0.2", "conv_norm_out": "out.0", "conv_out": "out.2"}


class ConversionError(DMD2Error):
    """A UNet / LoRA whose keys do not fit the layout being converted (not an SD1.5 / SDXL UNet, or damaged)."""


@dataclass(frozen=True)
class UNetLayout:
    """The structural facts the key map needs: resnets per down block and which up blocks have attention."""

    layers_per_block: int
    up_attention: tuple[bool, ...]


#: SDXL: up blocks CrossAttn, CrossAttn, plain; SD1.5: plain, CrossAttn x3. Both have 2 layers per block.
LAYOUTS = {"sdxl": UNetLayout(2, (True, True, False)), "sd15": UNetLayout(2, (False, True, True, True))}


def layout_from_keys(keys: Iterable[str]) -> UNetLayout:
    """Read the layout off a diffusers UNet's own keys."""
    keys = list(keys)
    resnets = {int(m.group(1)) for k in keys if (m := re.match(r"down_blocks\.0\.resnets\.(\d+)\.", k))}
    ups = {int(m.group(1)) for k in keys if (m := re.match(r"up_blocks\.(\d+)\.", k))}
    if not resnets or not ups:
        raise ConversionError("not a diffusers UNet: no down_blocks.0.resnets / up_blocks keys")
    attn = {int(m.group(1)) for k in keys if (m := re.match(r"up_blocks\.(\d+)\.attentions\.", k))}
    return UNetLayout(max(resnets) + 1, tuple(i in attn for i in range(max(ups) + 1)))


def ldm_unet_module(name: str, layout: UNetLayout) -> str:
    """LDM module path of a diffusers UNet module path (e.g. 'up_blocks.0.upsamplers.0.conv' ->
    'output_blocks.2.2.conv' for SDXL). Raises ConversionError for a name outside the UNet."""
    if name in _TOP:
        return _TOP[name]
    L = layout.layers_per_block

    def resnet(prefix: str, rest: str) -> str:
        head, _, tail = rest.partition(".")
        if head not in _RESNET:
            raise ConversionError(f"unknown resnet part {head!r} in {name!r}")
        return f"{prefix}.{_RESNET[head]}" + (f".{tail}" if tail else "")

    if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", name):
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        block = 1 + i * (L + 1) + j
        return resnet(f"input_blocks.{block}.0", rest) if kind == "resnets" else f"input_blocks.{block}.1.{rest}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv(\..+)?", name):
        return f"input_blocks.{(int(m[1]) + 1) * (L + 1)}.0.op{m[2] or ''}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", name):
        return resnet(f"middle_block.{2 * int(m[1])}", m[2])
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", name):
        return f"middle_block.1.{m[1]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", name):
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        block = i * (L + 1) + j
        return resnet(f"output_blocks.{block}.0", rest) if kind == "resnets" else f"output_blocks.{block}.1.{rest}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv(\..+)?", name):
        i = int(m[1])
        if i >= len(layout.up_attention):
            raise ConversionError(f"{name!r}: the layout has only {len(layout.up_attention)} up blocks")
        return f"output_blocks.{i * (L + 1) + L}.{2 if layout.up_attention[i] else 1}.conv{m[2] or ''}"
    raise ConversionError(f"{name!r} is not a key of an SD1.5 / SDXL diffusers UNet")


def diffusers_to_ldm_unet_key(key: str, layout: UNetLayout) -> str:
    """LDM key (without the model.diffusion_model. prefix) of a diffusers UNet parameter key."""
    module, _, param = key.rpartition(".")
    return f"{ldm_unet_module(module, layout)}.{param}"


def unet_key_map(keys: Iterable[str], layout: UNetLayout | None = None) -> dict[str, str]:
    """{diffusers key: LDM key} for every key of a diffusers UNet state dict; one-to-one or ConversionError."""
    keys = list(keys)
    layout = layout or layout_from_keys(keys)
    mapping = {k: diffusers_to_ldm_unet_key(k, layout) for k in keys}
    if len(set(mapping.values())) != len(mapping):
        raise ConversionError("two UNet keys map to the same LDM key: the UNet layout is not SD1.5 / SDXL")
    return mapping


# --- LoRA --------------------------------------------------------------------------------------------------------

#: Modules DMD2's released LoRA adapts (DESIGN.md section 2): 788 of them in the SDXL UNet.
DMD2_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1",
                     "conv2", "conv_shortcut", "time_emb_proj", "downsamplers.0.conv", "upsamplers.0.conv")


_LORA_SUFFIX = re.compile(r"\.(lora_down\.weight|lora_up\.weight|alpha|lora_mid\.weight|dora_scale)$")


def _unet_module_names(layout: UNetLayout, num_down: int, transformer_depth: Mapping[int, int]) -> list[str]:
    """Every diffusers module path a kohya LoRA may target, for underscore-name lookup (kohya names are ambiguous
    to split back into a path, so we generate the paths and compare their underscore forms)."""
    names = list(_TOP)
    L = layout.layers_per_block
    attn_parts = ["norm", "proj_in", "proj_out"]
    for d in range(max(transformer_depth.values(), default=0)):
        for a in ("attn1", "attn2"):
            attn_parts += [f"transformer_blocks.{d}.{a}.{p}" for p in ("to_q", "to_k", "to_v", "to_out.0")]
        attn_parts += [f"transformer_blocks.{d}.{p}" for p in ("ff.net.0.proj", "ff.net.2", "norm1", "norm2", "norm3")]
    for i in range(num_down):
        for j in range(L):
            names += [f"down_blocks.{i}.resnets.{j}.{r}" for r in _RESNET]
            names += [f"down_blocks.{i}.attentions.{j}.{p}" for p in attn_parts]
        names.append(f"down_blocks.{i}.downsamplers.0.conv")
    for j in range(2):
        names += [f"mid_block.resnets.{j}.{r}" for r in _RESNET]
    names += [f"mid_block.attentions.0.{p}" for p in attn_parts]
    for i in range(len(layout.up_attention)):
        for j in range(L + 1):
            names += [f"up_blocks.{i}.resnets.{j}.{r}" for r in _RESNET]
            names += [f"up_blocks.{i}.attentions.{j}.{p}" for p in attn_parts]
        names.append(f"up_blocks.{i}.upsamplers.0.conv")
    return names


def kohya_unet_name_map(base: str) -> dict[str, str]:
    """{'lora_unet_<diffusers path with _>': 'lora_unet_<LDM path with _>'} for every UNet module of `base`."""
    layout = LAYOUTS[base]
    depth = {0: 10} if base == "sdxl" else {0: 1}  # SDXL's deepest attention has 10 transformer blocks
    out = {}
    for name in _unet_module_names(layout, len(layout.up_attention), depth):
        try:
            ldm = ldm_unet_module(name, layout)
        except ConversionError:
            continue
        out["lora_unet_" + name.replace(".", "_")] = "lora_unet_" + ldm.replace(".", "_")
    return out


def convert_lora_to_ldm_names(sd: Mapping[str, torch.Tensor], base: str = "sdxl") -> dict[str, torch.Tensor]:
    """A kohya LoRA with diffusers module names (`lora_unet_up_blocks_0_upsamplers_0_conv...`) renamed to LDM module
    names (`lora_unet_output_blocks_2_2_conv...`), which A1111 / Forge look up directly, for every module.

    Text-encoder keys and keys already in LDM form pass through unchanged; an unknown UNet key is an error (better
    than a LoRA that silently applies partly)."""
    if base not in LAYOUTS:
        raise BaseMismatchError(f"base must be one of {sorted(LAYOUTS)}, got {base!r}")
    names = kohya_unet_name_map(base)
    ldm_names = set(names.values())
    out = {}
    for key, value in sd.items():
        m = _LORA_SUFFIX.search(key)
        module = key[:m.start()] if m else key
        if not module.startswith("lora_unet_") or module in ldm_names:
            out[key] = value
            continue
        if module not in names:
            raise ConversionError(f"LoRA key {key!r} names no {base} UNet module")
        out[names[module] + key[len(module):]] = value
    if len(out) != len(sd):
        raise ConversionError("two LoRA keys map to the same LDM key")
    return out


def _cast(dtype: torch.dtype, target: torch.dtype | None) -> torch.dtype:
    return target if target is not None and dtype.is_floating_point else dtype


def lora_delta(down: torch.Tensor, up: torch.Tensor, alpha: float | None, shape: tuple[int, ...]) -> torch.Tensor:
    """The weight change of one LoRA module, (alpha / rank) * up @ down, shaped like the weight (linear or conv)."""
    rank = down.shape[0]
    scale = (float(alpha) / rank) if alpha is not None else 1.0
    delta = up.flatten(1).to(torch.float32) @ down.flatten(1).to(torch.float32)
    return (delta * scale).reshape(shape)


def merge_checkpoint(base: Path | str, output: Path | str, *, unet: Path | str | None = None,
                     lora: Path | str | None = None, lora_strength: float = 1.0, dtype: torch.dtype | None = None,
                     plan: str | None = None, progress: Callable[[int, int], None] | None = None) -> Path:
    """Write a full LDM checkpoint A1111 / Forge load: `base` (e.g. sd_xl_base_1.0.safetensors) with its UNet
    replaced by a diffusers-format DMD2 `unet`, and/or a DMD2 `lora` fused into the UNet weights at
    `lora_strength` (A1111 then runs no LoRA at all: no per-step patching, no slowdown).

    Every UNet key of the base must receive exactly one tensor of the same shape, else nothing is written. `dtype`
    casts floating-point tensors (default: the UNet's own dtype for the UNet, the base's for the rest). The DMD2
    plan (from the catalog, the file names, or `plan`) is stamped into the metadata as `dmd2_plan`, so the
    extension picks the right timesteps for the merged file.
    """
    if unet is None and lora is None:
        raise ConversionError("nothing to merge: give a DMD2 UNet, a DMD2 LoRA, or both")
    output = Path(output)
    base_file = LazyFile(base)
    base_shapes = {k: s for k, (_, s) in base_file.specs.items()}
    base_info = inspect_state_dict(_as_shapes(base_shapes), Path(base).name)
    check_compatible(base_info, "checkpoint")
    base_kind = base_info.base
    unet_keys = {k for k in base_shapes if k.startswith(LDM_UNET_PREFIX)}
    sources: dict[str, TensorSource] = {
        k: TensorSource(_cast(d, dtype), s, (lambda k=k: base_file.get(k))) for k, (d, s) in base_file.specs.items()}
    catalog = load_catalog()
    found_plans = []

    def plan_of(path: Path) -> None:
        entry = catalog.by_sha256(cached_sha256(path) or "") or catalog.by_filename(path.name)
        if entry is not None and entry.plan:
            found_plans.append(entry.plan)
        elif "1step" in path.name.lower():
            found_plans.append("sdxl_1step" if base_kind == "sdxl" else "sd15_1step")
        elif "dmd2" in path.name.lower():
            found_plans.append("sdxl_4step" if base_kind == "sdxl" else "sd15_1step")

    if unet is not None:
        unet_file = LazyFile(unet)
        info = inspect_state_dict(_as_shapes({k: s for k, (_, s) in unet_file.specs.items()}), Path(unet).name)
        check_compatible(info, "unet", base_kind)
        if info.format == "ldm":
            mapping = {k: k for k in unet_file.specs}
        else:
            mapping = unet_key_map(unet_file.specs, LAYOUTS.get(base_kind))
        targets = {LDM_UNET_PREFIX + v: k for k, v in mapping.items()}
        missing = sorted(unet_keys - set(targets))
        extra = sorted(set(targets) - unet_keys)
        if missing or extra:
            raise ConversionError(f"{Path(unet).name} does not fit {Path(base).name}: {len(missing)} base UNet keys "
                                  f"get no tensor (e.g. {missing[:3]}), {len(extra)} converted keys are not in the "
                                  f"base (e.g. {extra[:3]})")
        for target, src in targets.items():
            d, shape = unet_file.specs[src]
            if shape != base_shapes[target]:
                raise ConversionError(f"{src} -> {target}: shape {shape} but the base has {base_shapes[target]}")
            sources[target] = TensorSource(_cast(d, dtype), shape, (lambda src=src: unet_file.get(src)))
        plan_of(Path(unet))

    if lora is not None:
        lora_file = LazyFile(lora)
        check_kohya_lora(lora_file, base_kind)
        non_unet = sorted({k.partition(".")[0] for k in lora_file.specs if not k.startswith("lora_unet_")})
        if non_unet:
            raise ConversionError(f"{Path(lora).name} also adapts the text encoders ({len(non_unet)} modules, e.g. "
                                  f"{non_unet[0]}), which merge does not fuse: merge fuses UNet-only LoRAs such as "
                                  f"DMD2's; apply this one at run time instead")
        renamed = convert_lora_to_ldm_names({k: k for k in lora_file.specs}, base_kind or "sdxl")
        modules: dict[str, dict[str, str]] = {}
        for new, old in renamed.items():
            m = _LORA_SUFFIX.search(new)
            if m and new.startswith("lora_unet_"):
                modules.setdefault(new[:m.start()], {})[m.group(1)] = old
        if not modules:
            raise ConversionError(f"{Path(lora).name} has no LoRA weights to fuse (no lora_down / lora_up pairs)")
        by_underscore = {k[len(LDM_UNET_PREFIX):-len(".weight")].replace(".", "_"): k
                         for k in unet_keys if k.endswith(".weight")}
        for module, parts in modules.items():
            target = by_underscore.get(module[len("lora_unet_"):])
            if target is None or "lora_down.weight" not in parts or "lora_up.weight" not in parts:
                raise ConversionError(f"LoRA module {module} has no weight to fuse into in {Path(base).name}")
            previous, shape = sources[target], base_shapes[target]

            def fused(previous=previous, parts=parts, shape=shape):
                w = previous.load()
                alpha = lora_file.get(parts["alpha"]).item() if "alpha" in parts else None
                delta = lora_delta(lora_file.get(parts["lora_down.weight"]), lora_file.get(parts["lora_up.weight"]),
                                   alpha, shape)
                return (w.to(torch.float32) + lora_strength * delta).to(w.dtype)

            sources[target] = TensorSource(previous.dtype, shape, fused)
        plan_of(Path(lora))

    chosen = plan or (found_plans[0] if found_plans else None)
    if chosen is not None and chosen not in TRAINED_TIMESTEPS:
        raise ConversionError(f"plan must be one of {sorted(TRAINED_TIMESTEPS)}, got {chosen!r}")
    metadata = {"format": "pt", "dmd2_base": Path(base).name}
    if unet is not None:
        metadata["dmd2_unet"] = Path(unet).name
    if lora is not None:
        metadata.update(dmd2_lora=Path(lora).name, dmd2_lora_strength=str(lora_strength))
    if chosen:
        metadata[PLAN_KEY] = chosen
    if progress is not None:
        total, calls = len(sources), iter(range(1, len(sources) + 1))
        sources = {k: TensorSource(v.dtype, v.shape, (lambda v=v: (progress(next(calls), total), v.load())[1]))
                   for k, v in sources.items()}
    return write_safetensors(output, sources, metadata)


class _Shape:
    """Something with a `.shape`, all inspect_state_dict reads of a tensor."""

    def __init__(self, shape):
        self.shape = tuple(shape)


def _as_shapes(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, _Shape]:
    return {k: _Shape(v) for k, v in shapes.items()}


def check_kohya_lora(lora_file: LazyFile, base: str | None) -> str | None:
    """The base ("sdxl", "sd15", None when the keys do not say) of a kohya-format LoRA file; WrongKindError for
    any other kind of file or LoRA layout, BaseMismatchError when it is for another base than `base`."""
    info = inspect_state_dict(_as_shapes({k: s for k, (_, s) in lora_file.specs.items()}), lora_file.path.name)
    check_compatible(info, "lora", base)
    if info.format != "kohya":
        raise WrongKindError(f"{lora_file.path.name} is a LoRA in {info.format} layout; merging and converting take "
                             f"kohya-layout LoRAs (lora_unet_... keys), the layout of DMD2's released LoRA")
    return info.base


def convert_lora_file(src: Path | str, dest: Path | str, base: str | None = None) -> Path:
    """Write a copy of a kohya LoRA with LDM module names (see convert_lora_to_ldm_names); metadata is kept and
    stamped with the DMD2 plan when the source is a released DMD2 LoRA.

    `base`: the LoRA's base model; None reads it from the keys (ConversionError when they do not say). A file
    that is not a kohya LoRA, or a LoRA for another base than `base`, is refused before anything is written."""
    lora_file = LazyFile(src)
    found = check_kohya_lora(lora_file, base)
    base = base or found
    if base is None:
        raise ConversionError(f"cannot tell from its keys whether {Path(src).name} is an SDXL or an SD1.5 LoRA: "
                              f"pass --base sdxl or --base sd15")
    if base not in LAYOUTS:
        raise BaseMismatchError(f"base must be one of {sorted(LAYOUTS)}, got {base!r}")
    names = convert_lora_to_ldm_names({k: k for k in lora_file.specs}, base)
    metadata = dict(lora_file.metadata)
    entry = load_catalog().by_sha256(cached_sha256(src) or "") or load_catalog().by_filename(Path(src).name)
    if entry is not None and entry.plan:
        metadata[PLAN_KEY] = entry.plan
    metadata["dmd2_converted_from"] = Path(src).name
    sources = {new: TensorSource(*lora_file.specs[old], (lambda old=old: lora_file.get(old))) for new, old in names.items()}
    return write_safetensors(dest, sources, metadata)
