"""Forge Classic fixtures: a real sd-webui-forge-classic checkout (classic branch) named by FORGE_CLASSIC_PATH (its
Python by FORGE_CLASSIC_PYTHON), else every test here is skipped, saying why. `python -m tests.hosts build
forge-classic` builds one.

    FORGE_CLASSIC_PATH=/work/hosts/forge-classic/webui FORGE_CLASSIC_PYTHON=/work/hosts/forge-classic/venv/bin/python \
        /work/main/.venv/bin/python -m pytest tests/forge_classic -q
"""

from tests.webui.harness import FORGE_CLASSIC, host_fixtures

forge_classic, webui_paths, webui_host, server = host_fixtures(FORGE_CLASSIC, "forge_classic")
