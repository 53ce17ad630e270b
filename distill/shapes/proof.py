"""The small-scale proof: DMD2 students of the shapes teacher against the teacher itself, and the paper's ablations.

    python -m distill shapes-proof [--out outputs/shapes-proof] [--steps N] [--seeds 0 1 2] [--ship]

Stages are cached in the output folder (teacher, classifier, regression pairs, each student of each seed, each row
of the table), so an interrupted run picks up where it stopped and a rerun only prints the table and draws the
figures. Every row is scored the same way (`Evaluator`): 500 images (each of the 20 prompts 25 times, fixed seeds),
Frechet distance to 2000 real images in the classifier's feature space, the fraction of images whose colour and
shape the classifier reads as the prompt's, and the spread of shape size and position against real data's.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

from sampler.shapes import PROMPTS, ShapesModel, generate_shapes, image_grid, load_shapes_model, save_shapes_model

from ..pretrain import regression_pretrain
from ..trainer import DistillConfig, DistillTrainer
from .classifier import ShapesClassifier, load_classifier
from .data import render, sample_batch
from .metrics import evaluate, reference_features
from .plots import labelled_rows, line_chart
from .prepare import EVAL_PROMPTS, EVAL_SEED, prepare
from .sampling import seeded_noise, teacher_sample
from .statistics import shape_measurements, summarise

#: CFG scale of the teacher rows and the regression pairs: the 50-step teacher's best FD (232; CFG 1.5: 379, 3: 512).
TEACHER_GUIDANCE = 2.0
REGRESSION_PAIRS = 512
REGRESSION_SEED = 2_000_000
#: The shipped student: the command line's offline default (sampler/shapes/embedded/).
SHIPPED_RUN = "DMD2 4-step"
SEEDS = (0, 1, 2)
#: Points per training curve (every score measured this many times over a run, and at its start).
CURVE_POINTS = 5


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


class Evaluator:
    """Scores a set of images the same way for every row: FD and prompt accuracy (`metrics.evaluate`) and the
    shape measurements against real data (`statistics.summarise`), on EVAL_PROMPTS."""

    def __init__(self, classifier: ShapesClassifier):
        self.classifier = classifier
        self.reference = reference_features(classifier)
        self.real = shape_measurements(render(EVAL_PROMPTS, torch.Generator().manual_seed(EVAL_SEED)))

    def __call__(self, images: torch.Tensor) -> dict[str, float]:
        """Scores of images in [-1, 1], one per EVAL_PROMPTS entry."""
        images = images.cpu()
        return {**evaluate(self.classifier, images, EVAL_PROMPTS, self.reference),
                **summarise(shape_measurements(images), self.real, EVAL_PROMPTS)}


@dataclass(frozen=True)
class Run:
    """One student of the table: its settings (over `RECIPE`), how many steps it trains relative to --steps, whether
    its scores are followed over training (the figures), and how many steps of regression pretraining
    (`distill.pretrain`) its generator gets before distribution matching starts."""

    name: str
    settings: dict = field(default_factory=dict)
    steps_factor: float = 1.0
    curve: bool = False
    pretrain_steps: int = 0


#: The recipe, chosen on seed-0 pilots of the 4-step student (FD on the 500 evaluation images; the 50-step CFG-2
#: teacher scores 232). Generator learning rate 1e-5: at 1e-4 (either CFG) FD jumped from 648 to 3106 within 6
#: generator updates and swung between ~500 and ~6000 after (mean brightness and background swinging with it).
#: Real-score CFG 1: from its minimum after 16-24 generator updates, FD climbed with further training as the shapes'
#: colours over-saturated (the contrast measure passing real data's), fast at CFG 2 (184 -> 1157 by update 80), slower
#: at 1.5 (174 -> 510) and least at 1 (135-164 over updates 24-64, 227 at 80). A 10x stronger GAN (3e-2 / 1e-1) did
#: not stop that climb. The critic keeps 1e-4 (it must follow the generator) and DMD2's ImageNet GAN weights.
RECIPE = dict(guidance_scale=1.0, batch_size=8, ttur=5, lr_generator=1e-5, lr_critic=1e-4, warmup_steps=0,
              gan_generator_weight=3e-3, gan_discriminator_weight=1e-2, max_grad_norm=1.0, weight_decay=0.0)
FOUR_STEP = dict(trained_timesteps=(999, 749, 499, 249))
#: The 1-step students start from pure noise at t=399, as DMD2's SDXL 1-step model: an epsilon UNet's x0 at t=999
#: is sqrt(1 + sigma^2) * noise - sigma * eps with sigma = 14.6, so every error of eps is multiplied by 14.6; at 399
#: (sigma 1.16) it is not. Measured here: from 999 the 1-step student stayed at FD ~7000 and 18% accuracy for 400
#: steps of the recipe; from 399 it learns.
ONE_STEP = dict(trained_timesteps=(399,))
NO_GAN = dict(gan_generator_weight=0.0, gan_discriminator_weight=0.0)
RUNS = (
    Run(SHIPPED_RUN, FOUR_STEP, curve=True),
    # DMD2's 1-step SDXL recipe: regression pretraining first (the teacher fed pure noise at t=399 draws nothing: FD
    # 8137, 13% accuracy; after 600 steps of regression onto the teacher's pairs: FD 2281, 51%), and 4x the 4-step
    # student's steps (seed-0 pilot: FD 1596 after 400 steps, still falling)
    Run("DMD2 1-step", ONE_STEP, steps_factor=4.0, pretrain_steps=600),
    # DMD2's key ablation (sec. 4.4): the multi-step student learns from noised real images, not its own rollouts
    Run("4-step, no backward simulation", {**FOUR_STEP, "backward_simulation": False}),
    Run("4-step, no GAN", {**FOUR_STEP, **NO_GAN}, curve=True),
    # TTUR off at the same number of generator updates (so a fifth of the critic updates)
    Run("4-step, no TTUR", {**FOUR_STEP, "ttur": 1}, steps_factor=0.2, curve=True),
    # DMD (v1): + regression onto the teacher's 50-step samples (from the same noise)
    Run("4-step, + regression loss (DMD)", {**FOUR_STEP, "regression_weight": 0.25}),
    Run("4-step, forward KL (f-distill)", {**FOUR_STEP, "divergence": "forward_kl"}),
    Run("4-step, JS (f-distill)", {**FOUR_STEP, "divergence": "js"}),
)


def regression_pairs(teacher: ShapesModel, path: Path, count: int = REGRESSION_PAIRS
                     ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(noise, teacher 50-step CFG sample from it, prompt) triples, made once and cached as safetensors."""
    from safetensors.torch import load_file, save_file

    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(count)]
    if not path.exists():
        noise = seeded_noise(REGRESSION_SEED, count)
        target = teacher_sample(teacher.unet, teacher.encoder, prompts, 50, TEACHER_GUIDANCE, REGRESSION_SEED,
                                progress=True)
        save_file({"noise": noise, "target": target.cpu()}, str(path))
    tensors = load_file(str(path))
    return tensors["noise"], tensors["target"], prompts


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_").replace("__", "_")


