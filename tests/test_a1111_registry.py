"""Registration with A1111-shaped and Forge-shaped registries (stubs), the CFG-1 row skipping, and plan choice."""

import dataclasses
import functools
import logging
import sys
import types
from collections import namedtuple

import pytest
import torch
from safetensors.torch import save_file

from tests.a1111.support import load_pack

load_pack()
from dmd2_pack.extension import a1111, host, plan, sampling  # noqa: E402

SamplerData = namedtuple("SamplerData", ["name", "constructor", "aliases", "options"])


@dataclasses.dataclass
class Scheduler:
    name: str
    label: str
    function: object
    default_rho: float = -1
    need_inner_model: bool = False
    aliases: list = None


def stub_host(forge=False):
    samplers = types.ModuleType("sd_samplers")
    samplers.all_samplers = [SamplerData("Euler", None, ["k_euler"], {})]
    samplers.all_samplers_map = {s.name: s for s in samplers.all_samplers}
    samplers.set_calls = 0

    def set_samplers():
        samplers.set_calls += 1
        samplers.samplers = samplers.all_samplers

    samplers.set_samplers = set_samplers
    samplers.get_sampler_and_scheduler = functools.cache(lambda a, b: (a, b))
    if forge:  # Forge rebinds the map on add
        def add_sampler(data):
            if data.name not in [x.name for x in samplers.all_samplers]:
                samplers.all_samplers.append(data)
                samplers.all_samplers_map = {x.name: x for x in samplers.all_samplers}
                set_samplers()
        samplers.add_sampler = add_sampler
    schedulers = types.ModuleType("sd_schedulers")
    schedulers.Scheduler = Scheduler
    schedulers.schedulers = [Scheduler("automatic", "Automatic", None), Scheduler("karras", "Karras", None)]
    schedulers.schedulers_map = {**{s.name: s for s in schedulers.schedulers}, **{s.label: s for s in schedulers.schedulers}}
    common = types.ModuleType("sd_samplers_common")
    common.SamplerData = SamplerData
    kdiff = types.ModuleType("sd_samplers_kdiffusion")
    kdiff.KDiffusionSampler = type("KDiffusionSampler", (), {})
    kdiff.k_diffusion_scheduler = {}
    return {"sd_samplers": samplers, "common": common, "kdiff": kdiff, "sd_schedulers": schedulers}


@pytest.mark.parametrize("forge", [False, True])
def test_registration_is_idempotent(forge):
    host = stub_host(forge)
    for _ in range(3):  # Reload UI re-executes scripts/
        a1111.register_scheduler(host["sd_schedulers"], host["kdiff"])
        a1111.register_sampler(host["sd_samplers"], host["common"], object)
    names = [s.name for s in host["sd_samplers"].all_samplers]
    assert names == ["Euler", "DMD2"]
    assert host["sd_samplers"].all_samplers_map["DMD2"].options == {"scheduler": "dmd2"}
    assert [s.label for s in host["sd_schedulers"].schedulers] == ["Automatic", "Karras", "DMD2"]
    assert host["sd_schedulers"].schedulers_map["dmd2"] is host["sd_schedulers"].schedulers_map["DMD2"]
    assert host["kdiff"].k_diffusion_scheduler["dmd2"] is a1111.scheduler_function


def test_missing_internal_is_reported_and_nothing_changes(monkeypatch, caplog):
    host = stub_host()
    del host["sd_schedulers"].schedulers_map
    before = list(host["sd_samplers"].all_samplers)
    monkeypatch.setattr(a1111, "_host", lambda: {**host, "shared": types.SimpleNamespace()})
    with caplog.at_level(logging.ERROR, "dmd2"):
        assert a1111.setup() is False
    assert host["sd_samplers"].all_samplers == before and len(host["sd_schedulers"].schedulers) == 2
    assert len(caplog.records) == 1 and "sd_schedulers.schedulers_map" in caplog.text


def test_names_cannot_be_split_by_legacy_parsing():
    stock_labels = ["Automatic", "Uniform", "Karras", "Exponential", "Polyexponential", "SGM Uniform", "KL Optimal",
                    "Align Your Steps", "Simple", "Normal", "DDIM", "Beta"]
    for name in [a1111.SAMPLER_NAME, *a1111.SAMPLER_ALIASES]:
        assert " " not in name
        assert not any(name.endswith(" " + label) for label in stock_labels + [a1111.SCHEDULER_LABEL])
    assert " " not in a1111.SCHEDULER_LABEL and " " not in a1111.SCHEDULER_NAME


