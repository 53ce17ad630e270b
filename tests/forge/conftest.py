"""Forge fixtures: a real stable-diffusion-webui-forge checkout named by FORGE_PATH (its Python by FORGE_PYTHON),
else every test here is skipped, saying why.

    FORGE_PATH=/work/hosts/forge/webui FORGE_PYTHON=/work/hosts/forge/venv/bin/python \
        /work/main/.venv/bin/python -m pytest tests/forge -q
"""

import os
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

