"""A1111 / Forge glue: the `DMD2` sampler and the `DMD2` scheduler in the host's registries, and the settings.

Host internals are touched here only, feature-detected, and all checked before anything is changed: if the host
lacks one, one clear log line says which and the stock lists stay as they were. Registration replaces our own
entries by name, so A1111's "Reload UI" (which re-executes scripts/) never duplicates them.

Naming: A1111 still parses legacy "<sampler> <scheduler>" strings by stripping a trailing " <scheduler label>", so
neither name contains a space: "DMD2" can never be split into a sampler and a scheduler.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import torch

from . import host as host_caps
from . import plan as plans
from . import sampling
from .host import HostCapabilities

log = logging.getLogger("dmd2")

SAMPLER_NAME = "DMD2"
SAMPLER_ALIASES = ["dmd2", "k_dmd2"]
SCHEDULER_NAME = "dmd2"
SCHEDULER_LABEL = "DMD2"
INFOTEXT_PLAN = "DMD2 plan"
SETTINGS_SECTION = ("dmd2", "DMD2")


class _RunState:
    """What the scheduler chose in the current get_sigmas call (A1111 runs one generation at a time)."""

    plan: plans.Plan | None = None


_run = _RunState()


def _host() -> dict[str, Any]:
    """The host modules we use, imported lazily (this file is imported by tests without A1111). sd_schedulers is
    None on hosts without it (Forge Classic, A1111 < 1.9)."""
    from modules import sd_samplers, sd_samplers_common, sd_samplers_kdiffusion, shared
    return {"sd_samplers": sd_samplers, "common": sd_samplers_common, "kdiff": sd_samplers_kdiffusion,
            "sd_schedulers": host_caps.optional_module("modules.sd_schedulers"), "shared": shared}


# --- plan -----------------------------------------------------------------------------------------------------------

def _active_loras() -> list[tuple[str, str | None]]:
    """(file, sha256) of the LoRAs A1111's / Forge's Lora extension has active for this run, if it is loaded."""
    networks = sys.modules.get("networks")
    out = []
    for net in getattr(networks, "loaded_networks", None) or []:
        on_disk = getattr(net, "network_on_disk", None)
        if on_disk is None or not getattr(net, "unet_multiplier", 1.0):
            continue
        out.append((getattr(on_disk, "filename", None), getattr(on_disk, "sha256", None)))
    return out


def current_plan(shared: Any) -> plans.Plan:
    """The plan for the loaded model and the active LoRAs, or the one the DMD2 plan setting names."""
    model = getattr(shared, "sd_model", None)
    info = getattr(model, "sd_checkpoint_info", None)
    checkpoint = (info.filename, getattr(info, "sha256", None)) if info is not None else None
    return plans.choose_plan(getattr(shared.opts, "dmd2_plan", plans.AUTOMATIC), checkpoint, _active_loras(),
                             getattr(model, "is_sdxl", None))


def scheduler_function(n: int, sigma_min: float, sigma_max: float, inner_model: Any, device: Any) -> torch.Tensor:
    """The `DMD2` scheduler: n + 1 sigmas ending in 0, on the current plan's trained timesteps."""
    from modules import shared
    chosen = current_plan(shared)
    _run.plan = chosen
    sigmas = sampling.schedule(n, chosen.trained, getattr(inner_model, "sigmas", None))
    if getattr(shared.opts, "dmd2_log_plan", False):
        print(f"DMD2: plan {chosen.name} ({chosen.reason}); {n}-step schedule sigmas "
              f"{[round(float(s), 4) for s in sigmas]}", flush=True)
    return sigmas.to(device)


# --- sampler --------------------------------------------------------------------------------------------------------

def _cond_only_allowed(shared: Any, cond: Any, cond_scale: float) -> bool:
    if getattr(shared.sd_model, "cond_stage_key", None) == "edit":  # instruct-pix2pix: three-way CFG
        return False
    return sampling.cond_only_possible(cond, cond_scale)


