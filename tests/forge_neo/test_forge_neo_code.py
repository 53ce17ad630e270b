"""DMD2 against Forge Neo's real sampler modules (neo_probe.py, run in a Forge venv): registration without
add_sampler, the dataclass Scheduler, the lru_cache'd lookup, the kept CFG denoiser around ForgeScheduleLinker, exact
trained timesteps, unit-variance first input through predictor.noise_scaling, and p.rng noise per image."""

import pytest


def test_detected_as_neo_and_logged_in_one_line(neo_facts):
    caps = neo_facts["caps"]
    assert caps["name"] == "Forge Neo" and not caps["add_sampler"] and caps["cached_lookup"]
    assert caps["keep_host_cfg"] and caps["integer_timesteps"] and caps["schedulers"] and caps["image_rng"]
    assert "noise_scaling" in caps["first_noise"]
    assert neo_facts["line"].startswith("DMD2: host Forge Neo (") and "all_samplers + set_samplers" in neo_facts["line"]


def test_registered_in_neos_lists_and_its_cached_lookup_forgets_the_answer_before(neo_facts):
    assert neo_facts["setup"] is True and neo_facts["names"] == 1
    assert neo_facts["before"][0] != "DMD2"  # asked before registration: answered and cached by lru_cache
    assert neo_facts["after"] == ["DMD2", "Automatic"]  # cache cleared; DMD2's own scheduler is its Automatic
    assert neo_facts["scheduler_type"] == "modules.sd_schedulers.Scheduler"  # Neo's dataclass


def test_neos_cfg_denoiser_is_kept(neo_facts):
    assert neo_facts["cfg_denoiser"] == "modules.sd_samplers_kdiffusion.CFGDenoiserKDiffusion"
    assert neo_facts["model_wrap"] == "ForgeScheduleLinker"


def test_exact_trained_timesteps_and_unit_variance_first_input(neo_facts):
    assert neo_facts["scheduler_after_fix"] == "Automatic"  # fix_p_invalid_sampler_and_scheduler("DMD2", "DMD2")
    assert [s["t"] for s in neo_facts["four"]] == [999, 749, 499, 249]
    assert neo_facts["infotext"]["DMD2 plan"] == "SDXL 4-step"
    assert neo_facts["four"][0]["unet_std"] == pytest.approx(1.0, abs=0.15)  # noise_scaling gave sigma_0 * noise
    assert [s["t"] for s in neo_facts["one_399"]] == [399]
    assert neo_facts["one_399"][0]["unet_std"] == pytest.approx(1.0, abs=0.15)  # not 0.758 at t=399


def test_batch_image_i_gets_the_noise_of_seed_plus_i(neo_facts):
    assert neo_facts["batch_row1_equals_seed_plus_1"] is True
