"""Weight files a user or a broken download can hand us: every one refused with a message naming the file, before a
tensor byte is read, and refused exactly where the safetensors library itself refuses (our header check is the
format's rules, tested against the library as the independent reference)."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Callable

import pytest
import torch
from safetensors.torch import load_file, save_file

from sampler.errors import CorruptFileError, ModelNotFoundError, OutputPathError, UnsafeFileError
from sampler.models.checkpoints import inspect_file
from sampler.models.files import (LazyFile, atomic_writer, check_output_path, check_readable_file, load_state_dict,
                                  read_safetensors_header)

TENSORS = {"conv_in.weight": torch.arange(8, dtype=torch.float32).reshape(2, 4),
           "time_embedding.linear_1.weight": torch.ones(3, dtype=torch.float16)}


def split(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def write_raw(path: Path, header: bytes, data: bytes) -> Path:
    header += b" " * (-len(header) % 8)
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return path


@pytest.fixture
def good(tmp_path) -> Path:
    path = tmp_path / "unet.safetensors"
    save_file(TENSORS, path, metadata={"format": "pt"})
    return path


def edited(good: Path, edit: Callable[[dict], None], extra: bytes = b"") -> Path:
    header, data = split(good)
    edit(header)
    return write_raw(good, json.dumps(header).encode(), data + extra)


A, B = "conv_in.weight", "time_embedding.linear_1.weight"  # A: bytes 0-32, B: bytes 32-38
BAD_HEADERS = {
    "entry without data_offsets": (lambda h: h[A].pop("data_offsets"), b"", "data_offsets None"),
    "entry that is not an object": (lambda h: h.__setitem__(A, [0, 32]), b"", "is a list, not an object"),
    "string offsets": (lambda h: h[A].__setitem__("data_offsets", ["0", "32"]), b"", "data_offsets"),
    "bool offsets": (lambda h: h[A].__setitem__("data_offsets", [False, 32]), b"", "data_offsets"),
    "reversed offsets": (lambda h: h[A].__setitem__("data_offsets", [32, 0]), b"", "data_offsets"),
    "overlapping offsets": (lambda h: h[B].__setitem__("data_offsets", [30, 36]), b"", "overlap"),
    "a gap between tensors": (lambda h: h[B].__setitem__("data_offsets", [34, 40]), b"\0\0", "gap"),
    "bytes after the last tensor": (lambda h: None, b"\0" * 8, "8 bytes after the last tensor"),
    "metadata with a number": (lambda h: h.__setitem__("__metadata__", {"format": 1}), b"", "__metadata__"),
    "metadata that is a list": (lambda h: h.__setitem__("__metadata__", ["format"]), b"", "__metadata__"),
    "unknown dtype": (lambda h: h[A].__setitem__("dtype", "F99"), b"", "dtype 'F99'"),
    "negative shape": (lambda h: h[A].__setitem__("shape", [-8]), b"", "shape"),
    "bool in shape": (lambda h: h[A].__setitem__("shape", [True, 8]), b"", "shape"),
    "shape that does not fit its bytes": (lambda h: h[A].__setitem__("shape", [3, 4]), b"", "needs 48 bytes"),
    "shape whose size overflows": (lambda h: h[A].__setitem__("shape", [2**40, 2**40]), b"", "needs"),
}


@pytest.mark.parametrize("case", BAD_HEADERS)
def test_damaged_headers_are_refused_before_any_tensor_is_read(good, case):
    edit, extra, words = BAD_HEADERS[case]
    path = edited(good, edit, extra)
    with pytest.raises(Exception):  # the reference: the safetensors library refuses the same file
        load_file(path)
    for read in (read_safetensors_header, load_state_dict, inspect_file, LazyFile):
        with pytest.raises(CorruptFileError, match="unet.safetensors") as err:
            read(path)
        assert words in str(err.value)


@pytest.mark.parametrize("header, words", [
    (b"[1, 2]", "a JSON list where an object is expected"),
    (b"[" * 50_000 + b"]" * 50_000, "damaged safetensors header"),  # deep nesting: RecursionError in json
    (b'{"a\xff": 1}', "damaged safetensors header"),  # not UTF-8
    (b'{"a": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}, "a": 1}', "duplicate key 'a'"),
    (b"{not json", "damaged safetensors header"),
])
def test_headers_that_are_not_a_tensor_table(tmp_path, header, words):
    path = write_raw(tmp_path / "x.safetensors", header, b"")
    with pytest.raises(CorruptFileError, match="x.safetensors") as err:
        read_safetensors_header(path)
    assert words in str(err.value)


def test_duplicate_keys_are_the_one_deliberate_difference_from_the_library(tmp_path):
    """safetensors keeps the last of two tensors with one name; which one a file means is unknowable, so we refuse."""
    header = b'{"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}, "a": {"dtype": "U8", "shape": [1], ' \
             b'"data_offsets": [0, 1]}}'
    path = write_raw(tmp_path / "dup.safetensors", header, b"\1")
    assert load_file(path)["a"].tolist() == [1]
    with pytest.raises(CorruptFileError, match="duplicate key"):
        read_safetensors_header(path)


def test_every_valid_layout_passes_as_the_library_reads_it(tmp_path):
    """What safetensors writes (every dtype this torch has, scalars, empty tensors, metadata or none) passes."""
    tensors = {"scalar": torch.tensor(1.5), "empty": torch.zeros(0, 3, dtype=torch.float16),
               "u8": torch.arange(5, dtype=torch.uint8), "bool": torch.tensor([True, False]),
               "bf16": torch.ones(2, 2, dtype=torch.bfloat16), "i64": torch.arange(3), "f64": torch.ones(1).double()}
    if hasattr(torch, "float8_e4m3fn"):
        tensors["f8"] = torch.ones(4).to(torch.float8_e4m3fn)
    for metadata in (None, {"k": "v"}):
        path = tmp_path / f"all-{bool(metadata)}.safetensors"
        save_file(tensors, path, metadata=metadata)
        header = read_safetensors_header(path)
        assert set(header) - {"__metadata__"} == set(tensors)
        loaded = load_state_dict(path)
        assert all(torch.equal(loaded[k].float(), v.float()) for k, v in tensors.items())
        lazy = LazyFile(path)
        assert {k: d for k, (d, _) in lazy.specs.items()} == {k: v.dtype for k, v in tensors.items()}
    # Metadata null and an unknown extra field in an entry are accepted by the library, so by us too.
    path = edited(tmp_path / "all-True.safetensors", lambda h: (h.__setitem__("__metadata__", None),
                                                                 h["u8"].__setitem__("note", "extra")))
    load_file(path)
    read_safetensors_header(path)


def test_short_files(tmp_path, good):
    data = good.read_bytes()
    for cut, words in ((0, "only 0 bytes"), (5, "only 5 bytes"), (12, "not a valid safetensors file"),
                       (len(data) - 3, "truncated")):
        path = tmp_path / f"cut{cut}.safetensors"
        path.write_bytes(data[:cut])
        with pytest.raises(CorruptFileError, match=words):
            load_state_dict(path)


def test_paths_that_are_not_a_readable_file(tmp_path):
    (tmp_path / "folder.safetensors").mkdir()
    os.symlink("missing.safetensors", tmp_path / "dangling.safetensors")
    os.symlink("loop.safetensors", tmp_path / "loop.safetensors")
    os.symlink("loop_b.safetensors", tmp_path / "loop_a.safetensors")
    os.symlink("loop_a.safetensors", tmp_path / "loop_b.safetensors")
    cases = {"folder.safetensors": "is a folder, not a model file",
             "dangling.safetensors": "symbolic link to missing.safetensors, which does not exist",
             "loop.safetensors": "points to itself", "loop_a.safetensors": "points to itself",
             "nothing.safetensors": "no such file", "folder.safetensors/x.bin": "no such file|Not a directory"}
    for name, words in cases.items():
        for read in (check_readable_file, load_state_dict, inspect_file, LazyFile):
            with pytest.raises(ModelNotFoundError, match=words):
                read(tmp_path / name)


def test_reads_go_through_symlinks(tmp_path, good):
    shared = tmp_path / "shared"
    shared.mkdir()
    target = shared / "unet.safetensors"
    good.rename(target)
    link = tmp_path / "link.safetensors"
    os.symlink(target, link)
    assert torch.equal(load_state_dict(link)["conv_in.weight"], TENSORS["conv_in.weight"])
    assert inspect_file(link).kind == "unet"


@pytest.mark.parametrize("content, words", [
    (b"", "neither torch's zip format nor a pickle"),
    (b'{"conv_in.weight": [1, 2]}', "neither torch's zip format nor a pickle"),
    (b"\x80\x02}q\x00(X\x03\x00\x00\x00abc", "truncated or damaged"),  # a pickle cut short
    (b"\x80\x02\xff\xff", "damaged pickle"),
])
def test_pickles_that_are_not_checkpoints(tmp_path, content, words):
    path = tmp_path / "model.bin"
    path.write_bytes(content)
    with pytest.raises(CorruptFileError, match=words):
        load_state_dict(path)


def test_truncated_torch_zip(tmp_path):
    path = tmp_path / "model.bin"
    torch.save({"conv_in.weight": torch.ones(64, 64)}, path)
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 30, 10):
        path.write_bytes(data[:cut])
        with pytest.raises(CorruptFileError, match="model.bin"):
            load_state_dict(path)
        with pytest.raises(CorruptFileError):
            inspect_file(path)


def test_a_pickle_that_runs_code_is_still_called_unsafe(tmp_path):
    class RunsCode:
        def __reduce__(self):
            return (os.system, ("true",))

    path = tmp_path / "evil.pt"
    torch.save({"x": RunsCode()}, path)
    with pytest.raises(UnsafeFileError, match="asks to run code"):
        load_state_dict(path)


def test_atomic_writer_publishes_only_complete_files(tmp_path):
    path = tmp_path / "out.safetensors"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_writer(path) as f:
            f.write(b"half")
            raise RuntimeError("disk gone")
    assert path.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.safetensors"]
    # A symlink planted where a temporary name might be is never written through: names are fresh and O_EXCL.
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    for i in range(5):
        os.symlink(victim, tmp_path / f".out.safetensors.{i:08x}.tmp")
    with atomic_writer(path) as f:
        f.write(b"new")
    assert path.read_bytes() == b"new" and victim.read_bytes() == b"keep"
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_output_paths_are_checked_before_any_work(tmp_path):
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "exists.png").write_text("x")
    (tmp_path / "dir.png").mkdir()
    cases = {"out.gif": "must end in .png", "a_file/out.png": "a_file is a file", "a_file/sub/out.png": "is a file",
             "dir.png": "is a folder", "exists.png": "exists and is not overwritten"}
    for name, words in cases.items():
        with pytest.raises(OutputPathError, match=words):
            check_output_path(tmp_path / name, (".png",))
    assert check_output_path(tmp_path / "exists.png", (".png",), overwrite=True) == tmp_path / "exists.png"
    assert check_output_path(tmp_path / "new" / "deeper" / "x.PNG", (".png",)).name == "x.PNG"
    with pytest.raises(OutputPathError, match="also an input"):
        check_output_path(tmp_path / "exists.png", (".png",), overwrite=True, inputs=[tmp_path / "exists.png"])
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(OutputPathError, match="permission denied"):
            check_output_path(locked / "x.png", (".png",))
