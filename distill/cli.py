"""Command line: `python -m distill train|prepare|shapes-proof` (`torchrun --nproc_per_node N -m distill train ...` on
many GPUs, docs/training.md)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from sampler.app.cli import run_command
from sampler.errors import DMD2Error
from sampler.plans import TRAINED_TIMESTEPS

from .recipes import RECIPES, recipe_for


def parse_timesteps(text: str) -> tuple[int, ...]:
    """A plan name ("sdxl_4step") or explicit timesteps ("999,749,499,249")."""
    if text in TRAINED_TIMESTEPS:
        return TRAINED_TIMESTEPS[text]
    try:
        return tuple(int(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a plan ({', '.join(TRAINED_TIMESTEPS)}) nor a "
                                         f"comma-separated list of timesteps") from None


def add_training_options(p: argparse.ArgumentParser) -> None:
    """Options shared by every training command: a recipe, and any of its settings overridden one by one."""
    p.add_argument("--recipe", choices=sorted(RECIPES),
                   help="the official DMD2 settings to start from (default: sd15 for an SD1.5 teacher, sdxl-lora for "
                        "SDXL, or sdxl-full with --full-unet); every option below overrides one of its numbers")
    p.add_argument("--full-unet", action="store_true", help="SDXL: the full-UNet recipe (sdxl-full), not the LoRA")
    p.add_argument("--timesteps", type=parse_timesteps,
                   help="trained timesteps: a plan name or a list such as 999,749,499,249")
    p.add_argument("--guidance-scale", type=float, help="teacher CFG (DMD2: 8 SDXL, 1.75 SD1.5)")
    p.add_argument("--steps", type=int, default=1000, help="training steps (one critic update each)")
    p.add_argument("--batch-size", type=int, help="per process (GPU); the global batch is this x processes")
    p.add_argument("--ttur", type=int, help="critic updates per generator update (DMD2: 5 SDXL, 10 SD1.5)")
    p.add_argument("--lr-generator", type=float)
    p.add_argument("--lr-critic", type=float)
    p.add_argument("--warmup-steps", type=int,
                   help="linear learning-rate warmup, in per-process batches (DMD2: 500, i.e. 500 / processes steps)")
    p.add_argument("--gan-generator-weight", type=float)
    p.add_argument("--gan-discriminator-weight", type=float)
    p.add_argument("--no-gan", action="store_true", help="no GAN term (needed when there are no real images)")
    p.add_argument("--divergence", choices=["reverse_kl", "forward_kl", "js"],
                   help="f-distill weighting (reverse_kl is DMD2)")
    p.add_argument("--lora-rank", type=int, help="train a LoRA of this rank instead of the full UNet (DMD2: 64)")
    p.add_argument("--lora-alpha", type=float, help="LoRA alpha (DMD2: 8 at rank 64)")
    p.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], help="(recipes: bf16, as DMD2)")
    p.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction,
                   help="less memory, ~30%% slower (DMD2: on for SD1.5)")
    p.add_argument("--seed", type=int, default=0)


#: command-line option -> DistillConfig field, for the options that override a recipe's number
_OVERRIDES = {"timesteps": "trained_timesteps", "guidance_scale": "guidance_scale", "batch_size": "batch_size",
              "ttur": "ttur", "lr_generator": "lr_generator", "lr_critic": "lr_critic",
              "warmup_steps": "warmup_steps", "gan_generator_weight": "gan_generator_weight",
              "gan_discriminator_weight": "gan_discriminator_weight", "divergence": "divergence",
              "lora_rank": "lora_rank", "lora_alpha": "lora_alpha", "mixed_precision": "mixed_precision",
              "gradient_checkpointing": "gradient_checkpointing", "seed": "seed"}


def config_from_args(args: argparse.Namespace, recipe: str, **overrides):
    """The recipe's settings, then every option given on the command line, then `overrides`."""
    from .trainer import DistillConfig

    settings = dict(RECIPES[recipe])
    settings.update({field: getattr(args, option) for option, field in _OVERRIDES.items()
                     if getattr(args, option) is not None})
    if args.no_gan:
        settings.update(gan_generator_weight=0.0, gan_discriminator_weight=0.0)
    settings.update(overrides)
    return DistillConfig(**settings)


def add_teacher_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("teacher", type=Path,
                   help="the model to distil (SD1.5 or SDXL): one .safetensors checkpoint as A1111 / ComfyUI load it, "
                        "or a diffusers pipeline folder")
    p.add_argument("--tokenizer", type=Path,
                   help="single-file checkpoints: a folder with the CLIP tokenizer's vocab.json and merges.txt (e.g. "
                        "ComfyUI/comfy/sd1_tokenizer); default: the Hugging Face cache")
    p.add_argument("--config", type=Path,
                   help="single-file checkpoints: a diffusers config folder to lay the file out with (default: the "
                        "SD1.5 / SDXL configs shipped in distill/configs)")


