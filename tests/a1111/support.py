"""Helpers for the A1111 tests: the repo imported as A1111 imports it, and PyPI k-diffusion's two modules."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load_pack():
    """The repository root as the package `dmd2_pack`, exactly as scripts/dmd2.py loads it inside A1111."""
    if "dmd2_pack" not in sys.modules:
        spec = importlib.util.spec_from_file_location("dmd2_pack", ROOT / "__init__.py",
                                                      submodule_search_locations=[str(ROOT)])
        pack = importlib.util.module_from_spec(spec)
        sys.modules["dmd2_pack"] = pack
        spec.loader.exec_module(pack)
    return sys.modules["dmd2_pack"]


def _stub(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    return module


def load_kdiffusion() -> tuple[types.ModuleType, types.ModuleType]:
    """(sampling, external) of the installed PyPI k-diffusion (0.1.1.post1, the same code A1111 pins), imported by
    file path under a private package name.

    `import k_diffusion` would pull clip, clean-fid, kornia, torchvision...; sampling.py and external.py need only
    `utils.append_dims` beyond torch, plus module-level imports of scipy / torchdiffeq / torchsde that the functions
    we call never use. Those three are stubbed only if missing, and only while the two files execute.
    """
    name = "_kdiffusion_pypi"
    if name in sys.modules:
        return sys.modules[name + ".sampling"], sys.modules[name + ".external"]
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        import pytest
        pytest.skip("PyPI k-diffusion is not installed (pip install --no-deps k-diffusion==0.1.1.post1)")
    folder = Path(list(spec.submodule_search_locations)[0])
    package = _stub(name, __path__=[str(folder)])
    utils_src = (folder / "utils.py").read_text()
    start = utils_src.index("def append_dims")
    utils = _stub(name + ".utils")
    append_dims = utils_src[start:utils_src.index("\ndef ", start + 1)]  # the rest of utils.py imports torchvision
    # k-diffusion's own source, executed (S102: test code, never in the registry zip)
    exec(compile(append_dims, str(folder / "utils.py"), "exec"), utils.__dict__)  # noqa: S102
    stubs = {}
    for mod, attrs in {"scipy": {}, "scipy.integrate": {}, "torchdiffeq": {"odeint": None},
                       "torchsde": {}}.items():
        if importlib.util.find_spec(mod.split(".")[0]) is None and mod not in sys.modules:
            stubs[mod] = _stub(mod, **attrs)
    if "scipy" in stubs:
        stubs["scipy"].integrate = stubs["scipy.integrate"]
    sys.modules.update({name: package, name + ".utils": utils, **stubs})
    package.utils = utils
    try:
        loaded = {}
        for sub in ("sampling", "external"):
            sub_spec = importlib.util.spec_from_file_location(f"{name}.{sub}", folder / f"{sub}.py")
            module = importlib.util.module_from_spec(sub_spec)
            sys.modules[f"{name}.{sub}"] = module
            sub_spec.loader.exec_module(module)
            setattr(package, sub, module)
            loaded[sub] = module
    finally:
        for mod in stubs:
            sys.modules.pop(mod, None)
    return loaded["sampling"], loaded["external"]
