"""The DMD2 training losses, as pure functions of tensors (DMD: Yin et al. 2024a; DMD2: Yin et al. 2024b;
f-distill: Xu et al. 2025).

Conventions: `x` is the generator's clean sample, `x0_real` / `x0_fake` are the real (teacher, with CFG) and fake
score models' clean-sample predictions from the same noisy version of `x`. GAN logits are "real vs generated"
scores from the classifier head on the fake-score UNet's bottleneck (positive = looks real).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DIVERGENCES = ("reverse_kl", "forward_kl", "js")
#: exp() of a larger logit overflows float32 in the forward-KL weight; ratios beyond e^20 carry no information.
_MAX_LOG_RATIO = 20.0


def _per_sample_mean(t: torch.Tensor) -> torch.Tensor:
    return t.mean(dim=tuple(range(1, t.ndim)), keepdim=True)


def dmd_gradient(x: torch.Tensor, x0_fake: torch.Tensor, x0_real: torch.Tensor) -> torch.Tensor:
    """DMD's distribution-matching gradient, (x0_fake - x0_real) / mean|x - x0_real| per sample.

    The difference of the two score models' predictions approximates the gradient of KL(p_fake || p_real) with
    respect to x; dividing by the teacher's per-sample error keeps its scale the same at every noise level (DMD
    eq. 8's weighting). NaNs from a zero denominator become 0.
    """
    return torch.nan_to_num((x0_fake - x0_real) / _per_sample_mean((x - x0_real).abs()))


def distribution_matching_loss(x: torch.Tensor, x0_fake: torch.Tensor, x0_real: torch.Tensor,
                               weights: torch.Tensor | None = None) -> torch.Tensor:
    """0.5 * MSE(x, stopgrad(x - w * grad)): a scalar whose gradient with respect to x is w * grad / x.numel().

    `weights` (one per sample, f-divergence weighting) scale each sample's gradient; None is DMD2's reverse KL.
    """
    grad = dmd_gradient(x, x0_fake.detach(), x0_real.detach())
    if weights is not None:
        grad = grad * weights.detach().reshape(-1, *([1] * (x.ndim - 1)))
    return 0.5 * F.mse_loss(x, (x - grad).detach())


def denoising_loss(eps_pred: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The fake-score model's loss: epsilon MSE on noised generator samples, so it tracks the generator's
    distribution (DMD2 sec. 3, "fake diffusion model")."""
    return F.mse_loss(eps_pred, noise)


def gan_generator_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss softplus(-D(G(z))): the generator wants its samples classified real."""
    return F.softplus(-logits_fake).mean()


def gan_discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """softplus(-D(real)) + softplus(D(fake)): the logistic loss of a real-vs-generated classifier."""
    return F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean()


def f_divergence_weights(logits: torch.Tensor, divergence: str) -> torch.Tensor:
    """Per-sample weights h(r) = f''(r) r^2 of f-distill's gradient, normalised to mean 1 over the batch.

    r = p_real / p_fake is estimated by the GAN discriminator: its logit is log r for an optimal logistic
    classifier. reverse KL (f = -log r) gives h = 1, i.e. plain DMD2; forward KL (f = r log r) gives h = r;
    Jensen-Shannon gives h = r / (1 + r) = sigmoid(logit). The batch normalisation keeps the step size of every
    divergence comparable to DMD2's (f-distill does the same), so only the relative weighting changes.
    """
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
    logits = logits.detach().float().reshape(-1)
    if divergence == "reverse_kl":
        return torch.ones_like(logits)
    if divergence == "forward_kl":
        h = logits.clamp(max=_MAX_LOG_RATIO).exp()
    else:
        h = torch.sigmoid(logits)
    return h / h.mean().clamp_min(torch.finfo(h.dtype).tiny)


def regression_loss(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """DMD v1's regression loss on (noise, teacher sample) pairs: the generator fed the pair's noise should land on
    the teacher's deterministic sample. DMD used LPIPS; we use MSE in latent space (no feature network to
    download), which regularises the same way: towards the teacher's noise-to-image mapping."""
    return F.mse_loss(x, target)