def add_train_subcommand(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="distil an SD1.5 / SDXL model (a finetune) into a DMD2 generator",
        description="Distil the UNet of an SD1.5 / SDXL model into a DMD2 generator (full UNet, or a LoRA in DMD2's "
                    "format). Checkpoints go to OUTPUT/checkpoints/step-N and a rerun resumes from the newest "
                    "exactly; the student is exported to OUTPUT/student_lora.safetensors and "
                    "student_unet.safetensors, stamped with its trained timesteps. Several processes: "
                    "torchrun --nproc_per_node N -m distill train ... (docs/training.md)")
    add_teacher_arguments(p)
    p.add_argument("--prompts", type=Path, required=True, help="text file, one training prompt per line")
    p.add_argument("--real-latents", type=Path,
                   help="safetensors file with 'latents' (N, C, H, W) VAE latents of real images for the GAN term "
                        "(and optional 'prompt_ids' into --prompts), as `prepare` writes; without it use --no-gan")
    p.add_argument("--size", type=int, help="image size (default: the UNet's sample size x 8)")
    p.add_argument("--output", type=Path, default=Path("outputs/distill"))
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--sample-every", type=int, default=0,
                   help="save a grid of the student's samples to OUTPUT/samples every N steps (0: never)")
    p.add_argument("--sample-prompts", type=Path,
                   help="prompt file for the sample grid (default: the first 4 training prompts); fixed seeds")
    p.add_argument("--log-with", default="auto",
                   help="accelerate tracker for the losses (and sample grids): tensorboard, wandb, ..., none; "
                        "auto: tensorboard when it is installed. Logs go to OUTPUT/logs")
    add_training_options(p)
    p.set_defaults(func=run_train)


def tracker_name(choice: str) -> str | None:
    """The accelerate tracker to log with: `choice`, or for "auto" TensorBoard when installed."""
    if choice == "none":
        return None
    if choice != "auto":
        return choice
    from accelerate.utils import is_tensorboard_available

    return "tensorboard" if is_tensorboard_available() else None


def tracker_config(config) -> dict:
    """The run's settings as numbers and strings (what every tracker's hyper-parameter table accepts)."""
    import dataclasses

    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in dataclasses.asdict(config).items()}


def run_train(args: argparse.Namespace) -> int:
    import numpy as np
    from accelerate import Accelerator

    from .checkpoint import latest_checkpoint
    from .data import PipelineData, RealLatents, read_prompts
    from .export import export_lora, export_unet
    from .samples import sample_grid, save_sample_grid
    from .teacher import load_teacher
    from .trainer import DistillTrainer

    prompts = read_prompts(args.prompts)
    real = RealLatents(args.real_latents, len(prompts)) if args.real_latents is not None else None
    if (args.output / "checkpoint" / "state.pt").exists():
        raise DMD2Error(f"{args.output / 'checkpoint'} was written by an older version of this trainer and cannot be "
                        f"resumed exactly: delete it, or use another --output")
    pipe = load_teacher(args.teacher, args.tokenizer, args.config)
    size = args.size or pipe.unet.config.sample_size * 8
    recipe = args.recipe or recipe_for("sdxl" if hasattr(pipe, "text_encoder_2") else "sd15", not args.full_unet)
    config = config_from_args(args, recipe)
    tracker = tracker_name(args.log_with)
    accelerator = Accelerator(mixed_precision=config.mixed_precision, log_with=tracker,
                              project_dir=str(args.output / "logs"))
    data = PipelineData(pipe, prompts, size, real)
    trainer = DistillTrainer(pipe.unet, data, config, accelerator)
    if trainer.acc.is_main_process:
        print(f"[DMD2] recipe {recipe}; {trainer.acc.num_processes} process(es) x batch {config.batch_size} = "
              f"global batch {trainer.global_batch_size}; {trainer.acc.distributed_type.value} on "
              f"{trainer.acc.device.type}")
    pipe.text_encoder.to(trainer.acc.device)
    if getattr(pipe, "text_encoder_2", None) is not None:
        pipe.text_encoder_2.to(trainer.acc.device)
    checkpoints = args.output / "checkpoints"
    latest = latest_checkpoint(checkpoints)
    if latest is not None:
        trainer.load_checkpoint(latest)
        if trainer.acc.is_main_process:
            print(f"[DMD2] resumed from {latest} at step {trainer.step_count}")
    if tracker:
        accelerator.init_trackers("dmd2", config=tracker_config(config))
    sample_prompts = (read_prompts(args.sample_prompts) if args.sample_prompts else prompts)[:4]
    if args.sample_every and accelerator.is_main_process:
        pipe.vae.to(accelerator.device)
    for logs in trainer.train(args.steps, checkpoints, args.checkpoint_every):
        accelerator.log(logs, step=trainer.step_count)
        if args.sample_every and trainer.step_count % args.sample_every == 0:
            student = trainer.student()  # every process: under FSDP the weights are gathered
            if accelerator.is_main_process:
                grid = sample_grid(student, pipe.vae, data, sample_prompts, config.trained_timesteps)
                save_sample_grid(grid, args.output / "samples", trainer.step_count)
                if tracker == "tensorboard":
                    accelerator.get_tracker("tensorboard").log_images(
                        {"samples": np.asarray(grid)[None]}, step=trainer.step_count, dataformats="NHWC")
    trainer.save_checkpoint(checkpoints)
    accelerator.end_training()
    student = trainer.student()
    if trainer.acc.is_main_process:
        if config.lora_rank:
            print(export_lora(student, args.output / "student_lora.safetensors", config.trained_timesteps))
        print(export_unet(student, args.output / "student_unet.safetensors", config.trained_timesteps))
    return 0


