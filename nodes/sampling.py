"""The DMD2 sampler function and schedules as ComfyUI calls them (stock dropdowns and the DMD2 nodes alike).

No math here: plans, the sampler and the seeded noise are the core's (`sampler/`). This module only decides, from what
ComfyUI hands over, where the run starts, which trained timesteps to plan with and how the re-noise stream is seeded.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from ..sampler.noise import SeededNoise, renoise_seeds
from ..sampler.plans import spread, timesteps_for
from ..sampler.sampling import sample_dmd2 as core_sample_dmd2
from ..sampler.schedule import sigmas_for_timesteps
from . import tags

log = logging.getLogger("dmd2")
_warned: set[str] = set()


def warn_once(key: str, message: str) -> None:
    """Log `message` the first time `key` comes up in this process (a warning per run would drown the console)."""
    if key not in _warned:
        _warned.add(key)
        log.warning("[DMD2] %s", message)


def plan_sigmas(model_sampling: Any, timesteps: tuple[int, ...]) -> torch.Tensor:
    """SIGMAS for integer timesteps, taken from the model's own sigma table so ComfyUI maps them back exactly."""
    return sigmas_for_timesteps(timesteps, model_sampling.sigmas.detach().cpu()).to(torch.float32)


def scheduler_sigmas(model_sampling: Any, steps: int) -> torch.Tensor:
    """The stock `dmd2` scheduler: `steps` timesteps spread over the model's trained ones (4-step plan if untagged).

    KSampler asks for int(steps / denoise) steps and keeps the tail; the proportional plan makes that tail land on
    trained timesteps too (4 steps at denoise 0.5: 499, 499, 249, 249).
    """
    trained = tags.trained_of(tags.sampling_facts(model_sampling))
    return plan_sigmas(model_sampling, spread(trained, steps))


def node_sigmas(model: Any, steps: int, denoise: float) -> torch.Tensor:
    """SIGMAS of the DMD2 nodes: `steps` UNet passes on the MODEL's trained timesteps at strength `denoise`."""
    if denoise <= 0:
        return torch.zeros(0)
    trained = tags.trained_of(tags.model_facts(model))
    return plan_sigmas(model.get_model_object("model_sampling"), timesteps_for(steps, trained, denoise))


def renoise(model: Any, x: torch.Tensor, seed: int | None) -> SeededNoise:
    """The pack's own re-noise stream: per batch item a CPU generator seeded from the run's seed and that item's
    starting noise (`renoise_seeds`), drawn in float32 and then moved to x's device and dtype, as ComfyUI draws its
    starting noise. So an image depends on its seed (and batch index, through its starting noise) alone: not on the
    ComfyUI version (whose `default_noise_sampler` changed its seeding in v0.7.0) nor on CPU vs GPU, and an item
    taken out of a batch (LatentFromBatch) re-noises as it did in the batch, on every sampler path."""
    start = getattr(model, "noise", None)
    if start is None or start.shape != x.shape:
        start = None
    if seed is None:  # no seed given (never the case from ComfyUI's samplers): a fresh stream
        seed = int(torch.randint(0, 2**62, (), device="cpu"))
    return SeededNoise(renoise_seeds(seed, start, x.shape[0]), x.shape[1:], device=x.device, dtype=x.dtype)


def _model_sampling(model: Any) -> Any:
    # model is KSamplerX0Inpaint -> CFGGuider -> BaseModel while ComfyUI samples; be lenient with other wrappers.
    base = getattr(getattr(model, "inner_model", None), "inner_model", None)
    return getattr(base, "model_sampling", None)


def _check_run(model: Any, extra_args: dict[str, Any]) -> None:
    facts = tags.options_facts(extra_args.get("model_options")) or tags.sampling_facts(_model_sampling(model))
    if facts is None:
        warn_once("untagged", "the dmd2 sampler is running a model no DMD2 loader tagged. It runs, but only DMD2 "
                  "models give good images this way; if this is a DMD2 model, load it with 'DMD2 Load UNet' or "
                  "'DMD2 LoRA' so its trained timesteps are used (untagged models get 999/749/499/249).")
    cfg = getattr(getattr(model, "inner_model", None), "cfg", 1.0)
    if isinstance(cfg, (int, float)) and cfg > 1.0:
        warn_once("cfg", f"cfg {cfg} with the dmd2 sampler runs the UNet twice per step (double cost); DMD2 was "
                  "trained without classifier-free guidance: use cfg 1.0 unless you want that trade.")


def _start(model: Any, x: torch.Tensor, sigmas: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """(start latent, pure_noise) for the core sampler.

    txt2img (the latent is empty): rebuild the start from ComfyUI's raw unit noise as noise * sigma_0 and let the
    core scale it to unit variance. ComfyUI scaled x by sqrt(1 + sigma_0^2) only when sigma_0 is the schedule's
    maximum, by sigma_0 otherwise (the 1-step t=399 model would see 0.76 * noise); rebuilding never scales twice.
    img2img keeps ComfyUI's start: the init latent forward-noised to sigma_0.
    """
    noise, latent = getattr(model, "noise", None), getattr(model, "latent_image", None)
    if noise is None or latent is None:
        warn_once("no-raw-noise", "this ComfyUI's sampler wrapper no longer carries the raw noise and latent "
                  "(KSamplerX0Inpaint.noise / .latent_image): the first step keeps ComfyUI's scaling, which gives the "
                  "UNet unit-variance noise only when the first timestep is 999, and re-noise is seeded by batch "
                  "position. Please report this ComfyUI version.")
        return x, False
    if noise.shape != x.shape or torch.count_nonzero(latent) > 0:
        return x, False
    return noise.to(x) * sigmas[0].to(x), True


@torch.no_grad()
def sample_dmd2(model: Any, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict[str, Any] | None = None,
                callback: Any = None, disable: bool | None = None, noise_sampler: Any = None) -> torch.Tensor:
    """DMD2 sampling in ComfyUI (k-diffusion signature): the stock `dmd2` sampler and the DMD2 Sampler node.

    Runs the core `sample_dmd2` from the right start (`_start`), re-noising with the pack's own seeded stream
    (`renoise`) so a seed reproduces its image. The callback drives previews, the progress bar and interruption
    between steps.
    """
    extra_args = {} if extra_args is None else extra_args
    _check_run(model, extra_args)
    start, pure_noise = _start(model, x, sigmas)
    if noise_sampler is None:
        noise_sampler = renoise(model, x, extra_args.get("seed"))
    return core_sample_dmd2(model, start, sigmas, extra_args=extra_args, callback=callback, disable=disable,
                            noise_sampler=noise_sampler, pure_noise=pure_noise)
