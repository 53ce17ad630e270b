"""k-diffusion style denoiser around an epsilon-predicting diffusers UNet (the standalone path and the tests)."""

from __future__ import annotations

from typing import Any

import torch

from .schedule import sigma_to_timestep


class DiffusersDenoiser:
    """Wraps `UNet2DConditionModel` so that `denoiser(x, sigma, **cond)` returns x0 for x = x0 + sigma * noise.

    The UNet sees x / sqrt(1 + sigma^2) (the variance-preserving input) and the integer timestep nearest to sigma,
    as ComfyUI does: DMD2 is only ever run on integer trained timesteps.
    """

    def __init__(self, unet: torch.nn.Module, sigma_table: torch.Tensor | None = None):
        self.unet = unet
        self.sigma_table = sigma_table

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, encoder_hidden_states: torch.Tensor,
                 added_cond_kwargs: dict[str, Any] | None = None) -> torch.Tensor:
        if encoder_hidden_states.shape[0] != x.shape[0]:
            raise ValueError(f"conditioning has batch size {encoder_hidden_states.shape[0]} but the latent has "
                             f"{x.shape[0]}: give one prompt embedding per latent")
        dtype = next(self.unet.parameters()).dtype
        x_in, timestep = unet_inputs(x, sigma, dtype, self.sigma_table)
        eps = self.unet(x_in, timestep, encoder_hidden_states=encoder_hidden_states.to(dtype),
                        added_cond_kwargs=added_cond_kwargs, return_dict=False)[0]
        return x - eps.to(x.dtype) * sigma.to(torch.float32).reshape(-1, *([1] * (x.ndim - 1)))


def unet_inputs(x: torch.Tensor, sigma: torch.Tensor, dtype: torch.dtype, sigma_table: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(x / sqrt(1 + sigma^2) in `dtype`, the integer timestep nearest to each sigma): what an epsilon UNet is fed
    for the variance-exploding x = x0 + sigma * noise (one sigma per sample)."""
    sigma = sigma.to(torch.float32).reshape(-1, *([1] * (x.ndim - 1)))
    timestep = sigma_to_timestep(sigma.flatten().cpu(), sigma_table, quantize=True).long()
    return (x / (1.0 + sigma**2).sqrt()).to(dtype), timestep.to(x.device)
