"""End-to-end tests that hold in every A1111-family web UI, written once: each host's suite (tests/a1111,
tests/forge, tests/reforge, tests/forge_classic) imports them, with its own `server`, `webui_paths` and `webui_host`
fixtures (tests/webui/harness.py running that host). Where hosts really differ, the test says so with `server.host`.

Unknown sampler names do not fail a request everywhere (A1111 silently runs the first sampler), so every check reads
the infotext and what the UNet really saw (the probe's log: timesteps, and the input and output of every call).
"""

import os
import re
import subprocess

import pytest
import torch

from sampler.plans import TRAINED_TIMESTEPS
from sampler.schedule import training_sigmas
from tests.webui.harness import ROOT, TXT2IMG, pixels, running

__all__ = ["test_extension_loads_and_lists_dmd2", "test_one_start_line_names_the_host_and_the_path_taken",
           "test_dmd2_listed_in_the_web_ui_dropdowns",
           "test_txt2img_four_steps_one_unet_call_per_step_on_trained_timesteps",
           "test_one_and_two_steps_take_trained_timesteps",
           "test_same_seed_same_image_and_automatic_scheduler_gives_the_dmd2_plan",
           "test_sdxl_one_step_plan_runs_t399_from_unit_variance_noise",
           "test_every_step_renoises_with_fresh_unit_variance_noise",
           "test_batch_image_i_equals_the_single_image_at_seed_plus_i",
           "test_img2img_and_hires_fix_land_only_on_trained_timesteps", "test_cfg_above_one_keeps_the_uncond_pass",
           "test_forge_family_keeps_its_own_cfg_denoiser", "test_stock_scheduler_warning_names_the_unet_timesteps",
           "test_install_py_leaves_every_host_package_as_it_was"]

FOUR = [[999.0], [749.0], [499.0], [249.0]]


def request(server, **changes) -> dict:
    """TXT2IMG with `changes`; hosts without sd_schedulers take no scheduler field (their samplers carry it)."""
    body = dict(TXT2IMG, **changes)
    if not server.host.schedulers:
        body.pop("scheduler", None)
    return body


def assert_dmd2_infotext(server, infotext: str, steps: int = 4) -> None:
    assert "Sampler: DMD2," in infotext and f"Steps: {steps}," in infotext, infotext
    if server.host.schedulers:
        assert "Schedule type: DMD2," in infotext, infotext


def noises(calls: list[dict]) -> list[torch.Tensor]:
    """The noise of each step, recovered from what the UNet saw: step 0's unit-variance input, then for each next
    step (x_k+1 - x0_k) / sigma_k+1, where x0_k = x_k - sigma_k * eps_k and x_k = input * sqrt(1 + sigma_k^2)."""
    table = training_sigmas()
    out, x0 = [], None
    for call in calls:
        sigma = table[int(round(call["t"][0]))]
        x = torch.tensor(call["x"], dtype=torch.float64) * (1 + sigma ** 2).sqrt()
        out.append(torch.tensor(call["x"], dtype=torch.float64) if x0 is None else (x - x0) / sigma)
        x0 = x - sigma * torch.tensor(call["out"], dtype=torch.float64)
    return out


def test_extension_loads_and_lists_dmd2(server):
    assert "DMD2" in [s["name"] for s in server.get("samplers")]
    if server.host.schedulers:
        assert "DMD2" in [s["label"] for s in server.get("schedulers")]
    text = server.log.read_text()
    assert "DMD2: not registered" not in text and "Error loading script: dmd2.py" not in text


def test_one_start_line_names_the_host_and_the_path_taken(server):
    lines = [line for line in server.log.read_text().splitlines() if line.startswith("DMD2: host ")]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"DMD2: host {server.host.name} (")
    assert ("host denoiser kept" in lines[0]) == server.host.forge_family
    assert ("UNet timesteps: integer" in lines[0]) == server.host.forge_family
    assert ("carried by the DMD2 sampler" in lines[0]) == (not server.host.schedulers)


