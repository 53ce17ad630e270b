"""Verified downloads of catalog files through huggingface_hub.

A file only ever appears under its final name after its sha256 matched the catalog: huggingface_hub finds the file
(metadata, auth headers) and we stream it with the standard library into a hidden staging folder next to it
(resumable across runs: an interrupted download continues from its .part file; hf_hub_download itself discards
partial files on failure, and the download helpers huggingface_hub exposes change between the 0.x releases hosts pin
and 1.x), we hash it, and rename it into place
(atomic on the same filesystem). A mismatch deletes the staged file. Nothing here touches the network at import
time; offline mode and network failures end in an OfflineError that says where to put the file by hand.

What a misbehaving server or a second downloader cannot do: write more than the file's expected size (the stream
is cut there), leave an empty .part behind, or make two downloads of one file write the same .part (a lock per
file: the second waits, then reuses the first's result or resumes its bytes). Errors say whether running again can
help (a dropped connection, HTTP 429 / 5xx) or not (HTTP 401 / 403 / 404: a login or an updated catalog is needed).
Models folders may be symlinks and model files symlinks to a shared folder: reads follow them; writes go only to
the folder itself (never through a symlinked name).
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import json
import os
import shutil
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from filelock import FileLock, Timeout
from huggingface_hub import constants as hf_constants
from huggingface_hub import get_hf_file_metadata, hf_hub_url
from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, HfHubHTTPError, OfflineModeIsEnabled,
                                    RepositoryNotFoundError, RevisionNotFoundError)
from huggingface_hub.file_download import HfFileMetadata
from huggingface_hub.utils import build_hf_headers
from tqdm.std import tqdm

from .catalog import Entry, check_filename
from .files import atomic_writer, broken_link, check_output_folder, check_readable_file
from ..errors import ChecksumError, DiskSpaceError, DownloadError, OfflineError, first_line

#: progress(stage, done, total): stage is "download", "verify", or "wait" (another process is downloading the file:
#: done is its progress), done/total in bytes (total None when unknown).
#: The command line shows tqdm bars (`tqdm_progress`); ComfyUI's glue plugs its ProgressBar in here.
ProgressCallback = Callable[[str, int, int | None], None]

#: Per-folder record of files we hashed, so a multi-GB file is hashed once, not on every load.
HASH_CACHE = ".dmd2-sha256.json"
#: Per-folder staging area for downloads in flight (hidden, so hosts never list a half-written file).
STAGING = ".dmd2-partial"
_CHUNK = 8 << 20
#: errno values of a failed write to our own disk (full, over quota, read-only, failing), not of the connection.
_DISK_ERRORS = {getattr(errno, name) for name in ("ENOSPC", "EDQUOT", "EROFS", "EIO") if hasattr(errno, name)}
_TRUTHY = {"1", "on", "yes", "true"}


def default_models_dir() -> Path:
    """Models folder of the command line: $DMD2_MODELS_DIR, else ~/.cache/dmd2/models."""
    env = os.environ.get("DMD2_MODELS_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "dmd2" / "models"


def target_path(entry: Entry, folder: Path | str) -> Path:
    """Where `entry` lives in `folder`: the entry's bare file name joined to it (check_filename refuses anything
    else). Nothing is resolved: the folder and the file may be symlinks (a models folder shared between hosts)."""
    return Path(folder) / check_filename(entry.filename)


def writable_target(path: Path) -> Path:
    """`path` (a target_path) if a download may create it: not a symlink (replacing it would silently unlink the
    user's link), not under a folder that is a broken or looping link."""
    link = broken_link(path)
    if link is not None:
        raise DownloadError(f"cannot download to {path}: {link}. Fix the link, or remove it to download the file "
                            f"here")
    if path.is_symlink():
        raise DownloadError(f"{path} is a symbolic link: refusing to replace it; remove it to download here")
    return path


def staging_folder(folder: Path) -> Path:
    """<folder>/.dmd2-partial, created if needed; refused if it is a symlink (bytes would land outside `folder`)."""
    staging = folder / STAGING
    if staging.is_symlink() or (staging.exists() and not staging.is_dir()):
        raise DownloadError(f"{staging} is not a folder this pack made (a symlink or a file): remove it and run the "
                            f"command again")
    staging.mkdir(exist_ok=True)
    return staging


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
    if (isinstance(record, list) and len(record) == 3 and isinstance(record[2], str) and path.is_file()
            and record[:2] == _cache_key(path)):
        return record[2]
    return None


def _record_sha256(path: Path, sha256: str) -> None:
    cache = _read_cache(path.parent)
    cache[path.name] = [*_cache_key(path), sha256]
    with atomic_writer(path.parent / HASH_CACHE) as f:
        f.write(json.dumps(cache, indent=1, sort_keys=True).encode("utf-8"))


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
    path = check_readable_file(path)
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
    return f"Download {entry.url} by hand and put it in {Path(folder)}/ (it is checked against sha256 {entry.sha256})."


def _network_failure(error: Exception) -> bool:
    """True for connection-level failures; huggingface_hub raises its HTTP client's own types (requests, httpx or
    httpx2 depending on its version), so they are told apart by module rather than imported."""
    return isinstance(error, (OSError, http.client.HTTPException)) or type(error).__module__.split(".")[0] in (
        "requests", "urllib3", "httpx", "httpx2", "httpcore")


def _http_status(error: Exception) -> int | None:
    """The HTTP status of a failed request (urllib's HTTPError or huggingface_hub's HfHubHTTPError), if any."""
    if isinstance(error, urllib.error.HTTPError):
        return error.code
    return getattr(getattr(error, "response", None), "status_code", None)


def http_failure(entry: Entry, status: int, folder: Path, have: int = 0) -> DownloadError:
    """The error for an HTTP status that ended a download: what it means and whether running again can help.

    401 / 403 / 404 / 410 and other 4xx are permanent (a login or an updated catalog is needed, so nothing is kept
    to resume); 429 and 5xx are the server's passing trouble (the bytes so far are kept, a rerun resumes)."""
    what = f"{entry.filename} ({entry.repo})"
    if status in (401, 403):
        return DownloadError(f"the Hub refused {what} with HTTP {status}: the repository may be gated or private. "
                             f"Accept its terms on https://huggingface.co/{entry.repo} and log in "
                             f"(`hf auth login` or HF_TOKEN), or {manual_download_hint(entry, folder)}")
    if status in (404, 410):
        return DownloadError(f"the Hub has no {what} at revision {entry.revision} (HTTP {status}): the catalog entry "
                             f"{entry.id} is out of date; update the pack")
    if status == 429 or status >= 500:
        why = "HTTP 429, too many requests" if status == 429 else f"HTTP {status}"
        kept = f"; the {have:,} bytes so far are kept and a rerun resumes from there" if have else ""
        return DownloadError(f"the Hub could not serve {what} right now ({why}): wait a few minutes and run the "
                             f"command again{kept}")
    return DownloadError(f"the Hub refused {what} with HTTP {status}: {manual_download_hint(entry, folder)}")


def _open_stream(url: str, have: int, size: int) -> http.client.HTTPResponse:
    """The response for the bytes of `url` from `have` on (an HTTP Range request), after checking the server is
    about to send this file: its declared total must be `size` (else it is a different file or a broken server)."""
    headers = build_hf_headers()
    if have:
        headers["Range"] = f"bytes={have}-"
    response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60)
    declared = response.headers.get("Content-Range", "").rpartition("/")[2] if response.status == 206 else \
        response.headers.get("Content-Length")
    if declared and declared.isdigit() and int(declared) != size:
        response.close()
        raise DownloadError(f"the server sends a file of {int(declared):,} bytes where {size:,} are expected: it "
                            f"is a different file, or the server is misbehaving; nothing was kept")
    return response


