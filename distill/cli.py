"""Command line: `python -m distill train|shapes-proof` (or `accelerate launch -m distill train ...` on many GPUs)."""

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


def add_train_subcommand(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="distil a diffusers SD1.5 / SDXL model (a finetune) into a DMD2 generator",
        description="Distil the UNet of a diffusers pipeline folder into a DMD2 generator (full UNet, or a LoRA in "
                    "DMD2's format). Checkpoints go to OUTPUT/checkpoint and a rerun resumes from there exactly; the "
                    "student is exported to OUTPUT/student_lora.safetensors or student_unet.safetensors, stamped "
                    "with its trained timesteps. Many GPUs: accelerate launch -m distill train ...")
    p.add_argument("teacher", type=Path, help="diffusers pipeline folder of the model to distil (SD1.5 or SDXL)")
    p.add_argument("--prompts", type=Path, required=True, help="text file, one training prompt per line")
    p.add_argument("--real-latents", type=Path,
                   help="safetensors file with 'latents' (N, C, H, W) VAE latents of real images for the GAN term "
                        "(and optional 'prompt_ids' into --prompts); without it use --no-gan")
    p.add_argument("--size", type=int, help="image size (default: the UNet's sample size x 8)")
    p.add_argument("--output", type=Path, default=Path("outputs/distill"))
    p.add_argument("--checkpoint-every", type=int, default=100)
    add_training_options(p)
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from diffusers import DiffusionPipeline
    from safetensors.torch import load_file

    from .data import PipelineData, read_prompts
    from .export import export_lora, export_unet
    from .trainer import DistillTrainer

    prompts = read_prompts(args.prompts)
    try:
        pipe = DiffusionPipeline.from_pretrained(str(args.teacher))
    except (OSError, ValueError) as e:
        raise DMD2Error(f"cannot load a diffusers pipeline from {args.teacher}: {str(e).splitlines()[0]} (convert a "
                        f"single-file checkpoint with diffusers' conversion scripts first)") from None
    real = real_prompts = None
    if args.real_latents is not None:
        tensors = load_file(str(args.real_latents))
        real = tensors["latents"].float()
        if "prompt_ids" in tensors:
            real_prompts = [prompts[i] for i in tensors["prompt_ids"].tolist()]
    size = args.size or pipe.unet.config.sample_size * 8
    recipe = args.recipe or recipe_for("sdxl" if hasattr(pipe, "text_encoder_2") else "sd15", not args.full_unet)
    config = config_from_args(args, recipe)
    trainer = DistillTrainer(pipe.unet, PipelineData(pipe, prompts, size, real, real_prompts), config)
    if trainer.acc.is_main_process:
        print(f"[DMD2] recipe {recipe}; {trainer.acc.num_processes} process(es) x batch {config.batch_size} = "
              f"global batch {trainer.global_batch_size}; {trainer.acc.distributed_type.value} on "
              f"{trainer.acc.device.type}")
    pipe.text_encoder.to(trainer.acc.device)
    if getattr(pipe, "text_encoder_2", None) is not None:
        pipe.text_encoder_2.to(trainer.acc.device)
    checkpoint = args.output / "checkpoint"
    if (checkpoint / "state.pt").exists():
        trainer.load_checkpoint(checkpoint)
        print(f"[DMD2] resumed from {checkpoint} at step {trainer.step_count}")
    for _ in trainer.train(args.steps, checkpoint, args.checkpoint_every):
        pass
    trainer.save_checkpoint(checkpoint)
    if trainer.acc.is_main_process:
        student = trainer.student()
        if config.lora_rank:
            print(export_lora(student, args.output / "student_lora.safetensors", config.trained_timesteps))
        print(export_unet(student, args.output / "student_unet.safetensors", config.trained_timesteps))
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
    add_shapes_proof_subcommand(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser(), argv)
