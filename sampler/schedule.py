"""Noise-schedule math shared by every DMD2 code path.

DMD2's released models are distilled from SDXL / SD1.5, which were trained on the DDPM "scaled_linear" schedule
with 1000 timesteps. Hosts talk in k-diffusion sigmas (variance-exploding); the UNet is conditioned on the integer
timestep. These functions convert between the two the way ComfyUI and A1111 do (interpolating log-sigma), so a
sigma we hand to a host maps back to exactly the timestep we meant.
"""

from __future__ import annotations

import functools
from typing import Sequence

import torch

NUM_TRAIN_TIMESTEPS = 1000
BETA_START = 0.00085
BETA_END = 0.012


def scaled_linear_alphas_cumprod(
    num_timesteps: int = NUM_TRAIN_TIMESTEPS, beta_start: float = BETA_START, beta_end: float = BETA_END
) -> torch.Tensor:
    """Cumulative product of (1 - beta_t) for betas = linspace(sqrt(beta_start), sqrt(beta_end), n)^2, float64."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def sigmas_from_alphas_cumprod(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """k-diffusion sigma of each timestep: sqrt((1 - abar) / abar)."""
    return ((1.0 - alphas_cumprod) / alphas_cumprod).sqrt()


@functools.lru_cache(maxsize=1)
def _default_training_sigmas() -> torch.Tensor:
    return sigmas_from_alphas_cumprod(scaled_linear_alphas_cumprod())


def training_sigmas() -> torch.Tensor:
    """The 1000 sigmas of the SD / SDXL training schedule (float64, increasing with the timestep)."""
    return _default_training_sigmas().clone()


def _table(sigma_table: torch.Tensor | None) -> torch.Tensor:
    return _default_training_sigmas() if sigma_table is None else sigma_table.to(torch.float64)


def timestep_to_sigma(timestep: torch.Tensor | float, sigma_table: torch.Tensor | None = None) -> torch.Tensor:
    """Sigma of a (possibly fractional) timestep, interpolating log-sigma between neighbouring integer timesteps.

    `sigma_table` is a host's own per-timestep sigmas (its float32 buffer); by default the scaled-linear schedule.
    """
    table = _table(sigma_table)
    t = torch.as_tensor(timestep, dtype=torch.float64)
    if ((t < 0) | (t > len(table) - 1)).any():
        raise ValueError(f"timestep {t.tolist()} outside the schedule's range 0..{len(table) - 1}")
    low = t.floor().long()
    high = t.ceil().long()
    frac = t - low
    log_sigma = (1.0 - frac) * table.log()[low] + frac * table.log()[high]
    return log_sigma.exp()


def sigma_to_timestep(
    sigma: torch.Tensor | float, sigma_table: torch.Tensor | None = None, quantize: bool = False
) -> torch.Tensor:
    """Timestep of a sigma: fractional by log-sigma interpolation (A1111), or the nearest integer (ComfyUI).

    Sigmas beyond the table are clamped to its ends, as both hosts do.
    """
    table = _table(sigma_table)
    log_sigma = torch.as_tensor(sigma, dtype=torch.float64).log()
    log_table = table.log()
    if quantize:
        return (log_sigma[..., None] - log_table).abs().argmin(dim=-1).to(torch.float64)
    high = torch.searchsorted(log_table, log_sigma.contiguous()).clamp(1, len(table) - 1)
    low = high - 1
    frac = ((log_sigma - log_table[low]) / (log_table[high] - log_table[low])).clamp(0.0, 1.0)
    return low.to(torch.float64) + frac


def sigmas_for_timesteps(timesteps: Sequence[int], sigma_table: torch.Tensor | None = None) -> torch.Tensor:
    """k-diffusion sigma schedule for a plan of timesteps: one sigma per timestep, then the final 0 (float64)."""
    if len(timesteps) == 0:
        raise ValueError("a schedule needs at least one timestep")
    sigmas = timestep_to_sigma(torch.tensor(list(timesteps), dtype=torch.float64), sigma_table)
    return torch.cat([sigmas, sigmas.new_zeros(1)])
