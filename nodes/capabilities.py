"""What this ComfyUI offers the pack, found out in one place at start and said in one log line.

The pack owns what it can, whatever the ComfyUI version: the timesteps (the core's plans, on the model's own sigma
table), the first step's noise scale (rebuilt from ComfyUI's raw noise), and the re-noise stream (the core's seeded
CPU stream; `sampling.renoise`). It relies on ComfyUI for these only, and this module checks each:
- the stock sampler / scheduler lists (`register.py`), which help only if the stock nodes' dropdowns show them:
  classic nodes list their choices from INPUT_TYPES, V3 nodes (KSamplerSelect, BasicScheduler since v0.3.6x) as
  `["COMBO", {"options": [...]}]`; both are read back after registration;
- the prompt queue the live panel gates (`host.install_queue_gate`);
- the starting noise ComfyUI draws and leaves on its model wrapper (`sampling._start` warns if it is ever gone).
The live panel's JavaScript picks the frontend's sidebar API itself (web/dmd2_live.js); the line names the frontend
package this ComfyUI serves.
"""

from __future__ import annotations

import importlib.metadata
import logging
from typing import Any

log = logging.getLogger("dmd2")

#: The stock nodes that gain `dmd2`, and their dropdown inputs.
STOCK_DROPDOWNS = {"KSampler": ("sampler_name", "scheduler"), "KSamplerAdvanced": ("sampler_name", "scheduler"),
                   "KSamplerSelect": ("sampler_name",), "BasicScheduler": ("scheduler",)}


def combo_options(spec: Any) -> list | None:
    """The choices of an input spec: classic `[[choices...], {...}]` or V3 `["COMBO", {"options": [...]}]`."""
    if not isinstance(spec, (list, tuple)) or not spec:
        return None
    if isinstance(spec[0], list):
        return spec[0]
    if spec[0] == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict):
        return spec[1].get("options")
    return None


def is_v3(node_class: Any) -> bool:
    """Whether a node class is a V3 node (comfy_api io.ComfyNode: a define_schema classmethod)."""
    return callable(getattr(node_class, "define_schema", None))


KINDS = ("classic", "V3")


def dropdowns_with(node_classes: dict[str, Any], name: str) -> dict[str, str]:
    """For each stock node of STOCK_DROPDOWNS: "classic" or "V3" when all its dropdowns offer `name`, else what is
    wrong ("absent", "no <input>", "unreadable: <error>")."""
    status = {}
    for node, inputs in STOCK_DROPDOWNS.items():
        cls = node_classes.get(node)
        if cls is None:
            status[node] = "absent"
            continue
        try:
            required = cls.INPUT_TYPES().get("required", {})
        except Exception as e:  # noqa: BLE001 - a node we do not own: report, never break the pack's start
            status[node] = f"unreadable: {type(e).__name__}: {e}"
            continue
        missing = [i for i in inputs if name not in (combo_options(required.get(i)) or [])]
        status[node] = f"no {name} in {', '.join(missing)}" if missing else ("V3" if is_v3(cls) else "classic")
    return status


def installed(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def start_line(version: str | None, frontend: str | None, registration_problem: str | None,
               dropdowns: dict[str, str], queue_gate: bool) -> tuple[int, str]:
    """(log level, the one start line) naming the path the pack takes; WARNING when something it relies on is off."""
    if registration_problem:
        stock, ok = f"stock dropdowns NOT patched ({registration_problem}): use the DMD2 nodes", False
    else:
        shown = [node + (" (V3)" if kind == "V3" else "") for node, kind in dropdowns.items() if kind in KINDS]
        wrong = [f"{node}: {kind}" for node, kind in dropdowns.items() if kind not in KINDS]
        stock = f"stock dropdowns patched ({', '.join(shown) or 'none'})"
        stock, ok = (stock + f", NOT shown in {'; '.join(wrong)}" if wrong else stock), not wrong
    live = "live: prompt queue " + ("gated" if queue_gate else "NOT gated (a prompt may run beside a frame)")
    line = (f"[DMD2] ComfyUI {version or '(version unknown)'}, frontend {frontend or '(unknown)'}: {stock}; re-noise: "
            f"pack-owned CPU stream; timesteps: pack plans on the model's sigma table; {live}")
    return (logging.INFO if ok and queue_gate else logging.WARNING), line


def log_start(registration_problem: str | None, queue_gate: bool) -> str:
    """Detect, log the one start line and return it."""
    from . import host

    level, line = start_line(host.comfyui_version(), installed("comfyui-frontend-package"), registration_problem,
                             dropdowns_with(host.stock_node_classes(), "dmd2"), queue_gate)
    log.log(level, line)
    return line
