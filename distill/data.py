"""What the trainer needs from a problem: prompts, their UNet conditioning, and (for the GAN) real samples.

`DistillData` is the contract; `PipelineData` fulfils it for a diffusers SD1.5 / SDXL pipeline (the real use:
distilling a finetune), `distill.shapes.ShapesData` for the small proof problem.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, Sequence

import torch

from sampler.errors import DMD2Error


class DistillData(Protocol):
    """A distillation problem. Every random choice takes the trainer's generator, so a resumed run replays exactly."""

    #: Shape of one latent (C, H, W) the UNet denoises.
    latent_shape: tuple[int, int, int]

    def sample_prompts(self, n: int, generator: torch.Generator) -> list[str]:
        """n training prompts."""

    def cond(self, prompts: Sequence[str]) -> dict[str, Any]:
        """UNet keyword arguments (encoder_hidden_states, ...) for `prompts`; "" is the unconditional prompt (the
        real score's classifier-free guidance asks for it)."""

    def real_batch(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, list[str]] | None:
        """n real latents and their prompts for the GAN, or None when the problem has no real data."""

    def regression_batch(self, n: int, generator: torch.Generator
                         ) -> tuple[torch.Tensor, torch.Tensor, list[str]] | None:
        """(unit noise, the teacher's sample from that noise, prompts) pairs for DMD's regression loss, or None."""


class RealLatents:
    """VAE latents of real images for the GAN, from a safetensors file with 'latents' (N, C, H, W) and optionally
    'prompt_ids' (N,): each image's line in the prompt file (what `python -m distill prepare` writes).

    Rows are read from the memory-mapped file when drawn, so the file may be larger than memory. Everything that can
    be wrong with the file is found when it is opened and said in one message naming it.
    """

    def __init__(self, path: Path, num_prompts: int):
        from safetensors import SafetensorError, safe_open

        from sampler.models.files import read_safetensors_header

        self.path = Path(path)
        if not self.path.is_file():
            raise DMD2Error(f"--real-latents {path}: no such file")
        try:
            header = read_safetensors_header(self.path)
            self._file = safe_open(str(self.path), framework="pt")
        except (DMD2Error, OSError, SafetensorError) as e:
            raise DMD2Error(f"--real-latents {path} is not a readable safetensors file: {e}") from None
        latents = header.get("latents")
        if latents is None or len(latents["shape"]) != 4 or latents["shape"][0] < 1:
            found = ", ".join(f"{k} {tuple(v['shape'])}" for k, v in header.items() if k != "__metadata__")
            raise DMD2Error(f"--real-latents {path} needs a tensor 'latents' of shape (N, C, H, W) with N >= 1 (it "
                            f"has {found or 'no tensors'}): make it with `python -m distill prepare`")
        if latents["dtype"] not in ("F16", "BF16", "F32"):
            raise DMD2Error(f"--real-latents {path}: 'latents' must be float16, bfloat16 or float32, not "
                            f"{latents['dtype']}")
        self.shape = tuple(latents["shape"])
        self.prompt_ids: list[int] | None = None
        if "prompt_ids" in header:
            ids = self._file.get_tensor("prompt_ids")
            if ids.shape != (self.shape[0],) or ids.is_floating_point():
                raise DMD2Error(f"--real-latents {path}: 'prompt_ids' must hold one integer per latent "
                                f"({self.shape[0]}), it has shape {tuple(ids.shape)} and type {ids.dtype}")
            if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= num_prompts):
                raise DMD2Error(f"--real-latents {path}: 'prompt_ids' point at prompt lines {int(ids.min())}.."
                                f"{int(ids.max())}, but the prompt file has {num_prompts}: use the prompt file "
                                f"written with these latents")
            self.prompt_ids = ids.tolist()

    def __len__(self) -> int:
        return self.shape[0]

    def check_shape(self, latent_shape: tuple[int, int, int], what: str) -> None:
        if self.shape[1:] != tuple(latent_shape):
            raise DMD2Error(f"--real-latents {self.path} holds latents of shape {self.shape[1:]}, {what} needs "
                            f"{tuple(latent_shape)}: encode the images at the training size with the teacher's VAE")

    def rows(self, idx: Sequence[int]) -> torch.Tensor:
        """The latents at `idx`, as float32."""
        latents = self._file.get_slice("latents")
        return torch.stack([latents[i] for i in idx]).float()


