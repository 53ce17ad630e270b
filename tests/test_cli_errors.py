"""The command lines' one error boundary and what they check before any expensive work: a user's mistake is one
line that names the flag or file and what to do (never a traceback), a bug says so and --debug shows it, and no
model is loaded or downloaded, no image overwritten, before the inputs are known to be good."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from sampler import TRAINED_TIMESTEPS
from sampler.app import cli, pipeline
from sampler.models.tiny import tiny_sdxl_pipeline

ROOT = Path(__file__).resolve().parent.parent
SDXL = ["--model", "dmd2-sdxl-4step-lora-fp16", "--width", "64", "--height", "64"]


@pytest.fixture
def no_loading(monkeypatch):
    """Loading SDXL fails the test: the checks under test must stop the command before it."""
    def load(*args, **kwargs):
        raise AssertionError("a model was loaded before the inputs were checked")
    monkeypatch.setattr(pipeline, "load_dmd2_sdxl", load)


@pytest.fixture
def tiny_sdxl(monkeypatch, tmp_path):
    """The SDXL path on the tiny SDXL-shaped pipeline (loading is the only stand-in); records each UNet batch."""
    pipe = tiny_sdxl_pipeline(tmp_path / "tiny")
    batches = []
    pipe.unet.register_forward_pre_hook(lambda module, args: batches.append(args[0].shape[0]))
    monkeypatch.setattr(pipeline, "load_dmd2_sdxl", lambda *a, **k: (pipe, TRAINED_TIMESTEPS["sdxl_1step"]))
    return batches


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """`python -m sampler ARGV` in this process: (exit status, stdout, stderr). argparse's own refusals exit 2."""
    try:
        status = cli.main(list(argv))
    except SystemExit as e:
        status = e.code
    out = capsys.readouterr()
    return status, out.out, out.err


@pytest.mark.parametrize("args, words", [
    (["--steps", "0"], "argument --steps: must be between 1 and 1000, got 0"),
    (["--steps", "x"], "argument --steps: 'x' is not a whole number"),
    (["--seed", str(2**64)], "argument --seed: must be between 0 and 18446744073709551615"),
    (["--seed", "-1"], "argument --seed"),
    (["--batch", "0"], "argument --batch"),
    (["--batch", "5000"], "argument --batch: must be between 1 and 1000"),
    (["--width", "100"], "argument --width: must be between 64 and 16384 and a multiple of 64"),
    (["--height", "0"], "argument --height"),
    (["--lora-strength", "nan"], "argument --lora-strength: must be a finite number"),
    (["--lora-strength", "inf"], "argument --lora-strength"),
])
def test_flags_are_refused_by_name(capsys, no_loading, args, words):
    status, _, err = run(capsys, "generate", "a cat", *SDXL, *args)
    assert status == 2 and words in err and "Traceback" not in err


@pytest.mark.parametrize("args, words", [
    (["a cat", "--seed", str(2**64 - 1), "--batch", "2"], "--seed 18446744073709551615 is too large for 2 image(s)"),
    (["a cat", "a dog", "--batch", "600"], "1200 images, more than the 1000 one command makes"),
    (["a cat", "--device", "potato"], "--device 'potato' is not a device PyTorch knows"),
])
def test_combinations_are_refused_before_loading(capsys, no_loading, args, words):
    status, _, err = run(capsys, "generate", *args, *SDXL)
    assert status == 1 and err.startswith("error: ") and words in err and "Traceback" not in err


