"""Run with a Forge venv's Python, cwd = a Forge checkout (FORGE_PATH): DMD2's A1111-family glue against Forge Neo's
real sampler modules, printing the facts as one JSON object.

`python neo_probe.py NEO_FILES PACK_ROOT`. Forge Neo (the neo branch of Haoming02/sd-webui-forge-classic) cannot be
fetched as a tree here, so it cannot be started; the files DMD2 touches can be read from the search tool's code index
(`python -m tests.hosts build forge-neo` says where to put them; SOURCES.md there names their commits).

Real code: Neo's modules/sd_samplers.py (lru_cache'd lookup, no add_sampler), sd_schedulers.py (dataclass
Scheduler), sd_samplers_kdiffusion.py (KDiffusionSampler: get_sigmas, the txt2img noise through
predictor.noise_scaling; CFGDenoiserKDiffusion with ForgeScheduleLinker) and sd_samplers_cfg_denoiser.py; from the
Forge checkout Neo descends from: k_diffusion (ForgeScheduleLinker, sampling), backend.modules.k_prediction (the
SD1.5 eps predictor), modules.sd_samplers_common (Sampler: initialize, TorchHijack, launch_sampling) and modules.rng
(ImageRNG, p.rng). Stubbed: the web UI's state those modules read at import (shared.opts / state), memory
management around sampling (sampling_prepare / cleanup), UI callbacks, and the samplers DMD2 never runs.
The CFG step itself (Neo's forge_sample, i.e. the UNet) is replaced by a recorder: what it is handed is the fact.
"""

import json
import sys
import types
from pathlib import Path

import torch

NEO, PACK = Path(sys.argv[1]), Path(sys.argv[2])
sys.path[:0] = [str(Path.cwd())]
NOOP = lambda *args, **kwargs: None  # noqa: E731


def stub(name, **attrs):
    module = sys.modules.get(name) or types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)
    return module


opts = types.SimpleNamespace(
    forbidden_knowledge=False, hide_samplers=[], hide_samplers_invert=False, always_discard_next_to_last_sigma=False,
    use_old_karras_scheduler_sigmas=False, sigma_min=0.0, sigma_max=0.0, rho=0.0, sgm_noise_multiplier=False,
    eta_ancestral=1.0, randn_source="CPU", forge_try_reproduce="None", img2img_extra_noise=0.0, dmd2_plan="Automatic",
    k_sched_type="Automatic", s_churn=0.0, s_tmin=0.0, s_noise=1.0, s_tmax=0.0, eta_noise_seed_delta=0)
state = types.SimpleNamespace(interrupted=False, skipped=False, sampling_step=0, sampling_steps=0)
# Neo's files are found through the `modules` package path; the rest of `modules` is the web UI around them
modules = stub("modules", __path__=[str(NEO / "modules")])
shared = stub("modules.shared", opts=opts, state=state, sd_model=None, device=torch.device("cpu"),
              total_tqdm=types.SimpleNamespace(update=NOOP))
stub("modules.devices", cpu=torch.device("cpu"), device=torch.device("cpu"))
for name in ("images", "sd_vae_approx", "sd_vae_taesd", "sd_models", "extra_networks", "prompt_parser",
             "rng_philox"):
    stub(f"modules.{name}")
stub("modules.script_callbacks", ExtraNoiseParams=object, extra_noise_callback=NOOP, CFGDenoiserParams=object,
     cfg_denoiser_callback=NOOP, AfterCFGCallbackParams=object, cfg_after_cfg_callback=NOOP)
stub("modules.sd_samplers_extra", restart_sampler=NOOP, sample_unipc=NOOP)
stub("modules.sd_samplers_timesteps", samplers_data_timesteps=[])
stub("modules.sd_samplers_lcm", samplers_data_lcm=[])
stub("modules_forge", __path__=[])
stub("modules_forge.forge_alter_samplers", samplers_data_alter=[])
stub("modules_forge.forge_sampler", forge_sample=NOOP)
stub("modules_forge.main_entry")
import backend.modules.k_prediction as k_prediction  # noqa: E402  (real Forge)

stub("backend.sampling", __path__=[])
stub("backend.sampling.sampling_function", sampling_prepare=NOOP, sampling_cleanup=NOOP, sampling_function=NOOP)
stub("backend.args", dynamic_args={"klein": False})

import importlib.util  # noqa: E402


