"""Install what this pack needs into the Python that runs the host; safe to run any number of times.

Who runs it: ComfyUI-Manager or a user (`python install.py` with the host's own Python), or A1111 / Forge, which run
it with their `launch` module importable; then pip goes through launch.run_pip so A1111's logging and index settings
apply.

Rules, because the host owns the environment:
- only requirements that are missing or too old are installed; a second run installs nothing;
- torch is never installed, upgraded or replaced: requirements.txt does not list it, and every pip call gets a
  constraint pinning the installed torch, so no dependency can swap it (a missing torch is an error: its build
  depends on the user's GPU, which is theirs to choose);
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


def read_requirements(path: Path) -> list[Requirement]:
    """Requirements from a requirements.txt, without comments, pip options and host-owned packages."""
    reqs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        req = Requirement(line)
        if req.name.lower() not in HOST_OWNED and (req.marker is None or req.marker.evaluate()):
            reqs.append(req)
    return reqs


def installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def missing(reqs: list[Requirement]) -> list[Requirement]:
    """The requirements not satisfied by what is installed (absent, or a version outside the specifier)."""
    out = []
    for req in reqs:
        version = installed_version(req.name)
        if version is None or not req.specifier.contains(version, prereleases=True):
            out.append(req)
    return out


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
    with tempfile.TemporaryDirectory() as tmp:
        constraint = os.path.join(tmp, "constraints.txt")
        Path(constraint).write_text(f"torch=={torch_version}\n", encoding="utf-8")
        todo = missing(read_requirements(requirements))
        if todo:
            names = [str(r) for r in todo]
            print(f"[DMD2] installing {', '.join(names)} (torch stays at {torch_version})")
            pip(["-c", constraint, *names], "DMD2 requirements")
        else:
            print("[DMD2] requirements already satisfied: nothing to install")
        if launch is None:
            print(f"[DMD2] {install_xformers(pip, constraint)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
