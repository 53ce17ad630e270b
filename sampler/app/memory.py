"""Low-memory operation: where SDXL's weights live during a run, chosen from the GPU's free memory.

Three placements, from fastest to leanest:

- "full": the whole pipeline on the GPU.
- "model_offload": diffusers' `enable_model_cpu_offload`; text encoders, UNet and VAE move to the GPU one at a time,
  when each runs (an 8 GB card's path).
- "sequential_offload": diffusers' `enable_sequential_cpu_offload`; weights stream in layer by layer (slowest).

Each can add tiled, one-image-at-a-time VAE decoding. `plan_memory` is pure (free memory in, plan out);
`apply_memory_plan` and `run_with_oom_fallback` carry a plan out on a diffusers pipeline.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import torch

T = TypeVar("T")

FULL, MODEL_OFFLOAD, SEQUENTIAL_OFFLOAD = "full", "model_offload", "sequential_offload"
#: `--offload` choices and the placement each one asks for ("auto": the fastest that fits).
OFFLOAD_CHOICES = {"none": FULL, "model": MODEL_OFFLOAD, "sequential": SEQUENTIAL_OFFLOAD}
REQUESTS = ("auto", *OFFLOAD_CHOICES)

GIB = 2**30
# fp16 weights (2 bytes a parameter); the parameter counts are those of the diffusers / transformers SDXL base
# architectures (UNet2DConditionModel, CLIPTextModel ViT-L, CLIPTextModelWithProjection bigG, AutoencoderKL).
UNET_FP16_BYTES = 2_567_463_684 * 2  # 4.78 GiB
TEXT_ENCODERS_FP16_BYTES = (123_060_480 + 694_659_840) * 2  # 1.52 GiB
VAE_FP16_BYTES = 83_653_863 * 2  # 0.16 GiB; the stock SDXL VAE decodes in fp32 (force_upcast), twice that
# One UNet pass at 1024x1024, batch 1: with SDPA attention its largest tensors are ~40 MB (4096 tokens x 5120 GEGLU
# features in fp16), so 1 GiB covers them, cuDNN workspaces and allocator slack. An estimate, not a GPU measurement.
UNET_WORKING_BYTES = 1 * GIB
# The fp32 VAE decode of one 1024x1024 image, above its weights: its full-resolution up blocks hold several
# 256- and 128-channel 1024x1024 fp32 maps (0.5-1 GiB each) at once. Measured on CPU with the SDXL VAE architecture
# (growth of the resident set during decode): 3.8 GiB whole, 1.1 GiB in 512-px tiles; rounded up to a quarter GiB.
DECODE_BYTES = 4 * GIB
DECODE_TILED_BYTES = 1.25 * GIB
#: Tile size for tiled decoding. The SDXL VAE's own tile size is its sample_size, 1024 px, so at 1024x1024 diffusers'
#: tiling would never split; 512 px is the tile of SD1.5's VAE, with diffusers' 25 % blended overlap.
TILE_PIXELS = 512
# Fragmentation of the CUDA caching allocator and whatever else allocates on the GPU meanwhile.
MARGIN_BYTES = GIB // 2

#: Placements from fastest to leanest: a CUDA out-of-memory error under one retries with the next.
ORDER = (FULL, MODEL_OFFLOAD, SEQUENTIAL_OFFLOAD)
#: (placement, tiled decode) in order of preference: the first that fits the free memory wins.
LADDER = tuple((offload, tiling) for offload in ORDER for tiling in (False, True))
PHRASES = {FULL: "in one piece", MODEL_OFFLOAD: "one model at a time", SEQUENTIAL_OFFLOAD: "layer by layer"}
ACTIONS = {FULL: "keeping SDXL on the GPU in one piece",
           MODEL_OFFLOAD: "offloading models to the CPU one at a time (slower)",
           SEQUENTIAL_OFFLOAD: "offloading layer by layer to the CPU (much slower)"}
FLAGS = {offload: f"--offload {choice}" for choice, offload in OFFLOAD_CHOICES.items()}


@dataclass(frozen=True)
class MemoryPlan:
    """Where the pipeline's weights live and how the VAE decodes.

    offload: FULL, MODEL_OFFLOAD or SEQUENTIAL_OFFLOAD. vae_tiling: decode in TILE_PIXELS tiles, one image at a time.
    reason: one line saying why, for people. announce: print `reason` (the run departs from the fastest placement,
    or ignores or risks what was asked).
    """

    offload: str
    vae_tiling: bool
    reason: str
    announce: bool = False


#: The plan of callers that do not plan: everything on the device, as before low-memory operation existed.
ALL_ON_DEVICE = MemoryPlan(FULL, False, "everything on the device")


def bytes_needed(offload: str, vae_tiling: bool, bytes_per_weight: int = 2) -> int:
    """Peak GPU memory of one 1024x1024 SDXL image under `offload`, estimated from the constants above.

    full: every weight stays resident, the UNet's working memory or the decode on top (they never overlap).
    model_offload: the largest one model with its working memory. sequential_offload: working memory alone (layers
    stream in one at a time; the largest, bigG's token embedding, is 0.12 GiB, inside the margin).
    """
    scale = bytes_per_weight / 2
    unet, text, vae = UNET_FP16_BYTES * scale, TEXT_ENCODERS_FP16_BYTES * scale, VAE_FP16_BYTES * scale
    vae_decoding = max(vae, VAE_FP16_BYTES * 2)
    decode = DECODE_TILED_BYTES if vae_tiling else DECODE_BYTES
    working = UNET_WORKING_BYTES * scale
    if offload == FULL:
        peak = max(unet + text + vae + working, unet + text + vae_decoding + decode)
    elif offload == MODEL_OFFLOAD:
        peak = max(unet + working, text, vae_decoding + decode)
    elif offload == SEQUENTIAL_OFFLOAD:
        peak = max(working, decode)
    else:
        raise ValueError(f"offload must be one of {FULL}, {MODEL_OFFLOAD}, {SEQUENTIAL_OFFLOAD}, got {offload!r}")
    return int(peak + MARGIN_BYTES)


def gib(n: float) -> str:
    """Bytes as GiB for messages."""
    return f"{n / GIB:.1f} GiB"


def describe(offload: str, vae_tiling: bool) -> str:
    """What a placement does, in words."""
    return ACTIONS[offload] + (f", the VAE decoding in {TILE_PIXELS}-px tiles" if vae_tiling else "")


def plan_memory(free_bytes: int | None, total_bytes: int | None, device: str, requested: str = "auto",
                bytes_per_weight: int = 2) -> MemoryPlan:
    """Choose where SDXL's weights live for a run on `device` ("cuda:0", "cpu", ...).

    free_bytes / total_bytes: the device's free and total memory (None where unknown). requested: "auto" (the fastest
    placement that fits), "none" (everything on the GPU), "model" or "sequential" (that offload). Tiled decoding is
    added when the untiled decode would not fit. On the CPU everything is already in main memory: always "full".
    """
    if requested not in REQUESTS:
        raise ValueError(f"offload must be one of {', '.join(REQUESTS)}, got {requested!r}")
    if torch.device(device).type == "cpu":
        ignored = requested not in ("auto", "none")
        why = f"--offload {requested} ignored: " if ignored else ""
        return MemoryPlan(FULL, False, f"{why}on the CPU every model already lives in main memory", announce=ignored)
    allowed = [step for step in LADDER if requested == "auto" or step[0] == OFFLOAD_CHOICES[requested]]
    if free_bytes is None:
        return MemoryPlan(*allowed[0], f"free memory of {device} unknown: {describe(*allowed[0])}")
    of_total = f" (of {gib(total_bytes)})" if total_bytes else ""
    have = f"{gib(free_bytes)} free on {device}{of_total}"
    fits = [step for step in allowed if bytes_needed(*step, bytes_per_weight) <= free_bytes]
    if not fits:
        offload, tiling = allowed[-1]
        need = bytes_needed(offload, tiling, bytes_per_weight)
        asked = "" if requested == "auto" else f" as --offload {requested} asks"
        return MemoryPlan(offload, tiling, f"{have}: SDXL needs ~{gib(need)} {PHRASES[offload]}; "
                                           f"{describe(offload, tiling)}{asked} (it may run out of memory)", True)
    offload, tiling = fits[0]
    need = bytes_needed(offload, tiling, bytes_per_weight)
    if fits[0] == allowed[0]:
        return MemoryPlan(offload, tiling, f"{have}: {describe(offload, tiling)} (needs ~{gib(need)})")
    if offload == allowed[0][0]:
        untiled = bytes_needed(offload, False, bytes_per_weight)
        return MemoryPlan(offload, tiling, f"{have}: the full-size decode needs ~{gib(untiled)} {PHRASES[offload]}; "
                                           f"{describe(offload, tiling)}", True)
    weaker = ORDER[ORDER.index(offload) - 1]
    weaker_need = bytes_needed(weaker, True, bytes_per_weight)
    return MemoryPlan(offload, tiling, f"{have}: SDXL needs ~{gib(weaker_need)} {PHRASES[weaker]}; "
                                       f"{describe(offload, tiling)}; {FLAGS[weaker]} to force", True)


def plan_for_device(device: torch.device, requested: str = "auto", dtype: torch.dtype = torch.float16) -> MemoryPlan:
    """`plan_memory` for this machine's `device`, from CUDA's free and total memory (unknown on other backends)."""
    if device.type != "cuda":
        return plan_memory(None, None, str(device), requested, dtype.itemsize)
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    free, total = torch.cuda.mem_get_info(device)
    return plan_memory(free, total, str(device), requested, dtype.itemsize)


def stronger_plan(plan: MemoryPlan) -> MemoryPlan | None:
    """The plan to retry with after CUDA ran out of memory under `plan`: the next leaner placement, with tiled
    decoding; None after layer by layer."""
    at = ORDER.index(plan.offload)
    if at + 1 == len(ORDER):
        return None
    offload = ORDER[at + 1]
    return MemoryPlan(offload, True, f"CUDA ran out of memory with SDXL {PHRASES[plan.offload]}; retrying once, "
                                     f"{describe(offload, True)} ({FLAGS[offload]} starts that way)", True)


def run_with_oom_fallback(run: Callable[[], T], plan: MemoryPlan, requested: str,
                          switch: Callable[[MemoryPlan], None], say: Callable[[str], None] = print
                          ) -> tuple[T, MemoryPlan]:
    """`run()` under `plan`; with `requested` "auto", a CUDA out-of-memory error is said, `switch` moves to
    `stronger_plan(plan)` and `run()` runs once more. Returns the result and the plan it ran under.

    An offload the user asked for (or "none") is not second-guessed: its out-of-memory error propagates.
    """
    retry = stronger_plan(plan) if requested == "auto" else None
    try:
        return run(), plan
    except torch.cuda.OutOfMemoryError:
        if retry is None:
            raise
    # Out of the except block the traceback, and the GPU tensors its frames hold, are released (the collector frees
    # frames caught in cycles), so empty_cache can return that memory before the leaner placement loads.
    say(f"[DMD2] {retry.reason}")
    gc.collect()
    torch.cuda.empty_cache()
    switch(retry)
    return run(), retry


def apply_memory_plan(pipe: Any, plan: MemoryPlan, device: torch.device) -> None:
    """Place a diffusers pipeline on `device` as `plan` says.

    With an offload the weights stay on the CPU (or, layer by layer, on the meta device) and diffusers' hooks move
    them to `device` as each model or layer runs: compute then happens on `pipe._execution_device`, not on
    `pipe.unet.device`.
    """
    if plan.offload == MODEL_OFFLOAD:
        pipe.enable_model_cpu_offload(device=device)
    elif plan.offload == SEQUENTIAL_OFFLOAD:
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        pipe.to(device)
    if plan.vae_tiling:
        pipe.vae.enable_tiling()
        pipe.vae.enable_slicing()
        pipe.vae.tile_sample_min_size, pipe.vae.tile_latent_min_size = TILE_PIXELS, TILE_PIXELS // pipe.vae_scale_factor
