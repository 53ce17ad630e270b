"""The fast path: switches that make a fixed-shape UNet run faster, each measured in `bench/` and used by default
only where it helped there.

- channels_last: NHWC convolutions, the layout CUDA tensor-core convolutions prefer; on CPU it made no reliable
  difference in `python -m bench` (0.98-1.03x).
- attention: PyTorch SDPA (diffusers' default on torch 2) or xformers where installed.
- compile: torch.compile for a fixed shape, "reduce-overhead" on CUDA (CUDA graphs); its one-off cost is timed and
  reported, not hidden in the first frame.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import torch


@dataclass(frozen=True)
class FastPath:
    """Which speed switches to apply to a UNet."""

    channels_last: bool = False
    attention: str = "sdpa"
    compile: bool = False

    @classmethod
    def default_for(cls, device: torch.device) -> "FastPath":
        """Defaults: channels_last only on CUDA (no reliable gain on CPU in `python -m bench`; on CUDA it is the
        layout cuDNN's tensor-core kernels use, not yet measured here: no GPU was lent); compile is opt-in because its
        one-off cost (minutes on a 2-core CPU) only pays off over many frames of one shape."""
        return cls(channels_last=device.type == "cuda")


def xformers_available() -> bool:
    try:
        import xformers.ops  # noqa: F401
    except Exception:  # an xformers built for another torch raises at import, not only ImportError
        return False
    return True


def apply_fast_path(unet: torch.nn.Module, fast: FastPath) -> torch.nn.Module:
    """Apply `fast` to a diffusers UNet in place (compile is applied by `compile_and_warm`)."""
    if fast.attention not in ("sdpa", "xformers"):
        raise ValueError(f"attention must be 'sdpa' or 'xformers', got {fast.attention!r}")
    if fast.attention == "xformers":
        if not xformers_available():
            raise ValueError("attention 'xformers' asked for, but xformers is not installed for this torch; "
                             "use 'sdpa' (PyTorch's own attention, about as fast)")
        unet.enable_xformers_memory_efficient_attention()
    else:
        from diffusers.models.attention_processor import AttnProcessor2_0

        unet.set_attn_processor(AttnProcessor2_0())
    if fast.channels_last:
        unet.to(memory_format=torch.channels_last)
    return unet


def compile_and_warm(fn: Callable[[], Any], module: torch.nn.Module, device: torch.device) -> float:
    """torch.compile `module.forward` and run `fn` once to pay the compile cost; returns that cost in seconds."""
    mode = "reduce-overhead" if device.type == "cuda" else "default"
    module.forward = torch.compile(module.forward, mode=mode, fullgraph=False)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start