def test_bad_outputs_fail_before_loading(capsys, no_loading, tmp_path):
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "taken.png").write_bytes(b"my picture")
    cases = {str(tmp_path / "cat.gif2"): "must end in .png", str(tmp_path / "a_file" / "cat.png"): "a_file is a file",
             str(tmp_path): "is a folder", str(tmp_path / "taken.png"): "exists and is not overwritten"}
    for model in (SDXL, ["--model", "shapes"]):
        for output, words in cases.items():
            status, _, err = run(capsys, "generate", "red circle", *model, "--output", output)
            assert status == 1 and words in err and "Traceback" not in err, (model, output, err)
    assert (tmp_path / "taken.png").read_bytes() == b"my picture"
    # A batch checks every file it would write: taken-1.png exists.
    (tmp_path / "taken-1.png").write_bytes(b"mine too")
    status, _, err = run(capsys, "generate", "red circle", *SDXL, "--batch", "3", "--output",
                         str(tmp_path / "taken.png"))
    assert status == 1 and "taken-1.png exists" in err and "--overwrite" in err


def test_existing_images_are_replaced_only_with_overwrite(capsys, tmp_path):
    out = tmp_path / "grid.png"
    out.write_bytes(b"mine")
    assert run(capsys, "generate", "red circle", "--model", "shapes", "--output", str(out))[0] == 1
    assert out.read_bytes() == b"mine"
    assert run(capsys, "generate", "red circle", "--model", "shapes", "--output", str(out), "--overwrite")[0] == 0
    assert Image.open(out).size == (128, 128)


def test_without_output_new_files_are_numbered_like_comfyui(capsys, tmp_path, monkeypatch, tiny_sdxl):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "dmd2_00007_.png").write_bytes(b"an earlier run")
    status, out, err = run(capsys, "generate", "a cat", "a dog", *SDXL)
    assert status == 0, err
    assert out.splitlines()[-2:] == ["outputs/dmd2_00008_.png", "outputs/dmd2_00009_.png"]
    assert run(capsys, "generate", "red circle", "--model", "shapes")[1].splitlines()[-1] == "outputs/dmd2_00010_.png"
    assert (tmp_path / "outputs" / "dmd2_00007_.png").read_bytes() == b"an earlier run"


def test_large_batches_run_in_chunks_and_equal_single_runs(capsys, tmp_path, tiny_sdxl):
    """--batch 6: UNet batches of at most GENERATE_CHUNK images, and image i is the single run with seed + i."""
    status, out, err = run(capsys, "generate", "a cat", *SDXL, "--batch", "6", "--seed", "10", "--output",
                           str(tmp_path / "cat.png"))
    assert status == 0, err
    assert max(tiny_sdxl) <= cli.GENERATE_CHUNK and sum(tiny_sdxl) == 6
    assert run(capsys, "generate", "a cat", *SDXL, "--seed", "15", "--output", str(tmp_path / "single.png"))[0] == 0
    batch5, single = Image.open(tmp_path / "cat-5.png"), Image.open(tmp_path / "single.png")
    difference = max(abs(a - b) for a, b in zip(batch5.tobytes(), single.tobytes()))
    assert difference <= 1  # uint8 rounding of float32 batch-vs-single kernels at most


def test_the_shapes_student_draws_32_pixels_only_and_prompts_it_knows(capsys, tmp_path):
    status, _, err = run(capsys, "generate", "red circle", "--model", "shapes", "--width", "512")
    assert status == 1 and "draws 32x32 images only" in err
    status, _, err = run(capsys, "generate", "red circle", "--model", "shapes", "--seed", str(2**64 - 1),
                         "--batch", "2")
    assert status == 1 and "too large for 2 image(s)" in err and "prompt" not in err.split("image(s)")[0]
    status, _, err = run(capsys, "generate", "a cat", "--model", "shapes", "--output", str(tmp_path / "x.png"))
    assert status == 1 and "'<colour> <shape>' only" in err and not (tmp_path / "x.png").exists()


