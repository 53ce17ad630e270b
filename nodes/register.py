"""Adds sampler `dmd2` and scheduler `dmd2` to ComfyUI's stock KSampler / KSamplerAdvanced / KSamplerSelect lists.

ComfyUI has no registration API for samplers and schedulers: the dropdowns are module-level lists (KSAMPLER_NAMES,
SAMPLER_NAMES, which is KSampler.SAMPLERS; SCHEDULER_NAMES, which is KSampler.SCHEDULERS) plus SCHEDULER_HANDLERS,
and `ksampler(name)` looks up `sample_<name>` in comfy.k_diffusion.sampling. Packs that mutate these blindly break
silently when ComfyUI renames them (unknown names fall back to the first entry), so we check every piece first and,
if one is missing or has changed shape, leave the stock lists alone and say why (in the pack's start line,
`capabilities.py`, which also reads the stock dropdowns back). Registering twice does nothing.
"""

from __future__ import annotations

from typing import Any

from .sampling import sample_dmd2, scheduler_sigmas

NAME = "dmd2"


def _internals() -> tuple[dict[str, Any] | None, str]:
    """The ComfyUI objects registration needs, or None and what is missing."""
    try:
        import comfy.k_diffusion.sampling as k_sampling
        import comfy.samplers as samplers
    except ImportError as e:
        return None, f"cannot import comfy.samplers / comfy.k_diffusion.sampling ({e})"
    found = {
        "KSAMPLER_NAMES": getattr(samplers, "KSAMPLER_NAMES", None),
        "SAMPLER_NAMES": getattr(samplers, "SAMPLER_NAMES", None),
        "KSampler.SAMPLERS": getattr(getattr(samplers, "KSampler", None), "SAMPLERS", None),
        "SCHEDULER_NAMES": getattr(samplers, "SCHEDULER_NAMES", None),
        "KSampler.SCHEDULERS": getattr(getattr(samplers, "KSampler", None), "SCHEDULERS", None),
        "SCHEDULER_HANDLERS": getattr(samplers, "SCHEDULER_HANDLERS", None),
        "SchedulerHandler": getattr(samplers, "SchedulerHandler", None),
        "ksampler": getattr(samplers, "ksampler", None),
    }
    wrong = [k for k, v in found.items() if k.endswith(("NAMES", "SAMPLERS", "SCHEDULERS")) and not isinstance(v, list)]
    wrong += [k for k in ("SCHEDULER_HANDLERS",) if not isinstance(found[k], dict)]
    wrong += [k for k in ("SchedulerHandler", "ksampler") if not callable(found[k])]
    if wrong:
        return None, f"comfy.samplers has no usable {', '.join(wrong)}"
    found["k_sampling"] = k_sampling
    return found, ""


def register_stock_entries() -> str | None:
    """Add `dmd2` to the stock sampler and scheduler lists. None if they hold it afterwards, else why they were left
    alone (`capabilities.log_start` says so in the start line)."""
    found, missing = _internals()
    if found is None:
        return missing
    setattr(found["k_sampling"], "sample_" + NAME, sample_dmd2)  # what ksampler("dmd2") looks up
    if NAME not in found["SCHEDULER_HANDLERS"]:
        found["SCHEDULER_HANDLERS"][NAME] = found["SchedulerHandler"](scheduler_sigmas, use_ms=True)
    seen: set[int] = set()
    for key in ("KSAMPLER_NAMES", "SAMPLER_NAMES", "KSampler.SAMPLERS", "SCHEDULER_NAMES", "KSampler.SCHEDULERS"):
        names = found[key]
        if id(names) not in seen and NAME not in names:  # KSampler.SAMPLERS is SAMPLER_NAMES: append once
            names.append(NAME)
        seen.add(id(names))
    return None
