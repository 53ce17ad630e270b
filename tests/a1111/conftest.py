"""A1111 end-to-end fixtures: a real A1111 checkout named by A1111_PATH (its Python by A1111_PYTHON), else skipped.

    A1111_PATH=/work/hosts/a1111/webui A1111_PYTHON=/work/hosts/a1111/venv/bin/python \
        /work/main/.venv/bin/python -m pytest tests/a1111 -q

`a1111` is (checkout, Python); `server` is A1111 running for one test module (tests/webui/harness.py).
"""

import json
import subprocess
from pathlib import Path

from tests.webui.harness import A1111, host_fixtures

a1111, webui_paths, webui_host, server = host_fixtures(A1111, "a1111")


def run_host_probe(root: Path, python: Path, lora_keys: list[str]) -> dict:
    """Facts from real A1111 code (tests/a1111/host_probe.py run by A1111's Python)."""
    proc = subprocess.run([str(python), str(Path(__file__).with_name("host_probe.py"))], cwd=root, text=True,
                          input=json.dumps(lora_keys), capture_output=True, timeout=600)
    if proc.returncode != 0:
        raise AssertionError(f"host_probe.py failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout)