def add_prepare_subcommand(subparsers) -> None:
    p = subparsers.add_parser(
        "prepare", help="images + caption .txt files -> the prompt file and the real-latents file for train",
        description="Encode a folder of images (each with a caption in a .txt of the same name) with the teacher's "
                    "VAE: writes OUTPUT/prompts.txt and OUTPUT/latents.safetensors for train --prompts "
                    "--real-latents. Streams: the dataset may be larger than memory.")
    add_teacher_arguments(p)
    p.add_argument("images", type=Path, help="folder of images (searched recursively) with caption .txt files")
    p.add_argument("--output", type=Path, default=Path("outputs/data"))
    p.add_argument("--size", type=int, help="image size (default: the UNet's sample size x 8: 1024 SDXL, 512 SD1.5)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", help="where the VAE runs (default: cuda when available)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run_prepare)


def run_prepare(args: argparse.Namespace) -> int:
    import torch

    from .prepare import prepare_dataset
    from .teacher import load_teacher

    pipe = load_teacher(args.teacher, args.tokenizer, args.config)
    size = args.size or pipe.unet.config.sample_size * 8
    vae = pipe.vae.to(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    prompts, latents = prepare_dataset(vae, args.images, args.output, size, args.batch_size, args.seed)
    print(f"[DMD2] wrote {prompts} and {latents}: train with --prompts {prompts} --real-latents {latents}")
    return 0


def add_shapes_proof_subcommand(subparsers) -> None:
    from .shapes.proof import SEEDS

    p = subparsers.add_parser(
        "shapes-proof", help="the small-scale CPU proof: teacher, DMD2 students, ablations, results table, figures",
        description="Train a small teacher on procedural 32x32 coloured shapes, distil it into DMD2 1-step and "
                    "4-step students and the paper's ablations over several seeds, print the README's tables "
                    "(Frechet distance in a shape classifier's feature space, prompt accuracy, spread of shape size "
                    "and position) and draw the figures. Stages are cached in --out.")
    p.add_argument("--out", type=Path, default=Path("outputs/shapes-proof"))
    p.add_argument("--steps", type=int, default=300, help="training steps of a 4-step student (default: %(default)s)")
    p.add_argument("--teacher-steps", type=int, default=2000)
    p.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS), help="training seeds of every student")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--device", default="cpu", help="where to train and sample: cpu (default) or cuda")
    p.add_argument("--only", nargs="+", metavar="RUN",
                   help="train only these students (names as in the table), e.g. to split the runs over processes")
    p.add_argument("--figures", type=Path, help="folder for the PNG figures (default: --out), e.g. docs/images")
    p.add_argument("--ship", action="store_true",
                   help="copy the 4-step student of the best seed to sampler/shapes/embedded/, the command line's "
                        "offline default model")
    p.set_defaults(func=run_shapes_proof)


def run_shapes_proof(args: argparse.Namespace) -> int:
    import shutil

    import torch

    from sampler.shapes import EMBEDDED_MODEL

    from .shapes.proof import (SHIPPED_RUN, RUNS, aggregate, appearance_table, best_seed, draw_figures, run_proof,
                               student_file, table)

    torch.set_num_threads(args.threads)
    unknown = set(args.only or ()) - {run.name for run in RUNS}
    if unknown:
        raise DMD2Error(f"--only: no student named {', '.join(sorted(unknown))}; the students are "
                        f"{', '.join(repr(run.name) for run in RUNS)}")
    results = run_proof(args.out, args.steps, args.teacher_steps, args.seeds, only=args.only, device=args.device)
    rows = aggregate(results, args.seeds)
    text = table(rows) + "\n\n" + appearance_table(rows)
    (args.out / "results.md").write_text(text + "\n")
    print(text)
    for path in draw_figures(results, args.out, args.figures or args.out, args.seeds):
        print(f"[DMD2] drew {path}")
    if args.ship:
        seed = best_seed(results, SHIPPED_RUN, args.seeds)
        run = next(run for run in RUNS if run.name == SHIPPED_RUN)
        EMBEDDED_MODEL.parent.mkdir(exist_ok=True)
        shutil.copyfile(student_file(args.out, run, seed), EMBEDDED_MODEL)
        print(f"[DMD2] shipped {SHIPPED_RUN} (seed {seed}) as {EMBEDDED_MODEL}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m distill", description="DMD2 distillation.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_train_subcommand(subparsers)
    add_prepare_subcommand(subparsers)
    add_shapes_proof_subcommand(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser(), argv)
