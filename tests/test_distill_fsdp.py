"""FSDP2 (torch's fully_shard through accelerate's own preparation) over two CPU processes: sharded training,
checkpoints gathered on the main process and broadcast back on resume, 2 + 1 resumed steps == 3 straight steps bit
for bit. accelerate enables FSDP only on GPUs, so the worker forces its distributed type (see the worker)."""

import os
import subprocess
import sys
from pathlib import Path


def test_fsdp2_trains_checkpoints_and_resumes_bit_exactly(tmp_path):
    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(root / "tests" / "distill_fsdp_worker.py"), str(tmp_path / "checkpoints")]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(root), str(root / "tests")])}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "FSDP2 resume bit-exact" in result.stdout
