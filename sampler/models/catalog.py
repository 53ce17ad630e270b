"""The model catalog (models.json): every DMD2 file and the companions it needs, pinned by repo, revision and sha256.

The catalog is data that decides where bytes from the network are written, so every entry is checked when it is
built, not only by the JSON Schema in the tests (jsonschema is not a runtime dependency): a file name that could
leave the models folder or a repo that is not a Hugging Face repo id is refused before anything is downloaded.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..errors import CatalogError, UnknownModelError
from ..plans import TRAINED_TIMESTEPS
from .files import PICKLE_SUFFIXES

#: models.json at the pack root (the parent of this package), where ComfyUI-Manager and A1111 check the pack out.
DEFAULT_CATALOG = Path(__file__).resolve().parents[2] / "models.json"

KINDS = ("unet", "lora", "checkpoint", "vae", "taesd")
BASES = ("sdxl", "sd15")
DTYPES = ("fp16", "bf16", "fp32")
COMFYUI_FOLDERS = ("diffusion_models", "loras", "checkpoints", "vae", "vae_approx")
A1111_FOLDERS = ("Stable-diffusion", "Lora", "VAE", "VAE-approx")
#: Suffixes of pickle files: loaded only with torch.load(weights_only=True) and converted to .safetensors once.

_ID = re.compile(r"[a-z0-9][a-z0-9.-]{0,63}")
_REPO = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")
_FILENAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_REVISION = re.compile(r"[0-9a-f]{40}|[A-Za-z0-9][A-Za-z0-9_.-]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def check_repo_id(repo: str) -> str:
    """Return `repo` if it is a Hugging Face model repo id (`namespace/name`), else raise CatalogError.

    Refuses URLs, absolute paths and anything with `..`, so a catalog entry can only ever name a repo on the Hub.
    """
    if (not isinstance(repo, str) or len(repo) > 96 or not _REPO.fullmatch(repo) or ".." in repo or "--" in repo
            or repo.endswith(".git")):
        raise CatalogError(f"{repo!r} is not a Hugging Face repo id: expected 'namespace/name' "
                           f"(letters, digits, '-', '_', '.'), e.g. 'tianweiy/DMD2'")
    return repo


def check_filename(filename: str) -> str:
    """Return `filename` if it is a bare file name that stays inside the folder it is joined to, else raise.

    No separators, no leading dot, no `..`: the catalog decides where downloaded bytes land, so it must not be
    able to point outside the models folder (or at a hidden file such as a shell profile).
    """
    if (not isinstance(filename, str) or len(filename) > 255 or not _FILENAME.fullmatch(filename)
            or ".." in filename):
        raise CatalogError(f"file name {filename!r} is not a bare file name: it must not contain '/', '\\' or '..' "
                           f"nor start with '.', so that it cannot leave the models folder")
    return filename


def _is_number(value: Any) -> bool:
    """A JSON number: int or float, finite, and not a bool (in Python True == 1, in a catalog it is a mistake)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_count(value: Any) -> bool:
    """A positive integer that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@dataclass(frozen=True)
class Recommended:
    """Settings the DMD2 authors recommend: CFG 1 (no guidance) and, for the LoRA, its strength (and the range
    for community finetunes, low to high)."""

    cfg: float = 1.0
    lora_strength: float | None = None
    lora_strength_finetune: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if not _is_number(self.cfg) or self.cfg < 1:
            raise CatalogError(f"recommended.cfg must be a number >= 1, got {self.cfg!r}")
        if self.lora_strength is not None and not (_is_number(self.lora_strength) and self.lora_strength > 0):
            raise CatalogError(f"recommended.lora_strength must be a number > 0 or absent, got {self.lora_strength!r}")
        ft = self.lora_strength_finetune
        if ft is not None and not (isinstance(ft, (tuple, list)) and len(ft) == 2
                                   and all(_is_number(v) and v > 0 for v in ft) and ft[0] <= ft[1]):
            raise CatalogError(f"recommended.lora_strength_finetune must be [low, high], two numbers > 0 with "
                               f"low <= high, or absent; got {ft!r}")


@dataclass(frozen=True)
class Entry:
    """One file of the catalog. Built only through validation, so every instance is safe to download."""

    id: str
    name: str
    group: str
    repo: str
    filename: str
    revision: str
    sha256: str
    size: int | None
    kind: str
    base: str
    dtype: str
    plan: str | None
    steps: int | None
    recommended: Recommended | None
    license: str
    comfyui_folder: str
    a1111_folder: str | None
    notes: str = ""

    def __post_init__(self) -> None:
        where = f"catalog entry {self.id!r}"
        if not isinstance(self.id, str) or not _ID.fullmatch(self.id):
            raise CatalogError(f"{where}: id must be lower-case letters, digits, '-' and '.'")
        try:
            check_repo_id(self.repo)
            check_filename(self.filename)
        except CatalogError as e:
            raise CatalogError(f"{where}: {e}") from None
        if not isinstance(self.revision, str) or not _REVISION.fullmatch(self.revision):
            raise CatalogError(f"{where}: revision {self.revision!r} is not a commit hash or branch name")
        if not isinstance(self.sha256, str) or not _SHA256.fullmatch(self.sha256):
            raise CatalogError(f"{where}: sha256 must be 64 lower-case hex digits")
        if self.size is not None and not _is_count(self.size):
            raise CatalogError(f"{where}: size must be a positive whole number of bytes or null, got {self.size!r}")
        for field in ("name", "license"):
            if not isinstance(getattr(self, field), str) or not getattr(self, field):
                raise CatalogError(f"{where}: {field} must be a non-empty string, got {getattr(self, field)!r}")
        if not isinstance(self.notes, str):
            raise CatalogError(f"{where}: notes must be a string, got {self.notes!r}")
        if self.steps is not None and not _is_count(self.steps):
            raise CatalogError(f"{where}: steps must be a positive whole number or null, got {self.steps!r}")
        if self.recommended is not None and not isinstance(self.recommended, Recommended):
            raise CatalogError(f"{where}: recommended must be an object or null, got {self.recommended!r}")
        for field, label, allowed in (
                ("kind", "kind", KINDS), ("base", "base", BASES), ("dtype", "dtype", DTYPES),
                ("group", "group", ("dmd2", "companion")), ("plan", "plan", (*TRAINED_TIMESTEPS, None)),
                ("comfyui_folder", "hosts.comfyui", COMFYUI_FOLDERS),
                ("a1111_folder", "hosts.a1111", A1111_FOLDERS + (None,))):
            value = getattr(self, field)
            if not isinstance(value, (str, type(None))) or value not in allowed:
                raise CatalogError(f"{where}: {label} {value!r} is not one of {list(allowed)}")
        if self.group == "dmd2":
            if self.plan not in TRAINED_TIMESTEPS:
                raise CatalogError(f"{where}: a DMD2 file needs a plan, one of {sorted(TRAINED_TIMESTEPS)}; "
                                   f"got {self.plan!r}")
            if self.steps != len(TRAINED_TIMESTEPS[self.plan]):
                raise CatalogError(f"{where}: steps {self.steps} does not match plan {self.plan!r} "
                                   f"({len(TRAINED_TIMESTEPS[self.plan])} trained timesteps)")
            if self.recommended is None:
                raise CatalogError(f"{where}: a DMD2 file needs recommended settings")
        elif self.plan is not None or self.steps is not None:
            raise CatalogError(f"{where}: only DMD2 files have a plan and a step count")

    @property
    def trained_timesteps(self) -> tuple[int, ...] | None:
        """Timesteps this generator was trained on (from sampler.plans, the one definition), None for companions."""
        return TRAINED_TIMESTEPS[self.plan] if self.plan else None

    @property
    def url(self) -> str:
        """The file's download URL on the Hugging Face Hub, at the pinned revision."""
        return f"https://huggingface.co/{self.repo}/resolve/{self.revision}/{self.filename}"

    @property
    def is_pickle(self) -> bool:
        """True for .bin/.pt/.pth/.ckpt files, which are converted to .safetensors once their sha256 matched."""
        return self.filename.endswith(PICKLE_SUFFIXES)

    @property
    def converted_filename(self) -> str:
        """Name of the .safetensors copy of a pickle entry; a distinct name, as the release may use the plain one."""
        return self.filename.rsplit(".", 1)[0] + ".converted.safetensors"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Entry:
        """Build an entry from one object of models.json; CatalogError naming the entry and the field otherwise."""
        if not isinstance(data, dict):
            raise CatalogError(f"catalog entry must be an object, got {type(data).__name__}")
        where = f"catalog entry {data.get('id')!r}"
        expected = {"id", "name", "group", "repo", "filename", "revision", "sha256", "size", "kind", "base", "dtype",
                    "plan", "steps", "recommended", "license", "hosts", "notes"}
        if set(data) != expected:
            missing, extra = sorted(expected - set(data)), sorted(set(data) - expected)
            raise CatalogError(f"{where}: missing keys {missing}, unknown keys {extra}")
        hosts = data["hosts"]
        if not isinstance(hosts, dict) or set(hosts) != {"comfyui", "a1111"}:
            raise CatalogError(f"{where}: hosts must be an object with exactly 'comfyui' and 'a1111'")
        rec = data["recommended"]
        if rec is not None:
            if not isinstance(rec, dict) or "cfg" not in rec or not set(rec) <= {"cfg", "lora_strength",
                                                                                  "lora_strength_finetune"}:
                raise CatalogError(f"{where}: recommended must be an object with cfg and optionally lora_strength, "
                                   f"lora_strength_finetune, got {rec!r}")
            ft = rec.get("lora_strength_finetune")
            try:
                rec = Recommended(cfg=rec["cfg"], lora_strength=rec.get("lora_strength"),
                                  lora_strength_finetune=tuple(ft) if isinstance(ft, list) else ft)
            except CatalogError as e:
                raise CatalogError(f"{where}: {e}") from None
        fields = {k: v for k, v in data.items() if k not in ("hosts", "recommended")}
        return cls(**fields, recommended=rec, comfyui_folder=hosts["comfyui"], a1111_folder=hosts["a1111"])


