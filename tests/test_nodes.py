"""ComfyUI node pack without ComfyUI: schemas, plans, MODEL tags, the sampler glue's start and registration.

The pack is imported the way ComfyUI imports it (the repository root as a package under another name), so the
relative imports are exercised; ComfyUI itself is replaced by small fakes of the few objects the glue touches.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import logging
import math
import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sampler.errors import BaseMismatchError, WrongKindError
from sampler.schedule import sigma_to_timestep, training_sigmas

ROOT = Path(__file__).resolve().parents[1]
PACK = "dmd2_pack_under_test"


def _import_pack():
    if PACK not in sys.modules:
        spec = importlib.util.spec_from_file_location(PACK, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACK] = module
        spec.loader.exec_module(module)
    return importlib.import_module(PACK + ".nodes")


nodes = _import_pack()
host = importlib.import_module(PACK + ".nodes.host")
tags = importlib.import_module(PACK + ".nodes.tags")
sampling = importlib.import_module(PACK + ".nodes.sampling")
register = importlib.import_module(PACK + ".nodes.register")
loaders = importlib.import_module(PACK + ".nodes.loaders")
errors = importlib.import_module(PACK + ".sampler.errors")

SIGMAS32 = training_sigmas().float()


class FakeSampling(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("sigmas", SIGMAS32.clone())


class FakePatcher:
    """The parts of comfy.model_patcher.ModelPatcher the glue uses (clone semantics as in ComfyUI 0.3.64)."""

    def __init__(self, sampling_module=None):
        self.model = types.SimpleNamespace(model_sampling=sampling_module or FakeSampling(),
                                           model_config=types.SimpleNamespace(unet_config={}))
        self.model_options = {"transformer_options": {}}
        self.object_patches = {}

    def clone(self):
        n = FakePatcher.__new__(FakePatcher)
        n.model = self.model
        n.object_patches = self.object_patches.copy()
        n.model_options = copy.deepcopy(self.model_options)
        return n

    def add_object_patch(self, name, obj):
        self.object_patches[name] = obj

    def get_model_object(self, name):
        return self.object_patches.get(name) or getattr(self.model, name)


def timesteps_of(sigmas: torch.Tensor) -> list[int]:
    return [int(t) for t in sigma_to_timestep(sigmas[:-1].double(), SIGMAS32, quantize=True)]


@pytest.fixture(autouse=True)
def no_comfyui(monkeypatch):
    monkeypatch.setattr(host, "filename_list", lambda folder: [f"my_{folder}.safetensors"])
    monkeypatch.setattr(sampling, "_warned", set())


def test_node_ids_are_stable():
    assert set(nodes.NODE_CLASS_MAPPINGS) == {"DMD2UNetLoader", "DMD2LoraLoader", "DMD2Scheduler", "DMD2Sampler",
                                              "DMD2KSampler", "DMD2LiveSession"}
    assert set(nodes.NODE_DISPLAY_NAME_MAPPINGS) == set(nodes.NODE_CLASS_MAPPINGS)


@pytest.mark.parametrize("node_id", ["DMD2UNetLoader", "DMD2LoraLoader", "DMD2Scheduler", "DMD2Sampler",
                                     "DMD2KSampler"])
def test_node_schema(node_id):
    cls = nodes.NODE_CLASS_MAPPINGS[node_id]
    schema = cls.INPUT_TYPES()
    assert set(schema) <= {"required", "optional"}
    assert cls.DESCRIPTION and cls.CATEGORY in ("loaders/DMD2", "sampling/DMD2")
    assert callable(getattr(cls, cls.FUNCTION)) and len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES)
    for group in schema.values():
        for name, spec in group.items():
            assert spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"


def test_schema_details():
    unet = nodes.DMD2UNetLoader.INPUT_TYPES()["required"]
    assert "catalog: dmd2-sdxl-4step-unet-fp16" in unet["unet_name"][0]
    assert "catalog: dmd2-sdxl-1step-unet-fp16" in unet["unet_name"][0]
    assert "my_diffusion_models.safetensors" in unet["unet_name"][0]
    assert unet["weight_dtype"][0][:3] == ["default", "fp16", "bf16"] and "fp8_e4m3fn" in unet["weight_dtype"][0]
    assert unet["plan"][0] == ["auto", "sdxl_4step", "sdxl_1step", "sd15_1step"]
    lora = nodes.DMD2LoraLoader.INPUT_TYPES()["required"]
    assert lora["lora_name"][0][0] == "catalog: dmd2-sdxl-4step-lora-fp16"
    assert lora["strength"][1]["default"] == 1.0 and "0.5-0.75" in lora["strength"][1]["tooltip"]
    steps = nodes.DMD2Scheduler.INPUT_TYPES()["required"]["steps"][1]
    assert (steps["min"], steps["max"], steps["default"]) == (1, 8, 4)
    ks = nodes.DMD2KSampler.INPUT_TYPES()
    assert list(ks["required"]) == ["model", "positive", "latent_image", "seed", "steps", "denoise"]
    assert set(ks["optional"]) == {"negative", "cfg"} and ks["optional"]["cfg"][1]["default"] == 1.0


def test_weight_dtype_options():
    assert host.weight_dtype_options("default") == {}
    assert host.weight_dtype_options("bf16") == {"dtype": torch.bfloat16}
    assert host.weight_dtype_options("fp8_e4m3fn_fast") == {"dtype": torch.float8_e4m3fn, "fp8_optimizations": True}
    assert host.weight_dtype_options("fp8_e5m2") == {"dtype": torch.float8_e5m2}
    assert host.weight_dtypes() == ["default", "fp16", "bf16", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"]


def test_tag_survives_clone_and_leaves_input_untouched():
    base = FakePatcher()
    facts = tags.DMD2Facts((399,), source="test")
    tagged = tags.tag_model(base, facts)
    assert tags.model_facts(base) is None and tags.sampling_facts(base.get_model_object("model_sampling")) is None
    clone = tagged.clone().clone()
    assert tags.model_facts(clone) == facts and clone.model_options["dmd2"].steps == 1
    ms = clone.get_model_object("model_sampling")
    assert tags.sampling_facts(ms) == facts and torch.equal(ms.sigmas, SIGMAS32)
    assert ms is not base.model.model_sampling and ms._buffers is not base.model.model_sampling._buffers
    # a node replacing model_sampling later keeps the model_options copy
    clone.add_object_patch("model_sampling", FakeSampling())
    assert tags.model_facts(clone) == facts
    with pytest.raises(ValueError):
        tags.DMD2Facts((249, 999), source="bad")


def test_stock_scheduler_plans_and_denoise_slicing():
    ms = FakeSampling()
    assert timesteps_of(sampling.scheduler_sigmas(ms, 4)) == [999, 749, 499, 249]
    ms_1 = tags.tag_model(FakePatcher(ms), tags.DMD2Facts((399,), "t")).get_model_object("model_sampling")
    assert timesteps_of(sampling.scheduler_sigmas(ms_1, 1)) == [399]
    # KSampler: int(steps / denoise) steps, keep the last steps + 1 sigmas: still only trained timesteps
    for steps in range(1, 9):
        for denoise in (0.25, 0.4, 0.5, 0.75, 0.9):
            tail = sampling.scheduler_sigmas(ms, int(steps / denoise))[-(steps + 1):]
            assert set(timesteps_of(tail)) <= {999, 749, 499, 249}
            assert tail[-1] == 0 and len(tail) == steps + 1
    assert timesteps_of(sampling.scheduler_sigmas(ms, 8)[-5:]) == [499, 499, 249, 249]


def test_dmd2_scheduler_node():
    model = FakePatcher()
    (sigmas,) = nodes.DMD2Scheduler().get_sigmas(model, 4, 1.0)
    assert sigmas.dtype == torch.float32 and timesteps_of(sigmas) == [999, 749, 499, 249]
    assert timesteps_of(nodes.DMD2Scheduler().get_sigmas(model, 2, 0.5)[0]) == [499, 249]
    one = tags.tag_model(model, tags.DMD2Facts((399,), "t"))
    assert timesteps_of(nodes.DMD2Scheduler().get_sigmas(one, 1, 1.0)[0]) == [399]
    assert len(nodes.DMD2Scheduler().get_sigmas(model, 4, 0.0)[0]) == 0


class FakeX0Model:
    """KSamplerX0Inpaint as KSAMPLER.sample prepares it: raw noise, latent, and the guider with its cfg."""

    def __init__(self, noise, latent, cfg=1.0, facts=None):
        self.noise, self.latent_image = noise, latent
        ms = FakeSampling()
        if facts:
            object.__setattr__(ms, tags.ATTRIBUTE, facts)
        self.inner_model = types.SimpleNamespace(cfg=cfg, inner_model=types.SimpleNamespace(model_sampling=ms))
        self.inputs = []

    def __call__(self, x, sigma, **kwargs):
        self.inputs.append((x.clone(), float(sigma[0])))
        return torch.zeros_like(x)


def _seeded(monkeypatch):
    monkeypatch.setattr(host, "noise_sampler", lambda x, seed: (lambda s, n: torch.randn(
        x.shape, generator=torch.Generator().manual_seed(seed))))


@pytest.mark.parametrize("max_denoise", [True, False])
@pytest.mark.parametrize("timesteps", [(399,), (999, 749, 499, 249)])
def test_txt2img_first_step_sees_unit_noise_whatever_comfyui_scaled(monkeypatch, max_denoise, timesteps):
    _seeded(monkeypatch)
    sigmas = sampling.plan_sigmas(FakeSampling(), timesteps)
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    s0 = float(sigmas[0])
    x = noise * (math.sqrt(1 + s0 * s0) if max_denoise else s0)  # what noise_scaling handed us
    model = FakeX0Model(noise, torch.zeros_like(noise))
    sampling.sample_dmd2(model, x, sigmas, {"seed": 5}, disable=True)
    first, sigma = model.inputs[0]
    assert torch.allclose(first / math.sqrt(1 + sigma * sigma), noise, atol=1e-5)  # the UNet's input
    assert len(model.inputs) == len(timesteps)
    if len(timesteps) > 1:  # re-noise: x0 (0 here) + sigma_1 * noise of seed + 1, not the starting noise
        renoise = torch.randn(noise.shape, generator=torch.Generator().manual_seed(6))
        assert torch.allclose(model.inputs[1][0], renoise * sigmas[1])


def test_img2img_keeps_comfyui_start(monkeypatch):
    _seeded(monkeypatch)
    sigmas = sampling.plan_sigmas(FakeSampling(), (499, 249))
    noise, latent = torch.randn(1, 4, 8, 8), torch.ones(1, 4, 8, 8)
    x = latent + noise * sigmas[0]
    model = FakeX0Model(noise, latent)
    sampling.sample_dmd2(model, x, sigmas, {"seed": 1}, disable=True)
    assert torch.equal(model.inputs[0][0], x)


def test_callback_every_step(monkeypatch):
    _seeded(monkeypatch)
    steps = []
    sigmas = sampling.plan_sigmas(FakeSampling(), (999, 749, 499, 249))
    noise = torch.randn(1, 4, 8, 8)
    sampling.sample_dmd2(FakeX0Model(noise, torch.zeros_like(noise)), noise, sigmas, {"seed": 1},
                         callback=lambda d: steps.append(d["i"]), disable=True)
    assert steps == [0, 1, 2, 3]


def test_warns_once_untagged_and_cfg(monkeypatch, caplog):
    _seeded(monkeypatch)
    sigmas = sampling.plan_sigmas(FakeSampling(), (999,))
    noise = torch.randn(1, 4, 8, 8)
    with caplog.at_level(logging.WARNING, logger="dmd2"):
        for _ in range(3):
            sampling.sample_dmd2(FakeX0Model(noise, torch.zeros_like(noise), cfg=3.0), noise, sigmas, {"seed": 1},
                                 disable=True)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert any("no DMD2 loader tagged" in m for m in messages) and any("double cost" in m for m in messages)
    caplog.clear()
    monkeypatch.setattr(sampling, "_warned", set())
    facts = tags.DMD2Facts((999,), "t")
    with caplog.at_level(logging.WARNING, logger="dmd2"):
        sampling.sample_dmd2(FakeX0Model(noise, torch.zeros_like(noise), facts=facts), noise, sigmas, {"seed": 1},
                             disable=True)
        sampling.sample_dmd2(FakeX0Model(noise, torch.zeros_like(noise)), noise, sigmas,
                             {"seed": 1, "model_options": {"dmd2": facts}}, disable=True)
    assert not caplog.records


def _fake_comfy(monkeypatch, *, complete=True):
    samplers = types.ModuleType("comfy.samplers")
    samplers.KSAMPLER_NAMES = ["euler", "lcm"]
    samplers.SAMPLER_NAMES = samplers.KSAMPLER_NAMES + ["ddim"]
    samplers.SCHEDULER_HANDLERS = {"simple": None}
    samplers.SCHEDULER_NAMES = list(samplers.SCHEDULER_HANDLERS)

    class KSampler:
        SCHEDULERS = samplers.SCHEDULER_NAMES
        SAMPLERS = samplers.SAMPLER_NAMES

    samplers.KSampler = KSampler
    samplers.SchedulerHandler = lambda handler, use_ms=True: (handler, use_ms)
    samplers.ksampler = lambda name: name
    if not complete:
        del samplers.SCHEDULER_HANDLERS  # a ComfyUI that renamed it
    k_sampling = types.ModuleType("comfy.k_diffusion.sampling")
    comfy = types.ModuleType("comfy")
    k_diffusion = types.ModuleType("comfy.k_diffusion")
    comfy.samplers, comfy.k_diffusion, k_diffusion.sampling = samplers, k_diffusion, k_sampling
    for name, module in {"comfy": comfy, "comfy.samplers": samplers, "comfy.k_diffusion": k_diffusion,
                         "comfy.k_diffusion.sampling": k_sampling}.items():
        monkeypatch.setitem(sys.modules, name, module)
    return samplers, k_sampling


def test_registration_adds_once(monkeypatch):
    samplers, k_sampling = _fake_comfy(monkeypatch)
    assert register.register_stock_entries() and register.register_stock_entries()
    assert samplers.KSAMPLER_NAMES == ["euler", "lcm", "dmd2"]
    assert samplers.SAMPLER_NAMES == ["euler", "lcm", "ddim", "dmd2"] and samplers.KSampler.SAMPLERS.count("dmd2") == 1
    assert samplers.SCHEDULER_NAMES == ["simple", "dmd2"] and samplers.KSampler.SCHEDULERS is samplers.SCHEDULER_NAMES
    assert samplers.SCHEDULER_HANDLERS["dmd2"] == (sampling.scheduler_sigmas, True)
    assert k_sampling.sample_dmd2 is sampling.sample_dmd2


def test_registration_refuses_changed_internals(monkeypatch, caplog):
    samplers, k_sampling = _fake_comfy(monkeypatch, complete=False)
    with caplog.at_level(logging.WARNING, logger="dmd2"):
        assert register.register_stock_entries() is False
    assert len(caplog.records) == 1 and "SCHEDULER_HANDLERS" in caplog.records[0].getMessage()
    assert "dmd2" not in samplers.SAMPLER_NAMES + samplers.SCHEDULER_NAMES and not hasattr(k_sampling, "sample_dmd2")


def test_facts_for_plan_choice():
    info = types.SimpleNamespace(trained_timesteps=None, entry=None, name="renamed.safetensors")
    assert loaders.facts_for(info, "sdxl_1step").trained_timesteps == (399,)
    assert loaders.facts_for(info).trained_timesteps == (999, 749, 499, 249)


def test_facts_for_a_trainer_exported_file_come_from_its_stamp(tmp_path):
    """A student exported by `python -m distill` (any name) runs on the timesteps stamped in it."""
    from sampler.models.checkpoints import inspect_file
    from sampler.models.stamps import timesteps_metadata

    path = tmp_path / "my_finetune_student.safetensors"
    save_file({"lora_unet_mid_block_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8)}, path,
              metadata=timesteps_metadata((999, 499)))
    facts = loaders.facts_for(inspect_file(path))
    assert facts.trained_timesteps == (999, 499) and "dmd2_trained_timesteps" in facts.source


def _file(tmp_path, name, tensors):
    path = tmp_path / name
    save_file(tensors, path)
    return path


def test_loaders_explain_wrong_files(monkeypatch, tmp_path):
    z = torch.zeros
    checkpoint = _file(tmp_path, "dmd2_sdxl_4step_unet_fp16.safetensors", {
        "model.diffusion_model.input_blocks.0.0.weight": z(1), "cond_stage_model.transformer.x": z(1)})
    sd15_lora = _file(tmp_path, "sd15_lora.safetensors", {
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": z(4, 768),
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight": z(320, 4)})
    unet = _file(tmp_path, "unet.safetensors", {"conv_in.weight": z(1), "time_embedding.linear_1.weight": z(1)})
    files = {"checkpoint.safetensors": checkpoint, "sd15_lora.safetensors": sd15_lora, "unet.safetensors": unet}
    monkeypatch.setattr(host, "full_path", lambda folder, name: files.get(name))
    monkeypatch.setattr(host, "folder_paths", lambda folder: [tmp_path])
    with pytest.raises(errors.WrongKindError, match="full checkpoint.*Load Checkpoint"):
        nodes.DMD2UNetLoader().load("checkpoint.safetensors", "default")
    monkeypatch.setattr(host, "model_base", lambda model: "sdxl")
    with pytest.raises(errors.BaseMismatchError, match="SD1.5 lora.*SDXL"):
        nodes.DMD2LoraLoader().load(FakePatcher(), "sd15_lora.safetensors", 1.0)
    with pytest.raises(errors.WrongKindError, match="UNet only.*Load Diffusion Model"):
        nodes.DMD2LoraLoader().load(FakePatcher(), "unet.safetensors", 1.0)
    with pytest.raises(FileNotFoundError, match="refresh"):
        nodes.DMD2LoraLoader().load(FakePatcher(), "gone.safetensors", 1.0)


def test_catalog_file_names_are_choices_fetched_on_first_use(monkeypatch, tmp_path):
    """The example workflows name catalog files by their released names (so ComfyUI's frontend can offer the
    download): such a value passes ComfyUI's validation while the file is missing and is fetched like its
    "catalog: <id>" entry; a file of the other kind or an unknown name is refused before anything runs."""
    unet, lora = nodes.DMD2UNetLoader, nodes.DMD2LoraLoader
    assert unet.VALIDATE_INPUTS("my_diffusion_models.safetensors") is True  # listed by ComfyUI
    assert unet.VALIDATE_INPUTS("catalog: dmd2-sdxl-4step-unet-fp16") is True
    assert unet.VALIDATE_INPUTS("dmd2_sdxl_4step_unet_fp16.safetensors") is True  # not on disk: the catalog's
    assert unet.VALIDATE_INPUTS("dmd2_sdxl_1step_unet_fp16.converted.safetensors") is True  # a pickle's copy
    assert lora.VALIDATE_INPUTS("dmd2_sdxl_4step_lora_fp16.safetensors") is True
    assert "neither a file" in unet.VALIDATE_INPUTS("dmd2_sdxl_4step_lora_fp16.safetensors")  # a LoRA, not a UNet
    assert "neither a file" in lora.VALIDATE_INPUTS("catalog: dmd2-sdxl-4step-unet-fp16")
    assert "neither a file" in lora.VALIDATE_INPUTS("gone.safetensors")

    monkeypatch.setattr(host, "full_path", lambda folder, name: None)
    monkeypatch.setattr(host, "folder_paths", lambda folder: [tmp_path / folder])
    monkeypatch.setattr(host, "models_dir", lambda: tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the real download path, stopped before the network
    with pytest.raises(errors.OfflineError, match=r"dmd2_sdxl_4step_unet_fp16\.safetensors.*diffusion_models"):
        unet().load("dmd2_sdxl_4step_unet_fp16.safetensors", "default")


def test_misplaced_unet_in_checkpoints_is_reported(monkeypatch, tmp_path, caplog):
    unet = _file(tmp_path, "dmd2_sdxl_4step_unet_fp16.safetensors",
                 {"conv_in.weight": torch.zeros(1), "time_embedding.linear_1.weight": torch.zeros(1)})
    full = _file(tmp_path, "dmd2_merged.safetensors", {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1),
                                                       "cond_stage_model.transformer.x": torch.zeros(1)})
    files = {unet.name: unet, full.name: full, "other.safetensors": None}
    monkeypatch.setattr(host, "filename_list", lambda folder: list(files))
    monkeypatch.setattr(host, "full_path", lambda folder, name: files[name])
    with caplog.at_level(logging.WARNING, logger="dmd2"):
        assert nodes.warn_misplaced_unets() == [unet.name]
    assert len(caplog.records) == 1 and "models/diffusion_models" in caplog.records[0].getMessage()


def test_loaders_report_damaged_and_broken_files_in_the_core_s_words(monkeypatch, tmp_path):
    """What ComfyUI shows as the node's error is the core's message, the same the command line prints."""
    import json
    import os

    inspect_file = importlib.import_module(PACK + ".sampler.models.checkpoints").inspect_file  # the pack's copy
    good = _file(tmp_path, "u.safetensors", {"conv_in.weight": torch.zeros(2), "time_embedding.linear_1.weight":
                                             torch.zeros(2)})
    raw = good.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    header["conv_in.weight"]["data_offsets"] = ["0", "8"]
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + n:])
    os.symlink("loop.safetensors", tmp_path / "loop.safetensors")
    monkeypatch.setattr(host, "full_path", lambda folder, name: (tmp_path / name) if (tmp_path / name).is_file()
                        else None)  # as ComfyUI's get_full_path: a link to nothing is not a file
    monkeypatch.setattr(host, "folder_paths", lambda folder: [tmp_path / "elsewhere", tmp_path])
    with pytest.raises(errors.CorruptFileError) as err:
        nodes.DMD2UNetLoader().load("damaged.safetensors", "default")
    with pytest.raises(errors.CorruptFileError) as same:
        inspect_file(damaged)
    assert str(err.value) == str(same.value) and "data_offsets ['0', '8']" in str(err.value)
    with pytest.raises(errors.ModelNotFoundError, match="loop.safetensors is a symbolic link that loops"):
        nodes.DMD2UNetLoader().load("loop.safetensors", "default")
