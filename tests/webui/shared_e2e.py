"""End-to-end tests that hold in both web UIs, written once: tests/a1111/test_e2e.py and tests/forge/test_forge_e2e.py
import them, each with its own `server` fixture (tests/webui/harness.py running that host). Where the hosts really
differ, the test says so with `server.host`.

Unknown sampler names do not fail a request everywhere (A1111 silently runs the first sampler), so every check reads
the infotext and what the UNet really saw (the probe's log).
"""

import pytest

from sampler.plans import TRAINED_TIMESTEPS
from tests.webui.harness import TXT2IMG

__all__ = ["test_extension_loads_and_lists_dmd2", "test_txt2img_four_steps_one_unet_call_per_step_on_trained_timesteps",
           "test_same_seed_same_image_and_automatic_scheduler_gives_the_dmd2_plan",
           "test_sdxl_one_step_plan_runs_t399_from_unit_variance_noise",
           "test_img2img_and_hires_fix_land_only_on_trained_timesteps", "test_cfg_above_one_keeps_the_uncond_pass"]


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
    assert [c["t"] for c in calls] == [[999.0], [749.0], [499.0], [249.0]]  # batch 1: no uncond pass at CFG 1
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
    image, _, _ = server.post("txt2img", TXT2IMG)
    _, info, calls = server.post("img2img", dict(TXT2IMG, init_images=[image["images"][0]], denoising_strength=0.5))
    assert [c["t"] for c in calls] == [[749.0], [499.0], [249.0]]  # int(0.5 * 4) + 1 steps from the tail
    assert "Sampler: DMD2," in info["infotexts"][0]
    hires = dict(TXT2IMG, enable_hr=True, hr_scale=1.5, denoising_strength=0.5, hr_upscaler="Latent")
    if server.host.is_forge:
        # Forge's API default hr_additional_modules (None) fails its own hires pass ("'NoneType' is not iterable")
        hires["hr_additional_modules"] = ["Use same choices"]
    _, info, calls = server.post("txt2img", hires)
    trained = {float(t) for t in TRAINED_TIMESTEPS["sdxl_4step"]}
    assert all(c["batch"] == 1 and set(c["t"]) <= trained for c in calls)
    assert [c["t"] for c in calls][:4] == [[999.0], [749.0], [499.0], [249.0]]
    if server.host.is_forge:  # Forge's exact hires pass
        assert [c["t"] for c in calls][4:] == [[499.0], [499.0], [249.0], [249.0]]
    assert "Hires upscale: 1.5" in info["infotexts"][0]


def test_cfg_above_one_keeps_the_uncond_pass(server):
    _, info, calls = server.post("txt2img", dict(TXT2IMG, cfg_scale=3, steps=1))
    assert [c["batch"] for c in calls] == [2]
    assert "Sampler: DMD2," in info["infotexts"][0]


assert sorted(__all__) == sorted(n for n in dir() if n.startswith("test_")), "list every shared test in __all__"
