"""What the running A1111-family web UI can do, found once at start: the one place that tells its hosts apart.

A1111 v1.10, lllyasviel's Forge, Forge Neo, reForge and Forge Classic share A1111's module names but differ in the
internals DMD2 touches. Nothing here guesses a host from its name: each answer is read off the host's own modules,
and `describe` turns them into the one line logged at start. The hosts, as their code is (DESIGN.md section 7):

| internal                       | A1111 1.10   | Forge       | Neo          | reForge             | Classic     |
|--------------------------------|--------------|-------------|--------------|---------------------|-------------|
| CFG denoiser skips uncond at 1 | no           | yes         | yes          | yes                 | yes         |
| UNet timesteps                 | interpolated | integer     | integer      | integer             | integer     |
| sd_schedulers                  | yes          | yes         | yes          | yes                 | no          |
| sd_samplers.add_sampler        | no           | yes         | no           | no                  | no          |
| seeded RNG hijacks             | k_diffusion  | k_diffusion | k_diffusion  | k_diff / ldm_patched| k_diffusion |

"Skips uncond at 1": the host's CFGDenoiser hands the step to a ComfyUI-style `sampling_function` (Forge's backend,
or ldm_patched / modules_forge.forge_sampler), which drops the unconditional pass at CFG 1 by itself and calls the
UNet through its own model_sampling, with the integer timestep nearest in log sigma; so the host's denoiser is kept.
Every host here has `p.rng` (modules.rng.ImageRNG, what its k-diffusion hijack draws from), so DMD2 draws its
per-step noise from it directly, whichever k-diffusion copy that host hijacks.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any


@dataclass(frozen=True)
class HostCapabilities:
    name: str  # for the log line only: what these capabilities look like
    keep_host_cfg: bool  # the host's CFG denoiser already skips the uncond pass at CFG 1 (a sampling_function)
    integer_timesteps: bool  # its UNet gets the nearest integer timestep (else the model wrapper's sigma_to_t)
    schedulers: bool  # modules.sd_schedulers exists (A1111 >= 1.9); else a sampler carries its schedule itself
    add_sampler: bool  # sd_samplers.add_sampler (lllyasviel's Forge) registers samplers
    cached_lookup: bool  # get_sampler_and_scheduler is functools-cached: cleared after registration
    image_rng: bool  # modules.rng.ImageRNG exists: the run's seeded noise is p.rng
    hijacked: str  # the k-diffusion `sampling` module whose `torch` the host swaps for its seeded TorchHijack
    first_noise: str  # how txt2img scales its first noise before calling the sampler

    def describe(self, where: str) -> str:
        """The line logged at start: host, the internals found and the path DMD2 takes through them."""
        register = "sd_samplers.add_sampler" if self.add_sampler else "all_samplers + set_samplers"
        schedule = ("DMD2 scheduler in sd_schedulers" if self.schedulers
                    else "carried by the DMD2 sampler (no sd_schedulers)")
        cfg = ("host denoiser kept (skips uncond at CFG 1)" if self.keep_host_cfg
               else "DMD2 denoiser (one UNet pass at CFG 1)")
        noise = (f"p.rng (the stream the host hijacks into {self.hijacked})" if self.image_rng
                 else f"{self.hijacked} (the host hijacks it)")
        return (f"DMD2: host {self.name} ({where}); sampler via {register}"
                f"{', lookup cache cleared' if self.cached_lookup else ''}; schedule: {schedule}; CFG: {cfg}; "
                f"UNet timesteps: {'integer' if self.integer_timesteps else 'interpolated'}; noise: {noise}; "
                f"first noise: {self.first_noise}")


def _source(obj: Any) -> str:
    import inspect
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):
        return ""


def hijacked_sampling_module(kdiff: ModuleType, common: ModuleType | None) -> str:
    """The k-diffusion `sampling` module whose `torch` the host replaces with its seeded TorchHijack.

    A1111, Forge, Neo and Classic import `k_diffusion.sampling`; reForge imports `sampling` from k_diff.k_diffusion or
    ldm_patched.k_diffusion (its "SD Sampling backend" setting) into sd_samplers_common / sd_samplers_kdiffusion.
    """
    for module in (common, kdiff):
        sampling = getattr(module, "sampling", None) if module is not None else None
        if isinstance(sampling, ModuleType):
            return sampling.__name__
    return "k_diffusion.sampling"


def detect(sd_samplers: ModuleType, kdiff: ModuleType, cfg: ModuleType | None, common: ModuleType | None,
           sd_schedulers: ModuleType | None, rng: ModuleType | None) -> HostCapabilities:
    """Capabilities read off the host's modules (`modules.sd_samplers`, `.sd_samplers_kdiffusion`,
    `.sd_samplers_cfg_denoiser`, `.sd_samplers_common`, `.sd_schedulers` and `.rng`; None where absent)."""
    keep_host_cfg = cfg is not None and (hasattr(cfg, "sampling_function") or hasattr(cfg, "forge_sampler"))
    add_sampler = hasattr(sd_samplers, "add_sampler")
    lookup = getattr(sd_samplers, "get_sampler_and_scheduler", None)
    hijacked = hijacked_sampling_module(kdiff, common)
    sample_source = _source(getattr(kdiff, "KDiffusionSampler", None))
    first_noise = ("predictor.noise_scaling (sigma_0; sqrt(1 + sigma_0^2) with SGM noise multiplier)"
                   if "noise_scaling" in sample_source else
                   "x * sigma_0 (sqrt(1 + sigma_0^2) with SGM noise multiplier)")
    if not keep_host_cfg:
        name = "A1111"
    elif sd_schedulers is None:
        name = "Forge Classic"
    elif hijacked != "k_diffusion.sampling":
        name = "reForge"
    elif add_sampler:
        name = "Forge"
    else:
        name = "Forge Neo"
    return HostCapabilities(name=name, keep_host_cfg=keep_host_cfg, integer_timesteps=keep_host_cfg,
                            schedulers=sd_schedulers is not None, add_sampler=add_sampler,
                            cached_lookup=hasattr(lookup, "cache_clear"), image_rng=hasattr(rng, "ImageRNG"),
                            hijacked=hijacked, first_noise=first_noise)


def optional_module(name: str) -> ModuleType | None:
    """The host module `name`, or None where this host has none (e.g. modules.sd_schedulers before A1111 1.9)."""
    import importlib
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


@functools.lru_cache(maxsize=1)
def current() -> HostCapabilities:
    """The running host's capabilities (its modules are imported; call only inside a web UI)."""
    from modules import sd_samplers, sd_samplers_kdiffusion
    return detect(sd_samplers, sd_samplers_kdiffusion, optional_module("modules.sd_samplers_cfg_denoiser"),
                  optional_module("modules.sd_samplers_common"), optional_module("modules.sd_schedulers"),
                  optional_module("modules.rng"))


def where() -> str:
    """The host's folder, for the log line."""
    modules = sys.modules.get("modules")
    path = getattr(modules, "__path__", None)
    return str(list(path)[0]).removesuffix("/modules") if path else "?"
