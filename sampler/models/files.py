"""Reading and writing weight files without ever running code from them: the one place that touches their bytes.

Safetensors first; pickle files (.bin, .pt, .pth, .ckpt) only through torch.load(weights_only=True), which refuses
any pickle that asks to call a function. Writers stream tensor by tensor and publish atomically (temporary name,
then rename), so a reader never sees half a file under its final name.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import secrets
import stat
import struct
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Mapping, Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..errors import CorruptFileError, ModelNotFoundError, OutputPathError, UnsafeFileError, first_line

#: Suffixes of pickle-format checkpoints (read only with weights_only=True).
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
_MAX_HEADER = 100 << 20
#: Bytes per element of every safetensors dtype this pack reads (the format's names; sub-byte types are refused).
ST_ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
               "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
_ZIP_MAGIC = b"PK\x03\x04"


def is_pickle_file(path: Path | str) -> bool:
    return str(path).lower().endswith(PICKLE_SUFFIXES)


def broken_link(path: Path | str) -> str | None:
    """Why `path` cannot be reached because of a symbolic link, or None: the first link on the way (a folder above
    it, or the path itself) that points to nothing or loops. Shared models folders are links; this names the one
    to fix."""
    path = Path(os.path.abspath(path))
    for step in (*reversed(path.parents), path):
        if os.path.islink(step):
            try:
                os.stat(step)
            except FileNotFoundError:
                return f"{step} is a symbolic link to {os.readlink(step)}, which does not exist"
            except OSError:
                return f"{step} is a symbolic link that loops (it points to itself, directly or through other links)"
    return None


def check_readable_file(path: Path | str) -> Path:
    """`path` if it is a regular file (through any symlinks), else ModelNotFoundError saying what it is instead:
    missing, a directory, a broken or looping symlink (itself or a folder above it), or unreadable."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError as e:  # ENOENT, ELOOP (a symlink loop), EACCES on a parent folder, ENOTDIR, ...
        link = broken_link(path)
        if link is not None:
            raise ModelNotFoundError(f"cannot open {path}: {link}. Fix or remove the link") from None
        if isinstance(e, FileNotFoundError):
            raise ModelNotFoundError(f"no such file: {path}") from None
        raise ModelNotFoundError(f"cannot open {path}: {e.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ModelNotFoundError(f"{path} is a folder, not a model file: give the .safetensors (or .bin) file "
                                 f"inside it")
    if not stat.S_ISREG(st.st_mode):
        raise ModelNotFoundError(f"{path} is not a regular file")
    if not os.access(path, os.R_OK):
        raise ModelNotFoundError(f"{path} is not readable: check its permissions")
    return path


