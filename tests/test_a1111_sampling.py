"""The A1111 / Forge sampler and scheduler without A1111: real k-diffusion CompVisDenoiser around a tiny eps UNet."""

import pytest
import torch

from sampler.denoiser import DiffusersDenoiser
from sampler.plans import TRAINED_TIMESTEPS
from sampler.sampling import sample_dmd2
from sampler.schedule import scaled_linear_alphas_cumprod
from tests.a1111.support import load_kdiffusion, load_pack

load_pack()

from dmd2_pack.extension import sampling as ext_sampling  # noqa: E402


class CompVisLike(torch.nn.Module):
    """The two things k-diffusion's CompVisDenoiser needs from an LDM model: alphas_cumprod and apply_model."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet
        self.register_buffer("alphas_cumprod", scaled_linear_alphas_cumprod().to(torch.float32))
        self.seen = []

    def apply_model(self, x, t, cond):
        self.seen.append((t.tolist(), float(x.std())))
        return self.unet(x, t, encoder_hidden_states=cond, return_dict=False)[0]


class SeededHijack:
    """Stands in for A1111's TorchHijack: k_diffusion.sampling.torch whose randn_like draws from a seeded stream."""

    def __init__(self, noises):
        self.noises = list(noises)

    def __getattr__(self, item):
        return getattr(torch, item)

    def randn_like(self, x):
        return self.noises.pop(0)


@pytest.fixture()
def kdiffusion(monkeypatch):
    sampling, external = load_kdiffusion()
    # our glue draws noise through `k_diffusion.sampling`, as inside A1111
    monkeypatch.setitem(__import__("sys").modules, "k_diffusion", __import__("sys").modules[sampling.__package__])
    monkeypatch.setitem(__import__("sys").modules, "k_diffusion.sampling", sampling)
    return sampling, external


def _noises(n, shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for _ in range(n)]


@pytest.mark.parametrize("plan", ["sdxl_4step", "sdxl_1step", "sd15_1step"])
def test_sampler_through_kdiffusion_compvis_equals_core(kdiffusion, monkeypatch, sd15_unet, plan):
    sampling, external = kdiffusion
    model = CompVisLike(sd15_unet)
    denoiser = external.CompVisDenoiser(model)
    trained = TRAINED_TIMESTEPS[plan]
    sigmas = ext_sampling.schedule(len(trained), trained, denoiser.sigmas)
    shape = (1, 4, 8, 8)
    noises = _noises(1 + len(trained), shape)
    cond = torch.randn(1, 77, sd15_unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(1))
    monkeypatch.setattr(sampling, "torch", SeededHijack(noises[1:]))
    x = noises[0] * sigmas[0]  # A1111's txt2img start without the SGM noise multiplier

    def a1111_model(x, sigma, cond):  # A1111 passes its CFG denoiser; at CFG 1 it returns the cond prediction
        return denoiser(x, sigma, cond=cond)

    ours = ext_sampling.sample(a1111_model, x, sigmas, extra_args={"cond": cond}, disable=True, pure_noise=True)
    assert [t for t, _ in model.seen] == [[float(t)] for t in trained]  # exactly the trained timesteps
    assert model.seen[0][1] == pytest.approx(float(noises[0].std()), rel=1e-3)  # unit-variance first input

    reference_noise = iter(noises[1:])
    reference = sample_dmd2(DiffusersDenoiser(sd15_unet), noises[0] * sigmas[0].double().pow(2).add(1).sqrt().float(),
                            sigmas, extra_args={"encoder_hidden_states": cond}, disable=True,
                            noise_sampler=lambda s, sn: next(reference_noise))
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4)


def test_same_seeded_stream_same_image(kdiffusion, monkeypatch, sd15_unet):
    sampling, external = kdiffusion
    denoiser = external.CompVisDenoiser(CompVisLike(sd15_unet))
    trained = TRAINED_TIMESTEPS["sdxl_4step"]
    sigmas = ext_sampling.schedule(2, trained, denoiser.sigmas)
    cond = torch.zeros(1, 77, sd15_unet.config.cross_attention_dim)
    runs = []
    for _ in range(2):
        noises = _noises(3, (1, 4, 8, 8), seed=7)
        monkeypatch.setattr(sampling, "torch", SeededHijack(noises[1:]))
        runs.append(ext_sampling.sample(lambda x, s, cond: denoiser(x, s, cond=cond), noises[0] * sigmas[0], sigmas,
                                        extra_args={"cond": cond}, disable=True))
    assert torch.equal(runs[0], runs[1])


def _img2img_tail(sigmas, steps, denoise, fix_steps):
    """The slice A1111 samples for img2img (fix_steps off) and hires fix / fix_steps on (steps = requested)."""
    if fix_steps:
        total, t_enc = int(steps / min(denoise, 0.999)), steps - 1
        return total, t_enc
    return steps, int(min(denoise, 0.999) * steps)


@pytest.mark.parametrize("plan", sorted(TRAINED_TIMESTEPS))
def test_scheduler_every_steps_denoise_and_hires_case_lands_on_trained_timesteps(kdiffusion, plan):
    _, external = kdiffusion
    denoiser = external.CompVisDenoiser(CompVisLike(torch.nn.Identity()))
    trained = TRAINED_TIMESTEPS[plan]
    for steps in range(1, 13):
        for denoise in (0.05, 0.1, 0.2, 0.25, 0.3, 0.33, 0.4, 0.5, 0.6, 0.66, 0.75, 0.8, 0.9, 0.95, 1.0):
            for hires in (False, True):
                total, t_enc = _img2img_tail(None, steps, denoise, hires)
                if total < 1:
                    continue
                sigmas = ext_sampling.schedule(total, trained, denoiser.sigmas)
                assert len(sigmas) == total + 1 and sigmas[-1] == 0 and sigmas.dtype == torch.float32
                tail = sigmas[total - t_enc - 1:]
                assert len(tail) - 1 == t_enc + 1
                ts = denoiser.sigma_to_t(tail[:-1])
                assert set(ts.tolist()) <= set(float(t) for t in trained), (steps, denoise, hires, ts.tolist())
                assert ts.tolist() == sorted(ts.tolist(), reverse=True)
                assert ext_sampling.off_plan_timesteps(tail, trained, denoiser.sigmas) == []
    # txt2img at the trained step count is exactly the trained plan
    sigmas = ext_sampling.schedule(len(trained), trained, denoiser.sigmas)
    assert denoiser.sigma_to_t(sigmas[:-1]).tolist() == [float(t) for t in trained]


def test_forge_style_argmin_sigma_to_t_also_lands_on_trained(kdiffusion):
    _, external = kdiffusion
    table = external.CompVisDenoiser(CompVisLike(torch.nn.Identity())).sigmas
    sigmas = ext_sampling.schedule(8, TRAINED_TIMESTEPS["sdxl_4step"], table)
    argmin = [int((s.log() - table.log()).abs().argmin()) for s in sigmas[:-1]]
    assert argmin == [999, 999, 749, 749, 499, 499, 249, 249]


def test_off_plan_timesteps_names_stock_schedules():
    karras_like = torch.tensor([14.6146, 3.0, 0.9, 0.3, 0.0])
    off = ext_sampling.off_plan_timesteps(karras_like, (999, 749, 499, 249), None)
    assert len(off) == 3
