"""Regression pretraining: a generator taught to map noise to the teacher's samples from that noise, in one step.

DMD2 starts its 1-step SDXL generator (conditioning timestep 399) from such a model, not from the teacher: the
teacher fed pure noise at t=399 draws nothing useful, and distribution matching alone moves it slowly (official
main/train_sd_ode.py; experiments/sdxl/sdxl_lr1e-5_8node_ode_pretraining_10k_cond399.sh: 10k ODE pairs, lr 1e-5,
2000 iterations, LPIPS; here MSE as in `losses.regression_loss`, no feature network to download).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from sampler.schedule import sigmas_for_timesteps

from . import losses
from .data import DistillData
from .models import predict_x0
from .trainer import pure_noise_input


def regression_pretrain(unet: nn.Module, data: DistillData, timestep: int, steps: int, batch_size: int = 16,
                        lr: float = 1e-4, seed: int = 0, max_grad_norm: float = 10.0,
                        progress: bool = True) -> nn.Module:
    """A copy of `unet` trained for `steps` AdamW steps so that, fed the pure noise of a `data.regression_batch`
    pair at conditioning `timestep`, its x0 is the pair's teacher sample; returned in eval mode, frozen.

    The input is the noise itself at unit variance, exactly as a DMD2 generator's first step sees it.
    """
    from tqdm.auto import trange

    generator = copy.deepcopy(unet).train().requires_grad_(True)
    device = next(generator.parameters()).device
    optimizer = torch.optim.AdamW(generator.parameters(), lr=lr, weight_decay=0.0)
    rng = torch.Generator().manual_seed(seed)
    sigma = float(sigmas_for_timesteps((timestep,))[0])
    for _ in trange(steps, disable=not progress, desc="regression pretraining"):
        noise, target, prompts = data.regression_batch(batch_size, rng)
        x = predict_x0(generator, pure_noise_input(noise.to(device), sigma),
                       torch.full((len(noise),), sigma, device=device), data.cond(prompts))
        loss = losses.regression_loss(x.float(), target.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(generator.parameters(), max_grad_norm)
        optimizer.step()
    return generator.eval().requires_grad_(False)
