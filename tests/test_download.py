"""Downloads through huggingface_hub against a local Hub look-alike on loopback (never the real Hub)."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from huggingface_hub import constants as hf_constants

from sampler.models.catalog import load_catalog
from sampler.models.download import STAGING, fetch_entry, verify_file
from sampler.errors import ChecksumError, DiskSpaceError, DownloadError, OfflineError, OutputPathError

COMMIT = "0123456789abcdef0123456789abcdef01234567"
PAYLOAD = os.urandom(300_000)
ENTRY = replace(load_catalog().get("dmd2-sdxl-4step-lora-fp16"), sha256=hashlib.sha256(PAYLOAD).hexdigest(),
                size=len(PAYLOAD))


class FakeHub(ThreadingHTTPServer):
    """Serves /<repo>/resolve/<revision>/<file> like huggingface.co: HEAD metadata, GET with Range."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), HubHandler)
        self.files = {f"/{ENTRY.repo}/resolve/{ENTRY.revision}/{ENTRY.filename}": PAYLOAD}
        self.requests: list[tuple[str, str, str | None]] = []
        self.drop_after: int | None = None  # cut the next GET after this many bytes
        self.fail_gets = False  # answer every GET with 503 (the network went away mid-download)
        self.get_status: int | None = None  # answer every GET with this HTTP status
        self.head_status: int | None = None  # answer every HEAD with this HTTP status
        self.flood: int | None = None  # after the file, send this many more bytes, with no Content-Length
        self.declared: int | None = None  # a GET declares this Content-Length (a server lying about the size)
        self.pace: float = 0.0  # seconds between 16 KB pieces of a GET (a slow server, for concurrent downloads)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class HubHandler(BaseHTTPRequestHandler):
    server: FakeHub

    def log_message(self, *args):
        pass

    def _headers(self, status: int, data: bytes, start: int = 0) -> None:
        self.send_response(status)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", '"' + hashlib.sha256(data).hexdigest() + '"')
        self.send_header("Content-Length", str(len(data) - start))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()

    def _status_only(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_HEAD(self):
        self.server.requests.append(("HEAD", self.path, None))
        if self.server.head_status:
            return self._status_only(self.server.head_status)
        data = self.server.files.get(self.path)
        if data is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.end_headers()
            return
        self._headers(200, data)

    def do_GET(self):
        rng = self.headers.get("Range")
        self.server.requests.append(("GET", self.path, rng))
        data = self.server.files[self.path]
        if self.server.fail_gets or self.server.get_status:
            return self._status_only(self.server.get_status or 503)
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        body = data[start:]
        if self.server.flood is not None or self.server.declared is not None:
            self.send_response(200)
            if self.server.declared is not None:
                self.send_header("Content-Length", str(self.server.declared))
            self.end_headers()
            try:
                self.wfile.write(body + os.urandom(self.server.flood or 0))
            except OSError:  # the client stopped reading, as it should
                pass
            return
        self._headers(206 if start else 200, data, start)
        if self.server.pace:
            for i in range(0, len(body), 16384):
                self.wfile.write(body[i:i + 16384])
                self.wfile.flush()
                threading.Event().wait(self.server.pace)
            return
        if self.server.drop_after is not None:
            body, self.server.drop_after = body[:self.server.drop_after], None
            self.server.fail_gets = True
            self.wfile.write(body)
            self.wfile.flush()
            threading.Event().wait(0.3)  # let the client take in what it got (time.sleep is patched out)
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)