class PipelineData:
    """A diffusers StableDiffusion(XL)Pipeline as a distillation problem: prompts from a list, conditioning from
    the pipeline's text encoders (cached per prompt, they are frozen), real latents from a `RealLatents` file.

    Real images are optional: without them the GAN term must be off (the trainer says so).
    """

    def __init__(self, pipe: Any, prompts: Sequence[str], size: int, real: RealLatents | None = None):
        if not prompts:
            raise DMD2Error("the prompt list is empty: give at least one training prompt (one per line)")
        self.pipe = pipe
        self.prompts = list(prompts)
        self.size = size
        self.is_sdxl = hasattr(pipe, "text_encoder_2")
        scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
        self.latent_shape = (pipe.unet.config.in_channels, size // scale, size // scale)
        if real is not None:
            real.check_shape(self.latent_shape, f"the UNet at {size} px")
        self.real = real
        self._cache: dict[str, dict[str, torch.Tensor]] = {}

    def sample_prompts(self, n: int, generator: torch.Generator) -> list[str]:
        return [self.prompts[i] for i in torch.randint(len(self.prompts), (n,), generator=generator).tolist()]

    @torch.no_grad()
    def _encode_one(self, prompt: str) -> dict[str, torch.Tensor]:
        from sampler.app.pipeline import sdxl_conditioning

        if self.is_sdxl:
            cond = sdxl_conditioning(self.pipe, [prompt], self.size, self.size)
            text = {"encoder_hidden_states": cond["encoder_hidden_states"],
                    "text_embeds": cond["added_cond_kwargs"]["text_embeds"]}
            if prompt == "" and self.pipe.config.get("force_zeros_for_empty_prompt", True):
                # SDXL's unconditional input is zeros, not the encoded "" (diffusers' force_zeros_for_empty_prompt;
                # the official DMD2 real score does the same, main/sd_unified_model.py:258-262)
                text = {k: torch.zeros_like(v) for k, v in text.items()}
            return {**text, "time_ids": cond["added_cond_kwargs"]["time_ids"]}
        embeds = self.pipe.encode_prompt(prompt, self.pipe.unet.device, 1, False)[0]
        return {"encoder_hidden_states": embeds}

    def cond(self, prompts: Sequence[str]) -> dict[str, Any]:
        for p in set(prompts) - self._cache.keys():
            self._cache[p] = self._encode_one(p)
        rows = [self._cache[p] for p in prompts]
        stacked = {k: torch.cat([r[k] for r in rows]) for k in rows[0]}
        cond: dict[str, Any] = {"encoder_hidden_states": stacked.pop("encoder_hidden_states")}
        if stacked:
            cond["added_cond_kwargs"] = stacked
        return cond

    def real_batch(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, list[str]] | None:
        if self.real is None:
            return None
        idx = torch.randint(len(self.real), (n,), generator=generator).tolist()
        ids = self.real.prompt_ids
        prompts = [self.prompts[ids[i]] for i in idx] if ids is not None else self.sample_prompts(n, generator)
        return self.real.rows(idx), prompts

    def regression_batch(self, n: int, generator: torch.Generator) -> None:
        return None


def read_prompts(path: Path) -> list[str]:
    """Training prompts from a text file, one per line; blank lines and lines starting with # are skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise DMD2Error(f"cannot read the prompt file {path}: {e.strerror}") from None
    prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise DMD2Error(f"{path} has no prompts: write one training prompt per line")
    return prompts
