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
from sampler.errors import ChecksumError, DiskSpaceError, DownloadError, OfflineError

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

    def do_HEAD(self):
        self.server.requests.append(("HEAD", self.path, None))
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
        if self.server.fail_gets:
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        self._headers(206 if start else 200, data, start)
        body = data[start:]
        if self.server.drop_after is not None:
            body, self.server.drop_after = body[:self.server.drop_after], None
            self.server.fail_gets = True
            self.wfile.write(body)
            self.wfile.flush()
            threading.Event().wait(0.3)  # let the client take in what it got (time.sleep is patched out)
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)


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
    assert not (tmp_path / STAGING).exists()
    # A second call finds the verified file and touches nothing on the network.
    before = len(hub.requests)
    assert fetch_entry(ENTRY, tmp_path, endpoint=hub.endpoint) == path and len(hub.requests) == before


def test_sha256_mismatch_deletes_the_partial_file(hub, tmp_path):
    wrong = replace(ENTRY, sha256="0" * 64)
    with pytest.raises(ChecksumError, match="partial file was deleted"):
        fetch_entry(wrong, tmp_path, endpoint=hub.endpoint)
    assert list(tmp_path.iterdir()) == []


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
    assert path.read_bytes() == PAYLOAD and not (tmp_path / STAGING).exists()
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
    assert not (tmp_path / STAGING).exists()
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
    import argparse

    from sampler.models.cli import add_models_subcommand

    parser = argparse.ArgumentParser()
    add_models_subcommand(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


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
    assert run_cli("models", "download", "dmd2-sdxl-8step", "--models-dir", str(tmp_path)) == 2
    assert "unknown model id 'dmd2-sdxl-8step'; the catalog has: dmd2-sdxl-4step-unet-fp16" in capsys.readouterr().err
    assert run_cli("models", "where", "dmd2-sdxl-4step-lora-fp16", "dmd2-sdxl-4step-unet-fp16",
                   "--models-dir", str(tmp_path)) == 0
    out = capsys.readouterr().out
    assert "ComfyUI/models/loras/dmd2_sdxl_4step_lora_fp16.safetensors" in out
    assert "stable-diffusion-webui/models/Lora/dmd2_sdxl_4step_lora_fp16.safetensors" in out
    assert "ComfyUI/models/diffusion_models/dmd2_sdxl_4step_unet_fp16.safetensors" in out
    assert "A1111 cannot load a UNet-only" in out
    assert str(tmp_path / "loras" / "dmd2_sdxl_4step_lora_fp16.safetensors") in out