def test_dmd2_listed_in_the_web_ui_dropdowns(webui_host, webui_paths, tmp_path):
    import json
    import urllib.request
    if webui_host.name == "A1111":
        pytest.skip("tests/a1111/test_ui.py checks A1111's dropdowns, also after Reload UI (one UI start is enough)")
    with running(webui_host, webui_paths, tmp_path, ui=True) as srv:
        with urllib.request.urlopen(srv.url.removesuffix("sdapi/v1/") + "config", timeout=60) as r:
            config = json.load(r)
    wanted = {"txt2img_sampling", "img2img_sampling"} | (
        {"txt2img_scheduler", "img2img_scheduler"} if webui_host.schedulers else set())
    choices = {}
    for comp in config["components"]:
        props = comp.get("props", {})
        if props.get("elem_id") in wanted:
            choices[props["elem_id"]] = [c[0] if isinstance(c, list) else c for c in props.get("choices", [])]
    assert set(choices) == wanted and all(c.count("DMD2") == 1 for c in choices.values()), choices


def test_txt2img_four_steps_one_unet_call_per_step_on_trained_timesteps(server):
    _, info, calls = server.post("txt2img", request(server), reuse=True)
    infotext = info["infotexts"][0]
    assert_dmd2_infotext(server, infotext)
    assert "DMD2 plan: SDXL 4-step" in infotext
    assert [c["t"] for c in calls] == FOUR  # batch 1: no uncond pass at CFG 1
    assert calls[0]["std"] == pytest.approx(1.0, abs=0.15)  # unit-variance first UNet input


def test_one_and_two_steps_take_trained_timesteps(server):
    for steps, expected in ((1, [[999.0]]), (2, [[999.0], [499.0]])):
        _, info, calls = server.post("txt2img", request(server, steps=steps), reuse=True)
        assert [c["t"] for c in calls] == expected
        assert_dmd2_infotext(server, info["infotexts"][0], steps)


def test_same_seed_same_image_and_automatic_scheduler_gives_the_dmd2_plan(server):
    first, _, _ = server.post("txt2img", request(server), reuse=True)
    again, info, calls = server.post("txt2img", request(server, scheduler="Automatic"))  # run again, not reused
    assert again["images"][0] == first["images"][0]
    assert [c["t"] for c in calls] == FOUR
    assert "Sampler: DMD2," in info["infotexts"][0]


def test_sdxl_one_step_plan_runs_t399_from_unit_variance_noise(server):
    _, info, calls = server.post("txt2img", request(server, steps=1,
                                                    override_settings={"dmd2_plan": "SDXL 1-step"}))
    assert [c["t"] for c in calls] == [[399.0]]
    assert calls[0]["std"] == pytest.approx(1.0, abs=0.15)  # not 0.758: the noise was rescaled to sqrt(1 + s^2)
    assert "DMD2 plan: SDXL 1-step" in info["infotexts"][0]


def test_every_step_renoises_with_fresh_unit_variance_noise(server):
    """Backward simulation: each step's input is the previous x0 plus new noise, not an ODE step nor the same noise
    again. The noises recovered from the UNet's inputs and outputs are unit variance and mutually uncorrelated."""
    _, _, calls = server.post("txt2img", request(server), reuse=True)
    assert [c["t"] for c in calls] == FOUR
    found = noises(calls)
    for n in found:
        assert float(n.std()) == pytest.approx(1.0, abs=0.2)
    for i in range(len(found)):
        for j in range(i):
            corr = float(torch.corrcoef(torch.stack([found[i].flatten(), found[j].flatten()]))[0, 1])
            assert abs(corr) < 0.3, (i, j, corr)


def test_batch_image_i_equals_the_single_image_at_seed_plus_i(server):
    """Per-step noise comes from the host's seeded per-image RNG (p.rng), as for its own ancestral samplers."""
    batch, _, batch_calls = server.post("txt2img", request(server, batch_size=2, steps=2))
    assert [c["batch"] for c in batch_calls] == [2, 2]
    for i in range(2):
        seed = TXT2IMG["seed"] + i
        single, info, calls = server.post("txt2img", request(server, seed=seed, steps=2), reuse=True)
        assert f"Seed: {seed}," in info["infotexts"][0]
        rows = [dict(c, x=[c["x"][i]], out=[c["out"][i]]) for c in batch_calls]
        for a, b in zip(noises(rows), noises(calls)):
            torch.testing.assert_close(a, b, atol=2e-3, rtol=0)  # the same noise at every step
        diff = max(abs(p - q) for p, q in zip(pixels(batch, i), pixels(single)))
        assert diff <= 3, f"batch image {i} differs from the single image at seed + {i} by {diff}"


