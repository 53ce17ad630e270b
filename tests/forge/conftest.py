"""Forge fixtures: a real stable-diffusion-webui-forge checkout named by FORGE_PATH (its Python by FORGE_PYTHON),
else every test here is skipped, saying why.

    FORGE_PATH=/work/hosts/forge/webui FORGE_PYTHON=/work/hosts/forge/venv/bin/python \
        /work/main/.venv/bin/python -m pytest tests/forge -q

`forge` is (checkout, Python); `server` is Forge running for one test module (tests/webui/harness.py).
"""

from tests.webui.harness import FORGE, host_fixtures

forge, webui_paths, webui_host, server = host_fixtures(FORGE, "forge")