def student_file(out: Path, run: Run, seed: int) -> Path:
    return out / f"{slug(run.name)}-seed{seed}.safetensors"


def train_student(run: Run, seed: int, teacher: ShapesModel, pairs, steps: int, out: Path,
                  evaluator: Evaluator | None = None, progress: bool = True, device: str = "cpu") -> Path:
    """Distil one student (cached: an existing file is reused) and save it as a shapes model with its timesteps.

    With an `evaluator`, the student's evaluation images are scored CURVE_POINTS times
    over the run (and before it) and written to <student>.curve.json: the training curves of the figures.
    `device`: where to train ("cpu", or "cuda" for accelerate's GPU); the teacher must be there already.
    """
    from accelerate import Accelerator

    path = student_file(out, run, seed)
    if path.exists():
        return path
    config = DistillConfig(**{**RECIPE, **run.settings, "seed": seed})
    steps = max(1, round(steps * run.steps_factor))
    wall, cpu, evaluating = time.perf_counter(), time.process_time(), [0.0, 0.0]
    data = ShapesData(teacher, pairs)
    trainer = DistillTrainer(teacher.unet, data, config, Accelerator(cpu=device == "cpu"))
    if run.pretrain_steps:
        pretrained = regression_pretrain(teacher.unet, data, config.trained_timesteps[0], run.pretrain_steps,
                                         seed=seed, progress=progress)
        trainer.student().load_state_dict(pretrained.state_dict())
    every = max(1, steps // CURVE_POINTS)
    curve = []

    def measure() -> None:
        student = ShapesModel(trainer.student(), teacher.encoder, config.trained_timesteps, "")
        scores = evaluator(generate_shapes(student, EVAL_PROMPTS, EVAL_SEED) * 2 - 1)
        curve.append({"step": trainer.step_count, "generator_updates": -(-trainer.step_count // config.ttur),
                      **scores})

    history = []
    if evaluator is not None:
        measure()
    for logs in trainer.train(steps, progress=progress):
        history.append(logs)
        if evaluator is not None and (trainer.step_count % every == 0 or trainer.step_count == steps):
            tick = time.perf_counter(), time.process_time()
            measure()
            evaluating = [evaluating[0] + time.perf_counter() - tick[0], evaluating[1] + time.process_time() - tick[1]]
    minutes = {"wall": (time.perf_counter() - wall - evaluating[0]) / 60,
               "cpu": (time.process_time() - cpu - evaluating[1]) / 60}
    start = f" after {run.pretrain_steps} steps of regression pretraining" if run.pretrain_steps else ""
    note = (f"{run.name} student of the shapes teacher, seed {seed}: {steps} steps ({-(-steps // config.ttur)} "
            f"generator updates){start}, {minutes['cpu']:.1f} CPU min ({minutes['wall']:.1f} min wall-clock, "
            f"{torch.get_num_threads()} threads); settings {json.dumps(run.settings)} over {json.dumps(RECIPE)}")
    stem = path.name[:-len(".safetensors")]
    (out / f"{stem}.losses.json").write_text(json.dumps(history))
    if curve:
        (out / f"{stem}.curve.json").write_text(json.dumps(curve))
    (out / f"{stem}.minutes.json").write_text(json.dumps(minutes))
    return save_shapes_model(path, trainer.student(), teacher.encoder, config.trained_timesteps, note)


def _record(results_path: Path, key: str, row: dict) -> dict:
    """Add one row to results.json, re-reading it first: two proof processes may share the folder."""
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    results[key] = row
    results_path.write_text(json.dumps(results, indent=1))
    return results


def row_key(run_name: str, seed: int) -> str:
    return f"{run_name}, seed {seed}"


def _timed(sample: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, float]:
    """The images and the CPU seconds the sampling took (all threads; wall-clock says little on a shared machine)."""
    start = time.process_time()
    images = sample()
    return images, time.process_time() - start


def run_proof(out: Path, steps: int, teacher_steps: int = 2000, seeds: Sequence[int] = SEEDS,
              progress: bool = True, only: Sequence[str] | None = None, device: str = "cpu") -> dict[str, dict]:
    """Every row of the table, cached in out/results.json (delete a row's entry to recompute it); returns them.

    `only`: train just these students (names from RUNS), e.g. to split the runs over processes sharing `out`.
    Grids of each row's images (one per prompt) go beside the results as <row>.png.
    """
    out.mkdir(parents=True, exist_ok=True)
    paths = prepare(out, teacher_steps, progress=progress)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    evaluator = Evaluator(load_classifier(paths["classifier"]))
    teacher = load_shapes_model(paths["teacher"], device)
    pairs = regression_pairs(teacher, out / "regression_pairs.safetensors")

    def ddim(steps: int) -> Callable[[], torch.Tensor]:
        return lambda: teacher_sample(teacher.unet, teacher.encoder, EVAL_PROMPTS, steps, TEACHER_GUIDANCE, EVAL_SEED)

    baselines = {
        "real data": lambda: render(EVAL_PROMPTS, torch.Generator().manual_seed(EVAL_SEED)),
        f"teacher 50-step, CFG {TEACHER_GUIDANCE:g}": ddim(50),
        f"teacher 4-step (naive), CFG {TEACHER_GUIDANCE:g}": ddim(4),
    }
    for name, sample in baselines.items():
        if name not in results:
            images, seconds = _timed(sample)
            _grid(images).save(out / f"{slug(name)}.png")
            results = _record(results_path, name, {**evaluator(images), "sampling_cpu_seconds": seconds})
    for run in RUNS:
        if only and run.name not in only:
            continue
        for seed in seeds:
            key = row_key(run.name, seed)
            if key in results:
                continue
            path = train_student(run, seed, teacher, pairs, steps, out, evaluator if run.curve else None, progress,
                                 device)
            student = load_shapes_model(path, device)
            images, seconds = _timed(lambda student=student: generate_shapes(student, EVAL_PROMPTS, EVAL_SEED) * 2 - 1)
            _grid(images).save(path.with_suffix(".png"))
            minutes = json.loads(path.with_suffix(".minutes.json").read_text())
            results = _record(results_path, key, {**evaluator(images), "sampling_cpu_seconds": seconds,
                                                  "training_cpu_minutes": minutes["cpu"],
                                                  "training_minutes": minutes["wall"], "note": student.note})
    return results


def _grid(images: torch.Tensor):
    """One image of each prompt (the first len(PROMPTS) of EVAL_PROMPTS), in one row."""
    return image_grid((images[:len(PROMPTS)] + 1) / 2, len(PROMPTS))


def _mean_sd(values: Sequence[float], fmt: str) -> str:
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.mean(values), fmt)} ± {format(statistics.stdev(values), fmt)}"