def build_sampler_class(kdiff: Any, shared: Any, caps: HostCapabilities) -> type:
    """A KDiffusionSampler subclass that runs DMD2 (built from the host's class, so it exists only inside A1111).

    `caps` (host.py) decides the path: the host's CFG denoiser is kept where it already skips the uncond pass at
    CFG 1 (the Forge family), else wrapped to do so; the schedule is the DMD2 scheduler's, or computed here on hosts
    without sd_schedulers; noise comes from the run's seeded `p.rng`.
    """
    cfg_base = None if caps.keep_host_cfg else getattr(kdiff, "CFGDenoiserKDiffusion", None)

    class DMD2CFGDenoiser(cfg_base or object):
        """A1111's CFG denoiser, skipping the unconditional pass when CFG 1 makes it irrelevant."""

        def forward(self, x, sigma, *args, **kwargs):
            cond_scale = kwargs.get("cond_scale", 1.0) * getattr(self, "cond_scale_miltiplier", 1.0)
            if not _cond_only_allowed(shared, kwargs.get("cond"), cond_scale):
                return super().forward(x, sigma, *args, **kwargs)
            with sampling.cond_rows_only(self.inner_model, x.shape[0]):
                return super().forward(x, sigma, *args, **kwargs)

    class DMD2Sampler(kdiff.KDiffusionSampler):
        """The `DMD2` sampler: A1111's k-diffusion sampler running the core's sample_dmd2."""

        def __init__(self, sd_model):
            self._pure_noise = False
            super().__init__(self.sample_dmd2, sd_model)
            if cfg_base is not None:
                self.model_wrap_cfg = DMD2CFGDenoiser(self)
                self.model_wrap = self.model_wrap_cfg.inner_model

        def sample_dmd2(self, model, x, sigmas, extra_args=None, callback=None, disable=None, noise_sampler=None):
            chosen = _run.plan or current_plan(shared)
            off = sampling.off_plan_timesteps(sigmas, chosen.trained, getattr(self.model_wrap, "sigmas", None),
                                              getattr(self.model_wrap, "sigma_to_t", None), caps.integer_timesteps)
            if off:
                log.warning("DMD2: the schedule hits untrained timesteps %s; pick the DMD2 (or Automatic) schedule "
                            "type for exact DMD2", off)
            if noise_sampler is None:
                noise_sampler = sampling.seeded_noise_sampler(x, getattr(getattr(self, "p", None), "rng", None),
                                                              caps.hijacked)
            return sampling.sample(model, x, sigmas, extra_args, callback, disable, noise_sampler,
                                   pure_noise=self._pure_noise)

        def get_sigmas(self, p, steps):
            _run.plan = None
            if caps.schedulers or not _schedule_is_ours(p, shared):
                sigmas = super().get_sigmas(p, steps)
            else:  # no sd_schedulers: the sampler carries the DMD2 schedule, as the host's samplers carry theirs
                sigmas = scheduler_function(steps, 0.0, 0.0, self.model_wrap, "cpu")
            if _run.plan is not None:
                p.extra_generation_params[INFOTEXT_PLAN] = _run.plan.label
            return sigmas

        def sample(self, p, x, *args, **kwargs):
            # txt2img: the host scaled the noise by sigma_0, or by sqrt(1 + sigma_0^2) with "SGM noise multiplier"
            # (A1111 and Forge multiply; Neo calls its predictor's noise_scaling, which does the same for eps models)
            self._pure_noise = not getattr(shared.opts, "sgm_noise_multiplier", False)
            try:
                return super().sample(p, x, *args, **kwargs)
            finally:
                self._pure_noise = False

    return DMD2Sampler


def _schedule_is_ours(p: Any, shared: Any) -> bool:
    """On a host without sd_schedulers: True unless a script overrides the schedule or the user set a global
    schedule type ("k_sched_type", A1111 1.7's setting), which then applies to DMD2 as to every sampler."""
    return (getattr(p, "sampler_noise_scheduler_override", None) is None
            and getattr(shared.opts, "k_sched_type", "Automatic") in ("Automatic", None))


# --- registration ---------------------------------------------------------------------------------------------------

def _check_host(host: dict[str, Any]) -> list[str]:
    """Names of the host internals we need that are missing (sd_schedulers' only where the host has it)."""
    needs = {"sd_samplers": ("all_samplers", "all_samplers_map", "set_samplers"), "common": ("SamplerData",),
             "kdiff": ("KDiffusionSampler",), "sd_schedulers": ("Scheduler", "schedulers", "schedulers_map")}
    return [f"modules.{mod if mod != 'common' else 'sd_samplers_common'}.{attr}"
            for mod, attrs in needs.items() if host[mod] is not None for attr in attrs if not hasattr(host[mod], attr)]


