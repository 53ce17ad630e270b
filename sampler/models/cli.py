"""The model-file commands of `python -m sampler`: `models list|download|verify|where`, `merge`, `convert-lora`.

`download --all-dmd2` takes a user from nothing to every released DMD2 file verified on disk in one command. Files go
to <models dir>/<ComfyUI folder name>/ (diffusion_models, loras, checkpoints, vae, vae_approx), so the models dir can
be ComfyUI's own models folder; `where` prints where each host expects each file.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..errors import DMD2Error
from ..plans import TRAINED_TIMESTEPS
from .catalog import Catalog, Entry, load_catalog
from .convert import LAYOUTS, ConversionError, convert_lora_file, merge_checkpoint
from .files import broken_link, check_output_path
from .download import (STAGING, cached_sha256, default_models_dir, fetch_entry, target_path, tqdm_progress,
                       verify_file)

_A1111_MISSING = {
    "unet": ("A1111 cannot load a UNet-only diffusers file: merge it into an SDXL checkpoint with "
             "`python -m sampler merge` (or the DMD2 tab), or use the DMD2 LoRA"),
    "taesd": "A1111 downloads its own taesd*_decoder.pth into models/VAE-taesd",
}


def add_models_subcommand(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `models` (list / download / verify / where) to a parser's subcommands; each sets `func(args) -> int`."""
    parser = subparsers.add_parser("models", help="list, download and verify the model catalog",
                                   description=__doc__.split("\n\n")[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--models-dir", type=Path, default=None,
                        help="where files are kept (default: $DMD2_MODELS_DIR or ~/.cache/dmd2/models)")
    commands = parser.add_subparsers(dest="models_command", required=True)

    p = commands.add_parser("list", parents=[common], help="the catalog, with what is already on disk")
    p.set_defaults(func=_list)

    p = commands.add_parser("download", parents=[common], help="download catalog files and verify their sha256")
    p.add_argument("ids", nargs="*", metavar="ID", help="catalog ids (see `models list`)")
    p.add_argument("--all-dmd2", action="store_true", help="every released DMD2 file")
    p.add_argument("--all", action="store_true", help="every file in the catalog")
    p.set_defaults(func=_download)

    p = commands.add_parser("verify", parents=[common], help="check the sha256 of files on disk")
    p.add_argument("ids", nargs="*", metavar="ID", help="catalog ids (default: every file on disk)")
    p.add_argument("--rehash", action="store_true", help="hash again even if the file was verified before")
    p.set_defaults(func=_verify)

    p = commands.add_parser("where", parents=[common], help="where ComfyUI and A1111 expect each file")
    p.add_argument("ids", nargs="*", metavar="ID", help="catalog ids (default: all)")
    p.set_defaults(func=_where)
    return parser


def _models_dir(args: argparse.Namespace) -> Path:
    return args.models_dir.expanduser() if args.models_dir else default_models_dir()


def _path(entry: Entry, models_dir: Path) -> Path:
    return target_path(entry, models_dir / entry.comfyui_folder)


def _size(entry: Entry) -> str:
    if entry.size is None:
        return "size ?"
    return f"{entry.size / 1e9:.2f} GB" if entry.size >= 1e8 else f"{entry.size / 1e6:.1f} MB"


def _status(entry: Entry, models_dir: Path) -> str:
    """On-disk state without hashing: verified (recorded sha256 matches), present, partial, missing, or a broken
    link (the file, or the models folder, a symlink to nothing or a loop)."""
    path = _path(entry, models_dir)
    if broken_link(path):
        return "broken link"
    if path.exists():
        if entry.size is not None and path.stat().st_size != entry.size:
            return "wrong size"
        sha = cached_sha256(path)
        return "verified" if sha == entry.sha256 else "MISMATCH" if sha else "present (not verified)"
    part = path.parent / STAGING / (entry.filename + ".part")
    if part.exists():
        done = part.stat().st_size
        return f"partial {100 * done / entry.size:.0f}%" if entry.size else f"partial {done / 1e9:.2f} GB"
    return "missing"


def _select(catalog: Catalog, ids: Sequence[str], every: bool = False, dmd2: bool = False) -> list[Entry]:
    """Entries named by id (UnknownModelError lists the valid ones), plus --all / --all-dmd2."""
    chosen = list(catalog) if every else list(catalog.dmd2()) if dmd2 else []
    for model_id in ids:
        entry = catalog.get(model_id)
        if entry not in chosen:
            chosen.append(entry)
    return chosen


def _list(args: argparse.Namespace) -> int:
    models_dir, catalog = _models_dir(args), load_catalog()
    print(f"models dir: {models_dir}")
    width = max(len(e.id) for e in catalog)
    for e in catalog:
        steps = f"{e.steps}-step" if e.steps else ""
        print(f"{e.id:<{width}}  {e.kind:<10} {e.base:<4} {steps:<6} {_size(e):>8}  {e.license:<12} "
              f"{_status(e, models_dir)}")
    return 0


def _download(args: argparse.Namespace) -> int:
    models_dir, catalog = _models_dir(args), load_catalog()
    entries = _select(catalog, args.ids, args.all, args.all_dmd2)
    if not entries:
        print("nothing to download: name catalog ids, or use --all-dmd2 / --all (see `models list`)")
        return 2
    failed = []
    for i, entry in enumerate(entries, 1):
        print(f"[{i}/{len(entries)}] {entry.id}: {entry.filename} ({_size(entry)}, {entry.license})")
        try:
            path = fetch_entry(entry, models_dir / entry.comfyui_folder, progress=tqdm_progress())
        except DMD2Error as e:
            print(f"  FAILED: {e}")
            failed.append(entry.id)
            continue
        print(f"  verified: {path}")
    if any(e.license == "cc-by-nc-4.0" for e in entries):
        print("note: the DMD2 weights are licensed cc-by-nc-4.0 (non-commercial use only)")
    if failed:
        print(f"{len(failed)} of {len(entries)} failed: {', '.join(failed)}; run the same command again to retry "
              f"(downloads resume)")
        return 1
    print(f"all {len(entries)} files verified in {models_dir}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    models_dir, catalog = _models_dir(args), load_catalog()
    on_disk = [e for e in catalog if _path(e, models_dir).exists()]
    entries = _select(catalog, args.ids) or on_disk
    if not entries:
        print(f"no catalog files in {models_dir}")
        return 0
    bad = 0
    for entry in entries:
        path = _path(entry, models_dir)
        if not path.exists():
            link = broken_link(path)
            print(f"broken link {entry.id}: {link}" if link else f"missing   {entry.id}: {path}")
            bad += 1
            continue
        try:
            verify_file(entry, path, progress=tqdm_progress(), rehash=args.rehash)
        except DMD2Error as e:
            print(f"BAD       {entry.id}: {e}")
            bad += 1
            continue
        print(f"ok        {entry.id}: {path}")
    return 1 if bad else 0


def _where(args: argparse.Namespace) -> int:
    models_dir, catalog = _models_dir(args), load_catalog()
    for entry in _select(catalog, args.ids) or list(catalog):
        print(f"{entry.id}  ({entry.filename})")
        print(f"  ComfyUI: ComfyUI/models/{entry.comfyui_folder}/{entry.filename}")
        if entry.a1111_folder:
            print(f"  A1111:   stable-diffusion-webui/models/{entry.a1111_folder}/{entry.filename}")
        else:
            print(f"  A1111:   not used ({_A1111_MISSING[entry.kind]})")
        print(f"  here:    {_path(entry, models_dir)}")
    return 0


def int_in(low: int, high: int, multiple_of: int = 1) -> Callable[[str], int]:
    """An argparse type: a whole number in low..high (a multiple of `multiple_of`); argparse names the flag."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high or value % multiple_of:
            step = f" and a multiple of {multiple_of}" if multiple_of > 1 else ""
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}{step}, got {value}")
        return value

    return parse


def finite_float(text: str) -> float:
    """An argparse type: a finite number (float() also accepts 'nan' and 'inf')."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


# --- merge and convert-lora (A1111 / Forge want LDM layout) ---------------------------------------------------------

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def add_convert_subcommands(subparsers: Any) -> None:
    """`merge` and `convert-lora` subcommands (each sets func(args) -> int)."""
    merge = subparsers.add_parser(
        "merge", help="write a full A1111 / Forge checkpoint: SDXL base + DMD2 UNet and/or fused DMD2 LoRA")
    merge.add_argument("--base", required=True, help="full LDM checkpoint, e.g. sd_xl_base_1.0.safetensors")
    merge.add_argument("--unet", help="DMD2 UNet in diffusers format (.safetensors or .bin)")
    merge.add_argument("--lora", help="DMD2 LoRA to fuse into the UNet weights")
    merge.add_argument("--lora-strength", type=finite_float, default=1.0)
    merge.add_argument("--dtype", choices=sorted(_DTYPES), help="cast floating-point tensors (default: keep)")
    merge.add_argument("--plan", choices=sorted(TRAINED_TIMESTEPS),
                       help="stamp this plan instead of detecting it")
    merge.add_argument("--output", "-o", required=True, help="the .safetensors checkpoint to write")
    merge.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    merge.set_defaults(func=_merge)
    lora = subparsers.add_parser("convert-lora", help="rename a DMD2 LoRA's keys to LDM names A1111 maps fully")
    lora.add_argument("src")
    lora.add_argument("dest")
    lora.add_argument("--base", choices=sorted(LAYOUTS),
                      help="the LoRA's base model (default: read from its keys)")
    lora.add_argument("--overwrite", action="store_true", help="replace dest if it exists")
    lora.set_defaults(func=_convert_lora)


def _bar() -> Callable[[int, int], None]:
    from tqdm.auto import tqdm
    bar = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, unit="tensor")
        bar.update(1)
        if done == total:
            bar.close()
    return update


def _merge(args: Any) -> int:
    if not args.unet and not args.lora:
        raise ConversionError("nothing to merge: give --unet, --lora, or both")
    output = check_output_path(args.output, (".safetensors",), overwrite=args.overwrite,
                               inputs=(args.base, args.unet, args.lora),
                               exists_hint="choose another --output or pass --overwrite")
    path = merge_checkpoint(args.base, output, unet=args.unet, lora=args.lora, lora_strength=args.lora_strength,
                            dtype=_DTYPES.get(args.dtype), plan=args.plan, progress=_bar())
    print(f"wrote {path}")
    return 0


def _convert_lora(args: Any) -> int:
    dest = check_output_path(args.dest, (".safetensors",), overwrite=args.overwrite, inputs=(args.src,),
                             exists_hint="choose another name or pass --overwrite")
    print(f"wrote {convert_lora_file(args.src, dest, args.base)}")
    return 0
