"""Make (once) what a shapes-world DMD2 proof needs: the teacher, the classifier, and the teacher baselines.

    python -m distill.shapes.prepare OUT_DIR [--teacher-steps 2000] [--classifier-steps 500] [--baselines]

Each stage is skipped when its output file exists, so an interrupted run resumes and a proof reuses the artifacts.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Sequence

import torch

from sampler.shapes import PROMPTS, image_grid, load_shapes_model, save_shapes_model

from .classifier import load_classifier, save_classifier, train_classifier
from .data import render
from .metrics import evaluate, reference_features
from .sampling import teacher_sample
from .teacher import train_teacher

TEACHER_FILE = "teacher.safetensors"
CLASSIFIER_FILE = "classifier.safetensors"
TEACHER_BATCH = 32
#: Evaluation prompts: every prompt equally often, so accuracy is not skewed towards a lucky draw of prompts. 500
#: images: at 200, the Frechet distance's small-sample bias (real images scored 98.5 against the reference) was as
#: large as the differences between rows.
EVAL_PROMPTS = list(PROMPTS) * 25
#: Seeds of evaluation images, apart from training seeds (which start at the training seed) and the reference set.
EVAL_SEED = 500_000


def prepare(out_dir: Path | str, teacher_steps: int = 2000, classifier_steps: int = 500, seed: int = 0,
            progress: bool = True) -> dict[str, Path]:
    """Train and save the teacher and the classifier into `out_dir` unless their files are already there.

    Returns {"teacher": path, "classifier": path}. The teacher is saved in float32 (it is the reference the
    student is distilled from; 3 MB), its note saying how it was trained and how long it took.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"teacher": out / TEACHER_FILE, "classifier": out / CLASSIFIER_FILE}
    if not paths["teacher"].exists():
        start, cpu = time.perf_counter(), time.process_time()
        unet, encoder = train_teacher(teacher_steps, TEACHER_BATCH, seed, progress=progress)
        minutes, cpu_minutes = (time.perf_counter() - start) / 60, (time.process_time() - cpu) / 60
        note = (f"shapes teacher: {teacher_steps} steps at batch {TEACHER_BATCH}, seed {seed}, EMA weights, "
                f"{cpu_minutes:.1f} CPU min ({minutes:.1f} min wall-clock, {torch.get_num_threads()} threads)")
        save_shapes_model(paths["teacher"], unet, encoder, note=note, dtype=torch.float32)
    if not paths["classifier"].exists():
        save_classifier(train_classifier(classifier_steps, seed, progress=progress), paths["classifier"])
    return paths


def baselines(paths: dict[str, Path], guidance_scales: Sequence[float] = (2.0,), seed: int = EVAL_SEED,
              progress: bool = True) -> list[dict]:
    """FD and prompt accuracy of real images and of the teacher (50-step CFG, naive 4-step) on EVAL_PROMPTS.

    Grids of the first 40 images of each row go next to the models as PNGs. Returns one dict per row
    (name, fd, accuracy, seconds).
    """
    teacher = load_shapes_model(paths["teacher"])
    classifier = load_classifier(paths["classifier"])
    reference = reference_features(classifier)
    runs = {"real data": lambda: render(EVAL_PROMPTS, torch.Generator().manual_seed(seed))}
    for g in guidance_scales:
        for steps in (50, 4):
            runs[f"teacher {steps}-step DDIM, CFG {g:g}"] = (
                lambda steps=steps, g=g: teacher_sample(teacher.unet, teacher.encoder, EVAL_PROMPTS, steps, g, seed,
                                                        progress=progress))
    rows = []
    for name, run in runs.items():
        start = time.perf_counter()
        images = run()
        seconds = time.perf_counter() - start
        rows.append({"name": name, **evaluate(classifier, images, EVAL_PROMPTS, reference), "seconds": seconds})
        slug = name.replace(" ", "_").replace(",", "").replace(".", "p")
        image_grid((images[:40] + 1) / 2, 20).save(paths["teacher"].parent / f"{slug}.png")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m distill.shapes.prepare", description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--teacher-steps", type=int, default=2000)
    parser.add_argument("--classifier-steps", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (1 is faster on a busy machine)")
    parser.add_argument("--baselines", action="store_true", help="also evaluate real data and the teacher")
    parser.add_argument("--guidance", type=float, nargs="+", default=[2.0], help="CFG scales of the baselines")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    paths = prepare(args.out_dir, args.teacher_steps, args.classifier_steps, args.seed)
    if args.baselines:
        rows = baselines(paths, args.guidance)
        (args.out_dir / "baselines.json").write_text(json.dumps(rows, indent=1))
        for row in rows:
            print(f"{row['name']:<32} FD {row['fd']:8.2f}  accuracy {row['accuracy']:.3f}  {row['seconds']:6.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
