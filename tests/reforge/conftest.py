"""reForge fixtures: a real stable-diffusion-webui-reForge checkout named by REFORGE_PATH (its Python by
REFORGE_PYTHON), else every test here is skipped, saying why. `python -m tests.hosts build reforge` builds one.

    REFORGE_PATH=/work/hosts/reforge/webui REFORGE_PYTHON=/work/hosts/reforge/venv/bin/python \
        /work/main/.venv/bin/python -m pytest tests/reforge -q
"""

from tests.webui.harness import REFORGE, host_fixtures

reforge, webui_paths, webui_host, server = host_fixtures(REFORGE, "reforge")