def _stream_to(response: http.client.HTTPResponse, f: BinaryIO, have: int, size: int,
               progress: ProgressCallback) -> int:
    """Append the response's bytes to `f`, which holds the first `have` bytes, stopping at `size` however much the
    server would send (a misbehaving server cannot fill the disk). Returns the bytes now in `f`.

    A server that ignores the Range header sends the whole file: the partial bytes are dropped and it starts over.
    """
    if have and response.status != 206:
        f.seek(0)
        f.truncate()
        have = 0
    progress("download", have, size)
    while have < size and (chunk := response.read(min(_CHUNK, size - have))):
        f.write(chunk)
        have += len(chunk)
        progress("download", have, size)
    if have < size:
        raise ConnectionResetError(f"the connection closed after {have:,} of {size:,} bytes")
    return have


def _remote_metadata(entry: Entry, folder: Path, endpoint: str | None) -> HfFileMetadata:
    """The Hub's metadata (size, download location) for the entry's file; the first and only probe of the network,
    so a missing connection fails here, fast, with the manual-download hint."""
    url = hf_hub_url(entry.repo, entry.filename, revision=entry.revision, endpoint=endpoint)
    try:
        return get_hf_file_metadata(url)
    except OfflineModeIsEnabled:
        raise OfflineError(f"HF_HUB_OFFLINE is set, so {entry.filename} ({entry.repo}) cannot be downloaded. "
                           f"{manual_download_hint(entry, folder)}") from None
    except GatedRepoError:
        raise http_failure(entry, 403, folder) from None
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as e:
        raise DownloadError(f"{entry.repo}@{entry.revision} has no file {entry.filename} ({type(e).__name__}): "
                            f"the catalog entry {entry.id} is out of date") from None
    except HfHubHTTPError as e:
        status = _http_status(e)
        if status is not None:
            raise http_failure(entry, status, folder) from None
        raise DownloadError(f"the Hub refused {entry.filename} ({entry.repo}): {first_line(e)}") from None
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


