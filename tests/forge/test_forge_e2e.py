"""End to end in a real Forge: the extension loads, DMD2 is listed, and txt2img runs exact DMD2.

Forge is started headless (API only, --always-cpu) with this repository symlinked into its extensions folder, plus
tests/forge/probe (a test-only extension that logs every UNet call), on a free 127.0.0.1 port, with a
real-architecture SD1.5 checkpoint (FORGE_CKPT, else the first one in models/Stable-diffusion) at 64x64; the
symlinks are removed afterwards. An unknown sampler name does not fail a request everywhere, so every check reads
the infotext and what the UNet really saw.
"""

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 300
REQUEST_TIMEOUT = 400


def forge_env(root: Path) -> dict:
    """Offline, CPU-only, no pip at run time; HF_HOME=<checkout>/../hf_cache if that exists (an offline cache)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False",
               DO_NOT_TRACK="1", PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES="", PIP_NO_INDEX="1")
    if (root.parent / "hf_cache").is_dir() and "HF_HOME" not in os.environ:
        env["HF_HOME"] = str(root.parent / "hf_cache")
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _checkpoint(root: Path) -> Path:
    if os.environ.get("FORGE_CKPT"):
        return Path(os.environ["FORGE_CKPT"])
    found = sorted((root / "models" / "Stable-diffusion").glob("*.safetensors"))
    if not found:
        pytest.skip(f"no checkpoint in {root}/models/Stable-diffusion (set FORGE_CKPT)")
    return found[0]


class Server:
    def __init__(self, url: str, probe_log: Path, proc: subprocess.Popen, log: Path):
        self.url, self.probe_log, self.proc, self.log = url, probe_log, proc, log

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=60) as r:
            return json.load(r)

    def post(self, path: str, body: dict) -> tuple[dict, dict, list[dict]]:
        """(response, info, UNet calls made for this request); the probe's sampler records go to self.samplers."""
        self.probe_log.write_text("")
        request = urllib.request.Request(self.url + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as r:
                response = json.load(r)
        except urllib.error.HTTPError as e:
            raise AssertionError(f"{path}: HTTP {e.code} {e.read()[:2000]!r}\nForge log:\n{self.log.read_text()[-6000:]}")
        records = [json.loads(line) for line in self.probe_log.read_text().splitlines() if line]
        self.samplers = [r for r in records if "sampler" in r]
        calls = [r for r in records if "sampler" not in r]
        return response, json.loads(response["info"]), calls


@contextlib.contextmanager
def running_forge(forge, tmp: Path):
    """Forge with this repo and the probe extension symlinked in, API up; killed and unlinked afterwards."""
    root, python = forge
    tag = f"{os.getpid()}"
    links = [root / "extensions" / f"dmd2-e2e-{tag}", root / "extensions" / f"dmd2-probe-{tag}"]
    links[0].symlink_to(ROOT, target_is_directory=True)
    links[1].symlink_to(ROOT / "tests" / "forge" / "probe", target_is_directory=True)
    port = _free_port()
    env = dict(forge_env(root), DMD2_PROBE_LOG=str(tmp / "unet_calls.jsonl"))
    log = tmp / "forge.log"
    cmd = [str(python), "launch.py", "--nowebui", "--api", "--server-name", "127.0.0.1", "--port", str(port),
           "--skip-prepare-environment", "--skip-torch-cuda-test", "--skip-version-check", "--always-cpu",
           "--do-not-download-clip", "--no-download-sd-model", "--no-hashing", "--api-server-stop",
           "--ckpt", str(_checkpoint(root))]
    try:
        with log.open("w") as out:
            proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        srv = Server(f"http://127.0.0.1:{port}/sdapi/v1/", tmp / "unet_calls.jsonl", proc, log)
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while True:
                if proc.poll() is not None:
                    raise AssertionError(f"Forge exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"Forge API not up after {START_TIMEOUT} s:\n{log.read_text()[-4000:]}")
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


@pytest.fixture(scope="module")
def server(forge, tmp_path_factory):
    with running_forge(forge, tmp_path_factory.mktemp("forge")) as srv:
        yield srv


TXT2IMG = dict(prompt="a photo of a cat", width=64, height=64, cfg_scale=1, seed=1234, sampler_name="DMD2",
               scheduler="DMD2", steps=4)


def test_extension_loads_and_lists_dmd2(server):
    assert "DMD2" in [s["name"] for s in server.get("samplers")]
    assert "DMD2" in [s["label"] for s in server.get("schedulers")]
    text = server.log.read_text()
    assert "DMD2: not registered" not in text and "Error loading script: dmd2.py" not in text


def test_txt2img_four_steps_one_unet_call_per_step_on_trained_timesteps(server):
    _, info, calls = server.post("txt2img", TXT2IMG)
    infotext = info["infotexts"][0]
    assert "Sampler: DMD2," in infotext and "Schedule type: DMD2," in infotext and "Steps: 4," in infotext
    assert "DMD2 plan: SDXL 4-step" in infotext
    assert [c["t"] for c in calls] == [[999.0], [749.0], [499.0], [249.0]]  # batch 1: Forge skips uncond at CFG 1
    assert calls[0]["std"] == pytest.approx(1.0, abs=0.15)  # unit-variance first UNet input


def test_same_seed_same_image_and_automatic_scheduler_gives_the_dmd2_plan(server):
    first, _, _ = server.post("txt2img", TXT2IMG)
    again, info, calls = server.post("txt2img", dict(TXT2IMG, scheduler="Automatic"))
    assert again["images"][0] == first["images"][0]
    assert [c["t"] for c in calls] == [[999.0], [749.0], [499.0], [249.0]]
    assert "Sampler: DMD2," in info["infotexts"][0]


def test_sdxl_one_step_plan_runs_t399_from_unit_variance_noise(server):
    _, info, calls = server.post("txt2img", dict(TXT2IMG, steps=1, override_settings={"dmd2_plan": "SDXL 1-step"}))
    assert [c["t"] for c in calls] == [[399.0]]
    assert calls[0]["std"] == pytest.approx(1.0, abs=0.15)  # not 0.758: the noise was rescaled to sqrt(1 + s^2)
    assert "DMD2 plan: SDXL 1-step" in info["infotexts"][0]


def test_img2img_and_hires_fix_land_only_on_trained_timesteps(server):
    from sampler.plans import TRAINED_TIMESTEPS

    image, _, _ = server.post("txt2img", TXT2IMG)
    _, info, calls = server.post("img2img", dict(TXT2IMG, init_images=[image["images"][0]], denoising_strength=0.5))
    assert [c["t"] for c in calls] == [[749.0], [499.0], [249.0]]  # int(0.5 * 4) + 1 steps from the tail
    assert "Sampler: DMD2," in info["infotexts"][0]
    # hr_additional_modules: Forge's API default (None) fails its own hires pass ("'NoneType' is not iterable")
    _, info, calls = server.post("txt2img", dict(TXT2IMG, enable_hr=True, hr_scale=1.5, denoising_strength=0.5,
                                                 hr_upscaler="Latent", hr_additional_modules=["Use same choices"]))
    trained = {float(t) for t in TRAINED_TIMESTEPS["sdxl_4step"]}
    assert all(c["batch"] == 1 and set(c["t"]) <= trained for c in calls)
    assert [c["t"] for c in calls] == [[999.0], [749.0], [499.0], [249.0], [499.0], [499.0], [249.0], [249.0]]
    assert "Hires upscale: 1.5" in info["infotexts"][0]


def test_cfg_above_one_keeps_the_uncond_pass(server):
    _, info, calls = server.post("txt2img", dict(TXT2IMG, cfg_scale=3, steps=1))
    assert [c["batch"] for c in calls] == [2]
    assert "Sampler: DMD2," in info["infotexts"][0]


def test_forge_runs_dmd2_through_its_own_cfg_denoiser(server):
    """Forge's CFG function already skips the uncond pass at CFG 1 (sampling_function): our A1111 wrapper, which
    routes the UNet wrapper's rows, must not replace Forge's CFGDenoiserKDiffusion."""
    server.post("txt2img", TXT2IMG)
    assert server.samplers and all(s["sampler"].endswith("DMD2Sampler") for s in server.samplers)
    assert {s["cfg_denoiser"] for s in server.samplers} == {"modules.sd_samplers_kdiffusion.CFGDenoiserKDiffusion"}


def test_stock_scheduler_warning_names_the_timesteps_forge_feeds_the_unet(server):
    """Forge's sigma_to_t is an integer argmin over its sigma table (A1111's interpolates): the warning about a stock
    schedule must list the timesteps the UNet really gets in Forge."""
    import ast
    import re

    from sampler.plans import TRAINED_TIMESTEPS

    before = len(server.log.read_text())
    _, info, calls = server.post("txt2img", dict(TXT2IMG, scheduler="Karras"))
    assert "Sampler: DMD2," in info["infotexts"][0] and "Schedule type: Karras" in info["infotexts"][0]
    seen = [c["t"][0] for c in calls]
    untrained = [t for t in seen if t not in TRAINED_TIMESTEPS["sdxl_4step"]]
    assert untrained and all(t == int(t) for t in seen)
    warned = re.search(r"untrained timesteps (\[[^\]]*\])", server.log.read_text()[before:])
    assert warned, "no DMD2 warning about the stock schedule"
    assert ast.literal_eval(warned.group(1)) == untrained
