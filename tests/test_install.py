"""install.py: only what is missing, no installed package ever changed (host pins, torch), a too-old one named in one
line, xformers only for a CUDA torch, and a second run changes nothing."""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import importlib.util
import os
import subprocess
import sys
import sysconfig
import types
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def install(monkeypatch):
    spec = importlib.util.spec_from_file_location("dmd2_install", ROOT / "install.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.delitem(sys.modules, "launch", raising=False)
    return module


def requirements(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "requirements.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_pack_requirements_never_name_torch(install):
    reqs = install.read_requirements(ROOT / "requirements.txt")
    names = {r.name.lower() for r, _ in reqs}
    assert names and not names & install.HOST_OWNED
    assert all(purpose for _, purpose in reqs), "say what each requirement is for: install.py prints it"


def test_only_absent_requirements_installed_and_every_installed_package_pinned(install, tmp_path, monkeypatch,
                                                                              capsys):
    calls = []
    monkeypatch.setattr(install, "pip_installer", lambda launch: lambda args, desc: calls.append(
        (args, Path(args[1]).read_text())))
    monkeypatch.setattr(install, "torch_is_cuda", lambda: False)
    reqs = requirements(tmp_path, "# comment", "safetensors>=0.4", "torch>=99", "torchvision",
                        "safetensors>=99  # loading checkpoints", "dmd2-not-installed-anywhere", "-r other.txt")
    assert install.main(reqs) == 0
    (args, constraints), = calls
    assert args[0] == "-c" and args[2:] == ["dmd2-not-installed-anywhere"]  # too old is not installed...
    out = capsys.readouterr().out
    assert (f"safetensors {install.installed_version('safetensors')} is installed and this pack wants >=99 "
            "(loading checkpoints): left as it is") in out  # ...but said in one line
    pins = set(constraints.split())
    assert f"torch=={install.installed_version('torch')}" in pins
    assert f"safetensors=={install.installed_version('safetensors')}" in pins
    assert len(pins) == len({d.metadata["Name"].lower() for d in importlib.metadata.distributions()})


def test_missing_torch_installs_nothing(install, tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(install, "pip_installer", lambda launch: lambda args, desc: calls.append(args))
    real = install.installed_version
    monkeypatch.setattr(install, "installed_version", lambda name: None if name == "torch" else real(name))
    assert install.main(requirements(tmp_path, "dmd2-not-installed-anywhere")) == 1
    assert calls == [] and "Install the build for your GPU first" in capsys.readouterr().out


def test_a1111_launch_run_pip_quoted(install, tmp_path, monkeypatch):
    launch = types.SimpleNamespace(commands=[])
    launch.run_pip = lambda command, desc=None: launch.commands.append(command)
    monkeypatch.setitem(sys.modules, "launch", launch)
    monkeypatch.setattr(install, "torch_is_cuda", lambda: pytest.fail("A1111 decides xformers itself"))
    assert install.main(requirements(tmp_path, "dmd2-not-installed-anywhere>=1.0")) == 0
    (command,) = launch.commands
    assert command.startswith('install "-c" "') and command.endswith('" "dmd2-not-installed-anywhere>=1.0"')


def test_xformers_only_for_cuda_torch_and_only_if_a_wheel_exists(install, monkeypatch):
    calls = []

    def pip(args, desc):
        calls.append(args)

    real = install.installed_version
    monkeypatch.setattr(install, "installed_version", lambda name: None if name == "xformers" else real(name))
    monkeypatch.setattr(install, "torch_is_cuda", lambda: False)
    assert "not a CUDA build" in install.install_xformers(pip, "c.txt") and calls == []
    monkeypatch.setattr(install, "torch_is_cuda", lambda: True)
    assert install.install_xformers(pip, "c.txt") == "xformers: installed"
    assert calls == [["--only-binary=:all:", "-c", "c.txt", "xformers"]]

    def no_wheel(args, desc):
        raise subprocess.CalledProcessError(1, "pip")

    assert "no wheel for torch" in install.install_xformers(no_wheel, "c.txt")
    monkeypatch.setattr(install, "torch_is_cuda", lambda: pytest.fail("xformers is installed: nothing to decide"))
    monkeypatch.setattr(install, "installed_version", lambda name: "0.0.28" if name == "xformers" else real(name))
    assert install.install_xformers(pip, "c.txt") == "xformers: already installed"


def tiny_wheel(folder: Path) -> Path:
    """A local wheel standing in for a missing requirement, so the venv test needs no network."""
    files = {"dmd2_test_dep/__init__.py": b"VALUE = 1\n",
             "dmd2_test_dep-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: dmd2-test-dep\nVersion: 1.0\n",
             "dmd2_test_dep-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                                  b"Tag: py3-none-any\n"}
    record = [f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
              f"{len(data)}" for name, data in files.items()]
    record.append("dmd2_test_dep-1.0.dist-info/RECORD,,")
    files["dmd2_test_dep-1.0.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    path = folder / "dmd2_test_dep-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return path


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def test_fresh_venv_twice(tmp_path):
    """A new venv that sees this environment's packages (torch, safetensors, pip) through a .pth file, the way a host
    venv already holds them: the first run installs the one missing package, the second changes nothing."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    site = Path(subprocess.check_output([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        text=True).strip())
    (site / "host_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pack = tmp_path / "pack"
    pack.mkdir()
    (pack / "install.py").write_bytes((ROOT / "install.py").read_bytes())
    requirements(pack, "safetensors>=99  # checkpoints", "torch>=99", "dmd2-test-dep>=1.0")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    tiny_wheel(wheels)
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheels), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}

    first = subprocess.run([python, "install.py"], cwd=pack, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "installing dmd2-test-dep>=1.0 (every installed package" in first.stdout and "torch>=99" not in first.stdout
    assert "safetensors" in first.stdout and "left as it is, never upgraded" in first.stdout
    assert not list(site.glob("safetensors*")), "an installed package too old for us is never upgraded"
    assert list(site.glob("dmd2_test_dep*"))  # into the new venv, not the environment it borrows from
    assert not list(site.glob("torch*")), "install.py must never install torch"
    before = snapshot(env_dir)

    second = subprocess.run([python, "install.py"], cwd=pack, env=env, capture_output=True, text=True)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "nothing to install" in second.stdout and "xformers: skipped (torch is not a CUDA build)" in second.stdout
    assert snapshot(env_dir) == before


def test_the_a1111_extension_registers_without_huggingface_hub():
    """install.py leaves a too-old huggingface_hub alone (it never changes an installed package): the sampler,
    scheduler and plan must still load then, only downloads need the hub."""
    code = ("import sys; sys.modules['huggingface_hub'] = None\n"  # any import of it raises ImportError
            "from tests.a1111.support import load_pack\n"
            "load_pack()\n"
            "import importlib; importlib.import_module('dmd2_pack.extension.a1111')\n"
            "assert 'dmd2_pack.sampler.models.download' not in sys.modules\n")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