# --- one model call per step at CFG 1 ---------------------------------------------------------------------------

class CountingDenoiser(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.rows = []

    def forward(self, x, sigma, cond):
        self.rows.append(x.shape[0])
        return x * 0.5 + cond["c_crossattn"][0].mean(dim=(1, 2)).view(-1, 1, 1, 1)


def cfg_step(inner, x, sigma, cond, uncond, scale, layout):
    """A1111's three ways of evaluating cond + uncond rows, then u + (c - u) * scale."""
    b = x.shape[0]
    x_in, s_in = torch.cat([x, x]), torch.cat([sigma, sigma])
    both = {"c_crossattn": [torch.cat([cond, uncond])], "c_concat": [torch.zeros(2 * b, 5, 1, 1)]}
    if layout == "batched":
        out = inner(x_in, s_in, cond=both)
    elif layout == "chunked":
        out = torch.cat([inner(x_in[a:a + b], s_in[a:a + b], cond=sampling.take_rows(both, a, a + b, 2 * b))
                         for a in (0, b)])
    else:  # cond rows, then the uncond rows separately
        c = inner(x_in[:b], s_in[:b], cond={"c_crossattn": [cond], "c_concat": [torch.zeros(b, 5, 1, 1)]})
        u = inner(x_in[b:], s_in[b:], cond={"c_crossattn": [uncond], "c_concat": [torch.zeros(b, 5, 1, 1)]})
        out = torch.cat([c, u])
    c, u = out[:b], out[b:]
    return u + (c - u) * scale


@pytest.mark.parametrize("layout", ["batched", "chunked", "separate"])
def test_cond_rows_only_gives_the_cfg1_result_with_half_the_rows(layout):
    inner = CountingDenoiser()
    x, sigma = torch.randn(2, 4, 8, 8), torch.full((2,), 14.6)
    cond, uncond = torch.randn(2, 77, 8), torch.randn(2, 77, 8)
    full = cfg_step(inner, x, sigma, cond, uncond, 1.0, layout)
    inner.rows.clear()
    with sampling.cond_rows_only(inner, batch=2) as rows:
        fast = cfg_step(inner, x, sigma, cond, uncond, 1.0, layout)
    assert sum(inner.rows) == 2 and rows.model_calls == 1
    assert torch.equal(fast, inner.forward(x, sigma, {"c_crossattn": [cond]}))  # exactly the cond prediction
    torch.testing.assert_close(fast, full)
    assert "forward" not in inner.__dict__  # the module is back to its own forward


def test_cond_only_needs_scale_one_and_single_weight_one_prompts():
    prompt = types.SimpleNamespace(weight=1.0)
    cond = types.SimpleNamespace(batch=[[prompt], [prompt]])
    assert sampling.cond_only_possible(cond, 1.0)
    assert not sampling.cond_only_possible(cond, 1.5)
    assert not sampling.cond_only_possible(types.SimpleNamespace(batch=[[prompt, prompt]]), 1.0)  # AND
    assert not sampling.cond_only_possible(types.SimpleNamespace(batch=[[types.SimpleNamespace(weight=0.7)]]), 1.0)


# --- plan choice ------------------------------------------------------------------------------------------------

def test_plan_from_setting_checkpoint_lora_name_metadata_and_fallback(tmp_path):
    save_file({"x": torch.zeros(1)}, tmp_path / "my_merge.safetensors", metadata={"dmd2_plan": "sdxl_1step"})
    (tmp_path / "dmd2_sdxl_4step_lora_fp16.safetensors").write_bytes(b"")
    assert plan.choose_plan("SD1.5 1-step").name == "sd15_1step"
    assert plan.choose_plan("Automatic", (str(tmp_path / "my_merge.safetensors"), None)).name == "sdxl_1step"
    lora = (str(tmp_path / "dmd2_sdxl_4step_lora_fp16.safetensors"), None)
    chosen = plan.choose_plan("Automatic", (str(tmp_path / "base.safetensors"), None), [lora], is_sdxl=True)
    assert chosen.name == "sdxl_4step" and "dmd2_sdxl_4step_lora_fp16" in chosen.reason
    by_hash = plan.choose_plan("Automatic", ("x.safetensors",
                               "facefb60b3e7b1d4ad70f16628fe153672b0749842e2cbe20f8da9f281acf8ba"))
    assert by_hash.name == "sdxl_1step" and "sha256" in by_hash.reason
    assert plan.choose_plan("Automatic", ("sd_xl_base_1.0.safetensors", None)).reason.startswith("no DMD2")
    assert plan.plan_from_name("DMD2-SD15-1step.safetensors", is_sdxl=False) == "sd15_1step"
    assert plan.plan_from_name("dmd2_sdxl_1step_unet.safetensors", is_sdxl=True) == "sdxl_1step"
    assert plan.plan_from_name("juggernaut.safetensors", is_sdxl=True) is None
    assert set(plan.SETTING_CHOICES) == {"Automatic", *plan.PLAN_LABELS.values()}


def test_plan_of_a_trainer_exported_file(tmp_path):
    """Our distiller stamps trained timesteps; A1111 runs the released plan with the same timesteps, and falls back
    (by name / default) for timesteps no released plan has."""
    save_file({"x": torch.zeros(1)}, tmp_path / "student.safetensors", metadata={"dmd2_trained_timesteps": "399"})
    chosen = plan.choose_plan("Automatic", (str(tmp_path / "student.safetensors"), None))
    assert chosen.name == "sdxl_1step" and "dmd2_trained_timesteps" in chosen.reason
    save_file({"x": torch.zeros(1)}, tmp_path / "odd.safetensors", metadata={"dmd2_trained_timesteps": "999,499"})
    assert plan.choose_plan("Automatic", (str(tmp_path / "odd.safetensors"), None)).reason.startswith("no DMD2")


def forge_shaped_kdiff(table):
    """A KDiffusionSampler shaped like Forge's: its own CFG denoiser (already cond-only at CFG 1), `sample` scaling
    the noise by sigma_0 (or sqrt(1 + sigma_0^2) with the SGM option) and calling self.func with sigmas."""

    class ForgeCFG:
        def __init__(self):
            self.sigmas = table
            self.calls = []

        def __call__(self, x, sigma, cond):
            self.calls.append((float(sigma[0]), float(x.std())))
            return x / (1 + sigma.view(-1, 1, 1, 1) ** 2).sqrt() * 0.1

    class KDiffusionSampler:
        def __init__(self, funcname, sd_model, options=None):
            self.func = funcname
            self.model_wrap = self.model_wrap_cfg = ForgeCFG()

        def get_sigmas(self, p, steps):
            return a1111.scheduler_function(steps, 0.03, 14.6, self.model_wrap_cfg, "cpu")

        def sample(self, p, x, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
            sigmas = self.get_sigmas(p, steps or p.steps)
            x = x * sigmas[0]
            return self.func(self.model_wrap_cfg, x, extra_args={"cond": conditioning}, disable=True, sigmas=sigmas)

    return types.SimpleNamespace(KDiffusionSampler=KDiffusionSampler)


def test_forge_shaped_sampler_keeps_forge_cfg_and_feeds_unit_variance_noise(monkeypatch):
    from sampler.schedule import training_sigmas
    table = training_sigmas().float()
    shared = types.SimpleNamespace(opts=types.SimpleNamespace(sgm_noise_multiplier=False, dmd2_plan="SDXL 1-step"),
                                   sd_model=types.SimpleNamespace(is_sdxl=True, sd_checkpoint_info=None))
    monkeypatch.setitem(sys.modules, "modules", types.SimpleNamespace(shared=shared))
    monkeypatch.setitem(sys.modules, "modules.shared", shared)
    cls = a1111.build_sampler_class(forge_shaped_kdiff(table), shared, FORGE_CAPS)
    sampler = cls(sd_model=None)
    assert type(sampler.model_wrap_cfg).__name__ == "ForgeCFG"  # Forge's CFG is kept
    p = types.SimpleNamespace(steps=1, extra_generation_params={})
    noise = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    sampler.sample(p, noise, None, None)
    (sigma, std), = sampler.model_wrap_cfg.calls
    assert sigma == pytest.approx(float(table[399]))  # the SDXL 1-step model's t = 399 ...
    assert std == pytest.approx(float(noise.std()) * (1 + sigma ** 2) ** 0.5, rel=1e-5)  # ... on sqrt(1+s^2) noise


FORGE_CAPS = host.HostCapabilities(name="Forge", keep_host_cfg=True, integer_timesteps=True, schedulers=True,
                                   add_sampler=True, cached_lookup=True, image_rng=True,
                                   hijacked="k_diffusion.sampling", first_noise="x * sigma_0")


def _module(name, **attrs):
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    return module


@pytest.mark.parametrize("family", ["A1111", "Forge", "Forge Neo", "reForge", "Forge Classic"])
def test_detect_reads_each_family_off_its_modules(family):
    """The internals that tell the hosts apart (their real module attributes, DESIGN.md section 7) give the path."""
    forge_cfg = family != "A1111"
    sd_samplers = _module("modules.sd_samplers", get_sampler_and_scheduler=functools.lru_cache(lambda a, b: a))
    if family == "Forge":
        sd_samplers.add_sampler = lambda data: None
    if family == "Forge Classic":
        del sd_samplers.get_sampler_and_scheduler
    kdiff = _module("modules.sd_samplers_kdiffusion", KDiffusionSampler=type("KDiffusionSampler", (), {}))
    cfg = _module("modules.sd_samplers_cfg_denoiser", **({"sampling_function": len} if forge_cfg else {}))
    common = _module("modules.sd_samplers_common")
    if family == "reForge":  # `from k_diff.k_diffusion import sampling` in sd_samplers_common / _kdiffusion
        common.sampling = _module("k_diff.k_diffusion.sampling")
    schedulers = None if family == "Forge Classic" else _module("modules.sd_schedulers")
    caps = host.detect(sd_samplers, kdiff, cfg, common, schedulers, _module("modules.rng", ImageRNG=object))
    assert caps.name == family
    assert caps.keep_host_cfg == caps.integer_timesteps == forge_cfg
    assert caps.schedulers == (family != "Forge Classic") and caps.add_sampler == (family == "Forge")
    assert caps.cached_lookup == (family != "Forge Classic")
    assert caps.hijacked == ("k_diff.k_diffusion.sampling" if family == "reForge" else "k_diffusion.sampling")
    line = caps.describe("/webui")
    assert line.startswith(f"DMD2: host {family} (/webui); ") and "\n" not in line


def test_seeded_noise_comes_from_the_runs_image_rng():
    """p.rng.next() is what every host's TorchHijack returns for k-diffusion's randn_like: drawn directly."""
    draws = [torch.full((2, 4, 8, 8), float(i)) for i in range(3)]
    rng = types.SimpleNamespace(next=lambda: draws.pop(0))
    noise = sampling.seeded_noise_sampler(torch.zeros(2, 4, 8, 8, dtype=torch.float64), rng)
    first, second = noise(1.0, 0.5), noise(0.5, 0.1)
    assert first.dtype == torch.float64 and float(first[0, 0, 0, 0]) == 0.0 and float(second[1, 3, 7, 7]) == 1.0


def test_schedulerless_host_sampler_carries_the_dmd2_schedule(monkeypatch):
    """Forge Classic / A1111 < 1.9: no sd_schedulers, so the DMD2 sampler's get_sigmas is the DMD2 schedule (unless
    the user set a global schedule type, which applies to every sampler there)."""
    from sampler.schedule import training_sigmas
    table = training_sigmas().float()
    shared = types.SimpleNamespace(opts=types.SimpleNamespace(sgm_noise_multiplier=False, dmd2_plan="Automatic",
                                                              k_sched_type="Automatic"),
                                   sd_model=types.SimpleNamespace(is_sdxl=False, sd_checkpoint_info=None))
    monkeypatch.setitem(sys.modules, "modules", types.SimpleNamespace(shared=shared))
    monkeypatch.setitem(sys.modules, "modules.shared", shared)
    kdiff = forge_shaped_kdiff(table)
    kdiff.KDiffusionSampler.get_sigmas = lambda self, p, steps: torch.linspace(14.6, 0, steps + 1)  # stock: uniform
    caps = dataclasses.replace(FORGE_CAPS, name="Forge Classic", schedulers=False, add_sampler=False)
    sampler = a1111.build_sampler_class(kdiff, shared, caps)(sd_model=None)
    p = types.SimpleNamespace(sampler_noise_scheduler_override=None, extra_generation_params={})
    sigmas = sampler.get_sigmas(p, 4)
    expected = [float(table[t]) for t in (999, 749, 499, 249)] + [0.0]
    assert sigmas.tolist() == pytest.approx(expected) and p.extra_generation_params["DMD2 plan"] == "SDXL 4-step"
    shared.opts.k_sched_type = "karras"
    assert sampler.get_sigmas(p, 4).tolist() == pytest.approx(torch.linspace(14.6, 0, 5).tolist())
