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


class PipelineData:
    """A diffusers StableDiffusion(XL)Pipeline as a distillation problem: prompts from a list, conditioning from
    the pipeline's text encoders (cached per prompt, they are frozen), real latents from a tensor of VAE latents.

    Real images are optional: without them the GAN term must be off (the trainer says so).
    """

    def __init__(self, pipe: Any, prompts: Sequence[str], size: int, real_latents: torch.Tensor | None = None,
                 real_prompts: Sequence[str] | None = None):
        if not prompts:
            raise DMD2Error("the prompt list is empty: give at least one training prompt (one per line)")
        self.pipe = pipe
        self.prompts = list(prompts)
        self.size = size
        self.is_sdxl = hasattr(pipe, "text_encoder_2")
        scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
        self.latent_shape = (pipe.unet.config.in_channels, size // scale, size // scale)
        if real_latents is not None and tuple(real_latents.shape[1:]) != self.latent_shape:
            raise DMD2Error(f"real latents have shape {tuple(real_latents.shape[1:])}, the UNet at {size}px needs "
                            f"{self.latent_shape}: encode the images at the training size")
        self.real_latents = real_latents
        self.real_prompts = list(real_prompts) if real_prompts is not None else None
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
        if self.real_latents is None:
            return None
        idx = torch.randint(len(self.real_latents), (n,), generator=generator)
        prompts = ([self.real_prompts[i] for i in idx.tolist()] if self.real_prompts is not None
                   else self.sample_prompts(n, generator))
        return self.real_latents[idx], prompts

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
