"""Forge fixtures: a real stable-diffusion-webui-forge checkout named by FORGE_PATH (its Python by FORGE_PYTHON),
else every test here is skipped, saying why.

    FORGE_PATH=/work/hosts/forge/webui FORGE_PYTHON=/work/hosts/forge/venv/bin/python \
        /work/main/.venv/bin/python -m pytest tests/forge -q
"""

import json
import os
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def forge_paths() -> tuple[Path, Path]:
    path = os.environ.get("FORGE_PATH")
    if not path:
        pytest.skip("FORGE_PATH is not set: these tests need a real stable-diffusion-webui-forge checkout")
    root = Path(path).expanduser().resolve()
    if not (root / "launch.py").is_file() or not (root / "modules_forge").is_dir() or not (root / "backend").is_dir():
        pytest.skip(f"FORGE_PATH={root} is not a Forge checkout (no launch.py / modules_forge / backend)")
    python = Path(os.environ.get("FORGE_PYTHON") or root / "venv" / "bin" / "python")
    if not python.is_file():
        pytest.skip(f"Forge's Python {python} not found: set FORGE_PYTHON to the interpreter of its venv")
    return root, python


@pytest.fixture(scope="session")
def forge():
    return forge_paths()


def host_env(root: Path) -> dict:
    """Offline, CPU-only, no pip at run time; this machine's tokenizer cache if it sits next to the checkout."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False",
               DO_NOT_TRACK="1", PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES="", PIP_NO_INDEX="1")
    for cache in (root.parent / "hf_cache", root.parent.parent / "a1111" / "hf_cache"):
        if cache.is_dir() and "HF_HOME" not in os.environ:
            env["HF_HOME"] = str(cache)
            break
    return env