@dataclass(frozen=True)
class Catalog:
    """All catalog entries, in models.json order, with lookups by id, sha256 and file name."""

    entries: tuple[Entry, ...]

    def __post_init__(self) -> None:
        ids = [e.id for e in self.entries]
        places = [(e.comfyui_folder, e.filename) for e in self.entries]
        for i, e in enumerate(self.entries):
            if ids.count(e.id) > 1:
                raise CatalogError(f"catalog id {e.id!r} appears twice")
            if places.count(places[i]) > 1:
                raise CatalogError(f"two catalog entries share the file {e.comfyui_folder}/{e.filename}")

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(e.id for e in self.entries)

    def get(self, model_id: str) -> Entry:
        """The entry with this id; UnknownModelError listing the valid ids otherwise."""
        for e in self.entries:
            if e.id == model_id:
                return e
        raise UnknownModelError(f"unknown model id {model_id!r}; the catalog has: {', '.join(self.ids)}")

    def by_sha256(self, sha256: str) -> Entry | None:
        """The entry whose file has this sha256 (how released files are recognised whatever they are named)."""
        return next((e for e in self.entries if e.sha256 == sha256.lower()), None)

    def by_filename(self, filename: str) -> Entry | None:
        """The entry released under this file name (or its converted .safetensors name): the fallback to sha256."""
        return next((e for e in self.entries if filename in (e.filename, e.converted_filename)), None)

    def dmd2(self) -> tuple[Entry, ...]:
        """Every released DMD2 file."""
        return tuple(e for e in self.entries if e.group == "dmd2")


def load_catalog(path: Path | str | None = None) -> Catalog:
    """Read and validate models.json (the pack's own when `path` is None)."""
    path = Path(path) if path is not None else DEFAULT_CATALOG
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CatalogError(f"model catalog {path} not found: reinstall the pack") from None
    except OSError as e:
        raise CatalogError(f"model catalog {path} cannot be read ({e.strerror}): reinstall the pack") from None
    except ValueError as e:  # JSONDecodeError, or bytes that are not UTF-8
        raise CatalogError(f"model catalog {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict) or data.get("version") != 1 or not isinstance(data.get("models"), list):
        raise CatalogError(f"model catalog {path}: expected {{'version': 1, 'models': [...]}}")
    entries = []
    for i, item in enumerate(data["models"]):
        try:
            entries.append(Entry.from_json(item))
        except CatalogError as e:
            raise CatalogError(f"model catalog {path}, models[{i}]: {e}") from None
    return Catalog(tuple(entries))
