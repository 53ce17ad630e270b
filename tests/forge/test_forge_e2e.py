"""End to end in a real Forge: the extension loads, DMD2 is listed, and txt2img runs exact DMD2.

Forge is started headless (API only, --always-cpu; tests/webui/harness.py) with this repository symlinked into its
extensions folder, plus tests/webui/probe (a test-only extension that logs every UNet call and, in Forge, the sampler
objects of each pass), on a free 127.0.0.1 port, with a real-architecture SD1.5 checkpoint (FORGE_CKPT, else the
first one in models/Stable-diffusion) at 64x64; the symlinks are removed afterwards. The tests both hosts share are
in tests/webui/shared_e2e.py; what only Forge checks is here.
"""

from tests.webui.harness import TXT2IMG
from tests.webui.shared_e2e import *  # noqa: F403  (the tests both hosts share, run here against Forge)


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
