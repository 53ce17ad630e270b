"""sample_dmd2 against independent references on tiny real diffusers UNets.

(a) the official DMD2 loop re-derived from the paper's facts (DESIGN.md section 1), written in the
    variance-preserving form the authors use; (b) diffusers' LCMScheduler with explicit timesteps and no guidance.
Both get the same noises as our sampler. Mutation tests show these comparisons fail for an off-by-one timestep or
a wrong first-step noise scale.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sampler import SeededNoise, TRAINED_TIMESTEPS, sample_dmd2, sigmas_for_timesteps, timesteps_for
from sampler.denoiser import DiffusersDenoiser

PLANS = {
    "1step@999": (999,),
    "1step@399": (399,),
    "2step": timesteps_for(2),
    "4step": TRAINED_TIMESTEPS["sdxl_4step"],
}
SHAPE = (4, 8, 8)
TOLERANCE = {"atol": 2e-4, "rtol": 1e-4}  # float32 agreement of two implementations of the same arithmetic


def paper_alphas_cumprod() -> torch.Tensor:
    """abar_t for betas = linspace(sqrt(0.00085), sqrt(0.012), 1000)^2, computed independently in numpy."""
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2
    return torch.from_numpy(np.cumprod(1.0 - betas))


def official_loop(unet, timesteps, noises, cond):
    """DMD2 inference as in the official demo: unit noise in, predict x0, re-noise with fresh noise to the next t."""
    abar = paper_alphas_cumprod()
    x = noises[0]
    for k, t in enumerate(timesteps):
        eps = unet(x, torch.full((x.shape[0],), t), **cond).sample
        a = abar[t].item()
        x0 = (x - (1 - a) ** 0.5 * eps) / a**0.5
        if k + 1 < len(timesteps):
            a_next = abar[timesteps[k + 1]].item()
            x = a_next**0.5 * x0 + (1 - a_next) ** 0.5 * noises[k + 1]
    return x0


def lcm_reference(unet, timesteps, seed, batch, cond):
    from diffusers import LCMScheduler

    scheduler = LCMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                             beta_schedule="scaled_linear", prediction_type="epsilon")
    scheduler.set_timesteps(timesteps=list(timesteps))
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((batch, *SHAPE), generator=generator)
    for t in scheduler.timesteps:
        eps = unet(x, t, **cond).sample
        x, denoised = scheduler.step(eps, t, x, generator=generator, return_dict=False)
    return denoised


def make_cond(unet, batch):
    g = torch.Generator().manual_seed(123)
    cond = {"encoder_hidden_states": torch.randn(batch, 5, unet.config.cross_attention_dim, generator=g)}
    if unet.config.addition_embed_type == "text_time":
        cond["added_cond_kwargs"] = {"text_embeds": torch.randn(batch, 12, generator=g),
                                     "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]]).repeat(batch, 1)}
    return cond


def run_ours(unet, timesteps, noises, cond, pure_noise=True):
    sigmas = sigmas_for_timesteps(timesteps).float()
    replay = iter(noises[1:])
    return sample_dmd2(DiffusersDenoiser(unet), noises[0] * sigmas[0], sigmas, extra_args=cond, disable=True,
                       noise_sampler=lambda s, sn: next(replay), pure_noise=pure_noise)


def draw_noises(count, batch, seed=7):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn((batch, *SHAPE), generator=g) for _ in range(count)]


@pytest.fixture(params=["sd15", "sdxl"])
def unet(request, sd15_unet, sdxl_unet):
    return sd15_unet if request.param == "sd15" else sdxl_unet


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("plan", PLANS)
def test_matches_official_loop(unet, plan, batch):
    timesteps = PLANS[plan]
    noises = draw_noises(len(timesteps), batch)
    cond = make_cond(unet, batch)
    expected = official_loop(unet, timesteps, noises, cond)
    torch.testing.assert_close(run_ours(unet, timesteps, noises, cond), expected.float(), **TOLERANCE)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("plan", PLANS)
def test_matches_diffusers_lcm_scheduler(unet, plan, batch):
    timesteps = PLANS[plan]
    cond = make_cond(unet, batch)
    # LCMScheduler draws the start noise and each re-noise from one generator; replay the same stream.
    noises = draw_noises(len(timesteps), batch, seed=99)
    expected = lcm_reference(unet, timesteps, 99, batch, cond)
    torch.testing.assert_close(run_ours(unet, timesteps, noises, cond), expected, **TOLERANCE)


def assert_differs(a, b):
    """The equivalence tests above would fail on this pair."""
    with pytest.raises(AssertionError):
        torch.testing.assert_close(a, b.float(), **TOLERANCE)


@pytest.mark.parametrize("plan", PLANS)
def test_off_by_one_timestep_is_caught(sdxl_unet, plan):
    timesteps = PLANS[plan]
    noises = draw_noises(len(timesteps), 1)
    cond = make_cond(sdxl_unet, 1)
    ours = run_ours(sdxl_unet, timesteps, noises, cond)
    for k in range(len(timesteps)):
        shifted = tuple(t - (i == k) for i, t in enumerate(timesteps))
        assert_differs(ours, official_loop(sdxl_unet, shifted, noises, cond))


def test_wrong_first_noise_scale_is_caught(sdxl_unet):
    """At t=399 a sampler that leaves the host's sigma_0 scaling in place feeds the UNet 0.758 * noise."""
    noises = draw_noises(1, 1)
    cond = make_cond(sdxl_unet, 1)
    expected = official_loop(sdxl_unet, (399,), noises, cond).float()
    assert_differs(run_ours(sdxl_unet, (399,), noises, cond, pure_noise=False), expected)


