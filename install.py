"""Install what this pack needs into the Python that runs the host; safe to run any number of times.

Who runs it: ComfyUI-Manager or a user (`python install.py` with the host's own Python), or A1111 / Forge, which run
it with their `launch` module importable; then pip goes through launch.run_pip so A1111's logging and index settings
apply.

Rules, because the host owns the environment:
- only requirements that are missing are installed; a second run installs nothing;
- no package the host already has is ever changed: every pip call gets a constraint pinning each installed
  distribution at its installed version, so neither a requirement nor a dependency of one can upgrade a host's pin
  (reForge pins huggingface_hub 0.25.0, and its transformers breaks on 1.x). A requirement installed at a version
  older than ours is left as it is and named in one line with what it is for (the comment in requirements.txt);
- torch is never installed, upgraded or replaced: requirements.txt does not list it and the constraint pins it (a
  missing torch is an error: its build depends on the user's GPU, which is theirs to choose);
- xformers only where torch is a CUDA build, only as a binary wheel made for that exact torch; when none exists it
  is skipped (PyTorch's own attention is about as fast). Under A1111 its --xformers flag decides instead.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

try:
    from packaging.requirements import Requirement
except ImportError:  # a bare Python: pip vendors packaging
    from pip._vendor.packaging.requirements import Requirement

HERE = Path(__file__).resolve().parent
#: Packages whose build must match the host's GPU stack: never installed or changed from here.
HOST_OWNED = {"torch", "torchvision", "torchaudio", "xformers"}


def read_requirements(path: Path) -> list[tuple[Requirement, str]]:
    """(requirement, what it is for: the line's comment) from a requirements.txt, without pip options and
    host-owned packages."""
    reqs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line, _, comment = line.partition("#")
        line = line.strip()
        if not line or line.startswith("-"):
            continue
        req = Requirement(line)
        if req.name.lower() not in HOST_OWNED and (req.marker is None or req.marker.evaluate()):
            reqs.append((req, comment.strip()))
    return reqs


def installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def absent(reqs: list[tuple[Requirement, str]]) -> list[Requirement]:
    """The requirements that are not installed at all: the only ones pip is asked for."""
    return [req for req, _ in reqs if installed_version(req.name) is None]


def too_old(reqs: list[tuple[Requirement, str]]) -> list[str]:
    """One line per requirement installed at a version outside ours: left as the host has it, said plainly."""
    out = []
    for req, purpose in reqs:
        version = installed_version(req.name)
        if version is not None and not req.specifier.contains(version, prereleases=True):
            out.append(f"{req.name} {version} is installed and this pack wants {req.specifier} "
                       f"({purpose or 'see requirements.txt'}): left as it is, never upgraded from here")
    return out


def installed_constraints() -> list[str]:
    """`name==version` for every installed distribution: given to pip as constraints, so it can only add."""
    pins = {}
    for dist in importlib.metadata.distributions():
        name, version = dist.metadata["Name"], dist.version
        if name and version:
            pins[name.lower()] = f"{name}=={version}"
    return sorted(pins.values())


def a1111_launch():
    """A1111's `launch` module when A1111 runs us, else None."""
    try:
        import launch
    except ImportError:
        return None
    return launch if hasattr(launch, "run_pip") else None


def pip_installer(launch) -> Callable[[list[str], str], None]:
    """A function that runs `pip install <args>`: through A1111's launch.run_pip, or with this Python's pip."""
    if launch is not None:
        # run_pip builds a shell command line: quote every argument (">=" would be a redirect), in double quotes,
        # which both sh and cmd.exe understand.
        return lambda args, desc: launch.run_pip("install " + " ".join(f'"{a}"' for a in args), desc)
    return lambda args, desc: subprocess.run([sys.executable, "-m", "pip", "install", *args], check=True)


def torch_is_cuda() -> bool:
    """Whether the installed torch is a CUDA build (PyPI's Linux wheels carry no +cu tag, so ask torch itself)."""
    import torch

    return torch.version.cuda is not None


def install_xformers(pip: Callable[[list[str], str], None], constraint: str) -> str:
    """Try a binary xformers wheel that works with the installed torch as is; return what happened."""
    if installed_version("xformers") is not None:
        return "xformers: already installed"
    if not torch_is_cuda():
        return "xformers: skipped (torch is not a CUDA build)"
    try:
        pip(["--only-binary=:all:", "-c", constraint, "xformers"], "xformers for the installed torch")
    except (subprocess.CalledProcessError, RuntimeError):
        return (f"xformers: skipped, no wheel for torch {installed_version('torch')} "
                f"(PyTorch's own attention is used instead)")
    return "xformers: installed"


def main(requirements: Path = HERE / "requirements.txt") -> int:
    torch_version = installed_version("torch")
    if torch_version is None:
        print("[DMD2] torch is not installed in this Python. Install the build for your GPU first "
              "(https://pytorch.org/get-started/locally/), then run install.py again.")
        return 1
    launch = a1111_launch()
    pip = pip_installer(launch)
    reqs = read_requirements(requirements)
    for line in too_old(reqs):
        print(f"[DMD2] {line}")
    with tempfile.TemporaryDirectory() as tmp:
        constraint = os.path.join(tmp, "constraints.txt")
        Path(constraint).write_text("\n".join(installed_constraints()) + "\n", encoding="utf-8")
        todo = absent(reqs)
        if todo:
            names = [str(r) for r in todo]
            print(f"[DMD2] installing {', '.join(names)} (every installed package, torch {torch_version} "
                  f"included, stays as it is)")
            try:
                pip(["-c", constraint, *names], "DMD2 requirements")
            except (subprocess.CalledProcessError, RuntimeError) as e:
                print(f"[DMD2] could not install {', '.join(names)} without changing an installed package ({e}); "
                      f"install them by hand")
                return 1
        else:
            print("[DMD2] requirements already installed: nothing to install")
        if launch is None:
            print(f"[DMD2] {install_xformers(pip, constraint)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