def forge_module(name):
    """A real module of the Forge checkout (cwd) under `name`."""
    spec = importlib.util.spec_from_file_location(name, Path.cwd() / (name.replace(".", "/") + ".py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    setattr(modules, name.rpartition(".")[2], module)
    spec.loader.exec_module(module)
    return module


stub("modules.sd_samplers")  # sd_samplers_common imports it for functions only; Neo's file replaces it below
common = forge_module("modules.sd_samplers_common")
rng = forge_module("modules.rng")
del sys.modules["modules.sd_samplers"], modules.sd_samplers
from modules import sd_samplers, sd_samplers_cfg_denoiser, sd_samplers_kdiffusion, sd_schedulers  # noqa: E402  (Neo)

facts = {"before": sd_samplers.get_sampler_and_scheduler("DMD2", "DMD2")}

# --- the pack's own start, as scripts/dmd2.py runs it -----------------------------------------------------------
spec = importlib.util.spec_from_file_location("dmd2_pack", PACK / "__init__.py", submodule_search_locations=[str(PACK)])
pack = importlib.util.module_from_spec(spec)
sys.modules["dmd2_pack"] = pack
spec.loader.exec_module(pack)
from dmd2_pack.extension import a1111, host  # noqa: E402

stub("modules.script_callbacks", on_ui_tabs=NOOP)
stub("modules.shared", options_templates={}, options_section=lambda section, options: options,
     OptionInfo=None)  # settings are A1111 UI plumbing: their failure is logged and skipped, as designed
caps = host.current()
facts["caps"] = {k: getattr(caps, k) for k in caps.__dataclass_fields__}
facts["line"] = caps.describe(host.where())
facts["setup"] = a1111.setup()
facts["scheduler_type"] = type(sd_schedulers.schedulers_map["dmd2"]).__module__ + "." + type(
    sd_schedulers.schedulers_map["dmd2"]).__qualname__
facts["after"] = sd_samplers.get_sampler_and_scheduler("DMD2", "DMD2")
facts["names"] = [s.name for s in sd_samplers.all_samplers].count("DMD2")

# --- a run: Neo's KDiffusionSampler around Forge's SD1.5 eps predictor -------------------------------------------
predictor = k_prediction.Prediction(prediction_type="epsilon")  # SD1.5: scaled_linear 0.00085-0.012, as Forge makes it
shared.sd_model = types.SimpleNamespace(is_sdxl=False, sd_checkpoint_info=None, forge_objects=types.SimpleNamespace(
    unet=types.SimpleNamespace(model=types.SimpleNamespace(predictor=predictor),
                               model_options={"transformer_options": {}})))
sampler = sd_samplers.create_sampler("DMD2", shared.sd_model)
facts["cfg_denoiser"] = type(sampler.model_wrap_cfg).__module__ + "." + type(sampler.model_wrap_cfg).__qualname__
facts["model_wrap"] = type(sampler.model_wrap).__qualname__
seen = []


def run(steps, plan, seeds):
    opts.dmd2_plan = plan
    seen.clear()
    p = types.SimpleNamespace(sampler_name="DMD2", scheduler="DMD2", steps=steps, cfg_scale=1.0, eta=None,
                              is_hr_pass=False, hr_scheduler=None, sampler_noise_scheduler_override=None,
                              extra_generation_params={}, seeds=seeds, sd_model=shared.sd_model, s_churn=0.0,
                              s_tmin=0.0, s_tmax=None, s_noise=1.0)
    sd_samplers.fix_p_invalid_sampler_and_scheduler(p)
    p.rng = rng.ImageRNG((4, 8, 8), seeds)
    x = p.rng.next()  # txt2img's first noise, as processing draws it
    sampler.model_wrap_cfg = Recorder(sampler)
    sampler.sample(p, x, None, None)
    return p, [dict(s) for s in seen]


class Recorder(sd_samplers_kdiffusion.CFGDenoiserKDiffusion):
    """Neo's CFG denoiser with its step (forge_sample, which runs the UNet) replaced: records, predicts x0 = 0."""

    def forward(self, x, sigma, **extra_args):
        seen.append({"sigma": float(sigma[0]), "t": int(sampler.model_wrap.sigma_to_t(sigma[:1])),
                     "unet_std": float(predictor.calculate_input(sigma, x).std()), "x": x.flatten().tolist()})
        return torch.zeros_like(x)


p, four = run(4, "Automatic", [1234])
facts["scheduler_after_fix"] = p.scheduler
facts["infotext"] = p.extra_generation_params
facts["four"] = [{k: v for k, v in s.items() if k != "x"} for s in four]
_, one = run(1, "SDXL 1-step", [1234])
facts["one_399"] = [{k: v for k, v in s.items() if k != "x"} for s in one]
_, batch = run(4, "Automatic", [1234, 1235])
_, single = run(4, "Automatic", [1235])
n = 4 * 8 * 8
facts["batch_row1_equals_seed_plus_1"] = all(
    b["x"][n:] == s["x"] for b, s in zip(batch, single))
print(json.dumps(facts))