def aggregate(results: dict[str, dict], seeds: Iterable[int] = SEEDS) -> list[tuple[str, list[dict]]]:
    """(row name, [result per seed]) in table order: the baselines, then each student over the seeds it has."""
    seeds = list(seeds)
    students = {run.name for run in RUNS}
    rows = [(name, [row]) for name, row in results.items() if ", seed " not in name and name not in students]
    for run in RUNS:
        found = [results[row_key(run.name, s)] for s in seeds if row_key(run.name, s) in results]
        if found:
            rows.append((run.name, found))
    return rows


def unet_passes(name: str) -> str:
    if name == "real data":
        return "-"
    if "50-step" in name:
        return "100"
    if "4-step (naive)" in name:
        return "8"
    return "4" if "4-step" in name else "1"


def table(rows: Sequence[tuple[str, list[dict]]]) -> str:
    """The README's results table (markdown): students as mean ± standard deviation over their seeds."""
    lines = ["| images from | UNet passes | FD (lower is better) | prompt accuracy | size spread | position spread |",
             "|---|---|---|---|---|---|"]
    for name, seeds in rows:
        lines.append(f"| {name} | {unet_passes(name)} | {_mean_sd([r['fd'] for r in seeds], '.0f')} | "
                     f"{_mean_sd([100 * r['accuracy'] for r in seeds], '.1f')}% | "
                     f"{_mean_sd([r['size_spread'] for r in seeds], '.2f')} | "
                     f"{_mean_sd([r['position_spread'] for r in seeds], '.2f')} |")
    return "\n".join(lines)