@contextmanager
def download_lock(staging: Path, filename: str, progress: ProgressCallback, size: int | None = None,
                  poll: float = 0.5) -> Iterator[None]:
    """Hold the lock of one file's download (a lock file in the staging folder, released when the process ends
    however it ends): a second download of the same file, from another process or thread, waits here and reports
    the first one's progress under the stage "wait"."""
    lock = FileLock(str(staging / (filename + ".lock")))
    part = staging / (filename + ".part")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        while True:
            progress("wait", part.stat().st_size if part.is_file() else 0, size)
            try:
                lock.acquire(timeout=poll)
                break
            except Timeout:
                continue
        progress("wait", size or 0, size)  # the wait is over (a progress bar closes at its total)
    try:
        yield
    finally:
        lock.release()


def fetch_entry(entry: Entry, folder: Path | str, progress: ProgressCallback | None = None, *,
                endpoint: str | None = None) -> Path:
    """Download `entry` into `folder` unless a verified copy is there; return the path of the verified file.

    The bytes go to <folder>/.dmd2-partial/<file>.part first, never more than the file's size; an interrupted
    download continues from there on the next call (HTTP Range), one whose bytes turn out wrong is deleted and the
    next call starts clean. A second call for the same file while one runs (another process, or a ComfyUI node and
    the command line) waits for it and then uses its result. `progress` gets download, verify and wait byte counts
    (None: tqdm bars). `endpoint` overrides the Hub URL (the tests use a local server). A file already under the
    final name (or a symlink to one) that does not match is the user's, so it is reported (ChecksumError), never
    overwritten.
    """
    folder = Path(folder)
    dest = target_path(entry, folder)
    progress = progress or tqdm_progress()
    if dest.exists():
        verify_file(entry, dest, progress)
        return dest
    writable_target(dest)
    if is_offline():
        raise OfflineError(f"HF_HUB_OFFLINE is set, so {entry.filename} ({entry.repo}) cannot be downloaded. "
                           f"{manual_download_hint(entry, folder)}")
    check_output_folder(folder)  # a file in the way, no permission: said now, not as an OSError from mkdir
    folder.mkdir(parents=True, exist_ok=True)
    staging = staging_folder(folder)
    with download_lock(staging, entry.filename, progress, entry.size):
        if dest.exists():  # another download finished it while we waited
            verify_file(entry, dest, progress)
            return dest
        sha = _download(entry, folder, staging / (entry.filename + ".part"), progress, endpoint)
        os.replace(staging / (entry.filename + ".part"), writable_target(dest))
    _record_sha256(dest, sha)
    return dest