def check_output_path(path: Path | str, suffixes: Sequence[str], *, overwrite: bool = False,
                      inputs: Sequence[Path | str] = (), exists_hint: str = "choose another name") -> Path:
    """`path` if a new file may be written there, checked before any work: its suffix is one of `suffixes`, it is
    not a folder, not one of `inputs`, not an existing file unless `overwrite`, and its folder exists or can be
    created (the nearest existing parent is a folder we may write in). OutputPathError says which rule it breaks.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise OutputPathError(f"{path} is a folder: give a file name, e.g. {path / ('out' + suffixes[0])}")
    if path.suffix.lower() not in suffixes:
        raise OutputPathError(f"{path}: the file name must end in {', '.join(suffixes[:-1])} or {suffixes[-1]}"
                              if len(suffixes) > 1 else f"{path}: the file name must end in {suffixes[0]}")
    for source in inputs:
        if source and os.path.exists(source) and os.path.exists(path) and os.path.samefile(source, path):
            raise OutputPathError(f"{path} is also an input: write the result to another file")
    if os.path.lexists(path) and not overwrite:
        raise OutputPathError(f"{path} exists and is not overwritten: {exists_hint}")
    check_output_folder(path.parent)
    return path


def check_output_folder(folder: Path | str) -> Path:
    """`folder` if files can be written in it: it exists, or its nearest existing parent is a folder we may write
    in (so it can be created); OutputPathError otherwise."""
    folder = Path(folder).expanduser()
    parent = folder
    while not parent.exists():
        if parent.is_symlink():
            raise OutputPathError(f"{parent} is a symbolic link to nothing (or a loop), so {folder} cannot be used")
        parent = parent.parent
    if not parent.is_dir():
        raise OutputPathError(f"{parent} is a file, so nothing can be written in {folder}: choose another folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputPathError(f"cannot write in {parent} (permission denied): choose another folder")
    return folder


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate key {next(k for k in keys if keys.count(k) > 1)!r}")
    return dict(pairs)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_safetensors_header(header: Any, data_size: int, name: str) -> dict[str, Any]:
    """`header` (a parsed safetensors JSON header) if it describes exactly `data_size` bytes of tensor data, else
    CorruptFileError naming the tensor and the field at fault.

    Checked, as the safetensors format requires and before any tensor is read: an object of entries; every entry
    an object with a known dtype, a shape of non-negative integers and data_offsets [begin, end] of integers whose
    span is the shape's byte size; the spans in order, without gaps or overlaps, from 0 to exactly `data_size`
    (short: a truncated file; long: bytes that belong to no tensor); `__metadata__` absent, null or a map of
    strings to strings.
    """
    def bad(what: str) -> CorruptFileError:
        return CorruptFileError(f"{name} has a damaged safetensors header ({what}): it is not a valid model file; "
                                f"download or export it again")

    if not isinstance(header, dict):
        raise bad(f"a JSON {type(header).__name__} where an object is expected")
    metadata = header.get("__metadata__")
    if metadata is not None and not (isinstance(metadata, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())):
        raise bad("__metadata__ must map strings to strings")
    spans = []
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        if not isinstance(entry, dict):
            raise bad(f"tensor {key!r} is a {type(entry).__name__}, not an object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in ST_ITEMSIZE:
            raise bad(f"tensor {key!r} has dtype {dtype!r}, not one of {', '.join(ST_ITEMSIZE)}")
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            raise bad(f"tensor {key!r} has shape {shape!r}, not a list of non-negative integers")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)
                and 0 <= offsets[0] <= offsets[1]):
            raise bad(f"tensor {key!r} has data_offsets {offsets!r}, not [begin, end] with 0 <= begin <= end")
        size = math.prod(shape) * ST_ITEMSIZE[dtype]
        if offsets[1] - offsets[0] != size:
            raise bad(f"tensor {key!r} of shape {shape} {dtype} needs {size:,} bytes, its data_offsets span "
                      f"{offsets[1] - offsets[0]:,}")
        spans.append((offsets[0], offsets[1], key))
    end = 0
    for begin, stop, key in sorted(spans):
        if begin != end:
            raise bad(f"tensor {key!r} starts at byte {begin:,} where {end:,} was expected: tensors overlap or "
                      f"leave a gap")
        end = stop
    if end > data_size:
        raise CorruptFileError(f"{name} is truncated: its header declares {end:,} bytes of tensor data but the file "
                               f"has {data_size:,}. Delete it and download it again")
    if end < data_size:
        raise bad(f"{data_size - end:,} bytes after the last tensor")
    return header


def read_safetensors_header(path: Path | str) -> dict[str, Any]:
    """The JSON header of a safetensors file, checked whole (`check_safetensors_header`) against the file's size.

    A truncated download keeps its header, so the header alone would look fine: the tensors' spans are compared
    with the bytes the file really has, and a short file is refused before anyone tries to load it.
    """
    path = check_readable_file(path)
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
            header = json.loads(f.read(header_len), object_pairs_hook=_no_duplicate_keys)
        except (ValueError, RecursionError) as e:
            raise CorruptFileError(f"{path} has a damaged safetensors header ({e}): download it again") from None
    return check_safetensors_header(header, size - 8 - header_len, str(path))


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a loaded pickle (Lightning-style checkpoints nest them under "state_dict")."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CorruptFileError(f"{path} does not hold a state dict (found a {type(obj).__name__})")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _load_pickle(path: Path, device: str | torch.device) -> Any:
    """torch.load(weights_only=True), its failures told apart: a pickle that wants to run code (UnsafeFileError),
    a damaged or foreign file (CorruptFileError)."""
    with path.open("rb") as f:
        magic = f.read(4)
    is_zip = magic == _ZIP_MAGIC
    if not is_zip and magic[:1] != b"\x80":  # torch's zip format, or a pickle (protocol 2+ starts with 0x80)
        raise CorruptFileError(f"{path} is not a PyTorch checkpoint (it is neither torch's zip format nor a pickle): "
                               f"damaged, or another kind of file with a {path.suffix} name")
    try:
        return torch.load(path, map_location=device, weights_only=True, mmap=is_zip and zipfile.is_zipfile(path))
    except pickle.UnpicklingError as e:
        if "global" not in str(e).lower():  # "Unsupported operand": damaged bytes, not a request to run code
            raise CorruptFileError(f"{path} is not a readable PyTorch checkpoint (damaged pickle): download it "
                                   f"again") from None
        raise UnsafeFileError(f"refused to load {path}: its pickle asks to run code, which weights-only loading "
                              f"does not allow ({first_line(e)}). Use a .safetensors copy of the "
                              f"model from a source you trust") from None
    except (EOFError, RuntimeError, ValueError, struct.error, OSError, zipfile.BadZipFile) as e:
        raise CorruptFileError(f"{path} is not a readable PyTorch checkpoint ({first_line(e)}): "
                               f"truncated or damaged, download it again") from None


def load_state_dict(path: Path | str, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Load a checkpoint's tensors without ever executing code from the file.

    .safetensors: the whole header checked first (`read_safetensors_header`), then safetensors. Pickles:
    torch.load(weights_only=True), memory-mapped when the file is in torch's zip format; a pickle that wants to call
    anything is refused with UnsafeFileError, a damaged one with CorruptFileError.
    """
    path = check_readable_file(path)
    if is_pickle_file(path):
        return _unwrap(_load_pickle(path, device), path)
    read_safetensors_header(path)
    try:
        return load_file(path, device=str(device))
    except (SafetensorError, OSError) as e:
        raise CorruptFileError(f"{path} is not a readable safetensors file ({e}): download it again") from None


