"""ComfyUI glue: thin node classes that translate between the graph and the host-free core in `sampler/`.

Classic node API (NODE_CLASS_MAPPINGS): it runs on every ComfyUI release our users have, and the node ids below are
the contract saved workflows depend on; see docs/comfyui.md for why not V3 (yet).
"""

from .capabilities import log_start
from .live import DMD2LiveSession, register_routes
from .loaders import DMD2LoraLoader, DMD2UNetLoader, warn_misplaced_unets
from .register import register_stock_entries
from .sampler_nodes import DMD2KSampler, DMD2Sampler, DMD2Scheduler

NODE_CLASS_MAPPINGS: dict = {
    "DMD2UNetLoader": DMD2UNetLoader,
    "DMD2LoraLoader": DMD2LoraLoader,
    "DMD2Scheduler": DMD2Scheduler,
    "DMD2Sampler": DMD2Sampler,
    "DMD2KSampler": DMD2KSampler,
    "DMD2LiveSession": DMD2LiveSession,
}
NODE_DISPLAY_NAME_MAPPINGS: dict = {
    "DMD2UNetLoader": "DMD2 Load UNet",
    "DMD2LoraLoader": "DMD2 LoRA",
    "DMD2Scheduler": "DMD2 Scheduler",
    "DMD2Sampler": "DMD2 Sampler",
    "DMD2KSampler": "DMD2 KSampler",
    "DMD2LiveSession": "DMD2 Live Session",
}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "log_start", "register_routes",
           "register_stock_entries", "warn_misplaced_unets"]