def register_scheduler(sd_schedulers: Any, kdiff: Any = None) -> Any:
    """Add (or replace) the DMD2 scheduler in the host's list and map."""
    scheduler = sd_schedulers.Scheduler(SCHEDULER_NAME, SCHEDULER_LABEL, scheduler_function, need_inner_model=True)
    lst = sd_schedulers.schedulers
    for i, old in enumerate(lst):
        if old.name == SCHEDULER_NAME:
            lst[i] = scheduler
            break
    else:
        lst.append(scheduler)
    sd_schedulers.schedulers_map[SCHEDULER_NAME] = scheduler
    sd_schedulers.schedulers_map[SCHEDULER_LABEL] = scheduler
    legacy = getattr(kdiff, "k_diffusion_scheduler", None)  # A1111 keeps a name -> function copy
    if isinstance(legacy, dict):
        legacy[SCHEDULER_NAME] = scheduler.function
    return scheduler


def register_sampler(sd_samplers: Any, common: Any, sampler_class: type) -> Any:
    """Add (or replace) the DMD2 sampler: Forge's add_sampler when the name is new, else in place (A1111, Neo,
    reForge and Classic have no add_sampler)."""
    data = common.SamplerData(SAMPLER_NAME, lambda model: sampler_class(model), SAMPLER_ALIASES,
                              {"scheduler": SCHEDULER_NAME})
    existing = [i for i, s in enumerate(sd_samplers.all_samplers) if s.name == SAMPLER_NAME]
    if existing:
        sd_samplers.all_samplers[existing[0]] = data
        sd_samplers.all_samplers_map[SAMPLER_NAME] = data
        sd_samplers.set_samplers()
    elif hasattr(sd_samplers, "add_sampler"):
        sd_samplers.add_sampler(data)
        sd_samplers.all_samplers_map[SAMPLER_NAME] = data
    else:
        sd_samplers.all_samplers.append(data)
        sd_samplers.all_samplers_map[SAMPLER_NAME] = data
        sd_samplers.set_samplers()
    cached = getattr(sd_samplers, "get_sampler_and_scheduler", None)
    if hasattr(cached, "cache_clear"):  # functools.cache'd (lru_cache in Neo): forget answers given before we existed
        cached.cache_clear()
    return data


def register_settings(shared: Any) -> None:
    """The DMD2 settings section (in place before the UI or API reads the options; safe to run again)."""
    import gradio as gr
    section = SETTINGS_SECTION
    options = {
        "dmd2_plan": shared.OptionInfo(
            plans.AUTOMATIC, "DMD2 plan (trained timesteps)", gr.Radio, {"choices": plans.SETTING_CHOICES},
            infotext=INFOTEXT_PLAN).info(
            "Automatic: from the loaded checkpoint / DMD2 LoRA (catalog sha256, our tools' metadata or a file name "
            "with dmd2 + 1step/4step), else SDXL 4-step (999, 749, 499, 249). SDXL 1-step = 399, SD1.5 1-step = 999"),
        "dmd2_log_plan": shared.OptionInfo(False, "DMD2: print the plan and schedule of each run to the console"),
    }
    shared.options_templates.update(shared.options_section(section, options))
    for key, info in options.items():
        # A1111 restores per-request override_settings only for keys already in opts.data: without this an API
        # request's {"dmd2_plan": ...} override would stick for every later request.
        shared.opts.data.setdefault(key, info.default)


def setup() -> bool:
    """Register everything with the running host; True on success. Called each time scripts/ is executed."""
    try:
        host = _host()
    except ImportError as e:
        log.error("DMD2: not registered: this webui has no %s; stock samplers and schedulers are untouched", e.name)
        return False
    missing = _check_host(host)
    if missing:
        log.error("DMD2: not registered: this webui lacks %s (a changed internal); stock samplers and schedulers "
                  "are untouched", ", ".join(missing))
        return False
    caps = host_caps.current()
    print(caps.describe(host_caps.where()), flush=True)
    shared = host["shared"]
    try:
        register_settings(shared)
    except (AttributeError, ImportError, TypeError) as e:
        log.warning("DMD2: settings not added (%s); the sampler still works with the Automatic plan", e)
    if caps.schedulers:
        register_scheduler(host["sd_schedulers"], host["kdiff"])
    register_sampler(host["sd_samplers"], host["common"], build_sampler_class(host["kdiff"], shared, caps))
    try:  # callbacks are cleared on Reload UI before scripts/ runs again, so this never duplicates
        from modules import script_callbacks

        from .ui import on_ui_tabs
        script_callbacks.on_ui_tabs(on_ui_tabs)
    except (ImportError, AttributeError) as e:
        log.warning("DMD2: merge tab not added (%s); use python -m sampler merge", e)
    return True