#: torch dtype of each safetensors dtype name this PyTorch has (uint16/32/64 and float8 arrived in 2.1-2.3).
_TORCH_DTYPES = {name: getattr(torch, attr) for name, attr in (
    ("F64", "float64"), ("F32", "float32"), ("F16", "float16"), ("BF16", "bfloat16"), ("I64", "int64"),
    ("I32", "int32"), ("I16", "int16"), ("I8", "int8"), ("U8", "uint8"), ("BOOL", "bool"), ("U16", "uint16"),
    ("U32", "uint32"), ("U64", "uint64"), ("F8_E5M2", "float8_e5m2"), ("F8_E4M3", "float8_e4m3fn"))
    if hasattr(torch, attr)}
_ST_DTYPES = {dtype: name for name, dtype in _TORCH_DTYPES.items()}


@dataclass(frozen=True)
class TensorSource:
    """A tensor to be written: its final dtype and shape, and how to load it when its turn comes: the whole tensor,
    or an iterable of chunks along its first dimension (a tensor larger than memory, written as it is made)."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    load: Callable[[], torch.Tensor | Iterable[torch.Tensor]]


@contextmanager
def atomic_writer(path: Path | str) -> Iterator[BinaryIO]:
    """A binary file to write that appears at `path` only when the block completes (renamed over whatever was
    there), and not at all when it raises.

    The bytes go to a fresh hidden name next to `path`, created with O_EXCL: never a file another writer is using,
    never followed through a symlink planted there; mode 0o666 less the umask, like any file the user writes.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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
    with atomic_writer(path) as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name, src in tensors.items():
            data = src.load()
            if isinstance(data, torch.Tensor):
                if tuple(data.shape) != tuple(src.shape):
                    raise CorruptFileError(f"{name}: declared shape {src.shape}, but it loaded as {tuple(data.shape)}")
                data = [data.reshape(1, -1) if data.ndim == 0 else data]
            rows = 0
            for t in data:  # one tensor, or chunks of its rows (a tensor larger than memory)
                t = t.to("cpu", src.dtype).contiguous()
                rows += len(t)
                if src.shape and (tuple(t.shape[1:]) != tuple(src.shape[1:]) or rows > src.shape[0]):
                    raise CorruptFileError(f"{name}: chunks of shape {tuple(t.shape)} do not make {src.shape}")
                f.write(t.reshape(-1).view(torch.uint8).numpy().tobytes())
            if src.shape and rows != src.shape[0]:
                raise CorruptFileError(f"{name}: declared {src.shape[0]} rows, the chunks had {rows}")
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
            unreadable = sorted({v["dtype"] for v in header.values()} - set(_TORCH_DTYPES))
            if unreadable:
                raise CorruptFileError(f"{self.path} holds {', '.join(unreadable)} tensors, which this PyTorch "
                                       f"{torch.__version__} cannot represent")
            self.specs = {k: (_TORCH_DTYPES[v["dtype"]], tuple(v["shape"])) for k, v in header.items()}

    def get(self, key: str) -> torch.Tensor:
        return self._sd[key] if self._sd is not None else self._handle.get_tensor(key)
