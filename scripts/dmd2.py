"""A1111 / Forge entry point ("Install from URL" of this repository): registers the DMD2 sampler and scheduler.

A1111 executes every file in scripts/ (also again on "Reload UI") without importing it as a package, and puts the
extension root on sys.path only while scripts load; other extensions may ship their own `sampler` module. So the
repository root is imported once as the package `dmd2_pack` (a name nobody else uses) and everything below is
reached as dmd2_pack.extension / dmd2_pack.sampler. The implementation lives in extension/a1111.py.
"""

import importlib
import importlib.util
import sys
from pathlib import Path

PACKAGE = "dmd2_pack"


def _load_pack():
    root = Path(__file__).resolve().parent.parent
    pack = sys.modules.get(PACKAGE)
    if pack is None:
        spec = importlib.util.spec_from_file_location(PACKAGE, root / "__init__.py",
                                                      submodule_search_locations=[str(root)])
        pack = importlib.util.module_from_spec(spec)
        sys.modules[PACKAGE] = pack
        try:
            spec.loader.exec_module(pack)
        except BaseException:
            del sys.modules[PACKAGE]
            raise
    return importlib.import_module(PACKAGE + ".extension.a1111")


_load_pack().setup()
