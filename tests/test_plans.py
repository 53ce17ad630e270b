"""Trained-timestep plans: subsets, repeats, denoise snapping, and host-style tails (img2img, hires fix)."""

import pytest

from sampler import TRAINED_TIMESTEPS, spread, timesteps_for

SDXL4 = TRAINED_TIMESTEPS["sdxl_4step"]


def test_released_models_trained_timesteps():
    assert TRAINED_TIMESTEPS == {"sdxl_4step": (999, 749, 499, 249), "sdxl_1step": (399,), "sd15_1step": (999,)}


@pytest.mark.parametrize("steps,expected", [
    (1, (999,)), (2, (999, 499)), (3, (999, 749, 499)), (4, (999, 749, 499, 249)),
    (8, (999, 999, 749, 749, 499, 499, 249, 249)),
])
def test_steps_subset_and_repeat(steps, expected):
    assert timesteps_for(steps) == expected


def test_one_step_models():
    assert timesteps_for(1, TRAINED_TIMESTEPS["sdxl_1step"]) == (399,)
    assert timesteps_for(1, TRAINED_TIMESTEPS["sd15_1step"]) == (999,)
    assert timesteps_for(3, TRAINED_TIMESTEPS["sdxl_1step"]) == (399, 399, 399)
    # A 1-step model has one trained timestep: every strength starts there.
    assert timesteps_for(1, TRAINED_TIMESTEPS["sdxl_1step"], denoise=0.3) == (399,)


@pytest.mark.parametrize("denoise,start", [(1.0, 999), (0.75, 749), (0.5, 499), (0.25, 249), (0.6, 499),
                                           (0.625, 749), (0.05, 249)])
def test_denoise_starts_on_nearest_trained_timestep(denoise, start):
    plan = timesteps_for(4, denoise=denoise)
    assert plan[0] == start
    assert set(plan) <= set(SDXL4)


@pytest.mark.parametrize("denoise,expected", [(0.75, (749, 499, 249)), (0.5, (499, 249)), (0.25, (249,))])
def test_denoise_with_remaining_trained_steps(denoise, expected):
    assert timesteps_for(len(expected), denoise=denoise) == expected


@pytest.mark.parametrize("steps", range(1, 9))
@pytest.mark.parametrize("denoise", [0.25, 0.3, 0.5, 0.55, 0.75, 0.9, 1.0])
def test_host_tail_slices_land_on_trained_timesteps(steps, denoise):
    """ComfyUI denoise / A1111 hires fix: build an int(steps / denoise)-step schedule and run its last `steps`."""
    total = int(steps / denoise)
    tail = timesteps_for(total)[-steps:]
    assert set(tail) <= set(SDXL4)
    # The tail starts within one trained interval of the strength asked for.
    assert abs(tail[0] - (1000 * steps / total - 1)) <= 250


def test_a1111_img2img_tail_lands_on_trained_timesteps():
    """A1111 img2img runs sigmas[steps - int(denoise * steps) - 1:] of its `steps`-step schedule."""
    for steps in range(1, 9):
        for denoise in (0.1, 0.25, 0.5, 0.75, 0.99):
            plan = timesteps_for(steps)
            assert set(plan[steps - int(denoise * steps) - 1:]) <= set(SDXL4)


@pytest.mark.parametrize("steps", [0, -1, 1.5])
def test_bad_steps(steps):
    with pytest.raises(ValueError, match="steps"):
        timesteps_for(steps)


@pytest.mark.parametrize("denoise", [0.0, -0.1, 1.01, float("nan")])
def test_bad_denoise(denoise):
    with pytest.raises(ValueError, match="denoise"):
        timesteps_for(4, denoise=denoise)


@pytest.mark.parametrize("trained", [(), (249, 499), (999, 999), (1000,), (-1,), (3.5,)])
def test_bad_trained(trained):
    with pytest.raises(ValueError, match="trained"):
        timesteps_for(1, trained)


def test_spread_is_proportional():
    assert spread((10, 5), 5) == (10, 10, 10, 5, 5)
