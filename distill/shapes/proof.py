"""The small-scale proof: DMD2 students of the shapes teacher against the teacher itself, and ablations.

    python -m distill shapes-proof [--out outputs/shapes-proof] [--steps 600] [--threads 1] [--ship]

Stages are cached in the output folder (teacher, classifier, regression pairs, each student, each row of the
table), so an interrupted run picks up where it stopped and a rerun only prints the table. Every row is scored
the same way: 200 images (each of the 20 prompts 10 times, fixed seeds), Frechet distance to 2000 real images in
the classifier's feature space, and the fraction of images whose colour and shape the classifier reads as the
prompt's.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from sampler.shapes import PROMPTS, ShapesModel, generate_shapes, image_grid, load_shapes_model, save_shapes_model

from ..trainer import DistillConfig, DistillTrainer
from .classifier import load_classifier
from .data import render, sample_batch
from .metrics import evaluate, reference_features
from .prepare import EVAL_PROMPTS, EVAL_SEED, prepare
from .sampling import seeded_noise, teacher_sample

#: Teacher CFG scale of the baselines and of the real score (chosen on the teacher's 50-step FD / accuracy).
GUIDANCE = 2.0
REGRESSION_PAIRS = 256
REGRESSION_SEED = 2_000_000
#: The shipped student: the command line's offline default (sampler/shapes/embedded/).
SHIPPED_RUN = "DMD2 4-step"


class ShapesData:
    """The shapes world as a distillation problem: uniformly random prompts, the teacher's frozen prompt encoder,
    freshly rendered real images for the GAN, and teacher (noise, 50-step sample) pairs for the regression loss."""

    latent_shape = (3, 32, 32)

    def __init__(self, teacher: ShapesModel, pairs: tuple[torch.Tensor, torch.Tensor, list[str]] | None = None):
        self.teacher = teacher
        self.pairs = pairs

    def sample_prompts(self, n: int, generator: torch.Generator) -> list[str]:
        return [PROMPTS[i] for i in torch.randint(len(PROMPTS), (n,), generator=generator).tolist()]

    @torch.no_grad()
    def cond(self, prompts: Sequence[str]) -> dict[str, Any]:
        return self.teacher.cond(prompts)

    def real_batch(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, list[str]]:
        return sample_batch(n, generator)

    def regression_batch(self, n: int, generator: torch.Generator):
        if self.pairs is None:
            return None
        idx = torch.randint(len(self.pairs[0]), (n,), generator=generator)
        return self.pairs[0][idx], self.pairs[1][idx], [self.pairs[2][i] for i in idx.tolist()]


@dataclass(frozen=True)
class Run:
    """One student of the table: its settings (over `BASE`) and how many steps it trains relative to --steps."""

    name: str
    settings: dict = field(default_factory=dict)
    steps_factor: float = 1.0


#: Shared recipe: DMD2's ImageNet-64 GAN weights (the closest released setting to a small pixel-space model), and
#: a learning rate high enough to converge in minutes on a CPU at batch 8.
BASE = dict(guidance_scale=GUIDANCE, batch_size=8, ttur=5, lr_generator=1e-4, lr_critic=1e-4, warmup_steps=0,
            gan_generator_weight=3e-3, gan_discriminator_weight=1e-2, max_grad_norm=1.0, weight_decay=0.0)
#: The 1-step students start from pure noise at t=399, as DMD2's SDXL 1-step model: an epsilon UNet's x0 at t=999
#: is sqrt(1 + sigma^2) * noise - sigma * eps with sigma = 14.6, so every error of eps is multiplied by 14.6; at 399
#: (sigma 1.16) it is not. Measured here: from 999 the 1-step student stayed noise for 300 steps, from 399 it learnt.
ONE_STEP = dict(trained_timesteps=(399,))
RUNS = (
    Run("DMD2 1-step", ONE_STEP),
    Run(SHIPPED_RUN, dict(trained_timesteps=(999, 749, 499, 249))),
    Run("1-step, no GAN", {**ONE_STEP, "gan_generator_weight": 0.0, "gan_discriminator_weight": 0.0}),
    # TTUR off at the same number of generator updates (so a fifth of the critic updates)
    Run("1-step, no TTUR", {**ONE_STEP, "ttur": 1}, steps_factor=0.2),
    Run("1-step, + regression loss", {**ONE_STEP, "regression_weight": 0.25}),
    Run("1-step, JS f-divergence", {**ONE_STEP, "divergence": "js"}),
)


def regression_pairs(teacher: ShapesModel, path: Path, count: int = REGRESSION_PAIRS
                     ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(noise, teacher 50-step CFG sample from it, prompt) triples, made once and cached as safetensors."""
    from safetensors.torch import load_file, save_file

    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(count)]
    if not path.exists():
        noise = seeded_noise(REGRESSION_SEED, count)
        target = teacher_sample(teacher.unet, teacher.encoder, prompts, 50, GUIDANCE, REGRESSION_SEED,
                                progress=True)
        save_file({"noise": noise, "target": target}, str(path))
    tensors = load_file(str(path))
    return tensors["noise"], tensors["target"], prompts


