"""One harness for the end-to-end tests of the A1111-family web UIs: A1111 (tests/a1111), Forge (tests/forge),
reForge (tests/reforge) and Forge Classic (tests/forge_classic); `python -m tests.hosts build NAME` builds each.

A host (A1111, FORGE, REFORGE, FORGE_CLASSIC below) says how to find its checkout ($<ENV>_PATH, its Python
$<ENV>_PYTHON, the checkpoint $<ENV>_CKPT), how to launch it headless on CPU and when its API counts as up. `running(host, paths, tmp)` starts it
on a free 127.0.0.1 port with this repository and tests/webui/probe (a test-only extension that logs every UNet call)
symlinked into its extensions folder, and always stops it and removes the symlinks afterwards.
"""

from __future__ import annotations

import base64
import contextlib
import io
import itertools
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROBE = Path(__file__).resolve().with_name("probe")
REQUEST_TIMEOUT = 900  # seconds: a CPU shared with other jobs can take minutes per SD1.5 request
_RUNS = itertools.count()

TXT2IMG = dict(prompt="a photo of a cat", width=64, height=64, cfg_scale=1, seed=1234, sampler_name="DMD2",
               scheduler="DMD2", steps=4)


@dataclass(frozen=True)
class Host:
    name: str  # in messages: "A1111", "Forge"
    env: str  # prefix of its environment variables: <env>_PATH, <env>_PYTHON, <env>_CKPT
    wanted: str  # what <env>_PATH must name
    files: tuple[str, ...]  # a checkout has these files...
    dirs: tuple[str, ...]  # ...and these folders
    launch_args: tuple[str, ...]  # beyond the common ones (API, 127.0.0.1, port, no downloads, --ckpt)
    start_timeout: int
    # A1111 takes no request before "Startup time" is logged: in web UI mode an early request starts the app and
    # A1111's own add_middleware then fails ("Cannot add middleware after an application has started")
    wait_for_startup_line: bool
    forge_family: bool = False  # UNet at forge_objects, CFG through a ComfyUI-style sampling_function
    schedulers: bool = True  # modules.sd_schedulers and /sdapi/v1/schedulers exist
    unknown_args_ok: bool = False  # lacks some common launch flags: run with IGNORE_CMD_ARGS_ERRORS=1
    hr_modules: bool = False  # its API wants hr_additional_modules for hires fix (lllyasviel's Forge)

    @property
    def is_forge(self) -> bool:
        return self.forge_family


A1111 = Host("A1111", "A1111", "a real A1111 (stable-diffusion-webui) checkout", ("launch.py", "modules/sd_samplers.py"),
             (), ("--use-cpu", "all", "--no-half", "--no-half-vae", "--precision", "full"), 240, True)
FORGE = Host("Forge", "FORGE", "a real stable-diffusion-webui-forge checkout", ("launch.py",), ("modules_forge", "backend"),
             ("--always-cpu",), 300, False, forge_family=True, hr_modules=True)
REFORGE = Host("reForge", "REFORGE", "a real stable-diffusion-webui-reForge checkout", ("launch.py",),
               ("modules_forge", "ldm_patched", "k_diff"), ("--always-cpu", "--no-half", "--no-half-vae"), 300, True,
               forge_family=True)
FORGE_CLASSIC = Host("Forge Classic", "FORGE_CLASSIC", "a real sd-webui-forge-classic (classic branch) checkout",
                     ("launch.py",), ("modules_forge", "ldm_patched"), ("--always-cpu",), 300, True,
                     forge_family=True, schedulers=False, unknown_args_ok=True)


def host_paths(host: Host) -> tuple[Path, Path]:
    """(checkout, its Python), else the test is skipped, saying why."""
    path = os.environ.get(f"{host.env}_PATH")
    if not path:
        pytest.skip(f"{host.env}_PATH is not set: these tests need {host.wanted}")
    root = Path(path).expanduser().resolve()
    if not all((root / f).is_file() for f in host.files) or not all((root / d).is_dir() for d in host.dirs):
        pytest.skip(f"{host.env}_PATH={root} is not {host.wanted} (no {' / '.join(host.files + host.dirs)})")
    python = Path(os.environ.get(f"{host.env}_PYTHON") or root / "venv" / "bin" / "python")
    if not python.is_file():
        pytest.skip(f"{host.name}'s Python {python} not found: set {host.env}_PYTHON to the interpreter of its venv")
    return root, python


def checkpoint(host: Host, root: Path) -> Path:
    if os.environ.get(f"{host.env}_CKPT"):
        return Path(os.environ[f"{host.env}_CKPT"])
    found = sorted((root / "models" / "Stable-diffusion").glob("*.safetensors"))
    if not found:
        pytest.skip(f"no checkpoint in {root}/models/Stable-diffusion (set {host.env}_CKPT)")
    return found[0]


