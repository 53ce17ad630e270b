"""Build a ComfyUI test host: the tree at its pinned commit, its own venv on CPU torch, and the workarounds it needs.

    <dest>/ComfyUI    the git tree at the spec's commit (never modified)
    <dest>/venv       ComfyUI's requirements.txt (+ requests, missing from older lists) under the torch constraint
    <dest>/host.json  COMFYUI_PATH / COMFYUI_PYTHON for tests/comfyui and tests/browser

Workarounds, all inside the venv, never in the tree:
- PyPI's torchvision is built against PyPI's CUDA torch; next to the CPU torch its C++ operator library does not
  load, and its import fails ("operator torchvision::nms does not exist"). The venv's sitecustomize.py is
  `torchvision_cpu.py` (shared with webui.py): it declares those operators' schemas just before torchvision is
  imported, so the import succeeds; ComfyUI uses torchvision's Python parts (transforms).
- PyPI's torchaudio (2.11.1, the newest) fails to load its C++ libraries next to the CPU torch 2.13. ComfyUI
  imports it at start (audio nodes; v0.33.0 also from comfy/ itself). torchaudio runs as pure Python when its
  lib/*.so files are absent, so the build renames them (*.so.unloadable): its functional and transforms modules
  work, only the C++-backed parts (forced alignment, CTC decoders) are unavailable.
The build ends with ComfyUI's own `main.py --quick-test-for-ci --cpu` start-up check.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from . import common
from .specs import HostSpec

HERE = Path(__file__).resolve().parent


def _imports(py: Path, module: str) -> tuple[bool, str]:
    """Whether `import module` works in the venv of `py`, and the last line of its error."""
    proc = subprocess.run([str(py), "-c", f"import {module}"], text=True, capture_output=True)
    return proc.returncode == 0, (proc.stderr.strip().splitlines() or [""])[-1]


def install_workarounds(py: Path) -> list[str]:
    """Make torchvision and torchaudio importable in the venv of `py`; returns one line per workaround in place."""
    site, done = common.site_packages(py), []
    (site / "sitecustomize.py").write_text((HERE / "torchvision_cpu.py").read_text())  # a no-op where it loads
    ok, error = _imports(py, "torchvision")
    if not ok:
        raise SystemExit(f"[hosts] torchvision does not import, even with its operator schemas declared: {error}")
    done.append("torchvision: imports (sitecustomize.py from tests/hosts/torchvision_cpu.py)")
    lib = site / "torchaudio" / "lib"
    ok, error = _imports(py, "torchaudio")
    if not ok and list(lib.glob("*.so")):
        for path in lib.glob("*.so"):  # torchaudio loads lib/<name>*.so when present and runs without them
            path.rename(path.with_name(path.name + ".unloadable"))
        log_why = f" (it failed with: {error})"
        ok, error = _imports(py, "torchaudio")
    else:
        log_why = " (earlier build)"
    if not ok:
        raise SystemExit(f"[hosts] torchaudio does not import: {error}")
    if list(lib.glob("*.so.unloadable")):
        done.append(f"torchaudio: C++ libraries set aside (*.so.unloadable), it imports as pure Python{log_why}")
    return done


def build(spec: HostSpec, dest: Path, mirrors: Path | None) -> None:
    """Build `spec` into `dest` (idempotent) and write `dest/host.json`."""
    tree = dest / "ComfyUI"
    commit = common.checkout(spec.sources[0], tree, mirrors)
    py = common.make_venv(dest / "venv")
    constraints = common.constraints_file(dest / "venv")
    common.log(f"{spec.name}: installing {tree / 'requirements.txt'} (+ requests)")
    common.pip_install(py, ["-r", str(tree / "requirements.txt"), "requests"], constraints)
    for line in install_workarounds(py):
        common.log(f"{spec.name}: {line}")
    common.log(f"{spec.name}: start-up check (main.py --quick-test-for-ci --cpu)")
    common.run([str(py), "main.py", "--quick-test-for-ci", "--cpu", "--disable-api-nodes",
                "--database-url", "sqlite:///:memory:"], cwd=tree)
    record = common.write_record(spec, dest, {"": commit}, {"COMFYUI_PATH": str(tree), "COMFYUI_PYTHON": str(py)})
    common.log(f"{spec.name}: built at {commit[:10]}: {record}")
