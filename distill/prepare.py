"""Training data from a folder of images with captions: the prompt file and the real-latents file for the GAN.

    python -m distill prepare TEACHER IMAGES --output data/   ->  data/prompts.txt, data/latents.safetensors

Every image (png, jpg, jpeg, webp) with a caption file of the same name (`cat.png` + `cat.txt`) becomes one line of
prompts.txt and one row of latents.safetensors ('latents' (N, 4, size/8, size/8) float16, 'prompt_ids' (N,) its line
in prompts.txt), the format `train --prompts --real-latents` reads. Images are centre-cropped to a square, resized
with Lanczos to `size` and encoded with the teacher's VAE (a sample of its latent distribution, times its scaling
factor, as the official DMD2 code prepares LAION). Latents are written batch by batch straight into the file, so a
dataset larger than memory is fine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from sampler.errors import DMD2Error
from sampler.models.files import TensorSource, write_safetensors

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def caption_pairs(folder: Path) -> tuple[list[tuple[Path, str]], list[Path]]:
    """(image, caption) for every image with a non-empty caption file, sorted by name; and the images without one.

    A caption becomes one prompt line: newlines become spaces and a leading '#' (a comment in prompt files) is
    dropped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DMD2Error(f"{folder} is not a folder of images")
    pairs, uncaptioned = [], []
    for image in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        text = image.with_suffix(".txt")
        caption = " ".join(text.read_text(encoding="utf-8").split()).lstrip("#").strip() if text.is_file() else ""
        (pairs.append((image, caption)) if caption else uncaptioned.append(image))
    return pairs, uncaptioned


def load_square(path: Path, size: int) -> torch.Tensor:
    """An image as a (3, size, size) tensor in [-1, 1]: centre-cropped to a square, Lanczos-resized."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
    except (OSError, UnidentifiedImageError) as e:
        raise DMD2Error(f"cannot read the image {path}: {e}") from None
    side = min(im.size)
    left, top = (im.width - side) // 2, (im.height - side) // 2
    im = im.crop((left, top, left + side, top + side)).resize((size, size), Image.LANCZOS)
    pixels = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(size, size, 3)
    return pixels.permute(2, 0, 1).float() / 127.5 - 1.0


@torch.no_grad()
def encoded_batches(vae: Any, images: Sequence[Path], size: int, batch_size: int, seed: int,
                    progress: bool = True) -> Iterator[torch.Tensor]:
    """VAE latents (times the VAE's scaling factor) of `images`, batch by batch, in order."""
    from tqdm.auto import tqdm

    device, dtype = vae.device, vae.dtype
    generator = torch.Generator(device).manual_seed(seed)
    with tqdm(total=len(images), desc="encoding images", disable=not progress) as bar:
        for start in range(0, len(images), batch_size):
            batch = torch.stack([load_square(p, size) for p in images[start:start + batch_size]])
            latents = vae.encode(batch.to(device, dtype)).latent_dist.sample(generator)
            bar.update(len(batch))
            yield (latents * vae.config.scaling_factor).float().cpu()


def prepare_dataset(vae: Any, images_folder: Path, output: Path, size: int, batch_size: int = 8, seed: int = 0,
                    progress: bool = True) -> tuple[Path, Path]:
    """Write output/prompts.txt and output/latents.safetensors; returns their paths."""
    pairs, uncaptioned = caption_pairs(images_folder)
    if uncaptioned and progress:
        print(f"[DMD2] {len(uncaptioned)} image(s) without a caption .txt skipped, e.g. {uncaptioned[0]}")
    if not pairs:
        raise DMD2Error(f"{images_folder} has no image with a caption: put the caption of image.png in image.txt")
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    if size % scale:
        raise DMD2Error(f"the image size must be a multiple of {scale}, got {size}")
    output.mkdir(parents=True, exist_ok=True)
    prompts = output / "prompts.txt"
    prompts.write_text("".join(caption + "\n" for _, caption in pairs), encoding="utf-8")
    images = [image for image, _ in pairs]
    shape = (len(images), vae.config.latent_channels, size // scale, size // scale)
    latents = write_safetensors(output / "latents.safetensors", {
        "latents": TensorSource(torch.float16, shape,
                                lambda: encoded_batches(vae, images, size, batch_size, seed, progress)),
        "prompt_ids": TensorSource(torch.int64, (len(images),), lambda: torch.arange(len(images))),
    }, {"format": "pt", "dmd2_image_size": str(size)})
    return prompts, latents
