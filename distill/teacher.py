"""The teacher pipeline from what users have: a diffusers folder, or one A1111 / ComfyUI .safetensors checkpoint.

A single-file SD1.5 / SDXL checkpoint holds the UNet, the VAE and the text encoders, but not the model configs nor the
CLIP tokenizer's vocabulary. The configs ship with this pack (distill/configs/sd15, distill/configs/sdxl: the
layouts of SD1.5 and SDXL base 1.0), so nothing is fetched from the Hub. The tokenizer files (vocab.json and
merges.txt, about 1.5 MB, the same for SD1.5 and both SDXL tokenizers) must already be on disk: `--tokenizer DIR`,
or the Hugging Face cache of a model that has them. diffusers' `from_single_file` then converts every component.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from sampler.errors import DMD2Error, first_line

CONFIGS = Path(__file__).parent / "configs"
TOKENIZER_FILES = ("vocab.json", "merges.txt")
#: (repo, folder) of Hub models whose cached tokenizer files we use when --tokenizer is not given
_CACHED_TOKENIZERS = (("openai/clip-vit-large-patch14", ""), ("stabilityai/stable-diffusion-xl-base-1.0", "tokenizer"),
                      ("stable-diffusion-v1-5/stable-diffusion-v1-5", "tokenizer"),
                      ("runwayml/stable-diffusion-v1-5", "tokenizer"))
TOKENIZER_HELP = ("give --tokenizer DIR, a folder with the CLIP tokenizer's vocab.json and merges.txt: ComfyUI has "
                  "them in ComfyUI/comfy/sd1_tokenizer, every SD1.5 / SDXL diffusers model in its tokenizer/ folder; "
                  "or fetch them once with `huggingface-cli download openai/clip-vit-large-patch14 vocab.json "
                  "merges.txt --local-dir DIR`")


def find_tokenizer(folder: Path | None = None) -> Path:
    """A folder holding vocab.json and merges.txt: `folder`, or one in the Hugging Face cache (never downloaded)."""
    if folder is not None:
        missing = [name for name in TOKENIZER_FILES if not (Path(folder) / name).is_file()]
        if missing:
            raise DMD2Error(f"{folder} has no {' or '.join(missing)}: {TOKENIZER_HELP}")
        return Path(folder)
    from huggingface_hub import try_to_load_from_cache

    for repo, sub in _CACHED_TOKENIZERS:
        found = [try_to_load_from_cache(repo, f"{sub}/{name}".lstrip("/")) for name in TOKENIZER_FILES]
        if all(isinstance(f, str) for f in found):
            return Path(found[0]).parent
    raise DMD2Error(f"a single-file checkpoint has no tokenizer vocabulary and none is on this machine: "
                    f"{TOKENIZER_HELP}")


def pipeline_layout(base: str, target: Path, tokenizer: Path, config: Path | None = None) -> Path:
    """A diffusers pipeline folder without weights in `target`: the configs of `base` (or of `config`, a folder of
    the same layout) plus the tokenizer files in every tokenizer folder that lacks them."""
    source = Path(config) if config is not None else CONFIGS / base
    if not (source / "model_index.json").is_file():
        raise DMD2Error(f"{source} is not a diffusers config folder (no model_index.json)")
    shutil.copytree(source, target, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "*.ckpt", "*.pt"))
    for folder in sorted(target.glob("tokenizer*")):
        for name in TOKENIZER_FILES:
            if not (folder / name).exists():
                shutil.copyfile(tokenizer / name, folder / name)
    return target


def load_teacher(path: Path, tokenizer: Path | None = None, config: Path | None = None) -> Any:
    """The diffusers SD1.5 / SDXL pipeline to distil, from a diffusers folder or a single-file LDM checkpoint,
    without network access."""
    from diffusers import DiffusionPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

    from sampler.models.checkpoints import inspect_file

    path = Path(path)
    if path.is_dir():
        try:
            return DiffusionPipeline.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as e:
            raise DMD2Error(f"cannot load a diffusers pipeline from {path}: {first_line(e)}") from None
    if not path.is_file():
        raise DMD2Error(f"no such file or folder: {path}")
    info = inspect_file(path)
    if info.kind != "checkpoint" or info.base not in ("sd15", "sdxl"):
        raise DMD2Error(f"{path} is not a full SD1.5 / SDXL checkpoint (it looks like a {info.kind}"
                        f"{' for ' + info.base if info.base else ''}): give the model to distil as one .safetensors "
                        f"checkpoint (UNet, VAE and text encoders, as A1111 and ComfyUI load it) or a diffusers "
                        f"folder")
    tokenizer = find_tokenizer(tokenizer)
    with tempfile.TemporaryDirectory(prefix="dmd2-layout-") as tmp:
        layout = pipeline_layout(info.base, Path(tmp) / info.base, tokenizer, config)
        cls = StableDiffusionXLPipeline if info.base == "sdxl" else StableDiffusionPipeline
        extra = {} if info.base == "sdxl" else {"safety_checker": None, "requires_safety_checker": False}
        try:
            return cls.from_single_file(str(path), config=str(layout), local_files_only=True, **extra)
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            raise DMD2Error(f"cannot build the {info.base.upper()} pipeline from {path}: "
                            f"{first_line(e)}") from None