def _download(entry: Entry, folder: Path, part: Path, progress: ProgressCallback, endpoint: str | None) -> str:
    """Bring `part` to the entry's complete, verified bytes (resuming what it holds); return their sha256.

    Never leaves an empty part behind, nor one that cannot be resumed (a permanent HTTP error or a checksum
    mismatch deletes it)."""
    if part.is_symlink():
        raise DownloadError(f"{part} is a symlink, not a download this pack started: remove it and run again")
    have = part.stat().st_size if part.exists() else 0
    if entry.size is not None:
        check_disk_space(folder, entry.size - min(have, entry.size), entry.filename)
    meta = _remote_metadata(entry, folder, endpoint)
    if entry.size is not None and meta.size is not None and meta.size != entry.size:
        raise DownloadError(f"the Hub's {entry.filename} ({entry.repo}) is {meta.size:,} bytes but the catalog "
                            f"entry {entry.id} says {entry.size:,}: the entry is out of date; nothing was downloaded")
    size = entry.size if entry.size is not None else meta.size
    if size is None:
        raise DownloadError(f"neither the catalog nor the Hub gives the size of {entry.filename} ({entry.repo}), so "
                            f"the download could not be bounded; nothing was downloaded. "
                            f"{manual_download_hint(entry, folder)}")
    if have > size:  # not a prefix of this file: start over
        part.unlink()
        have = 0
    if entry.size is None:
        check_disk_space(folder, size - have, entry.filename)
    try:
        _fetch_bytes(entry, folder, part, meta.location, have, size, progress)
    finally:
        if part.exists() and part.stat().st_size == 0:
            part.unlink()
    sha = sha256_file(part, progress)
    if sha != entry.sha256 or part.stat().st_size != size:
        part.unlink()
        raise ChecksumError(f"downloaded {entry.filename} from {entry.repo} has sha256 {sha}, expected "
                            f"{entry.sha256}; the partial file was deleted. Run the command again to start over")
    return sha


def _fetch_bytes(entry: Entry, folder: Path, part: Path, url: str, have: int, size: int,
                 progress: ProgressCallback) -> None:
    """Stream the missing bytes into `part`, turning every failure into a DownloadError that says whether a rerun
    can help: permanent HTTP errors delete the part, passing ones keep it for the rerun to resume."""
    try:
        response = _open_stream(url, have, size)
    except Exception as e:
        status = _http_status(e)
        if status == 416:  # the part is no prefix the server recognises: start clean next time
            part.unlink(missing_ok=True)
            raise DownloadError(f"the server refused to resume {entry.filename} (HTTP 416); the partial file was "
                                f"deleted. Run the command again to start over") from None
        if status is not None:
            error = http_failure(entry, status, folder, have)
            if not (status == 429 or status >= 500):
                part.unlink(missing_ok=True)
            raise error from None
        if isinstance(e, DownloadError):  # the server announced another file: what we have is not its prefix
            part.unlink(missing_ok=True)
            raise
        if not _network_failure(e):
            raise
        raise DownloadError(f"could not connect to download {entry.filename} from {entry.repo} "
                            f"({first_line(e)}). Run the command again"
                            f"{f' to resume from {have:,} bytes' if have else ''}") from None
    # O_NOFOLLOW: the part is written where it is, never through a symlink put in its place.
    fd = os.open(part, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0), 0o666)
    with response, os.fdopen(fd, "r+b") as f:
        f.seek(have)
        f.truncate()
        try:
            _stream_to(response, f, have, size, progress)
        except OSError as e:
            if e.errno in _DISK_ERRORS:  # our disk, not the connection
                raise DownloadError(f"could not write {part} ({e.strerror}) after {f.tell():,} bytes: free some "
                                    f"space or choose another models folder (--models-dir or DMD2_MODELS_DIR); "
                                    f"a rerun resumes from there") from None
            raise _interrupted(entry, f.tell(), e) from None
        except Exception as e:
            if not _network_failure(e):
                raise
            raise _interrupted(entry, f.tell(), e) from None


def _interrupted(entry: Entry, have: int, error: Exception) -> DownloadError:
    return DownloadError(f"downloading {entry.filename} from {entry.repo} was interrupted after {have:,} bytes "
                         f"({first_line(error)}). Run the command again to resume from there")
