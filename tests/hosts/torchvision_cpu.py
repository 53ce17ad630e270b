"""sitecustomize.py of a test-host venv (copied there by tests/hosts/webui.py): lets PyPI's torchvision import next to
this machine's CPU torch.

PyPI's Linux torchvision is a CUDA build; beside a CPU torch its C extension does not load, and its
`_meta_registrations` then fails at import with "operator torchvision::nms does not exist". Just before torchvision
is first imported, the two operators it registers unconditionally (nms, qnms) are declared with their real schemas,
so the import succeeds; the hosts under test never call them. Nothing is done when the extension loads by itself or
when torchvision is never imported (torch is not imported here before then).
"""

import importlib.abc
import sys

_SCHEMAS = ("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
            "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")


def _declare_missing_ops():
    import torch

    try:
        torch.ops.torchvision.nms
        return
    except (AttributeError, RuntimeError):
        pass
    library = torch.library.Library("torchvision", "FRAGMENT")
    for schema in _SCHEMAS:
        library.define(schema)
    _declare_missing_ops.library = library  # keep the registrations alive


class _BeforeTorchvision(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torchvision":
            sys.meta_path.remove(self)
            try:
                import importlib.util
                spec = importlib.util.find_spec("torchvision")
                if spec is not None and spec.origin:
                    import os
                    folder = os.path.dirname(spec.origin)
                    if not _extension_loads(folder):
                        _declare_missing_ops()
            except Exception as e:  # never break the interpreter's start for this
                print(f"[sitecustomize] torchvision workaround failed: {e!r}", file=sys.stderr)
        return None


def _extension_loads(folder):
    import glob

    import torch

    for lib in glob.glob(folder + "/_C*.so"):
        try:
            torch.ops.load_library(lib)
            return True
        except (OSError, RuntimeError):
            return False
    return False


sys.meta_path.insert(0, _BeforeTorchvision())
