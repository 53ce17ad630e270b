"""Verified downloads of catalog files through huggingface_hub.

A file only ever appears under its final name after its sha256 matched the catalog: huggingface_hub finds the file
(metadata, auth headers) and we stream it with the standard library into a hidden staging folder next to it
(resumable across runs: an interrupted download continues from its .part file; hf_hub_download itself discards
partial files on failure, and the download helpers huggingface_hub exposes change between the 0.x releases hosts pin
and 1.x), we hash it, and rename it into place
(atomic on the same filesystem). A mismatch deletes the staged file. Nothing here touches the network at import
time; offline mode and network failures end in an OfflineError that says where to put the file by hand.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import urllib.request
from pathlib import Path
from typing import Callable

from huggingface_hub import constants as hf_constants
from huggingface_hub import get_hf_file_metadata, hf_hub_url
from huggingface_hub.errors import (EntryNotFoundError, HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError,
                                    RevisionNotFoundError)
from huggingface_hub.file_download import HfFileMetadata
from huggingface_hub.utils import build_hf_headers
from tqdm.std import tqdm

from .catalog import Entry, check_filename
from ..errors import ChecksumError, DiskSpaceError, DownloadError, OfflineError

#: progress(stage, done, total): stage is "download" or "verify", done/total in bytes (total None when unknown).
#: The command line shows tqdm bars (`tqdm_progress`); ComfyUI's glue plugs its ProgressBar in here.
ProgressCallback = Callable[[str, int, int | None], None]

#: Per-folder record of files we hashed, so a multi-GB file is hashed once, not on every load.
HASH_CACHE = ".dmd2-sha256.json"
#: Per-folder staging area for downloads in flight (hidden, so hosts never list a half-written file).
STAGING = ".dmd2-partial"
_CHUNK = 8 << 20
_TRUTHY = {"1", "on", "yes", "true"}


def default_models_dir() -> Path:
    """Models folder of the command line: $DMD2_MODELS_DIR, else ~/.cache/dmd2/models."""
    env = os.environ.get("DMD2_MODELS_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "dmd2" / "models"


def target_path(entry: Entry, folder: Path | str) -> Path:
    """Where `entry` lives in `folder`; refuses any name that would resolve outside it (second line of defence)."""
    folder = Path(folder)
    path = folder / check_filename(entry.filename)
    if path.resolve().parent != folder.resolve():
        raise DownloadError(f"{entry.filename!r} would be written outside {folder}; refusing")
    return path


def tqdm_progress() -> ProgressCallback:
    """A progress callback that draws one tqdm bar per stage on the terminal (the command line's default)."""
    bars: dict[str, tqdm] = {}

    def report(stage: str, done: int, total: int | None) -> None:
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = tqdm(total=total, initial=done, unit="B", unit_scale=True, desc=stage)
        bar.update(done - bar.n)
        if total is not None and done >= total:
            bar.close()

    return report


def sha256_file(path: Path | str, progress: ProgressCallback | None = None) -> str:
    """sha256 of a file, read in 8 MiB chunks, reporting progress under the stage "verify"."""
    path = Path(path)
    total, done = path.stat().st_size, 0
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            done += len(chunk)
            if progress:
                progress("verify", done, total)
    return digest.hexdigest()


def _cache_key(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _read_cache(folder: Path) -> dict[str, list]:
    try:
        data = json.loads((folder / HASH_CACHE).read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def cached_sha256(path: Path | str) -> str | None:
    """The sha256 we recorded for this file, if it has not changed (same size and mtime) since; else None."""
    path = Path(path)
    record = _read_cache(path.parent).get(path.name)
    if isinstance(record, list) and len(record) == 3 and path.exists() and record[:2] == _cache_key(path):
        return record[2]
    return None


def _record_sha256(path: Path, sha256: str) -> None:
    cache = _read_cache(path.parent)
    cache[path.name] = [*_cache_key(path), sha256]
    tmp = path.parent / (HASH_CACHE + ".tmp")
    tmp.write_text(json.dumps(cache, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path.parent / HASH_CACHE)


def file_sha256(path: Path | str, progress: ProgressCallback | None = None, rehash: bool = False) -> str:
    """sha256 of a file, from the folder's hash record when the file is unchanged (unless `rehash`), else computed
    and recorded."""
    path = Path(path)
    sha = None if rehash else cached_sha256(path)
    if sha is None:
        sha = sha256_file(path, progress)
        try:
            _record_sha256(path, sha)
        except OSError:  # a read-only models folder still verifies, it just hashes again next time
            pass
    return sha


def verify_file(entry: Entry, path: Path | str, progress: ProgressCallback | None = None, rehash: bool = False) -> None:
    """Raise ChecksumError unless the file at `path` has the entry's size and sha256 (size first: it is free).

    The hash record trusts an unchanged size and mtime; `rehash` reads the whole file again regardless.
    """
    path = Path(path)
    size = path.stat().st_size
    if entry.size is not None and size != entry.size:
        raise ChecksumError(f"{path} is {size:,} bytes but {entry.id} is {entry.size:,}: the file is "
                            f"{'truncated' if size < entry.size else 'a different file'}. Delete it and run "
                            f"`python -m sampler models download {entry.id}`")
    sha = file_sha256(path, progress, rehash)
    if sha != entry.sha256:
        raise ChecksumError(f"{path} has sha256 {sha}, but {entry.id} is {entry.sha256}: the file is damaged or a "
                            f"different file. Delete it and run `python -m sampler models download {entry.id}`")


def is_offline() -> bool:
    """HF_HUB_OFFLINE as set now (huggingface_hub reads it only once, at import)."""
    env = os.environ.get("HF_HUB_OFFLINE")
    return env.strip().lower() in _TRUTHY if env is not None else bool(hf_constants.HF_HUB_OFFLINE)


def manual_download_hint(entry: Entry, folder: Path | str) -> str:
    """Where to get the file by hand and where to drop it, for messages shown when we cannot download."""
    return (f"Download https://huggingface.co/{entry.repo}/resolve/{entry.revision}/{entry.filename} by hand and "
            f"put it in {Path(folder)}/ (it is checked against sha256 {entry.sha256}).")


def _stream_to(url: str, f, have: int, size: int | None, progress: ProgressCallback) -> None:
    """Append the bytes of `url` after the first `have` to `f` (an HTTP Range request), reporting progress.

    A server that ignores the Range header sends the whole file: the partial bytes are dropped and it starts over.
    """
    headers = build_hf_headers()
    if have:
        headers["Range"] = f"bytes={have}-"
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60) as response:
        if have and response.status != 206:
            f.seek(0)
            f.truncate()
            have = 0
        progress("download", have, size)
        while chunk := response.read(_CHUNK):
            f.write(chunk)
            have += len(chunk)
            progress("download", have, size)
    if size is not None and have < size:
        raise ConnectionResetError(f"the connection closed after {have:,} of {size:,} bytes")


def _network_failure(error: Exception) -> bool:
    """True for connection-level failures; huggingface_hub raises its HTTP client's own types (requests, httpx or
    httpx2 depending on its version), so they are told apart by module rather than imported."""
    return isinstance(error, (OSError, http.client.HTTPException)) or type(error).__module__.split(".")[0] in ("requests", "urllib3", "httpx",
                                                                                  "httpx2", "httpcore")


def _remote_metadata(entry: Entry, folder: Path, endpoint: str | None) -> HfFileMetadata:
    """The Hub's metadata (size, download location) for the entry's file; the first and only probe of the network,
    so a missing connection fails here, fast, with the manual-download hint."""
    url = hf_hub_url(entry.repo, entry.filename, revision=entry.revision, endpoint=endpoint)
    try:
        return get_hf_file_metadata(url)
    except OfflineModeIsEnabled:
        raise OfflineError(f"HF_HUB_OFFLINE is set, so {entry.filename} ({entry.repo}) cannot be downloaded. "
                           f"{manual_download_hint(entry, folder)}") from None
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as e:
        raise DownloadError(f"{entry.repo}@{entry.revision} has no file {entry.filename} ({type(e).__name__}): "
                            f"the catalog entry {entry.id} is out of date") from None
    except HfHubHTTPError as e:
        raise DownloadError(f"the Hub refused {entry.filename} ({entry.repo}): {e}") from None
    except Exception as e:
        if _network_failure(e):
            raise OfflineError(f"cannot reach the Hugging Face Hub to download {entry.filename} ({entry.repo}): "
                               f"{e}. {manual_download_hint(entry, folder)}") from None
        raise


def check_disk_space(folder: Path, needed: int, what: str) -> None:
    """Raise DiskSpaceError unless `folder`'s filesystem has `needed` bytes free (checked before starting)."""
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise DiskSpaceError(f"{what} needs {needed / 1e9:.2f} GB free in {folder}, but only {free / 1e9:.2f} GB "
                             f"is free. Free some space, or choose a models folder on a bigger disk "
                             f"(--models-dir or DMD2_MODELS_DIR)")


def fetch_entry(entry: Entry, folder: Path | str, progress: ProgressCallback | None = None, *,
                endpoint: str | None = None) -> Path:
    """Download `entry` into `folder` unless a verified copy is there; return the path of the verified file.

    The bytes go to <folder>/.dmd2-partial/<file>.part first; an interrupted download continues from there on the
    next call (HTTP Range), one whose bytes turn out wrong is deleted and the next call starts clean. `progress` gets
    download and verify byte counts (None: tqdm bars). `endpoint` overrides the Hub URL (the
    tests use a local server). A file already under the final name that does not match is the user's, so it is
    reported (ChecksumError), never overwritten.
    """
    folder = Path(folder)
    dest = target_path(entry, folder)
    if dest.exists():
        verify_file(entry, dest, progress)
        return dest
    if is_offline():
        raise OfflineError(f"HF_HUB_OFFLINE is set, so {entry.filename} ({entry.repo}) cannot be downloaded. "
                           f"{manual_download_hint(entry, folder)}")
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / STAGING
    part = staging / (entry.filename + ".part")
    have = part.stat().st_size if part.exists() else 0
    if entry.size is not None:
        check_disk_space(folder, entry.size - have, entry.filename)
    meta = _remote_metadata(entry, folder, endpoint)
    size = entry.size if entry.size is not None else meta.size
    if size is not None and have > size:  # not a prefix of this file: start over
        part.unlink()
        have = 0
    if entry.size is None and size is not None:
        check_disk_space(folder, size - have, entry.filename)

    staging.mkdir(parents=True, exist_ok=True)
    with part.open("r+b" if have else "wb") as f:
        f.seek(have)
        try:
            _stream_to(meta.location, f, have, size, progress or tqdm_progress())
        except Exception as e:
            if not (isinstance(e, HfHubHTTPError) or _network_failure(e)):
                raise
            raise DownloadError(f"downloading {entry.filename} from {entry.repo} was interrupted after "
                                f"{f.tell():,} bytes ({str(e).splitlines()[0]}). Run the command again to resume "
                                f"from there") from None
    sha = sha256_file(part, progress)
    if sha != entry.sha256 or (entry.size is not None and part.stat().st_size != entry.size):
        part.unlink()
        _remove_if_empty(staging)
        raise ChecksumError(f"downloaded {entry.filename} from {entry.repo} has sha256 {sha}, expected "
                            f"{entry.sha256}; the partial file was deleted. Run the command again to start over")
    os.replace(part, dest)
    _remove_if_empty(staging)
    _record_sha256(dest, sha)
    return dest


def _remove_if_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:  # another download is staged there
        pass
