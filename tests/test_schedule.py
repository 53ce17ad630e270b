"""Schedule math against DESIGN.md's numbers and an independent numpy derivation."""

import numpy as np
import pytest
import torch

from sampler import schedule

# sigma at the DMD2 timesteps, DESIGN.md section 1 (4 decimals).
DESIGN_SIGMAS = {999: 14.6146, 749: 4.0817, 499: 1.6129, 249: 0.6932, 399: 1.1606}


def numpy_sigmas():
    betas = np.linspace(np.sqrt(0.00085), np.sqrt(0.012), 1000) ** 2
    abar = np.cumprod(1.0 - betas)
    return np.sqrt((1.0 - abar) / abar)


def test_alphas_cumprod_endpoint():
    assert schedule.scaled_linear_alphas_cumprod()[999].item() == pytest.approx(0.00466, abs=5e-6)


@pytest.mark.parametrize("t,sigma", sorted(DESIGN_SIGMAS.items()))
def test_sigma_at_dmd2_timesteps(t, sigma):
    assert schedule.training_sigmas()[t].item() == pytest.approx(sigma, abs=5e-5)
    assert schedule.timestep_to_sigma(t).item() == pytest.approx(sigma, abs=5e-5)


def test_sigma_range_matches_comfyui_model_sampling():
    sigmas = schedule.training_sigmas()
    assert sigmas[0].item() == pytest.approx(0.029167, abs=1e-6)
    assert sigmas[-1].item() == pytest.approx(14.614641, abs=1e-6)


def test_table_matches_independent_numpy():
    np.testing.assert_allclose(schedule.training_sigmas().numpy(), numpy_sigmas(), rtol=1e-12)


def test_integer_roundtrip_every_timestep():
    t = torch.arange(1000, dtype=torch.float64)
    sigmas = schedule.timestep_to_sigma(t)
    assert torch.equal(schedule.sigma_to_timestep(sigmas, quantize=True), t)
    torch.testing.assert_close(schedule.sigma_to_timestep(sigmas), t, atol=1e-9, rtol=0)


def test_fractional_timestep_interpolates_log_sigma():
    ref = numpy_sigmas()
    for t in (0.25, 398.5, 998.75):
        lo, hi, w = int(np.floor(t)), int(np.ceil(t)), t - np.floor(t)
        expected = np.exp((1 - w) * np.log(ref[lo]) + w * np.log(ref[hi]))
        assert schedule.timestep_to_sigma(t).item() == pytest.approx(expected, rel=1e-12)
        assert schedule.sigma_to_timestep(expected).item() == pytest.approx(t, abs=1e-9)


def test_sigma_to_timestep_clamps_outside_table():
    t = schedule.sigma_to_timestep(torch.tensor([1e-4, 100.0]))
    assert t.tolist() == [0.0, 999.0]


def test_host_float32_table_roundtrips_to_same_integer_timesteps():
    host_table = schedule.training_sigmas().float()  # hosts keep a float32 buffer
    sigmas = schedule.sigmas_for_timesteps([999, 749, 499, 249], host_table)
    assert schedule.sigma_to_timestep(sigmas[:-1], host_table, quantize=True).tolist() == [999, 749, 499, 249]


def test_sigmas_for_timesteps_ends_in_zero():
    sigmas = schedule.sigmas_for_timesteps([399])
    assert sigmas.tolist() == pytest.approx([1.1606, 0.0], abs=5e-5)


def test_bad_timesteps_rejected():
    with pytest.raises(ValueError, match="at least one"):
        schedule.sigmas_for_timesteps([])
    with pytest.raises(ValueError, match="outside"):
        schedule.timestep_to_sigma(1000)
