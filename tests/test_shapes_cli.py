"""The command line's offline default: the embedded shapes student, when no SDXL weights are on disk."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from sampler.shapes import EMBEDDED_MODEL, generate_shapes, load_shapes_model

ROOT = Path(__file__).parent.parent


def run_cli(*args: str, models_dir: Path) -> subprocess.CompletedProcess:
    env = {"HF_HUB_OFFLINE": "1", "DMD2_MODELS_DIR": str(models_dir), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "sampler", "generate", *args], capture_output=True, text=True,
                          env=env, cwd=str(ROOT))


def test_embedded_student_is_shipped_small_and_stamped():
    assert EMBEDDED_MODEL.stat().st_size < 4 << 20, "the embedded student should stay a few MB"
    model = load_shapes_model(EMBEDDED_MODEL)
    assert model.trained_timesteps == (999, 749, 499, 249)
    assert "student of the shapes teacher" in model.note


def test_offline_main_job_draws_a_grid_with_the_embedded_student(tmp_path):
    from PIL import Image

    out = tmp_path / "grid.png"
    done = run_cli("red circle", "blue square", "--batch", "2", "--output", str(out), models_dir=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "no SDXL DMD2 weights in" in done.stdout and "embedded shapes student" in done.stdout
    assert "timesteps [999, 749, 499, 249]" in done.stdout
    assert Image.open(out).size == (4 * 32 * 4, 32 * 4)  # 4 images in a row, each upscaled 4x


def test_embedded_student_draws_what_the_prompt_asks():
    """The shipped student's images, read back by colour: the mean colour of the brightest pixels follows the
    prompt's colour word (a cheap check that does not need the proof's classifier)."""
    from sampler.shapes import COLOURS

    model = load_shapes_model(EMBEDDED_MODEL)
    prompts = [f"{c} circle" for c in COLOURS] * 4
    images = generate_shapes(model, prompts, seed=0)
    palette = torch.tensor(list(COLOURS.values()))
    hits = 0
    for image, prompt in zip(images, prompts):
        pixels = image.flatten(1).T
        bright = pixels[pixels.sum(1) >= pixels.sum(1).quantile(0.8)].mean(0)
        hits += list(COLOURS)[int((palette - bright).norm(dim=1).argmin())] == prompt.split()[0]
    assert hits >= 0.7 * len(prompts)


def test_embedded_student_refuses_prompts_it_cannot_draw(tmp_path):
    done = run_cli("a photo of a cat", "--model", "shapes", models_dir=tmp_path)
    assert done.returncode == 1
    assert "draws '<colour> <shape>' only" in done.stderr and "dmd2-sdxl-4step-lora-fp16" in done.stderr


def test_explicit_shapes_model_does_not_print_the_fallback_note(tmp_path):
    done = run_cli("green triangle", "--model", "shapes", "--output", str(tmp_path / "x.png"), models_dir=tmp_path)
    assert done.returncode == 0 and "no SDXL DMD2 weights" not in done.stdout
