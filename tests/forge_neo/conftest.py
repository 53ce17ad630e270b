"""Forge Neo fixtures: Neo's sampler files in FORGE_NEO_FILES (a folder with modules/sd_samplers.py,
sd_schedulers.py, sd_samplers_kdiffusion.py, sd_samplers_cfg_denoiser.py from the neo branch) and the Forge checkout
Neo's backend descends from (FORGE_PATH, FORGE_PYTHON: `python -m tests.hosts build forge-neo` records both), else
every test here is skipped, saying why.

Neo's branch cannot be fetched as a tree here, so Neo is never started: its real modules run in a Forge venv
(tests/forge_neo/neo_probe.py says what is real and what is stubbed).
"""

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.webui.harness import FORGE, ROOT, host_paths

NEO_MODULES = ("sd_samplers.py", "sd_schedulers.py", "sd_samplers_kdiffusion.py", "sd_samplers_cfg_denoiser.py")


@pytest.fixture(scope="session")
def neo_facts():
    files = os.environ.get("FORGE_NEO_FILES")
    if not files:
        pytest.skip("FORGE_NEO_FILES is not set: these tests need Forge Neo's sampler modules (see conftest.py)")
    folder = Path(files)
    missing = [m for m in NEO_MODULES if not (folder / "modules" / m).is_file()]
    if missing:
        pytest.skip(f"FORGE_NEO_FILES={folder} lacks modules/{', modules/'.join(missing)}")
    root, python = host_paths(FORGE)
    proc = subprocess.run([str(python), str(Path(__file__).with_name("neo_probe.py")), str(folder), str(ROOT)],
                          cwd=root, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise AssertionError(f"neo_probe.py failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.splitlines()[-1])