def test_a_catalog_id_of_the_wrong_kind_is_refused_before_downloading(capsys, tmp_path, monkeypatch):
    import sampler.models.checkpoints as checkpoints

    def fetch(*args, **kwargs):
        raise AssertionError("downloaded")
    monkeypatch.setattr(checkpoints, "fetch_entry", fetch)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for model, words in (("taesdxl", "catalog id taesdxl is a TAESD preview decoder, but a UNet or a LoRA is needed"),
                         ("sdxl-base-1.0", "is a full checkpoint"), ("sdxl-vae-fp16-fix", "is a VAE")):
        status, _, err = run(capsys, "generate", "a cat", "--model", model, "--models-dir", str(tmp_path),
                             "--output", str(tmp_path / "x.png"))
        assert status == 1 and words in err and "nothing was downloaded" in err, err


def test_a_damaged_or_unreadable_model_file_is_one_line(capsys, tmp_path):
    (tmp_path / "cut.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    os.symlink("loop.safetensors", tmp_path / "loop.safetensors")
    for model, words in (("cut.safetensors", "not a valid safetensors file"), ("loop.safetensors", "loops"),
                         ("missing.safetensors", "no such file")):
        status, _, err = run(capsys, "generate", "a cat", "--model", str(tmp_path / model), "--models-dir",
                             str(tmp_path), "--output", str(tmp_path / "x.png"))
        assert status == 1 and words in err and "Traceback" not in err, err


def test_a_bug_says_so_and_debug_shows_the_traceback(capsys, monkeypatch, tmp_path):
    def load(*args, **kwargs):
        return {}["unet"]
    monkeypatch.setattr(pipeline, "load_dmd2_sdxl", load)
    argv = ["generate", "a cat", *SDXL, "--output", str(tmp_path / "x.png")]
    status, _, err = run(capsys, *argv)
    assert status == 1 and "unexpected KeyError: 'unet' (a bug: rerun with --debug" in err and "Traceback" not in err
    for where in (["--debug", *argv], [*argv, "--debug"]):  # --debug anywhere on the line
        status, _, err = run(capsys, *where)
        assert status == 1 and "unexpected KeyError" in err and "Traceback (most recent call last)" in err


def test_interrupt_and_missing_packages(capsys, monkeypatch, tmp_path):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(pipeline, "load_dmd2_sdxl", interrupted)
    status, _, err = run(capsys, "generate", "a cat", *SDXL, "--output", str(tmp_path / "x.png"))
    assert status == 130 and "interrupted" in err and "Traceback" not in err

    def missing(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'diffusers'", name="diffusers")
    monkeypatch.setattr(pipeline, "load_dmd2_sdxl", missing)
    status, _, err = run(capsys, "generate", "a cat", *SDXL, "--output", str(tmp_path / "x.png"))
    assert status == 1 and "package 'diffusers' is not installed: pip install -r requirements-cli.txt" in err


def subprocess_run(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {"HF_HUB_OFFLINE": "1", "DMD2_MODELS_DIR": str(cwd / "models"), "PATH": "/usr/bin:/bin",
           "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, env=env, cwd=str(cwd),
                          timeout=600)


def test_whole_processes_print_no_traceback(tmp_path):
    """The entry points as users start them (`python -m sampler`, `python -m distill`), one bad input of each kind."""
    (tmp_path / "folder.safetensors").mkdir()
    os.symlink("loop", tmp_path / "loop")
    (tmp_path / "prompts.txt").write_text("a cat\n")
    cases = [
        (["sampler", "generate", "red circle", "--output", "x.gif2"], "must end in .png"),
        (["sampler", "merge", "--base", "folder.safetensors", "--unet", "folder.safetensors", "--output",
          "m.safetensors"], "is a folder"),
        (["sampler", "convert-lora", "loop", "out.safetensors"], "loops"),
        (["sampler", "models", "verify", "dmd2-sdxl-8step"], "unknown model id"),
        (["distill", "train", "no_such_teacher", "--prompts", "prompts.txt", "--no-gan", "--steps", "1"],
         "no_such_teacher"),
    ]
    for argv, words in cases:
        done = subprocess_run(*argv, cwd=tmp_path)
        assert done.returncode == 1 and words in done.stderr and "Traceback" not in done.stderr, (argv, done.stderr)
