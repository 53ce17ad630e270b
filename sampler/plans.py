"""Which timesteps a DMD2 model is run on.

A DMD2 generator only works on the timesteps it was trained on (backward simulation trains each of them on inputs
made from its own previous prediction). Every plan here is a sequence of those trained timesteps, never a point
between them, however many steps, whatever the denoise strength and however a host slices the schedule.
"""

from __future__ import annotations

from typing import Sequence

from .schedule import NUM_TRAIN_TIMESTEPS

#: Trained timesteps of each released DMD2 generator, first step first.
TRAINED_TIMESTEPS: dict[str, tuple[int, ...]] = {
    "sdxl_4step": (999, 749, 499, 249),
    "sdxl_1step": (399,),
    "sd15_1step": (999,),
}
DEFAULT_TRAINED = TRAINED_TIMESTEPS["sdxl_4step"]


def check_trained(trained: Sequence[int]) -> tuple[int, ...]:
    """Validate a trained-timestep list: non-empty, integers in 0..999, strictly decreasing."""
    trained = tuple(trained)
    if not trained:
        raise ValueError("trained timesteps must not be empty")
    for t in trained:
        if int(t) != t or not 0 <= t < NUM_TRAIN_TIMESTEPS:
            raise ValueError(f"trained timestep {t!r} is not an integer in 0..{NUM_TRAIN_TIMESTEPS - 1}")
    if any(a <= b for a, b in zip(trained, trained[1:])):
        raise ValueError(f"trained timesteps must be strictly decreasing, got {list(trained)}")
    return tuple(int(t) for t in trained)


def start_index(trained: Sequence[int], denoise: float) -> int:
    """Index of the trained timestep a run of strength `denoise` starts on.

    Strength d asks for timestep d * 1000 - 1 (1.0 -> 999, 0.5 -> 499); we snap to the nearest trained timestep,
    the stronger one on a tie, so img2img never starts between trained timesteps.
    """
    if not 0.0 < denoise <= 1.0:
        raise ValueError(f"denoise must be in (0, 1], got {denoise}")
    target = denoise * NUM_TRAIN_TIMESTEPS - 1
    return min(range(len(trained)), key=lambda i: (abs(trained[i] - target), -trained[i]))


def spread(trained: Sequence[int], steps: int) -> tuple[int, ...]:
    """`steps` timesteps drawn in order from `trained`: step i runs trained[floor(i * len(trained) / steps)].

    Fewer steps than trained take an evenly spaced subset that starts on the first (4 trained: 1 -> [999],
    2 -> [999, 499], 3 -> [999, 749, 499]). More steps repeat each trained timestep about steps / len(trained)
    times (4 trained, 8 steps: 999, 999, 749, 749, ...): each repeat re-noises the prediction to the same trained
    noise level and refines it. Because the plan is proportional, the last k steps of an N-step plan start near
    the timestep a strength of k / N asks for, which is how A1111's img2img / hires fix and ComfyUI's denoise
    slice a schedule: the slice still lands only on trained timesteps.
    """
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    return tuple(trained[i * len(trained) // steps] for i in range(steps))


def timesteps_for(steps: int, trained: Sequence[int] = DEFAULT_TRAINED, denoise: float = 1.0) -> tuple[int, ...]:
    """The timesteps of a `steps`-step DMD2 run at strength `denoise` for a model trained on `trained`.

    `steps` is the number of UNet passes actually run. Denoise 1 starts on the first trained timestep (from pure
    noise); denoise < 1 starts on the trained timestep nearest its strength (see `start_index`).
    """
    trained = check_trained(trained)
    return spread(trained[start_index(trained, denoise):], steps)