def leftovers(folder: Path) -> list[str]:
    """Every file a download left in `folder` (its staging folder included), less the download locks and the hash
    record: what a user would find."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.is_file() and p.suffix != ".lock" and p.name != ".dmd2-sha256.json")


@pytest.fixture
def hub(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(time, "sleep", lambda s: None)  # huggingface_hub backs off between retries
    monkeypatch.setattr(hf_constants, "DOWNLOAD_CHUNK_SIZE", 1 << 16)  # write to disk before the connection drops
    server = FakeHub()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_download_verifies_then_renames(hub, tmp_path):
    seen = []
    path = fetch_entry(ENTRY, tmp_path, progress=lambda stage, done, total: seen.append((stage, done, total)),
                       endpoint=hub.endpoint)
    assert path == tmp_path / ENTRY.filename and path.read_bytes() == PAYLOAD
    assert ("download", len(PAYLOAD), len(PAYLOAD)) in seen and ("verify", len(PAYLOAD), len(PAYLOAD)) in seen
    assert leftovers(tmp_path) == [ENTRY.filename]
    # A second call finds the verified file and touches nothing on the network.
    before = len(hub.requests)
    assert fetch_entry(ENTRY, tmp_path, endpoint=hub.endpoint) == path and len(hub.requests) == before


def test_sha256_mismatch_deletes_the_partial_file(hub, tmp_path):
    wrong = replace(ENTRY, sha256="0" * 64)
    with pytest.raises(ChecksumError, match="partial file was deleted"):
        fetch_entry(wrong, tmp_path, endpoint=hub.endpoint)
    assert leftovers(tmp_path) == []


def test_interrupted_download_resumes(hub, tmp_path):
    hub.drop_after = len(PAYLOAD) // 2
    with pytest.raises(DownloadError, match="run the command again|Run the command again"):
        fetch_entry(ENTRY, tmp_path, endpoint=hub.endpoint)
    assert not (tmp_path / ENTRY.filename).exists()
    (partial,) = (tmp_path / STAGING).glob("*.part")
    have = partial.stat().st_size
    assert 0 < have <= len(PAYLOAD) // 2 and partial.read_bytes() == PAYLOAD[:have]
    hub.fail_gets = False
    path = fetch_entry(ENTRY, tmp_path, endpoint=hub.endpoint)
    assert path.read_bytes() == PAYLOAD and leftovers(tmp_path) == [ENTRY.filename]
    assert hub.requests[-1][::2] == ("GET", f"bytes={have}-")  # only the missing bytes were fetched


def test_corrupt_partial_restarts_clean(hub, tmp_path):
    hub.drop_after = len(PAYLOAD) // 2
    with pytest.raises(DownloadError):
        fetch_entry(ENTRY, tmp_path, endpoint=hub.endpoint)
    (partial,) = (tmp_path / STAGING).glob("*.part")
    partial.write_bytes(b"\0" * partial.stat().st_size)  # the bytes on disk went bad
    hub.fail_gets = False
    with pytest.raises(ChecksumError, match="deleted"):
        fetch_entry(ENTRY, tmp_path, endpoint=hub.endpoint)
    assert leftovers(tmp_path) == []
    assert fetch_entry(ENTRY, tmp_path, endpoint=hub.endpoint).read_bytes() == PAYLOAD


def test_no_disk_space(hub, tmp_path, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**12, 10**12 - 1000, 1000))
    with pytest.raises(DiskSpaceError, match=r"needs 0\.00 GB free .*only 0\.00 GB"):
        fetch_entry(ENTRY, tmp_path, endpoint=hub.endpoint)
    assert hub.requests == [] and not (tmp_path / ENTRY.filename).exists()


def test_unknown_size_asks_the_hub_first(hub, tmp_path, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**12, 10**12 - 1000, 1000))
    with pytest.raises(DiskSpaceError):
        fetch_entry(replace(ENTRY, size=None), tmp_path, endpoint=hub.endpoint)
    assert [r[0] for r in hub.requests] == ["HEAD"]


def test_offline_names_file_repo_and_folder(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OfflineError) as err:
        fetch_entry(ENTRY, tmp_path / "loras", endpoint=hub.endpoint)
    msg = str(err.value)
    assert ENTRY.filename in msg and ENTRY.repo in msg and str(tmp_path / "loras") in msg
    assert hub.requests == []


def test_no_network(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(time, "sleep", lambda s: None)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(OfflineError, match=f"{ENTRY.filename}.*{ENTRY.repo}.*put it in {tmp_path}"):
        fetch_entry(ENTRY, tmp_path, endpoint=f"http://127.0.0.1:{port}")


def test_missing_remote_file(hub, tmp_path):
    with pytest.raises(DownloadError, match="out of date"):
        fetch_entry(replace(ENTRY, filename="gone.safetensors"), tmp_path, endpoint=hub.endpoint)


def test_existing_wrong_file_is_reported_not_replaced(hub, tmp_path):
    (tmp_path / ENTRY.filename).write_bytes(PAYLOAD[:1000])
    with pytest.raises(ChecksumError, match="truncated"):
        fetch_entry(ENTRY, tmp_path, endpoint=hub.endpoint)
    assert (tmp_path / ENTRY.filename).read_bytes() == PAYLOAD[:1000] and hub.requests == []
    (tmp_path / ENTRY.filename).write_bytes(PAYLOAD[::-1])
    with pytest.raises(ChecksumError, match="sha256"):
        verify_file(ENTRY, tmp_path / ENTRY.filename)


def test_no_network_at_import():
    """Importing the core's catalog, download and checkpoint modules opens no socket."""
    code = ("import socket\n"
            "def refuse(*a, **k): raise AssertionError('network at import')\n"
            "socket.socket.connect = refuse; socket.create_connection = refuse; socket.getaddrinfo = refuse\n"
            "import sampler.models.catalog, sampler.models.download, sampler.models.checkpoints, sampler.models.cli\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent)


def run_cli(*argv: str) -> int:
    """`python -m sampler models ...` through the command line's error boundary (in this process)."""
    from sampler.app.cli import main

    return main(list(argv))


def test_one_command_from_nothing_to_every_dmd2_file_verified(hub, tmp_path, monkeypatch, capsys):
    import functools

    import sampler.models.cli as cli
    from sampler.models.catalog import Catalog

    lora_bytes = os.urandom(1000)
    lora = replace(load_catalog().get("dmd2-sdxl-4step-lora-fp32"), sha256=hashlib.sha256(lora_bytes).hexdigest(),
                   size=None)
    hub.files[f"/{lora.repo}/resolve/{lora.revision}/{lora.filename}"] = lora_bytes
    catalog = Catalog((ENTRY, lora, load_catalog().get("taesd")))
    monkeypatch.setattr(cli, "load_catalog", lambda: catalog)
    monkeypatch.setattr(cli, "fetch_entry", functools.partial(fetch_entry, endpoint=hub.endpoint))

    assert run_cli("models", "download", "--all-dmd2", "--models-dir", str(tmp_path)) == 0
    assert (tmp_path / "loras" / ENTRY.filename).read_bytes() == PAYLOAD
    assert (tmp_path / "loras" / lora.filename).read_bytes() == lora_bytes
    assert not (tmp_path / "vae_approx").exists()  # a companion, not a DMD2 file
    assert "all 2 files verified" in capsys.readouterr().out

    run_cli("models", "list", "--models-dir", str(tmp_path))
    listing = capsys.readouterr().out
    assert f"{ENTRY.id}" in listing and listing.count("verified") == 2 and "missing" in listing
    assert run_cli("models", "verify", "--models-dir", str(tmp_path)) == 0

    (tmp_path / "loras" / lora.filename).write_bytes(lora_bytes[::-1])  # same size, different bytes
    capsys.readouterr()
    assert run_cli("models", "verify", "--models-dir", str(tmp_path)) == 1
    assert f"BAD       {lora.id}" in capsys.readouterr().out
    # A failed entry does not stop the others, and the exit status says so.
    assert run_cli("models", "download", ENTRY.id, "taesd", "--models-dir", str(tmp_path)) == 1
    assert "1 of 2 failed: taesd" in capsys.readouterr().out


def test_cli_unknown_id_and_where(capsys, tmp_path):
    assert run_cli("models", "download", "dmd2-sdxl-8step", "--models-dir", str(tmp_path)) == 1
    assert "unknown model id 'dmd2-sdxl-8step'; the catalog has: dmd2-sdxl-4step-unet-fp16" in capsys.readouterr().err
    assert run_cli("models", "where", "dmd2-sdxl-4step-lora-fp16", "dmd2-sdxl-4step-unet-fp16",
                   "--models-dir", str(tmp_path)) == 0
    out = capsys.readouterr().out
    assert "ComfyUI/models/loras/dmd2_sdxl_4step_lora_fp16.safetensors" in out
    assert "stable-diffusion-webui/models/Lora/dmd2_sdxl_4step_lora_fp16.safetensors" in out
    assert "ComfyUI/models/diffusion_models/dmd2_sdxl_4step_unet_fp16.safetensors" in out
    assert "A1111 cannot load a UNet-only" in out
    assert str(tmp_path / "loras" / "dmd2_sdxl_4step_lora_fp16.safetensors") in out


# --- misbehaving servers, parallel downloads, shared (symlinked) models folders -----------------------------------

def watched(part_folder: Path, seen: list[int]):
    """A progress callback that records the size of the .part on disk at every download report."""

    def report(stage, done, total):
        if stage == "download":
            seen.extend(p.stat().st_size for p in part_folder.glob("*.part"))
    return report


def test_a_server_sending_more_than_the_file_is_cut_at_its_size(hub, tmp_path):
    """No Content-Length and 3 MB more than the 300 kB file: the .part never grows past the file's size, and the
    stream is cut there (the bytes are the file's, so it is verified and kept)."""
    hub.flood = 3_000_000
    sizes: list[int] = []
    path = fetch_entry(ENTRY, tmp_path, progress=watched(tmp_path / STAGING, sizes), endpoint=hub.endpoint)
    assert path.read_bytes() == PAYLOAD and max(sizes) <= len(PAYLOAD)


def test_a_server_sending_another_file_leaves_nothing(hub, tmp_path):
    """A body of the right size but other bytes fails the checksum; the .part never passed the size and is gone."""
    hub.files[next(iter(hub.files))] = os.urandom(len(PAYLOAD))  # HEAD and GET agree, the bytes are wrong
    hub.flood = 10 * len(PAYLOAD)
    sizes: list[int] = []
    with pytest.raises(ChecksumError, match="partial file was deleted"):
        fetch_entry(ENTRY, tmp_path, progress=watched(tmp_path / STAGING, sizes), endpoint=hub.endpoint)
    assert max(sizes) <= len(PAYLOAD) and leftovers(tmp_path) == []


def test_a_server_announcing_another_size_is_refused_before_a_byte(hub, tmp_path):
    hub.declared = 23 * len(PAYLOAD)
    with pytest.raises(DownloadError, match=f"sends a file of {23 * len(PAYLOAD):,} bytes where {len(PAYLOAD):,}"):
        fetch_entry(ENTRY, tmp_path, endpoint=hub.endpoint)
    assert leftovers(tmp_path) == []


def test_the_hub_and_the_catalog_disagreeing_on_the_size_downloads_nothing(hub, tmp_path):
    with pytest.raises(DownloadError, match="catalog entry .* says 300,001: the entry is out of date"):
        fetch_entry(replace(ENTRY, size=len(PAYLOAD) + 1), tmp_path, endpoint=hub.endpoint)
    assert [r[0] for r in hub.requests] == ["HEAD"] and leftovers(tmp_path) == []


@pytest.mark.parametrize("status, words, retry", [
    (404, "out of date; update the pack", False), (410, "out of date", False),
    (403, "gated or private.*HF_TOKEN", False), (401, "gated or private", False),
    (429, "too many requests.*run the command again", True), (500, "run the command again", True),
    (503, "run the command again", True), (418, "refused .*HTTP 418", False),
])
def test_http_errors_on_get_say_whether_a_rerun_helps_and_leave_nothing_empty(hub, tmp_path, status, words, retry):
    hub.get_status = status
    with pytest.raises(DownloadError, match=words) as err:
        fetch_entry(ENTRY, tmp_path, endpoint=hub.endpoint)
    assert f"HTTP {status}" in str(err.value) and "resume from there" not in str(err.value)
    assert leftovers(tmp_path) == []  # no empty .part
    # With bytes already downloaded: a passing error keeps them for the rerun, a permanent one deletes them.
    hub.get_status, hub.drop_after = None, len(PAYLOAD) // 3
    with pytest.raises(DownloadError):
        fetch_entry(ENTRY, tmp_path, endpoint=hub.endpoint)
    hub.fail_gets, hub.get_status = False, status
    with pytest.raises(DownloadError, match=words) as err:
        fetch_entry(ENTRY, tmp_path, endpoint=hub.endpoint)
    parts = list((tmp_path / STAGING).glob("*.part"))
    assert bool(parts) == retry and ("bytes so far are kept" in str(err.value)) == retry
    hub.get_status = None
    assert fetch_entry(ENTRY, tmp_path, endpoint=hub.endpoint).read_bytes() == PAYLOAD


@pytest.mark.parametrize("status, words", [(429, "could not serve .*HTTP 429.*run the command again"),
                                           (503, "HTTP 503.*run the command again"),
                                           (401, "gated or private"), (403, "gated or private")])
def test_http_errors_on_the_metadata_request(hub, tmp_path, status, words):
    hub.head_status = status
    with pytest.raises(DownloadError, match=words):
        fetch_entry(ENTRY, tmp_path, endpoint=hub.endpoint)
    assert leftovers(tmp_path) == [] and all(r[0] == "HEAD" for r in hub.requests)


def test_no_size_anywhere_is_refused(hub, tmp_path, monkeypatch):
    import sampler.models.download as download

    real = download.get_hf_file_metadata
    monkeypatch.setattr(download, "get_hf_file_metadata", lambda url: replace(real(url), size=None))
    with pytest.raises(DownloadError, match="could not be bounded; nothing was downloaded"):
        fetch_entry(replace(ENTRY, size=None), tmp_path, endpoint=hub.endpoint)
    assert [r[0] for r in hub.requests] == ["HEAD"]


def test_two_downloads_of_one_file_at_once_share_one_transfer(hub, tmp_path):
    """Two threads (a ComfyUI node and the command line in one process do the same): the second waits for the
    first, reports the first one's progress as "wait", and returns the verified file without a GET of its own."""
    hub.pace = 0.01
    results, waits, errors = [], [], []

    def run(progress):
        try:
            results.append(fetch_entry(ENTRY, tmp_path, progress=progress, endpoint=hub.endpoint))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    first = threading.Thread(target=run, args=(lambda *a: None,))
    first.start()
    while not list((tmp_path / STAGING).glob("*.part")):
        threading.Event().wait(0.01)
    second = threading.Thread(target=run, args=(lambda stage, done, total: waits.append((stage, done)),))
    second.start()
    first.join(60)
    second.join(60)
    assert not errors, errors
    assert results == [tmp_path / ENTRY.filename] * 2 and results[0].read_bytes() == PAYLOAD
    assert [r[0] for r in hub.requests].count("GET") == 1
    assert waits and all(stage in ("wait", "verify") for stage, _ in waits) and waits[0][0] == "wait"
    assert leftovers(tmp_path) == [ENTRY.filename]


def test_two_processes_downloading_one_file(hub, tmp_path):
    """Two command lines at once: both end with the verified file, one GET in all, no error."""
    code = ("import sys\nfrom dataclasses import replace\nfrom sampler.models.catalog import load_catalog\n"
            "from sampler.models.download import fetch_entry\n"
            "entry = replace(load_catalog().get(sys.argv[1]), sha256=sys.argv[2], size=int(sys.argv[3]))\n"
            "print(fetch_entry(entry, sys.argv[4], progress=lambda *a: None, endpoint=sys.argv[5]))\n")
    hub.pace = 0.01
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    env.pop("HF_HUB_OFFLINE", None)
    args = [sys.executable, "-c", code, ENTRY.id, ENTRY.sha256, str(ENTRY.size), str(tmp_path), hub.endpoint]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert [o[0].strip() for o in outs] == [str(tmp_path / ENTRY.filename)] * 2
    assert [r[0] for r in hub.requests].count("GET") == 1
    assert (tmp_path / ENTRY.filename).read_bytes() == PAYLOAD and leftovers(tmp_path) == [ENTRY.filename]


def test_symlinked_model_files_and_folders_are_read_through(hub, tmp_path, capsys):
    """One models folder shared between hosts: ComfyUI's loras/ a symlink to it, a file a symlink into it. Reads
    (list, verify, download's 'already there') follow the links; nothing is refused or written through them."""
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / ENTRY.filename).write_bytes(PAYLOAD)
    models = tmp_path / "models"
    models.mkdir()
    os.symlink(shared, models / "loras")  # the whole folder is a link
    assert fetch_entry(ENTRY, models / "loras", endpoint=hub.endpoint) == models / "loras" / ENTRY.filename
    assert hub.requests == []
    other = tmp_path / "other_models" / "loras"
    other.mkdir(parents=True)
    os.symlink(shared / ENTRY.filename, other / ENTRY.filename)  # the file is a link
    assert fetch_entry(ENTRY, other, endpoint=hub.endpoint) == other / ENTRY.filename and hub.requests == []
    assert (other / ENTRY.filename).is_symlink()  # still the user's link
    catalog_cli(ENTRY)
    for models_dir in (models, other.parent):
        assert run_cli("models", "list", "--models-dir", str(models_dir)) == 0
        assert f"{ENTRY.id}" in capsys.readouterr().out
        assert run_cli("models", "verify", ENTRY.id, "--models-dir", str(models_dir)) == 0
        assert f"ok        {ENTRY.id}" in capsys.readouterr().out


