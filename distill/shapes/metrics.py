"""How good a set of shapes images is: Frechet distance of classifier features, and prompt accuracy."""

from __future__ import annotations

from typing import Sequence

import torch

from .classifier import ShapesClassifier, features, predict


def _sqrt_psd(matrix: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix (eigenvalues rounded below 0 count as 0)."""
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(feats_a: torch.Tensor, feats_b: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (N, D), as FID computes it:
    |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a^1/2 S_b S_a^1/2)^1/2).

    The symmetric form S_a^1/2 S_b S_a^1/2 has the same eigenvalues as S_a S_b but is symmetric PSD, so eigh
    applies and no scipy sqrtm (or its complex round-off) is needed. Float64 throughout.
    """
    a, b = feats_a.double(), feats_b.double()
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need two (N >= 2, D) feature sets of the same D, got {tuple(a.shape)} and {tuple(b.shape)}")
    cov_a, cov_b = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)
    root_a = _sqrt_psd(cov_a)
    middle = root_a @ cov_b @ root_a
    cross = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    mean = (a.mean(0) - b.mean(0)).square().sum()
    return float(mean + cov_a.trace() + cov_b.trace() - 2 * cross)


def prompt_accuracy(classifier: ShapesClassifier, images: torch.Tensor, prompts: Sequence[str]) -> float:
    """Fraction of images (in [-1, 1]) whose colour and shape both match their prompt."""
    return sum(p == q for p, q in zip(predict(classifier, images), prompts)) / len(prompts)


def evaluate(classifier: ShapesClassifier, images: torch.Tensor, prompts: Sequence[str],
             reference_feats: torch.Tensor) -> dict[str, float]:
    """Frechet distance to the reference (real-image) features, and prompt accuracy, of images in [-1, 1]."""
    return {"fd": frechet_distance(features(classifier, images), reference_feats),
            "accuracy": prompt_accuracy(classifier, images, prompts)}


#: Seed of the real images every evaluation compares against (kept apart from training and evaluation seeds).
REFERENCE_SEED = 1_000_003


def reference_features(classifier: ShapesClassifier, count: int = 2000, seed: int = REFERENCE_SEED) -> torch.Tensor:
    """Features of `count` real images of uniformly random prompts: the reference set of the Frechet distance."""
    from .data import sample_batch

    images, _ = sample_batch(count, torch.Generator().manual_seed(seed))
    return features(classifier, images)
