"""Browser tests: the ComfyUI server fixtures of tests/comfyui (same throw-away base directory, random models, free
port) plus a headless Chromium. Opt-in: skipped unless COMFYUI_PATH is set and a Chromium binary is found."""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
_spec = importlib.util.spec_from_file_location("dmd2_comfyui_conftest", HERE.parent / "comfyui" / "conftest.py")
_comfyui = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_comfyui)
comfyui_path, models, server = _comfyui.comfyui_path, _comfyui.models, _comfyui.server

from cdp import Browser, find_chromium  # noqa: E402


@pytest.fixture(scope="session")
def artefacts() -> Path:
    """$DMD2_TEST_ARTEFACTS, else a fresh temporary folder; screenshots land here (the path is printed)."""
    path = Path(os.environ.get("DMD2_TEST_ARTEFACTS") or tempfile.mkdtemp(prefix="dmd2-browser-"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def browser(comfyui_path, tmp_path_factory):
    binary = find_chromium()
    if binary is None:
        pytest.skip("browser tests need Chromium: install it (Debian: apt-get install chromium) or set CHROMIUM")
    b = Browser(binary, tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield b
    finally:
        b.close()
