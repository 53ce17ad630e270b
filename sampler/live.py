"""Live generation: a prompt in, an image out at interactive rates, with the time of every stage measured.

One DMD2 step, text conditioning cached per prompt (typing re-encodes only what changed), and the TAESD tiny decoder
for frames (the full VAE stays for final images). The command line's `live` mode and the ComfyUI panel use it.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch

from .pipeline import decode_to_images, generate_latents, to_pil_images
from .taesd import decode_tiny


class PromptCache:
    """Conditioning of the most recently used prompts; the text encoders run once per distinct prompt."""

    def __init__(self, encode: Callable[[str], dict[str, Any]], size: int = 32):
        self.encode, self.size = encode, size
        self.entries: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.hits = self.misses = 0

    def __call__(self, prompt: str) -> dict[str, Any]:
        if prompt in self.entries:
            self.hits += 1
            self.entries.move_to_end(prompt)
            return self.entries[prompt]
        self.misses += 1
        cond = self.entries[prompt] = self.encode(prompt)
        if len(self.entries) > self.size:
            self.entries.popitem(last=False)
        return cond


@dataclass
class FrameTimings:
    """Seconds spent in each stage of one frame."""

    stages: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return sum(self.stages.values())

    def __str__(self) -> str:
        parts = "  ".join(f"{name} {seconds * 1000:.1f} ms" for name, seconds in self.stages.items())
        return f"{parts}  | {self.total * 1000:.1f} ms, {1 / self.total:.1f} fps"


@contextmanager
def timed(timings: FrameTimings, stage: str, device: torch.device) -> Iterator[None]:
    """Record the wall time of a stage; waits for the GPU so asynchronous kernels are charged to their stage."""
    start = time.perf_counter()
    yield
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    timings.stages[stage] = time.perf_counter() - start


class LiveSession:
    """Frames for a changing prompt / seed from a loaded SDXL DMD2 pipeline."""

    def __init__(self, pipe: Any, timesteps: Sequence[int], width: int, height: int,
                 tiny_decoder: torch.nn.Module | None = None, encode: Callable[[str], dict[str, Any]] | None = None):
        """`encode(prompt) -> UNet conditioning`; `tiny_decoder`: TAESD(XL) for frames, else the full VAE."""
        from .pipeline import sdxl_conditioning

        self.pipe, self.timesteps, self.width, self.height = pipe, tuple(timesteps), width, height
        self.tiny_decoder = tiny_decoder
        self.conditioning = PromptCache(encode or (lambda p: sdxl_conditioning(pipe, [p], width, height)))

    @torch.no_grad()
    def frame(self, prompt: str, seed: int = 0) -> tuple[Any, FrameTimings]:
        """One image for `prompt` and `seed`, and how long each stage took."""
        device, timings = self.pipe.unet.device, FrameTimings()
        with timed(timings, "encode", device):
            cond = self.conditioning(prompt)
        with timed(timings, "unet", device):
            latents = generate_latents(self.pipe.unet, cond, self.timesteps, [seed], self.width, self.height,
                                       progress=False)
        with timed(timings, "decode", device):
            if self.tiny_decoder is None:
                images = decode_to_images(self.pipe.vae, latents)
            else:
                images = to_pil_images(decode_tiny(self.tiny_decoder, latents))
        return images[0], timings


def run_live_loop(session: LiveSession, prompts: Iterable[str], seed: int, output: Path,
                  summary_after_first: bool = False) -> list[FrameTimings]:
    """Render a frame per non-empty prompt, save the latest to `output`, print each frame's timings; with
    `summary_after_first`, the first frame is a warm-up and the mean of the others is printed at the end."""
    output.parent.mkdir(parents=True, exist_ok=True)
    frames = []
    for prompt in prompts:
        if not prompt:
            continue
        image, timings = session.frame(prompt, seed)
        image.save(output)
        frames.append(timings)
        print(f"{prompt[:40]!r:44} {timings}", flush=True)
    if summary_after_first and len(frames) > 1:
        measured = frames[1:]
        mean = FrameTimings({k: sum(f.stages[k] for f in measured) / len(measured) for k in measured[0].stages})
        print(f"mean of {len(measured)} frames after a warm-up: {mean}")
    return frames
