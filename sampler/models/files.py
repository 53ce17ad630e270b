"""Reading and writing weight files without ever running code from them: the one place that touches their bytes.

Safetensors first; pickle files (.bin, .pt, .pth, .ckpt) only through torch.load(weights_only=True), which refuses
any pickle that asks to call a function. Writers stream tensor by tensor and publish atomically (temporary name,
then rename), so a reader never sees half a file under its final name.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..errors import CorruptFileError, ModelNotFoundError, UnsafeFileError

#: Suffixes of pickle-format checkpoints (read only with weights_only=True).
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
_MAX_HEADER = 100 << 20


def is_pickle_file(path: Path | str) -> bool:
    return str(path).lower().endswith(PICKLE_SUFFIXES)


def read_safetensors_header(path: Path | str) -> dict[str, Any]:
    """The JSON header of a safetensors file, after checking the file really holds all the bytes it declares.

    A truncated download keeps its header, so the header alone would look fine: we compare the largest tensor end
    offset with the file size and refuse a short file before anyone tries to load it.
    """
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise CorruptFileError(f"{path} is not a safetensors file: only {size} bytes (truncated download?)")
        (header_len,) = struct.unpack("<Q", raw)
        if header_len > min(_MAX_HEADER, size - 8):
            raise CorruptFileError(f"{path} is not a valid safetensors file (header of {header_len} bytes in a "
                                   f"{size}-byte file): truncated or not a safetensors file. Download it again")
        try:
            header = json.loads(f.read(header_len))
        except ValueError:
            raise CorruptFileError(f"{path} has a damaged safetensors header: download it again") from None
    if not isinstance(header, dict):
        raise CorruptFileError(f"{path} has a damaged safetensors header: download it again")
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    have = size - 8 - header_len
    if ends and max(ends) > have:
        raise CorruptFileError(f"{path} is truncated: its header declares {max(ends):,} bytes of tensor data but the "
                               f"file has {have:,}. Delete it and download it again")
    return header


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a loaded pickle (Lightning-style checkpoints nest them under "state_dict")."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CorruptFileError(f"{path} does not hold a state dict (found a {type(obj).__name__})")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def load_state_dict(path: Path | str, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Load a checkpoint's tensors without ever executing code from the file.

    .safetensors: header checked (truncation), then safetensors. Pickles: torch.load(weights_only=True), memory-mapped
    when the file is in torch's zip format; a pickle that wants to call anything is refused with UnsafeFileError.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"no such file: {path}")
    if is_pickle_file(path):
        try:
            obj = torch.load(path, map_location=device, weights_only=True, mmap=zipfile.is_zipfile(path))
        except pickle.UnpicklingError as e:
            raise UnsafeFileError(f"refused to load {path}: its pickle asks to run code, which weights-only loading "
                                  f"does not allow ({str(e).splitlines()[0]}). Use a .safetensors copy of the "
                                  f"model from a source you trust") from None
        except (EOFError, RuntimeError, ValueError, struct.error) as e:
            raise CorruptFileError(f"{path} is not a readable PyTorch checkpoint ({e}): truncated or damaged, "
                                   f"download it again") from None
        return _unwrap(obj, path)
    read_safetensors_header(path)
    try:
        return load_file(path, device=str(device))
    except (SafetensorError, OSError) as e:
        raise CorruptFileError(f"{path} is not a readable safetensors file ({e}): download it again") from None


_ST_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
              torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
              torch.bool: "BOOL"}


@dataclass(frozen=True)
class TensorSource:
    """A tensor to be written: its final dtype and shape, and how to load it when its turn comes: the whole tensor,
    or an iterable of chunks along its first dimension (a tensor larger than memory, written as it is made)."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    load: Callable[[], torch.Tensor | Iterable[torch.Tensor]]


def write_safetensors(path: Path | str, tensors: Mapping[str, TensorSource], metadata: Mapping[str, str]) -> Path:
    """Write a .safetensors file tensor by tensor (peak memory: the largest tensor, not the whole model),
    atomically: to a temporary name first, renamed into place when complete."""
    path = Path(path)
    header: dict[str, Any] = {"__metadata__": dict(metadata)}
    offset = 0
    for name, src in tensors.items():
        size = torch.Size(src.shape).numel() * torch.empty((), dtype=src.dtype).element_size()
        header[name] = {"dtype": _ST_DTYPES[src.dtype], "shape": list(src.shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("wb") as f:
            f.write(struct.pack("<Q", len(raw)))
            f.write(raw)
            for name, src in tensors.items():
                data = src.load()
                if isinstance(data, torch.Tensor):
                    if tuple(data.shape) != tuple(src.shape):
                        raise CorruptFileError(f"{name}: declared shape {src.shape}, but it loaded as "
                                               f"{tuple(data.shape)}")
                    data = [data.reshape(1, -1) if data.ndim == 0 else data]
                rows = 0
                for t in data:
                    t = t.to("cpu", src.dtype).contiguous()
                    rows += len(t)
                    if src.shape and (tuple(t.shape[1:]) != tuple(src.shape[1:]) or rows > src.shape[0]):
                        raise CorruptFileError(f"{name}: chunks of shape {tuple(t.shape)} do not make {src.shape}")
                    f.write(t.reshape(-1).view(torch.uint8).numpy().tobytes())
                if src.shape and rows != src.shape[0]:
                    raise CorruptFileError(f"{name}: declared {src.shape[0]} rows, the chunks had {rows}")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


class LazyFile:
    """Shapes, dtypes and on-demand tensors of a checkpoint: safetensors through safe_open (nothing loaded up
    front), pickles through the core's weights-only loader (memory-mapped when possible)."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        if is_pickle_file(self.path):
            self._sd = load_state_dict(self.path)
            self.metadata: dict[str, str] = {}
            self.specs = {k: (v.dtype, tuple(v.shape)) for k, v in self._sd.items()}
        else:
            from safetensors import safe_open
            header = read_safetensors_header(self.path)
            self.metadata = header.pop("__metadata__", None) or {}
            self._handle = safe_open(str(self.path), framework="pt")
            self._sd = None
            names = {v: k for k, v in _ST_DTYPES.items()}
            self.specs = {k: (names[v["dtype"]], tuple(v["shape"])) for k, v in header.items()
                          if v["dtype"] in names}

    def get(self, key: str) -> torch.Tensor:
        return self._sd[key] if self._sd is not None else self._handle.get_tensor(key)
