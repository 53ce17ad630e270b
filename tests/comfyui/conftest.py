"""End-to-end harness: a real ComfyUI (COMFYUI_PATH) started headless on CPU with the DMD2 pack installed.

One command runs the suite:
    COMFYUI_PATH=/path/to/ComfyUI COMFYUI_PYTHON=/path/to/comfyui-venv/bin/python python -m pytest tests/comfyui -q
COMFYUI_PYTHON defaults to the python running pytest. Without COMFYUI_PATH every test here is skipped with that
reason. The server gets a throw-away --base-directory (custom_nodes: this pack + the test probe pack; models:
random-weight SD1.5 files from random_models.py, cached in $DMD2_E2E_CACHE or ~/.cache/dmd2-e2e), a free port on
127.0.0.1 and an in-memory database, so nothing is written to the ComfyUI checkout's models or user folders.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
PACK_DIR_NAME = "comfyui-dmd2"
START_TIMEOUT = float(os.environ.get("COMFYUI_START_TIMEOUT", "240"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A running ComfyUI: JSON helpers over its HTTP API."""

    def __init__(self, process: subprocess.Popen, port: int, base: Path, log: Path):
        self.process, self.port, self.base, self.log = process, port, base, log
        self.url = f"http://127.0.0.1:{port}"

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=60) as r:
            return json.loads(r.read())

    def post(self, path: str, body: dict):
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                data = r.read()
                return json.loads(data) if data else None
        except urllib.error.HTTPError as e:
            raise AssertionError(f"POST {path} -> {e.code}: {e.read().decode()[:2000]}") from None

    def queue(self, graph: dict) -> str:
        reply = self.post("/prompt", {"prompt": graph, "client_id": uuid.uuid4().hex})
        assert not reply.get("node_errors"), reply
        return reply["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 600) -> dict:
        """The prompt's history entry once it finished (success, error or interrupted)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"ComfyUI exited; log:\n{self.tail()}"
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history:
                return history[prompt_id]
            time.sleep(0.3)
        raise AssertionError(f"prompt {prompt_id} did not finish in {timeout} s; log:\n{self.tail()}")

    def run(self, graph: dict, timeout: float = 600) -> dict:
        """Queue a prompt and wait; fail with ComfyUI's own error message unless it succeeded."""
        entry = self.wait(self.queue(graph), timeout)
        status = entry["status"]
        errors = [m[1] for m in status.get("messages", []) if m[0] == "execution_error"]
        for e in errors:
            raise AssertionError(f"{e.get('node_type')}: {e.get('exception_type')}: {e.get('exception_message')}\n"
                                 + "".join(e.get("traceback", []))[-3000:])
        assert status.get("status_str") == "success", json.dumps(status.get("messages"), indent=1)[-4000:]
        return entry

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


@pytest.fixture(scope="session")
def comfyui_path() -> Path:
    path = os.environ.get("COMFYUI_PATH")
    if not path:
        pytest.skip("end-to-end tests need a ComfyUI checkout: set COMFYUI_PATH (and COMFYUI_PYTHON to its venv's "
                    "python); see docs/comfyui.md")
    path = Path(path)
    if not (path / "main.py").is_file():
        pytest.fail(f"COMFYUI_PATH={path} has no main.py")
    return path


@pytest.fixture(scope="session")
def models() -> dict[str, Path]:
    sys.path.insert(0, str(HERE))
    import random_models

    return random_models.build()


@contextlib.contextmanager
def running_comfyui(comfyui_path: Path, python: str, models: dict[str, Path], base: Path, pack: Path = REPO,
                    env: dict[str, str] | None = None) -> Iterator[Server]:
    """A ComfyUI from `comfyui_path` run by `python`, with the pack (`pack`: this checkout, or e.g. the unpacked
    registry zip), the probe pack and the random models in the throw-away `base` directory, on a free port, with
    `env` added to its environment; stopped on exit."""
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / PACK_DIR_NAME).symlink_to(pack, target_is_directory=True)
    (base / "custom_nodes" / "dmd2_test_probe").symlink_to(HERE / "dmd2_test_probe", target_is_directory=True)
    for path in models.values():
        link = base / "models" / path.parent.name / path.name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(path)
    port = _free_port()
    log = base / "comfyui.log"
    cmd = [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--base-directory", str(base),
           "--database-url", "sqlite:///:memory:", "--disable-api-nodes", "--preview-method", "latent2rgb"]
    with log.open("w") as out:
        process = subprocess.Popen(cmd, cwd=comfyui_path, stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, **(env or {})})
    srv = Server(process, port, base, log)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                pytest.fail(f"ComfyUI exited with {process.returncode} during start-up:\n{srv.tail()}")
            try:
                info = srv.get("/object_info/DMD2KSampler")  # ours: not another session's server on this port
                if "DMD2KSampler" in info:
                    break
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"ComfyUI did not answer within {START_TIMEOUT} s:\n{srv.tail()}")
            time.sleep(1)
        yield srv
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


def comfyui_python() -> str:
    return os.environ.get("COMFYUI_PYTHON") or sys.executable


@pytest.fixture(scope="session")
def server(comfyui_path, models, tmp_path_factory) -> Iterator[Server]:
    with running_comfyui(comfyui_path, comfyui_python(), models, tmp_path_factory.mktemp("comfyui-base")) as srv:
        yield srv