def appearance_table(rows: Sequence[tuple[str, list[dict]]]) -> str:
    """What the images look like (means over images, then over seeds): where a row's FD comes from."""
    lines = ["| images from | shape size (px) | background | edge width (px) | mean brightness |",
             "|---|---|---|---|---|"]
    for name, seeds in rows:
        cells = [statistics.mean(r[k] for r in seeds) for k in ("size", "background", "edge_width", "brightness")]
        lines.append(f"| {name} | {cells[0]:.1f} | {cells[1]:.3f} | {cells[2]:.2f} | {cells[3]:.3f} |")
    return "\n".join(lines)


def _curves(out: Path, run: Run, seeds: Iterable[int]) -> list[list[dict]]:
    files = [student_file(out, run, s).with_suffix(".curve.json") for s in seeds]
    return [json.loads(f.read_text()) for f in files if f.exists()]


def draw_figures(results: dict[str, dict], out: Path, figures: Path, seeds: Sequence[int] = SEEDS) -> list[Path]:
    """The proof's PNGs in `figures`: FD and mean brightness over training of the runs with curves (mean of the seeds,
    their range as a band), and one labelled row of images (one per prompt) for every row of the table (seed 0
    of the students, or the first seed they have)."""
    figures.mkdir(parents=True, exist_ok=True)
    series = {run.name: _curves(out, run, seeds) for run in RUNS if run.curve}
    series = {name: curves for name, curves in series.items() if curves}
    written = []
    teacher = next((row for name, row in results.items() if name.startswith("teacher 50-step")), None)
    real = results.get("real data")
    fd_title = "Frechet distance over training (4-step students; mean of the seeds, their range shaded)"
    charts = (("fd", fd_title, "FD (log scale)", True, ("teacher 50-step", teacher["fd"]) if teacher else None),
              ("brightness", "Mean pixel brightness over training (4-step students)", "mean brightness", False,
               ("real data", real["brightness"]) if real else None))
    for key, title, label, log_y, reference in charts:
        if not series:
            break
        data = {name: ([p["generator_updates"] for p in curves[0]], [[p[key] for p in c] for c in curves])
                for name, curves in series.items()}
        path = figures / f"shapes-proof-{key}.png"
        line_chart(data, title, "generator updates", label, log_y, reference).save(path)
        written.append(path)
    from PIL import Image

    grids = [(name, out / f"{slug(name)}.png") for name in results if ", seed " not in name]
    for run in RUNS:
        files = [student_file(out, run, s).with_suffix(".png") for s in seeds]
        grids += [(run.name, f) for f in files[:1] if f.exists()]
    if grids:
        path = figures / "shapes-proof-grids.png"
        labelled_rows([(name, Image.open(f)) for name, f in grids if f.exists()], label_width=260).save(path)
        written.append(path)
    return written


def best_seed(results: dict[str, dict], run_name: str, seeds: Iterable[int] = SEEDS) -> int:
    """The seed of `run_name` with the lowest FD (the student worth shipping)."""
    found = [s for s in seeds if row_key(run_name, s) in results]
    if not found:
        raise ValueError(f"no trained {run_name!r} student in the results")
    return min(found, key=lambda s: results[row_key(run_name, s)]["fd"])
