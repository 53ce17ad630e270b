"""Training checkpoints that are whole or absent: one folder per saved step, published by a directory rename.

Layout of OUTPUT/checkpoints/:

    step-00000100/          a complete checkpoint (the newest one is resumed)
        checkpoint.json     manifest: format, step, run id, number of processes, settings, every file's size
        generator.safetensors, critic.safetensors      trainable weights (stamped with step and run id)
        optimizers.pt       both optimisers' states (plain tensors, read with weights_only=True)
        rng-0.pt, rng-1.pt  each process's random state
    .step-00000200.partial  being written (or interrupted): never read, removed by the next save

Every process writes its files into the partial folder; after a barrier the main process writes the manifest and
renames the folder to step-N, so a kill at any moment leaves the previous checkpoint as the newest complete one.
Loading checks the manifest against the files (sizes, step and run-id stamps), so a truncated, emptied or foreign
file is named in a clear message instead of failing somewhere inside torch. Processes must share the filesystem
(one machine, or a shared folder across machines, as the official multi-node runs).
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import struct
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch

from sampler.errors import DMD2Error, first_line
from sampler.models.files import (TensorSource, atomic_writer, load_state_dict, read_safetensors_header,
                                  write_safetensors)

FORMAT = "dmd2-distill-checkpoint"
VERSION = 1
MANIFEST = "checkpoint.json"
_STEP_DIR = re.compile(r"step-(\d{8})")


class CheckpointError(DMD2Error):
    """A training checkpoint that cannot be resumed: damaged, incomplete, foreign or from other settings."""


def step_dir(root: Path, step: int) -> Path:
    return Path(root) / f"step-{step:08d}"


def partial_dir(root: Path, step: int) -> Path:
    return Path(root) / f".step-{step:08d}.partial"


def complete_checkpoints(root: Path) -> list[Path]:
    """The complete checkpoint folders under `root`, oldest first (partial folders are not listed)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and _STEP_DIR.fullmatch(p.name))


def latest_checkpoint(root: Path) -> Path | None:
    found = complete_checkpoints(root)
    return found[-1] if found else None


def saved_by(folder: Path, run_id: str | None) -> bool:
    """Whether `folder` is a complete checkpoint written by the run `run_id`."""
    try:
        return run_id is not None and json.loads((folder / MANIFEST).read_text()).get("run_id") == run_id
    except (OSError, ValueError):
        return False


# --- writing -----------------------------------------------------------------------------------------------------


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_weights(path: Path, tensors: Mapping[str, torch.Tensor], stamp: Mapping[str, Any]) -> None:
    """Weights as safetensors (exact dtype), stamped with the checkpoint's step and run id in the metadata."""
    sources = {k: TensorSource(v.dtype, tuple(v.shape), lambda v=v: v) for k, v in tensors.items()}
    write_safetensors(path, sources, {"format": "pt", **{k: str(v) for k, v in stamp.items()}})
    _fsync(path)


def save_object(path: Path, obj: Mapping[str, Any], stamp: Mapping[str, Any]) -> None:
    """Plain tensors, numbers and strings via torch.save (read back with weights_only=True), stamped."""
    torch.save({**obj, "stamp": dict(stamp)}, path)
    _fsync(path)


def publish(partial: Path, final: Path, manifest: Mapping[str, Any]) -> Path:
    """Write the manifest last and rename the finished folder into place (main process only)."""
    files = {p.name: p.stat().st_size for p in sorted(partial.iterdir()) if p.name != MANIFEST}
    with atomic_writer(partial / MANIFEST) as f:
        f.write(json.dumps({**manifest, "files": files}, indent=1).encode())
        f.flush()
        os.fsync(f.fileno())
    if final.exists():  # a folder of another run under this name (`DistillTrainer.save_checkpoint` skips its own)
        shutil.rmtree(final)
    os.replace(partial, final)
    _fsync(final.parent)
    return final


def remove_older(root: Path, keep: Path) -> None:
    """Delete every other checkpoint folder (complete or partial) once `keep` is complete."""
    for p in Path(root).iterdir():
        if p != keep and p.is_dir() and (_STEP_DIR.fullmatch(p.name) or p.name.endswith(".partial")):
            shutil.rmtree(p, ignore_errors=True)


# --- reading -----------------------------------------------------------------------------------------------------


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of a complete checkpoint, after checking every file it lists is there with its size."""
    folder = Path(folder)
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{folder} is not a complete training checkpoint: {MANIFEST} is missing") from None
    except (OSError, ValueError, UnicodeDecodeError):
        raise CheckpointError(f"{path} is damaged (not readable JSON): delete {folder} to resume from an earlier "
                              f"checkpoint, or start over") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{folder} is not a checkpoint of this trainer ({MANIFEST} has no "
                              f"'format: {FORMAT}')")
    if manifest.get("version") != VERSION:
        raise CheckpointError(f"{folder} was written by checkpoint format version {manifest.get('version')}; this "
                              f"trainer reads version {VERSION}")
    for name, size in manifest["files"].items():
        file = folder / name
        if not file.is_file():
            raise CheckpointError(f"{folder} is damaged: {name} is missing")
        if file.stat().st_size != size:
            raise CheckpointError(f"{folder} is damaged: {name} has {file.stat().st_size:,} bytes, the checkpoint "
                                  f"wrote {size:,} (truncated or replaced): delete {folder} to resume from an "
                                  f"earlier checkpoint, or start over")
    return manifest


def _check_stamp(file: Path, stamp: Mapping[str, Any], expected: Mapping[str, Any]) -> None:
    if {k: str(stamp.get(k)) for k in expected} != {k: str(v) for k, v in expected.items()}:
        raise CheckpointError(f"{file} does not belong to this checkpoint (it is stamped step {stamp.get('step')}, "
                              f"run {stamp.get('run_id')}; the checkpoint is step {expected['step']}, run "
                              f"{expected['run_id']}): it was copied in from another checkpoint")


def load_weights(file: Path, expected: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    try:
        stamp = read_safetensors_header(file).get("__metadata__", {})
        tensors = load_state_dict(file)
    except DMD2Error as e:
        raise CheckpointError(f"{file} is damaged: {e}") from None
    _check_stamp(file, stamp, expected)
    return tensors


def load_object(file: Path, expected: Mapping[str, Any]) -> dict[str, Any]:
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(file))
    except pickle.UnpicklingError:
        raise CheckpointError(f"refused to load {file}: it asks to run code, so it was not written by this "
                              f"trainer") from None
    except (EOFError, RuntimeError, ValueError, struct.error, OSError) as e:
        raise CheckpointError(f"{file} is damaged ({first_line(e)}): delete {file.parent} to resume from "
                              f"an earlier checkpoint, or start over") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{file} does not hold what this trainer writes")
    _check_stamp(file, obj.get("stamp", {}), expected)
    return obj