def train_student(run: Run, teacher_path: Path, pairs, steps: int, out: Path, progress: bool = True) -> Path:
    """Distil one student (cached: an existing file is reused) and save it as a shapes model with its timesteps."""
    from accelerate import Accelerator

    path = out / f"{slug(run.name)}.safetensors"
    if path.exists():
        return path
    teacher = load_shapes_model(teacher_path)
    config = DistillConfig(**{**BASE, **run.settings})
    steps = max(1, round(steps * run.steps_factor))
    trainer = DistillTrainer(teacher.unet, ShapesData(teacher, pairs), config, Accelerator(cpu=True))
    start = time.perf_counter()
    history = list(trainer.train(steps, progress=progress))
    minutes = (time.perf_counter() - start) / 60
    note = (f"{run.name} student of the shapes teacher: {steps} steps ({steps // config.ttur} generator updates), "
            f"{minutes:.1f} min on {torch.get_num_threads()} CPU threads; settings {json.dumps(run.settings)} over "
            f"{json.dumps(BASE)}")
    (out / f"{slug(run.name)}.losses.json").write_text(json.dumps(history))
    return save_shapes_model(path, trainer.student(), teacher.encoder, config.trained_timesteps, note)


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")


def score(name: str, images: torch.Tensor, seconds: float, classifier, reference, out: Path) -> dict:
    """One table row for images in [-1, 1]; a grid of its first 40 images is saved beside the table."""
    image_grid((images[:40] + 1) / 2, 20).save(out / f"{slug(name)}.png")
    return {"name": name, **evaluate(classifier, images, EVAL_PROMPTS, reference), "seconds": seconds}


def _record(results_path: Path, row: dict) -> dict:
    """Add one row to results.json, re-reading it first: two proof processes may share the folder."""
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    results[row["name"]] = row
    results_path.write_text(json.dumps(results, indent=1))
    return results


def run_proof(out: Path, steps: int, teacher_steps: int = 2000, progress: bool = True,
              only: Sequence[str] | None = None) -> list[dict]:
    """Every row of the table, cached in out/results.json (delete a row's entry to recompute it). `only`: train
    just these students (names from RUNS), e.g. to split the runs over two processes."""
    out.mkdir(parents=True, exist_ok=True)
    paths = prepare(out, teacher_steps, progress=progress)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    classifier = load_classifier(paths["classifier"])
    reference = reference_features(classifier)
    teacher = load_shapes_model(paths["teacher"])
    pairs = regression_pairs(teacher, out / "regression_pairs.safetensors")

    def timed(fn):
        start = time.perf_counter()
        images = fn()
        return images, time.perf_counter() - start

    rows = {
        "real data": lambda: render(EVAL_PROMPTS, torch.Generator().manual_seed(EVAL_SEED)),
        f"teacher 50-step, CFG {GUIDANCE:g}": lambda: teacher_sample(teacher.unet, teacher.encoder, EVAL_PROMPTS, 50,
                                                                  GUIDANCE, EVAL_SEED),
        f"teacher 4-step (naive), CFG {GUIDANCE:g}": lambda: teacher_sample(teacher.unet, teacher.encoder,
                                                                         EVAL_PROMPTS, 4, GUIDANCE, EVAL_SEED),
    }
    for name, sample in rows.items():
        if name not in results:
            results = _record(results_path, score(name, *timed(sample), classifier, reference, out))
    for run in RUNS:
        if run.name in results or (only and run.name not in only):
            continue
        student = load_shapes_model(train_student(run, paths["teacher"], pairs, steps, out, progress))
        images, seconds = timed(lambda: generate_shapes(student, EVAL_PROMPTS, EVAL_SEED) * 2 - 1)
        results = _record(results_path, {**score(run.name, images, seconds, classifier, reference, out),
                                         "note": student.note})
    order = [name for name in results if name not in {r.name for r in RUNS}] + [r.name for r in RUNS]
    return [results[name] for name in order if name in results]


def table(rows: Sequence[dict]) -> str:
    """The README's results table (markdown)."""
    lines = ["| images from | UNet passes | FD (lower is better) | prompt accuracy | sampling time, 200 images |",
             "|---|---|---|---|---|"]
    passes = {"real data": "-"}
    for row in rows:
        name = row["name"]
        count = passes.get(name) or ("100" if "50-step" in name else "8" if "4-step (naive)" in name
                                     else "4" if "4-step" in name else "1")
        lines.append(f"| {name} | {count} | {row['fd']:.2f} | {row['accuracy']:.1%} | {row['seconds']:.1f} s |")
    return "\n".join(lines)