def test_img2img_and_hires_fix_land_only_on_trained_timesteps(server):
    image, _, _ = server.post("txt2img", request(server), reuse=True)
    _, info, calls = server.post("img2img", request(server, init_images=[image["images"][0]], denoising_strength=0.5))
    assert [c["t"] for c in calls] == [[749.0], [499.0], [249.0]]  # int(0.5 * 4) + 1 steps from the tail
    assert "Sampler: DMD2," in info["infotexts"][0]
    hires = request(server, enable_hr=True, hr_scale=1.5, denoising_strength=0.5, hr_upscaler="Latent")
    if server.host.hr_modules:
        # Forge's API default hr_additional_modules (None) fails its own hires pass ("'NoneType' is not iterable")
        hires["hr_additional_modules"] = ["Use same choices"]
    _, info, calls = server.post("txt2img", hires)
    trained = {float(t) for t in TRAINED_TIMESTEPS["sdxl_4step"]}
    assert all(c["batch"] == 1 and set(c["t"]) <= trained for c in calls)
    assert [c["t"] for c in calls][:4] == FOUR
    assert [c["t"] for c in calls][4:] == [[499.0], [499.0], [249.0], [249.0]]  # the tail of the 8-step plan
    assert "Hires upscale: 1.5" in info["infotexts"][0]


def test_cfg_above_one_keeps_the_uncond_pass(server):
    _, info, calls = server.post("txt2img", request(server, cfg_scale=3, steps=2))
    # Forge Classic's CFG denoiser sets the scale to 1 while step / total_steps <= skip_early_cond, and with that
    # setting at its default 0 the test `0 <= 0 / 2 <= 0` holds at step 0: the host itself drops the uncond pass there
    first = 1 if server.host.name == "Forge Classic" else 2
    assert [c["batch"] for c in calls] == [first, 2]
    assert "Sampler: DMD2," in info["infotexts"][0]


def test_forge_family_keeps_its_own_cfg_denoiser(server):
    """The Forge family's CFG function already skips the uncond pass at CFG 1 (its sampling_function): our A1111
    wrapper, which routes the UNet wrapper's rows, must not replace the host's CFGDenoiserKDiffusion."""
    if not server.host.forge_family:
        pytest.skip(f"{server.host.name}'s CFG denoiser is replaced by design (it runs the uncond pass at CFG 1)")
    server.post("txt2img", request(server), reuse=True)
    assert server.samplers and all(s["sampler"].endswith("DMD2Sampler") for s in server.samplers)
    assert {s["cfg_denoiser"] for s in server.samplers} == {"modules.sd_samplers_kdiffusion.CFGDenoiserKDiffusion"}


def test_stock_scheduler_warning_names_the_unet_timesteps(server):
    """A stock schedule with the DMD2 sampler is warned about, naming the timesteps the UNet really gets: integers
    in the Forge family (its model_sampling takes the nearest), A1111's interpolated ones otherwise."""
    import ast
    if not server.host.schedulers:
        pytest.skip(f"{server.host.name} has no schedule types: DMD2 carries its own schedule")
    before = len(server.log.read_text())
    _, info, calls = server.post("txt2img", request(server, scheduler="Karras"))
    assert "Sampler: DMD2," in info["infotexts"][0] and "Schedule type: Karras" in info["infotexts"][0]
    seen = [c["t"][0] for c in calls]
    untrained = [t for t in seen if t not in TRAINED_TIMESTEPS["sdxl_4step"]]
    assert untrained
    if server.host.forge_family:
        assert all(t == int(t) for t in seen)
    warned = re.search(r"untrained timesteps (\[[^\]]*\])", server.log.read_text()[before:])
    assert warned, "no DMD2 warning about the stock schedule"
    assert ast.literal_eval(warned.group(1)) == pytest.approx(untrained, abs=0.01)


def test_install_py_leaves_every_host_package_as_it_was(webui_paths):
    """install.py run with the host's Python (as A1111 runs it) changes no installed package: `pip freeze` before
    and after are the same (offline: anything it tried to install would fail the run)."""
    _, python = webui_paths

    def freeze():
        return subprocess.run([str(python), "-m", "pip", "freeze", "--all"], capture_output=True, text=True,
                              check=True).stdout

    before = freeze()
    proc = subprocess.run([str(python), str(ROOT / "install.py")], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env=dict(os.environ, PIP_NO_INDEX="1"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert freeze() == before, proc.stdout


assert sorted(__all__) == sorted(n for n in dir() if n.startswith("test_")), "list every shared test in __all__"
