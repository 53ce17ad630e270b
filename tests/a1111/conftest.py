"""A1111 end-to-end fixtures: a real A1111 checkout named by A1111_PATH (its Python by A1111_PYTHON), else skipped.

    A1111_PATH=/work/hosts/a1111/webui A1111_PYTHON=/work/hosts/a1111/venv/bin/python \
        /work/main/.venv/bin/python -m pytest tests/a1111 -q
"""

import json
import os
import subprocess
from pathlib import Path

import pytest


def a1111_paths() -> tuple[Path, Path]:
    path = os.environ.get("A1111_PATH")
    if not path:
        pytest.skip("A1111_PATH is not set: these tests need a real A1111 (stable-diffusion-webui) checkout")
    root = Path(path).expanduser().resolve()
    if not (root / "launch.py").is_file() or not (root / "modules" / "sd_samplers.py").is_file():
        pytest.skip(f"A1111_PATH={root} is not an A1111 checkout (no launch.py / modules/sd_samplers.py)")
    python = Path(os.environ.get("A1111_PYTHON") or root / "venv" / "bin" / "python")
    if not python.is_file():
        pytest.skip(f"A1111's Python {python} not found: set A1111_PYTHON to the interpreter of its venv")
    return root, python


@pytest.fixture(scope="session")
def a1111():
    return a1111_paths()


def run_host_probe(root: Path, python: Path, lora_keys: list[str]) -> dict:
    """Facts from real A1111 code (tests/a1111/host_probe.py run by A1111's Python)."""
    proc = subprocess.run([str(python), str(Path(__file__).with_name("host_probe.py"))], cwd=root, text=True,
                          input=json.dumps(lora_keys), capture_output=True, timeout=600)
    if proc.returncode != 0:
        raise AssertionError(f"host_probe.py failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout)