def test_broken_and_looping_links_are_reported_not_replaced(hub, tmp_path, capsys):
    os.symlink(tmp_path / "gone.safetensors", tmp_path / ENTRY.filename)
    with pytest.raises(DownloadError, match="gone.safetensors, which does not exist. Fix the link, or remove"):
        fetch_entry(ENTRY, tmp_path, endpoint=hub.endpoint)
    assert (tmp_path / ENTRY.filename).is_symlink() and hub.requests == []
    loop = tmp_path / "loop"
    loop.mkdir()
    os.symlink(ENTRY.filename, loop / ENTRY.filename)  # points to itself
    with pytest.raises(DownloadError, match="loops.*Fix the link"):
        fetch_entry(ENTRY, loop, endpoint=hub.endpoint)
    catalog_cli(ENTRY)
    models = tmp_path / "models"
    models.mkdir()
    os.symlink("loras", models / "loras")  # the folder itself loops
    assert run_cli("models", "list", "--models-dir", str(models)) == 0
    assert "broken link" in capsys.readouterr().out
    assert run_cli("models", "verify", ENTRY.id, "--models-dir", str(models)) == 1
    assert f"broken link {ENTRY.id}" in capsys.readouterr().out
    assert run_cli("models", "download", ENTRY.id, "--models-dir", str(models)) == 1
    assert "FAILED" in capsys.readouterr().out


