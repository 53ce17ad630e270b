"""Which DMD2 plan (trained timesteps) a run uses: the user's setting, else the model in use, else 4 steps.

Host-free: the A1111 / Forge glue passes the loaded checkpoint and LoRA files (with the sha256 the host already
knows, if any); we recognise released DMD2 files by catalog sha256, files our tools wrote by their `dmd2_plan` or
`dmd2_trained_timesteps` metadata, and other files by name ("dmd2" and "1step" / "4step"), as the catalog does.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from ..sampler.models.catalog import load_catalog
from ..sampler.errors import DMD2Error
from ..sampler.models.stamps import PLAN_KEY, TRAINED_TIMESTEPS_KEY, timesteps_from_metadata
from ..sampler.models.files import is_pickle_file, read_safetensors_header
from ..sampler.plans import TRAINED_TIMESTEPS

log = logging.getLogger("dmd2")

#: Setting labels (also written to the infotext as "DMD2 plan", so "send to txt2img" restores the plan).
PLAN_LABELS = {"sdxl_4step": "SDXL 4-step", "sdxl_1step": "SDXL 1-step", "sd15_1step": "SD1.5 1-step"}
AUTOMATIC = "Automatic"
SETTING_CHOICES = [AUTOMATIC, *PLAN_LABELS.values()]
FALLBACK_PLAN = "sdxl_4step"


@dataclass(frozen=True)
class Plan:
    """A chosen plan: its name (a key of TRAINED_TIMESTEPS), trained timesteps and why it was chosen."""

    name: str
    reason: str

    @property
    def trained(self) -> tuple[int, ...]:
        return TRAINED_TIMESTEPS[self.name]

    @property
    def label(self) -> str:
        return PLAN_LABELS[self.name]


def plan_from_name(name: str, is_sdxl: bool | None) -> str | None:
    """Plan suggested by a file name that says "dmd2": 1-step (399 on SDXL, 999 on SD1.5) or the SDXL 4-step."""
    lowered = name.lower().replace("-", "").replace("_", "")
    if "dmd2" not in lowered:
        return None
    if "1step" in lowered:
        return "sd15_1step" if is_sdxl is False or "sd15" in lowered else "sdxl_1step"
    if "4step" in lowered or is_sdxl is not False:
        return "sdxl_4step"
    return "sd15_1step"  # an SD1.5 DMD2 model: the only released one is 1-step


def _plan_with_timesteps(stamp: str | None) -> str | None:
    """The plan whose timesteps a trainer-exported file was trained on (our distiller stamps the timesteps).

    A1111 runs named plans only, so a student trained on other timesteps falls through to the name / default rules.
    """
    try:
        stamped = timesteps_from_metadata({TRAINED_TIMESTEPS_KEY: stamp}) if stamp else None
    except DMD2Error:
        return None
    return next((name for name, trained in TRAINED_TIMESTEPS.items() if trained == stamped), None)


@functools.lru_cache(maxsize=64)
def _plan_of_file(path: str, sha256: str | None, is_sdxl: bool | None, _stamp: tuple) -> tuple[str, str] | None:
    if sha256:
        entry = load_catalog().by_sha256(sha256.lower())
        if entry is not None and entry.plan:
            return entry.plan, f"catalog sha256 of {Path(path).name}"
    if not is_pickle_file(path):
        try:
            meta = read_safetensors_header(path).get("__metadata__") or {}
        except (DMD2Error, OSError):
            meta = {}
        if meta.get(PLAN_KEY) in TRAINED_TIMESTEPS:
            return meta[PLAN_KEY], f"{PLAN_KEY} metadata of {Path(path).name}"
        plan = _plan_with_timesteps(meta.get(TRAINED_TIMESTEPS_KEY))
        if plan:
            return plan, f"{TRAINED_TIMESTEPS_KEY} metadata of {Path(path).name}"
    plan = plan_from_name(Path(path).name, is_sdxl)
    return (plan, f"file name {Path(path).name}") if plan else None


def plan_of_file(path: str | os.PathLike, sha256: str | None = None, is_sdxl: bool | None = None
                 ) -> tuple[str, str] | None:
    """(plan, reason) for a checkpoint / LoRA file we recognise, else None. Cached per file version."""
    path = str(path)
    try:
        st = os.stat(path)
        stamp = (st.st_size, st.st_mtime_ns)
    except OSError:
        stamp = ()
    return _plan_of_file(path, sha256, is_sdxl, stamp)


def choose_plan(setting: str | None, checkpoint: tuple[str, str | None] | None = None,
                loras: Iterable[tuple[str, str | None]] = (), is_sdxl: bool | None = None) -> Plan:
    """The plan for a run: an explicit setting wins; "Automatic" asks the checkpoint, then each active LoRA,
    and falls back to the SDXL 4-step plan (999, 749, 499, 249)."""
    for name, label in PLAN_LABELS.items():
        if setting == label or setting == name:
            return Plan(name, "setting")
    candidates: Sequence = ([checkpoint] if checkpoint else []) + list(loras)
    for path, sha256 in candidates:
        if not path:
            continue
        found = plan_of_file(path, sha256, is_sdxl)
        if found:
            return Plan(*found)
    return Plan(FALLBACK_PLAN, "no DMD2 model recognised: default")
