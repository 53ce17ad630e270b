"""Live generation on the command line: a prompt in, an image out at interactive rates, every stage timed.

One DMD2 step, text conditioning cached per prompt (typing re-encodes only what changed), and the TAESD tiny decoder
for frames (the full VAE stays for final images). The scheduling and timing pieces are the core's `sampler/live.py`,
which the ComfyUI panel shares.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

from ..live import FrameTimings, PromptCache, timed
from ..models.taesd import decode_tiny
from .pipeline import decode_to_images, execution_device, generate_latents, sdxl_conditioning, to_pil_images


class LiveSession:
    """Frames for a changing prompt / seed from a loaded SDXL DMD2 pipeline."""

    def __init__(self, pipe: Any, timesteps: Sequence[int], width: int, height: int,
                 tiny_decoder: torch.nn.Module | None = None, encode: Callable[[str], dict[str, Any]] | None = None):
        """`encode(prompt) -> UNet conditioning`; `tiny_decoder`: TAESD(XL) for frames, else the full VAE."""

        self.pipe, self.timesteps, self.width, self.height = pipe, tuple(timesteps), width, height
        self.tiny_decoder = tiny_decoder
        self.conditioning = PromptCache(encode or (lambda p: sdxl_conditioning(pipe, [p], width, height)))

    @torch.no_grad()
    def frame(self, prompt: str, seed: int = 0) -> tuple[Any, FrameTimings]:
        """One image for `prompt` and `seed`, and how long each stage took."""
        device, timings = execution_device(self.pipe), FrameTimings()
        with timed(timings, "encode", device):
            cond = self.conditioning(prompt)
        with timed(timings, "unet", device):
            latents = generate_latents(self.pipe.unet, cond, self.timesteps, [seed], self.width, self.height,
                                       progress=False, device=device)
        with timed(timings, "decode", device):
            if self.tiny_decoder is None:
                images = decode_to_images(self.pipe.vae, latents, device)
            else:
                images = to_pil_images(decode_tiny(self.tiny_decoder, latents))
        return images[0], timings


def run_live_loop(session: LiveSession, prompts: Iterable[str], seed: int, output: Path,
                  summary_after_first: bool = False,
                  render: Callable[[str, int], tuple[Any, FrameTimings]] | None = None) -> list[FrameTimings]:
    """Render a frame per non-empty prompt, save the latest to `output`, print each frame's timings; with
    `summary_after_first`, the first frame is a warm-up and the mean of the others is printed at the end.

    `render(prompt, seed)`: makes a frame, by default `session.frame` (the command line wraps it in its
    out-of-memory fallback)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    frames = []
    for prompt in prompts:
        if not prompt:
            continue
        image, timings = (render or session.frame)(prompt, seed)
        image.save(output)
        frames.append(timings)
        print(f"{prompt[:40]!r:44} {timings}", flush=True)
    if summary_after_first and len(frames) > 1:
        measured = frames[1:]
        mean = FrameTimings({k: sum(f.stages[k] for f in measured) / len(measured) for k in measured[0].stages})
        print(f"mean of {len(measured)} frames after a warm-up: {mean}")
    return frames
