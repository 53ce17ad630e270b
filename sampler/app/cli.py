"""Command line: `python -m sampler generate|live|models|merge|convert-lora ...`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from ..errors import DMD2Error

if TYPE_CHECKING:
    import torch

    from .memory import MemoryPlan


#: `--model` value of the embedded shapes student (sampler/embedded/), the offline default.
SHAPES_MODEL_ID = "shapes"


def add_generate_subcommand(subparsers) -> argparse.ArgumentParser:
    from .pipeline import DEFAULT_MODEL_ID

    p = subparsers.add_parser("generate", help="text to image with a DMD2 SDXL model (no host needed)",
                              description="Generate images with DMD2 on SDXL base 1.0: the DMD2 UNet or LoRA, "
                                          "sampled on its trained timesteps. Weights come from the catalog "
                                          "(downloaded and verified on first use) or a local file. Without "
                                          "--model and with no SDXL weights on disk, the embedded 32x32 shapes "
                                          "student draws a grid offline instead (prompts like 'red circle').")
    p.add_argument("prompt", nargs="+", help="the prompt; several prompts make several images")
    p.add_argument("--model", help=f"catalog id, file, or '{SHAPES_MODEL_ID}' (the embedded shapes student); default: "
                                   f"{DEFAULT_MODEL_ID} when SDXL base and it are on disk, else {SHAPES_MODEL_ID}")
    p.add_argument("--steps", type=int, help="UNet passes (default: the model's trained step count)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first image; image i uses seed + i")
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--height", type=int, default=1024)
    p.add_argument("--batch", type=int, default=1, help="images per prompt")
    p.add_argument("--lora-strength", type=float, default=1.0,
                   help="DMD2 LoRA strength (1.0 on SDXL base; 0.5-0.75 on community finetunes)")
    p.add_argument("--output", type=Path, default=Path("outputs/dmd2.png"), help="image path (batches get -N)")
    p.add_argument("--device", help="cuda, cpu, ... (default: cuda if available)")
    p.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], help="default: fp16 on CUDA, fp32 on CPU")
    p.add_argument("--models-dir", type=Path, help="models folder (default: $DMD2_MODELS_DIR or ~/.cache/dmd2/models)")
    add_offload_argument(p)
    p.set_defaults(func=run_generate)
    return p


def add_offload_argument(p: argparse.ArgumentParser) -> None:
    from .memory import REQUESTS

    p.add_argument("--offload", choices=REQUESTS, default="auto",
                   help="keep models on the CPU and move them to the GPU one at a time (model) or layer by layer "
                        "(sequential, slowest); auto: from the GPU's free memory, and once more a step leaner "
                        "after running out of memory (default: %(default)s)")


def plan_memory_for(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> MemoryPlan:
    """The memory plan for this run, said on one line when it falls back from everything on the GPU."""
    from .memory import plan_for_device

    plan = plan_for_device(device, args.offload, dtype)
    if plan.announce:
        print(f"[DMD2] {plan.reason}")
    return plan


def run_generate(args: argparse.Namespace) -> int:
    from ..models.download import default_models_dir, tqdm_progress
    from .memory import apply_memory_plan, run_with_oom_fallback
    from .pipeline import (DEFAULT_MODEL_ID, decode_to_images, execution_device, generate_latents, load_dmd2_sdxl,
                           pick_device_and_dtype, save_images, sdxl_conditioning)
    from ..noise import batch_seeds
    from ..plans import timesteps_for

    if args.batch < 1:
        raise DMD2Error(f"--batch must be >= 1, got {args.batch}")
    models_dir = args.models_dir or default_models_dir()
    if args.model is None:
        missing = missing_default_files(models_dir)
        if missing:
            print(f"[DMD2] no SDXL DMD2 weights in {models_dir} ({', '.join(missing)} missing): drawing with the "
                  f"embedded shapes student instead, a {EMBEDDED_NOTE}. For real images: --model {DEFAULT_MODEL_ID} "
                  f"(downloads ~7.3 GB once).")
            return run_shapes_generate(args)
        args.model = DEFAULT_MODEL_ID
    if args.model == SHAPES_MODEL_ID:
        return run_shapes_generate(args)
    device, dtype = pick_device_and_dtype(args.device, args.dtype)
    plan = plan_memory_for(args, device, dtype)
    pipe, trained = load_dmd2_sdxl(args.model, models_dir, device, dtype,
                                   args.lora_strength, tqdm_progress(), memory=plan)
    timesteps = timesteps_for(args.steps or len(trained), trained)
    prompts = [p for p in args.prompt for _ in range(args.batch)]
    print(f"[DMD2] {len(prompts)} image(s), {args.width}x{args.height}, timesteps {list(timesteps)}, "
          f"{device} {str(dtype).removeprefix('torch.')}")

    def images() -> list:
        on = execution_device(pipe)
        cond = sdxl_conditioning(pipe, prompts, args.width, args.height)
        latents = generate_latents(pipe.unet, cond, timesteps, batch_seeds(args.seed, len(prompts)), args.width,
                                   args.height, device=on)
        return decode_to_images(pipe.vae, latents, on)

    made, _ = run_with_oom_fallback(images, plan, args.offload, lambda leaner: apply_memory_plan(pipe, leaner, device))
    for path in save_images(made, args.output):
        print(path)
    return 0


#: What the embedded model is, for the line the command line prints when it falls back to it.
EMBEDDED_NOTE = ("1.4 MB DMD2 4-step generator of 32x32 coloured shapes distilled on a CPU by `python -m distill "
                 "shapes-proof`; it knows prompts like 'red circle' or 'blue square' and nothing else")


def missing_default_files(models_dir: Path) -> list[str]:
    """File names of the default SDXL model (SDXL base + the DMD2 LoRA) not yet in `models_dir`."""
    from ..models.catalog import load_catalog
    from ..models.download import target_path
    from .pipeline import DEFAULT_MODEL_ID, SDXL_BASE_ID

    catalog = load_catalog()
    entries = [catalog.get(SDXL_BASE_ID), catalog.get(DEFAULT_MODEL_ID)]
    return [e.filename for e in entries if not target_path(e, Path(models_dir) / e.comfyui_folder).exists()]


def run_shapes_generate(args: argparse.Namespace) -> int:
    """Draw the prompts with the embedded shapes student into one grid image (CPU, well under a second)."""
    import time

    from .pipeline import save_images
    from ..plans import timesteps_for
    from ..shapes import EMBEDDED_MODEL, SHAPES, COLOURS, generate_shapes, image_grid, load_shapes_model

    model = load_shapes_model(EMBEDDED_MODEL)
    prompts = [p for p in args.prompt for _ in range(args.batch)]
    start = time.perf_counter()
    try:
        images = generate_shapes(model, prompts, args.seed, args.steps)
    except ValueError as e:
        raise DMD2Error(f"{e}. The embedded shapes student draws '<colour> <shape>' only (colours: "
                        f"{', '.join(COLOURS)}; shapes: {', '.join(SHAPES)}); for any other prompt use an SDXL model: "
                        f"--model dmd2-sdxl-4step-lora-fp16") from None
    timesteps = timesteps_for(args.steps or len(model.trained_timesteps), model.trained_timesteps)
    print(f"[DMD2] {len(prompts)} image(s), 32x32, timesteps {list(timesteps)}, "
          f"{time.perf_counter() - start:.2f} s on the CPU")
    for path in save_images([image_grid(images, columns=min(len(prompts), 8))], args.output):
        print(path)
    return 0


def add_live_subcommand(subparsers) -> argparse.ArgumentParser:
    from .pipeline import DEFAULT_MODEL_ID

    p = subparsers.add_parser("live", help="type prompts, see frames: 1-step DMD2 with stage timings",
                              description="Each line read from standard input becomes a frame (saved to --output), "
                                          "with the time of text encoding, UNet and decoding. With --frames N it "
                                          "renders one prompt N times and prints the averages (a benchmark).")
    p.add_argument("--model", default=DEFAULT_MODEL_ID, help="catalog id or file (default: %(default)s)")
    p.add_argument("--steps", type=int, default=1, help="UNet passes per frame (default: 1)")
    p.add_argument("--size", type=int, default=512, help="frame width and height (default: 512)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--full-vae", action="store_true", help="decode frames with the full VAE instead of TAESDXL")
    p.add_argument("--frames", type=int, help="benchmark: render --prompt this many times")
    p.add_argument("--prompt", default="a photo of a cat", help="prompt of the benchmark")
    p.add_argument("--output", type=Path, default=Path("outputs/live.png"))
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction,
                   help="NHWC UNet (default: on for CUDA, off for CPU, as measured by python -m bench)")
    p.add_argument("--attention", choices=["sdpa", "xformers"], default="sdpa",
                   help="attention kernels (xformers only where installed for this torch)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the UNet for this frame size; its one-off cost is printed before the frames")
    p.add_argument("--device")
    p.add_argument("--dtype", choices=["fp16", "bf16", "fp32"])
    p.add_argument("--models-dir", type=Path)
    add_offload_argument(p)
    p.set_defaults(func=run_live)
    return p


def run_live(args: argparse.Namespace) -> int:
    from ..models.checkpoints import resolve_model
    from ..models.download import default_models_dir, tqdm_progress
    from .fast import FastPath, apply_fast_path, compile_and_warm
    from .live import LiveSession, run_live_loop
    from .memory import FULL, apply_memory_plan, run_with_oom_fallback
    from .pipeline import load_dmd2_sdxl, pick_device_and_dtype
    from ..plans import timesteps_for
    from .taesd import load_tiny_decoder

    device, dtype = pick_device_and_dtype(args.device, args.dtype)
    plan = plan_memory_for(args, device, dtype)
    if args.compile and plan.offload != FULL:
        # Offload hooks move the UNet's weights between devices under the compiled graph (CUDA graphs capture
        # their addresses): a combination not tested here.
        raise DMD2Error(f"--compile needs the UNet to stay on the GPU, and this run offloads it ({plan.offload}); "
                        f"use --offload none to keep it there, or leave out --compile")
    models_dir = args.models_dir or default_models_dir()
    pipe, trained = load_dmd2_sdxl(args.model, models_dir, device, dtype, progress=tqdm_progress(), memory=plan)
    decoder = None if args.full_vae else load_tiny_decoder(resolve_model("taesdxl", models_dir).path, device, dtype)
    session = LiveSession(pipe, timesteps_for(args.steps, trained), args.size, args.size, decoder)
    default = FastPath.default_for(device)
    fast = FastPath(default.channels_last if args.channels_last is None else args.channels_last, args.attention,
                    args.compile)
    apply_fast_path(pipe.unet, fast)
    if fast.compile:
        cost = compile_and_warm(lambda: session.frame(args.prompt, args.seed), pipe.unet, device)
        print(f"[DMD2] torch.compile for {args.size}x{args.size}: {cost:.1f} s, paid once")

    def render(prompt: str, seed: int):
        nonlocal plan
        frame, plan = run_with_oom_fallback(lambda: session.frame(prompt, seed), plan, args.offload,
                                            lambda leaner: apply_memory_plan(pipe, leaner, device))
        return frame

    prompts = [args.prompt] * (args.frames + 1) if args.frames else (line.strip() for line in sys.stdin)
    # A compiled UNet stays where it was compiled: no offload fallback under it.
    run_live_loop(session, prompts, args.seed, args.output, summary_after_first=bool(args.frames),
                  render=None if fast.compile else render)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from ..models.cli import add_convert_subcommands, add_models_subcommand

    parser = argparse.ArgumentParser(prog="python -m sampler", description="DMD2 sampling without a host.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_generate_subcommand(subparsers)
    add_live_subcommand(subparsers)
    add_models_subcommand(subparsers)
    add_convert_subcommands(subparsers)
    return parser


def run_command(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse and run a subcommand; a DMD2Error or ValueError is bad input: its message on stderr, exit status 1."""
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (DMD2Error, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser(), argv)