def host_env(root: Path) -> dict:
    """Offline, CPU-only, no pip at run time. HF_HOME (an offline cache with the SD1.5 tokenizer) comes from the
    environment: `python -m tests.hosts build` records it for the hosts that load that tokenizer from the hub."""
    return dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False",
                DO_NOT_TRACK="1", PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES="", PIP_NO_INDEX="1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pixels(response: dict, index: int = 0) -> bytes:
    """RGB bytes of image `index` of an API response (PNGs differ in their infotext even when the pixels agree)."""
    from PIL import Image
    return Image.open(io.BytesIO(base64.b64decode(response["images"][index]))).convert("RGB").tobytes()


class Server:
    def __init__(self, host: Host, url: str, probe_log: Path, proc: subprocess.Popen, log: Path):
        self.host, self.url, self.probe_log, self.proc, self.log = host, url, probe_log, proc, log
        self.samplers: list[dict] = []
        self._answers: dict[str, tuple] = {}

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=60) as r:
            return json.load(r)

    def post(self, path: str, body: dict, reuse: bool = False) -> tuple[dict, dict, list[dict]]:
        """(response, info, UNet calls made for this request); the probe's sampler records (Forge family) go to
        self.samplers. `reuse`: answer a request this server already ran with the same body from its first run
        (a CPU step of SD1.5 takes seconds: tests that only read a result share it; tests about determinism don't)."""
        key = json.dumps([path, body], sort_keys=True)
        if reuse and key in self._answers:
            answer, self.samplers = self._answers[key]
            return answer
        self.probe_log.write_text("")
        request = urllib.request.Request(self.url + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as r:
                response = json.load(r)
        except urllib.error.HTTPError as e:
            raise AssertionError(f"{path}: HTTP {e.code} {e.read()[:2000]!r}\n"
                                 f"{self.host.name} log:\n{self.log.read_text()[-6000:]}")
        records = [json.loads(line) for line in self.probe_log.read_text().splitlines() if line]
        self.samplers = [r for r in records if "sampler" in r]
        calls = [r for r in records if "sampler" not in r]
        answer = response, json.loads(response["info"]), calls
        self._answers[key] = answer, self.samplers
        return answer


@contextlib.contextmanager
def running(host: Host, paths: tuple[Path, Path], tmp: Path, ui: bool = False):
    """The host with this repo and the probe extension symlinked in, API up; killed and unlinked afterwards.
    ui=True also starts the web UI (A1111's test_ui)."""
    root, python = paths
    tag = f"{os.getpid()}-{next(_RUNS)}"  # a UI test may run while the module's API server is up
    links = [root / "extensions" / f"dmd2-e2e-{tag}", root / "extensions" / f"dmd2-probe-{tag}"]
    try:
        links[0].symlink_to(ROOT, target_is_directory=True)
        links[1].symlink_to(PROBE, target_is_directory=True)
        port = free_port()
        env = dict(host_env(root), DMD2_PROBE_LOG=str(tmp / "unet_calls.jsonl"))
        if host.unknown_args_ok:
            env["IGNORE_CMD_ARGS_ERRORS"] = "1"
        log = tmp / f"{host.name.lower()}.log"
        cmd = [str(python), "launch.py", *([] if ui else ["--nowebui"]), "--api", "--server-name", "127.0.0.1",
               "--port", str(port), "--skip-prepare-environment", "--skip-torch-cuda-test", "--skip-version-check",
               "--do-not-download-clip", "--no-download-sd-model", *host.launch_args, "--no-hashing",
               "--api-server-stop", "--ckpt", str(checkpoint(host, root))]
        with log.open("w") as out:
            proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        srv = Server(host, f"http://127.0.0.1:{port}/sdapi/v1/", tmp / "unet_calls.jsonl", proc, log)
        try:
            deadline = time.monotonic() + host.start_timeout
            while True:
                if proc.poll() is not None:
                    raise AssertionError(f"{host.name} exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"{host.name} API not up after {host.start_timeout} s:\n"
                                         f"{log.read_text()[-4000:]}")
                if not host.wait_for_startup_line or "Startup time" in log.read_text():
                    try:
                        srv.get("samplers")
                        break
                    except (urllib.error.URLError, ConnectionError, OSError):
                        pass
                time.sleep(1)
            yield srv
        finally:
            try:
                urllib.request.urlopen(urllib.request.Request(srv.url + "server-kill", b"", method="POST"), timeout=10)
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)
    finally:
        for link in links:
            link.unlink(missing_ok=True)


def host_fixtures(host: Host, paths_name: str):
    """The fixtures a host's conftest.py exports: `<paths_name>` and `webui_paths` (session: its (checkout, Python),
    else skipped, saying why), `webui_host` (the Host) and `server` (module: the host running, see running)."""
    @pytest.fixture(scope="session", name=paths_name)
    def paths():
        return host_paths(host)

    @pytest.fixture(scope="session", name="webui_paths")
    def webui_paths():
        return host_paths(host)

    @pytest.fixture(scope="session", name="webui_host")
    def webui_host():
        return host

    @pytest.fixture(scope="module", name="server")
    def server(request, tmp_path_factory):
        with running(host, request.getfixturevalue(paths_name), tmp_path_factory.mktemp(host.name.lower())) as srv:
            yield srv

    return paths, webui_paths, webui_host, server