class RecordingUNet(torch.nn.Module):
    """Stands in for a UNet (predicts zero noise) and records the timesteps and inputs it is called with."""

    def __init__(self):
        super().__init__()
        self.dtype_probe = torch.nn.Parameter(torch.zeros(()))
        self.calls = []

    def forward(self, x, t, encoder_hidden_states, added_cond_kwargs=None, return_dict=True):
        self.calls.append((torch.as_tensor(t).clone(), x.clone()))
        return (torch.zeros_like(x),)


@pytest.mark.parametrize("plan", PLANS)
def test_unet_sees_integer_trained_timesteps_and_unit_variance(plan):
    timesteps = PLANS[plan]
    recorder = RecordingUNet()
    batch = 2
    shape = (batch, 4, 128, 128)  # large enough for a tight variance estimate
    sigmas = sigmas_for_timesteps(timesteps).float()
    noise = SeededNoise([0, 1], shape[1:])
    cond = {"encoder_hidden_states": torch.zeros(batch, 5, 16)}
    sample_dmd2(DiffusersDenoiser(recorder), noise.draw() * sigmas[0], sigmas, cond, disable=True,
                noise_sampler=noise, pure_noise=True)
    assert [c[0].tolist() for c in recorder.calls] == [[float(t)] * batch for t in timesteps]
    assert recorder.calls[0][1].var().item() == pytest.approx(1.0, abs=0.01)


def test_seed_reproduces_and_batch_item_equals_single_run(sd15_unet):
    timesteps = timesteps_for(4)
    sigmas = sigmas_for_timesteps(timesteps).float()

    def generate(seeds):
        noise = SeededNoise(seeds, SHAPE)
        cond = {"encoder_hidden_states": torch.ones(len(seeds), 5, 16)}
        return sample_dmd2(DiffusersDenoiser(sd15_unet), noise.draw() * sigmas[0], sigmas, cond, disable=True,
                           noise_sampler=noise, pure_noise=True)

    batch = generate([10, 11, 12])
    torch.testing.assert_close(generate([10, 11, 12]), batch, atol=0, rtol=0)
    torch.testing.assert_close(generate([11]), batch[1:2], atol=1e-5, rtol=1e-5)
    assert_differs(generate([13]), batch[0:1])


def test_callback_reports_every_step(sd15_unet):
    seen = []
    sigmas = sigmas_for_timesteps(timesteps_for(4)).float()
    x = torch.randn(1, *SHAPE) * sigmas[0]
    out = sample_dmd2(DiffusersDenoiser(sd15_unet), x, sigmas, {"encoder_hidden_states": torch.zeros(1, 5, 16)},
                      callback=seen.append, disable=True)
    assert [d["i"] for d in seen] == [0, 1, 2, 3]
    assert [d["sigma"].item() for d in seen] == sigmas[:-1].tolist()
    torch.testing.assert_close(seen[-1]["denoised"], out)


def test_split_schedule_ends_renoised_at_last_sigma():
    """A schedule ending above 0 (ComfyUI SplitSigmas) returns x0 re-noised to that sigma, k-diffusion style."""
    sigmas = torch.tensor([14.6, 4.08])
    zero_x0 = lambda x, s: torch.zeros_like(x)  # noqa: E731
    out = sample_dmd2(zero_x0, torch.randn(1, 4, 2, 2), sigmas, disable=True,
                      noise_sampler=lambda s, sn: torch.ones(1, 4, 2, 2))
    torch.testing.assert_close(out, torch.full((1, 4, 2, 2), 4.08))



@pytest.mark.parametrize("sigmas,match", [
    (torch.tensor([]), "at least 2"),
    (torch.tensor([1.0]), "at least 2"),
    (torch.tensor([[1.0, 0.0]]), "1-D"),
    (torch.tensor([0.5, 1.0, 0.0]), "must not increase"),
    (torch.tensor([1.0, float("nan"), 0.0]), "finite"),
    (torch.tensor([float("inf"), 0.0]), "finite"),
    (torch.tensor([1.0, -0.5]), ">= 0"),
    (torch.tensor([0.0, 0.0]), "nothing to denoise"),
])
def test_bad_sigmas(sigmas, match):
    with pytest.raises(ValueError, match=match):
        sample_dmd2(lambda x, s: x, torch.zeros(1, 4, 2, 2), sigmas, disable=True)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_latent(bad):
    x = torch.zeros(1, 4, 2, 2)
    x[0, 0, 0, 0] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        sample_dmd2(lambda x, s: x, x, torch.tensor([1.0, 0.0]), disable=True)


def test_mismatched_batch_sizes(sd15_unet):
    sigmas = sigmas_for_timesteps([999]).float()
    with pytest.raises(ValueError, match="batch size 2 but the latent has 3"):
        sample_dmd2(DiffusersDenoiser(sd15_unet), torch.randn(3, *SHAPE), sigmas,
                    {"encoder_hidden_states": torch.zeros(2, 5, 16)}, disable=True)
    with pytest.raises(ValueError, match="noise_sampler returned shape"):
        sample_dmd2(lambda x, s: x, torch.zeros(3, 4, 2, 2), torch.tensor([2.0, 1.0, 0.0]), disable=True,
                    noise_sampler=lambda s, sn: torch.zeros(1, 4, 2, 2))
