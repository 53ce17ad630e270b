"""DMD2 for ComfyUI and A1111 / Forge.

ComfyUI imports this file as the pack's entry point. Everywhere else (plain Python, pytest, A1111, which ignores
it) it must import cleanly and do nothing, so the ComfyUI nodes are loaded only when ComfyUI itself is running.
Inside ComfyUI this package is imported under its folder's name, so `.sampler` and `.nodes` below can never be
confused with ComfyUI's own top-level `nodes` module or another pack's `sampler`.
"""

import sys


def _inside_comfyui() -> bool:
    # ComfyUI has imported its node registry and model folders before it loads any custom node pack.
    return "folder_paths" in sys.modules and "comfy.samplers" in sys.modules


if _inside_comfyui():
    from .nodes import (NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, log_start, register_routes,
                        register_stock_entries, warn_misplaced_unets)

    log_start(register_stock_entries(),  # sampler and scheduler "dmd2" in the stock KSampler dropdowns
              register_routes())  # /dmd2/live/* for the live panel; one line: the path taken in this ComfyUI
    warn_misplaced_unets()  # a DMD2 UNet in models/checkpoints: say so now, not as a KeyError at run time
    WEB_DIRECTORY = "./web"  # served at /extensions/<this folder>/: the live panel (web/dmd2_live.js)
    __all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