def test_a_symlink_in_the_staging_folder_is_never_written_through(hub, tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    (tmp_path / "a").mkdir()
    os.symlink(tmp_path, tmp_path / "a" / STAGING)  # staging points elsewhere
    with pytest.raises(DownloadError, match="not a folder this pack made"):
        fetch_entry(ENTRY, tmp_path / "a", endpoint=hub.endpoint)
    (tmp_path / "b" / STAGING).mkdir(parents=True)
    os.symlink(victim, tmp_path / "b" / STAGING / (ENTRY.filename + ".part"))  # the part points elsewhere
    with pytest.raises(DownloadError, match="is a symlink"):
        fetch_entry(ENTRY, tmp_path / "b", endpoint=hub.endpoint)
    assert victim.read_bytes() == b"keep"


def catalog_cli(*entries):
    """Make `python -m sampler models` see a catalog of `entries` (the released entries' sizes would not match)."""
    import sampler.models.cli as cli
    from sampler.models.catalog import Catalog

    cli.load_catalog = lambda: Catalog(tuple(entries))  # undone by the autouse fixture below


@pytest.fixture(autouse=True)
def _restore_cli_catalog():
    import sampler.models.cli as cli

    original = cli.load_catalog
    yield
    cli.load_catalog = original


def test_a_models_folder_that_cannot_be_made_is_said_before_the_network(hub, tmp_path):
    (tmp_path / "models").write_text("a file where the folder should be")
    with pytest.raises(OutputPathError, match="models is a file, so nothing can be written"):
        fetch_entry(ENTRY, tmp_path / "models" / "loras", endpoint=hub.endpoint)
    assert hub.requests == []


def test_a_full_disk_mid_download_says_so_and_keeps_the_bytes(hub, tmp_path, monkeypatch):
    import errno

    real_fdopen = os.fdopen

    class FullDisk:
        """A file that takes 100 kB, then fails as a full disk does."""

        def __init__(self, f):
            self.f = f

        def write(self, data):
            if self.f.tell() + len(data) > 100_000:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(os, "fdopen", lambda fd, mode="r", *a, **k: FullDisk(real_fdopen(fd, mode, *a, **k))
                        if mode == "r+b" else real_fdopen(fd, mode, *a, **k))
    monkeypatch.setattr("sampler.models.download._CHUNK", 1 << 15)
    with pytest.raises(DownloadError, match="No space left on device.*free some space.*a rerun resumes"):
        fetch_entry(ENTRY, tmp_path, endpoint=hub.endpoint)
    (part,) = (tmp_path / STAGING).glob("*.part")
    assert 0 < part.stat().st_size <= 100_000 and part.read_bytes() == PAYLOAD[:part.stat().st_size]
    monkeypatch.setattr(os, "fdopen", real_fdopen)
    assert fetch_entry(ENTRY, tmp_path, endpoint=hub.endpoint).read_bytes() == PAYLOAD
