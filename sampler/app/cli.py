"""Command line: `python -m sampler generate|live|models|merge|convert-lora ...`, and the error boundary every
entry point (this one and `python -m distill`) runs its commands through.

Everything a user types is checked before any expensive work (loading or downloading models): flags by argparse
types that name the flag, output paths before sampling, catalog ids' kinds before downloading.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from ..errors import DMD2Error, first_line, user_message
from ..models.cli import finite_float, int_in

if TYPE_CHECKING:
    import torch

    from .memory import MemoryPlan


#: `--model` value of the embedded shapes student (sampler/embedded/), the offline default.
SHAPES_MODEL_ID = "shapes"
#: Seeds are 64-bit (torch.Generator.manual_seed); image i of a run uses seed + i, which must fit too.
MAX_SEED = 2**64 - 1
#: Images one command makes at most (prompts x --batch); they are generated GENERATE_CHUNK at a time and saved as
#: they come, so memory does not grow with the count.
MAX_IMAGES = 1000
GENERATE_CHUNK = 4
#: Shapes images sampled at once (32x32 each: the whole grid of MAX_IMAGES stays small).
SHAPES_CHUNK = 64
#: Sizes of the SDXL paths: SD-family UNets need sides divisible by 8 * 2**downsamplings (64 for SD1.5 and SDXL).
SIDE_STEP, DEFAULT_SIDE = 64, 1024


def check_seed_range(seed: int, count: int) -> None:
    """Seeds seed .. seed + count - 1 must all be 64-bit seeds."""
    if seed + count - 1 > MAX_SEED:
        raise DMD2Error(f"--seed {seed} is too large for {count} image(s): image i uses seed + i, and seeds go up to "
                        f"{MAX_SEED} (2^64 - 1); use a seed up to {MAX_SEED - count + 1}")


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
    p.add_argument("--steps", type=int_in(1, 1000), help="UNet passes (default: the model's trained step count)")
    p.add_argument("--seed", type=int_in(0, MAX_SEED), default=0,
                   help="seed of the first image, 0 to 2^64 - 1; image i uses seed + i")
    p.add_argument("--width", type=int_in(SIDE_STEP, 16384, SIDE_STEP),
                   help=f"a multiple of {SIDE_STEP} (default {DEFAULT_SIDE}; the shapes student draws 32x32 only)")
    p.add_argument("--height", type=int_in(SIDE_STEP, 16384, SIDE_STEP), help="as --width")
    p.add_argument("--batch", type=int_in(1, MAX_IMAGES), default=1,
                   help=f"images per prompt (at most {MAX_IMAGES} images in all; made {GENERATE_CHUNK} at a time)")
    p.add_argument("--lora-strength", type=finite_float, default=1.0,
                   help="DMD2 LoRA strength (1.0 on SDXL base; 0.5-0.75 on community finetunes)")
    p.add_argument("--output", type=Path,
                   help="image path (batches get -0, -1, ...); default: new numbered files outputs/dmd2_00001_.png, "
                        "... that never replace earlier ones")
    p.add_argument("--overwrite", action="store_true", help="replace existing files named by --output")
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
    from ..models.files import check_output_path
    from .memory import apply_memory_plan, run_with_oom_fallback
    from .pipeline import (DEFAULT_MODEL_ID, check_size, decode_to_images, execution_device, generate_latents,
                           image_suffixes, load_dmd2_sdxl, output_paths, pick_device_and_dtype, save_images,
                           sdxl_conditioning)
    from ..plans import timesteps_for

    if args.output is not None:  # its name and folder now; whether its files exist, once the model says how many
        check_output_path(args.output, image_suffixes(), overwrite=True)
    prompts = [p for p in args.prompt for _ in range(args.batch)]
    if len(prompts) > MAX_IMAGES:
        raise DMD2Error(f"{len(args.prompt)} prompts x --batch {args.batch} = {len(prompts)} images, more than the "
                        f"{MAX_IMAGES} one command makes: run it several times, moving --seed on by {MAX_IMAGES}")
    check_seed_range(args.seed, len(prompts))
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
    width, height = args.width or DEFAULT_SIDE, args.height or DEFAULT_SIDE
    check_size(width, height)
    paths = output_paths(args.output, len(prompts), args.overwrite)
    device, dtype = pick_device_and_dtype(args.device, args.dtype)
    plan = plan_memory_for(args, device, dtype)
    pipe, trained = load_dmd2_sdxl(args.model, models_dir, device, dtype,
                                   args.lora_strength, tqdm_progress(), memory=plan)
    timesteps = timesteps_for(args.steps or len(trained), trained)
    print(f"[DMD2] {len(prompts)} image(s), {width}x{height}, timesteps {list(timesteps)}, "
          f"{device} {str(dtype).removeprefix('torch.')}")

    def images(start: int, chunk: Sequence[str]) -> list:
        on = execution_device(pipe)
        cond = sdxl_conditioning(pipe, chunk, width, height)
        seeds = [args.seed + start + i for i in range(len(chunk))]
        latents = generate_latents(pipe.unet, cond, timesteps, seeds, width, height, device=on)
        return decode_to_images(pipe.vae, latents, on)

    for start in range(0, len(prompts), GENERATE_CHUNK):
        chunk = prompts[start:start + GENERATE_CHUNK]
        made, plan = run_with_oom_fallback(lambda: images(start, chunk), plan, args.offload,
                                           lambda leaner: apply_memory_plan(pipe, leaner, device))
        for path in save_images(made, paths[start:start + len(chunk)]):
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

    import torch

    from .pipeline import output_paths, save_images
    from ..plans import timesteps_for
    from ..shapes import EMBEDDED_MODEL, IMAGE_SIZE, generate_shapes, image_grid, load_shapes_model, tokenize

    if (args.width or IMAGE_SIZE) != IMAGE_SIZE or (args.height or IMAGE_SIZE) != IMAGE_SIZE:
        raise DMD2Error(f"the embedded shapes student draws {IMAGE_SIZE}x{IMAGE_SIZE} images only: leave out "
                        f"--width / --height, or use an SDXL model (--model dmd2-sdxl-4step-lora-fp16)")
    try:
        tokenize(args.prompt)
    except ValueError as e:
        raise DMD2Error(f"{e}. The embedded shapes student draws '<colour> <shape>' only; for any other prompt "
                        f"use an SDXL model: --model dmd2-sdxl-4step-lora-fp16") from None
    (path,) = output_paths(args.output, 1, args.overwrite)
    model = load_shapes_model(EMBEDDED_MODEL)
    prompts = [p for p in args.prompt for _ in range(args.batch)]
    start = time.perf_counter()
    images = torch.cat([generate_shapes(model, prompts[i:i + SHAPES_CHUNK], args.seed + i, args.steps)
                        for i in range(0, len(prompts), SHAPES_CHUNK)])
    timesteps = timesteps_for(args.steps or len(model.trained_timesteps), model.trained_timesteps)
    print(f"[DMD2] {len(prompts)} image(s), {IMAGE_SIZE}x{IMAGE_SIZE}, timesteps {list(timesteps)}, "
          f"{time.perf_counter() - start:.2f} s on the CPU")
    for written in save_images([image_grid(images, columns=min(len(prompts), 8))], [path]):
        print(written)
    return 0


def add_live_subcommand(subparsers) -> argparse.ArgumentParser:
    from .pipeline import DEFAULT_MODEL_ID

    p = subparsers.add_parser("live", help="type prompts, see frames: 1-step DMD2 with stage timings",
                              description="Each line read from standard input becomes a frame (saved to --output), "
                                          "with the time of text encoding, UNet and decoding. With --frames N it "
                                          "renders one prompt N times and prints the averages (a benchmark).")
    p.add_argument("--model", default=DEFAULT_MODEL_ID, help="catalog id or file (default: %(default)s)")
    p.add_argument("--steps", type=int_in(1, 1000), default=1, help="UNet passes per frame (default: 1)")
    p.add_argument("--size", type=int_in(SIDE_STEP, 16384, SIDE_STEP), default=512,
                   help=f"frame width and height, a multiple of {SIDE_STEP} (default: 512)")
    p.add_argument("--seed", type=int_in(0, MAX_SEED), default=0)
    p.add_argument("--full-vae", action="store_true", help="decode frames with the full VAE instead of TAESDXL")
    p.add_argument("--frames", type=int_in(1, 100_000), help="benchmark: render --prompt this many times")
    p.add_argument("--prompt", default="a photo of a cat", help="prompt of the benchmark")
    p.add_argument("--output", type=Path, default=Path("outputs/live.png"),
                   help="the latest frame, rewritten on every frame (default: %(default)s)")
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
    from ..models.files import check_output_path
    from .pipeline import image_suffixes, load_dmd2_sdxl, pick_device_and_dtype
    from ..plans import timesteps_for
    from ..models.taesd import load_tiny_decoder

    check_output_path(args.output, image_suffixes(), overwrite=True)  # the live frame is rewritten by design
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


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    """`--debug` on `parser` and on every subcommand under it, so it may be typed anywhere on the line."""
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="on an error, show the Python traceback too (for bug reports)")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
                add_debug_flag(sub)


def run_command(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse and run a subcommand behind one error boundary: no Python traceback for anything a user can cause.

    Bad flags: argparse's usage message, exit status 2. Errors while running: `error: <what went wrong and what to
    do>` on stderr (`user_message`; anything else is a bug and says so), exit status 1; Ctrl+C: exit status 130,
    downloads resume next time. With --debug the traceback follows the message.
    """
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("\ninterrupted (an interrupted download resumes when you run the command again)", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the boundary: every error becomes a message
        message = user_message(e) or (f"unexpected {type(e).__name__}: {first_line(e)} "
                                      f"(a bug: rerun with --debug for the traceback, and report it)")
        print(f"error: {message}", file=sys.stderr)
        if getattr(args, "debug", False):
            traceback.print_exc()
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser(), argv)
