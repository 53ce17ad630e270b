"""The DMD2 sampler in k-diffusion convention.

`model(x, sigma, **extra_args)` returns the denoised prediction x0 for a variance-exploding input
x = x0 + sigma * noise, as k-diffusion, ComfyUI and A1111 wrap their UNets.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from tqdm.auto import trange

from .noise import NoiseSampler


def check_sigmas(sigmas: torch.Tensor) -> None:
    """Raise ValueError unless `sigmas` is a 1-D, finite, non-negative, non-increasing schedule of >= 2 entries."""
    if sigmas.ndim != 1 or len(sigmas) < 2:
        raise ValueError(f"sigmas must be a 1-D schedule with at least 2 entries (one step), got shape "
                         f"{tuple(sigmas.shape)}")
    if not torch.isfinite(sigmas).all() or (sigmas < 0).any():
        raise ValueError(f"sigmas must be finite and >= 0, got {sigmas.tolist()}")
    if (sigmas[1:] > sigmas[:-1]).any():
        raise ValueError(f"sigmas must not increase (first step first), got {sigmas.tolist()}")
    if sigmas[0] == 0:
        raise ValueError("the first sigma is 0: there is nothing to denoise")


def unit_variance_scale(sigma: float) -> float:
    """Factor turning sigma-scaled noise into noise the UNet sees with unit variance: sqrt(1 + sigma^2) / sigma.

    Hosts start txt2img from noise * sigma_0, which the eps wrapper divides by sqrt(1 + sigma_0^2). DMD2 generators
    start from unit-variance noise at their first timestep, also when it is not 999 (the SDXL 1-step model is
    conditioned on t=399 yet fed pure noise), so x must be noise * sqrt(1 + sigma_0^2).
    """
    return math.sqrt(1.0 + sigma * sigma) / sigma


@torch.no_grad()
def sample_dmd2(
    model: Callable[..., torch.Tensor],
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    disable: bool | None = None,
    noise_sampler: NoiseSampler | None = None,
    pure_noise: bool = False,
) -> torch.Tensor:
    """DMD2 multi-step sampling (Yin et al. 2024, "Improved Distribution Matching Distillation", sec. 4.4).

    At each sigma the generator predicts x0; the next input is x0 re-noised to the next sigma with fresh noise
    (backward simulation, exactly as in training), not a deterministic ODE step. The output is the last x0, or,
    when the schedule ends above 0 (a split schedule), that x0 re-noised to the last sigma.

    Args:
        model: denoiser, `model(x, sigma * ones(batch), **extra_args) -> x0`.
        x: starting latent: noise * sigma_0 (+ the init latent for img2img), as hosts prepare it.
        sigmas: the schedule, first step first (e.g. `sigmas_for_timesteps(timesteps_for(4))`).
        extra_args: conditioning passed to `model`.
        callback: called after each step with {x, i, sigma, sigma_hat, denoised} (previews, progress).
        disable: disable the progress bar.
        noise_sampler: `f(sigma, sigma_next) -> noise` shaped like x; default `torch.randn_like`. Pass a seeded
            one (e.g. `SeededNoise`, or the host's seeded RNG) for reproducible images.
        pure_noise: x is pure noise scaled by sigma_0 (txt2img); rescale it so the UNet sees unit-variance noise
            (see `unit_variance_scale`). Leave False when the host already scaled it by sqrt(1 + sigma_0^2) or x
            holds an init image.
    """
    check_sigmas(sigmas)
    if not torch.isfinite(x).all():
        raise ValueError("the starting latent contains NaN or Inf values")
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = (lambda sigma, sigma_next: torch.randn_like(x)) if noise_sampler is None else noise_sampler
    if pure_noise:
        x = x * unit_variance_scale(float(sigmas[0]))
    s_in = x.new_ones([x.shape[0]])
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        x = denoised
        if sigmas[i + 1] > 0:
            noise = noise_sampler(sigmas[i], sigmas[i + 1])
            if noise.shape != x.shape:
                raise ValueError(f"noise_sampler returned shape {tuple(noise.shape)}, latent is {tuple(x.shape)}")
            x = x + noise * sigmas[i + 1]
    return x
