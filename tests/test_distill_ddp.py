"""Data-parallel DMD2 training for real: the documented command under torchrun, two CPU processes (gloo), on a tiny
SDXL-shaped pipeline. Six straight steps and three + three resumed steps must end in the same checkpoint, bit for bit
(weights, optimiser moments and both processes' random states)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from distill.checkpoint import latest_checkpoint
from sampler.models.tiny import tiny_sdxl_pipeline

PROCESSES = 2


@pytest.fixture(scope="module")
def problem(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("ddp")
    tiny_sdxl_pipeline(folder / "tok").save_pretrained(folder / "teacher")
    (folder / "prompts.txt").write_text("abc\nxyz\nab\n")
    g = torch.Generator().manual_seed(0)
    save_file({"latents": torch.randn(8, 4, 8, 8, generator=g), "prompt_ids": torch.arange(8) % 3},
              str(folder / "real.safetensors"))
    return {"teacher": folder / "teacher", "prompts": folder / "prompts.txt", "real": folder / "real.safetensors"}


def identical(a, b) -> bool:
    """Nested dicts / lists of tensors and plain values, equal bit for bit."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(identical(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):  # a loaded optimiser state may hold AdamW's betas as a list
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(identical(x, y) for x, y in zip(a, b))
    return a == b


def torchrun_train(problem: dict[str, Path], output: Path, steps: int) -> str:
    """`torchrun --nproc_per_node 2 -m distill train ...` with ACCELERATE_USE_CPU=1, as docs/training.md says."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={PROCESSES}",
               "-m", "distill", "train", str(problem["teacher"]), "--prompts", str(problem["prompts"]),
               "--real-latents", str(problem["real"]), "--output", str(output), "--steps", str(steps),
               "--timesteps", "999,499", "--lora-rank", "4", "--mixed-precision", "no", "--warmup-steps", "4",
               "--lr-generator", "1e-3", "--lr-critic", "1e-3", "--ttur", "2", "--checkpoint-every", "0"]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_two_processes_train_and_resume_bit_exactly(problem, tmp_path):
    out = torchrun_train(problem, tmp_path / "straight", 6)
    assert f"{PROCESSES} process(es) x batch 2 = global batch 4" in out
    torchrun_train(problem, tmp_path / "resumed", 3)
    out = torchrun_train(problem, tmp_path / "resumed", 6)
    assert "resumed from" in out and "at step 3" in out

    a, b = (latest_checkpoint(tmp_path / run / "checkpoints") for run in ("straight", "resumed"))
    assert a.name == b.name == "step-00000006"
    for name in ("generator.safetensors", "critic.safetensors"):
        ta, tb = load_file(str(a / name)), load_file(str(b / name))
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), name
    for name in ["optimizers.pt"] + [f"rng-{rank}.pt" for rank in range(PROCESSES)]:
        oa, ob = (torch.load(f / name, weights_only=True) for f in (a, b))
        oa.pop("stamp"), ob.pop("stamp")  # the run ids differ: two runs
        assert identical(oa, ob), name
    ranks = [torch.load(a / f"rng-{rank}.pt", weights_only=True)["trainer"] for rank in range(PROCESSES)]
    assert not torch.equal(*ranks)  # each process draws its own noise
    assert (tmp_path / "resumed" / "student_lora.safetensors").is_file()
