"""Low-memory operation: the plan chosen from free GPU memory, its message, its placement of a real tiny SDXL
pipeline, generation under diffusers' offload hooks, and the one retry after CUDA runs out of memory.

No GPU here: offloaded runs use the CPU as their execution device, which exercises the same hooks and the same
weights-elsewhere code paths (the UNet's parameters on the CPU or the meta device) as a GPU run.
"""

import pytest
import torch

from sampler import TRAINED_TIMESTEPS
from sampler.app.memory import (FULL, GIB, MARGIN_BYTES, MODEL_OFFLOAD, SEQUENTIAL_OFFLOAD, TILE_PIXELS,
                            UNET_FP16_BYTES, UNET_WORKING_BYTES, MemoryPlan, apply_memory_plan, bytes_needed,
                            plan_memory, run_with_oom_fallback, stronger_plan)
from sampler.app.pipeline import decode_to_images, execution_device, generate_latents, sdxl_conditioning
from sampler.models.tiny import tiny_sdxl_pipeline

SIZE = 64
EIGHT_GB_CARD = (int(7.6 * GIB), 8 * GIB)  # an 8 GB card with a desktop: ~7.6 GiB free once CUDA is up


def need(offload, tiling):
    return bytes_needed(offload, tiling)


@pytest.mark.parametrize("free,expected", [
    (80 * GIB, (FULL, False)),
    (need(FULL, False), (FULL, False)),
    (need(FULL, False) - 1, (FULL, True)),
    (need(FULL, True), (FULL, True)),
    (need(FULL, True) - 1, (MODEL_OFFLOAD, False)),
    (EIGHT_GB_CARD[0], (MODEL_OFFLOAD, False)),
    (need(MODEL_OFFLOAD, False), (MODEL_OFFLOAD, False)),
    (need(MODEL_OFFLOAD, False) - 1, (SEQUENTIAL_OFFLOAD, False)),
    (need(SEQUENTIAL_OFFLOAD, False), (SEQUENTIAL_OFFLOAD, False)),
    (need(SEQUENTIAL_OFFLOAD, False) - 1, (SEQUENTIAL_OFFLOAD, True)),
    (need(SEQUENTIAL_OFFLOAD, True), (SEQUENTIAL_OFFLOAD, True)),
    (need(SEQUENTIAL_OFFLOAD, True) - 1, (SEQUENTIAL_OFFLOAD, True)),
    (0, (SEQUENTIAL_OFFLOAD, True)),
])
def test_auto_takes_the_fastest_placement_that_fits(free, expected):
    plan = plan_memory(free, 80 * GIB, "cuda:0")
    assert (plan.offload, plan.vae_tiling) == expected
    assert plan.announce == (expected != (FULL, False))
    assert ("may run out of memory" in plan.reason) == (free < need(SEQUENTIAL_OFFLOAD, True))


def test_thresholds_follow_from_sdxl_sizes():
    # Everything resident: 6.46 GiB of fp16 weights plus the fp32 decode; one model at a time: the UNet and its pass.
    assert [round(need(*step) / GIB, 1) for step in [(FULL, False), (FULL, True), (MODEL_OFFLOAD, False),
                                                      (SEQUENTIAL_OFFLOAD, False), (SEQUENTIAL_OFFLOAD, True)]] \
        == [11.1, 8.4, 6.3, 4.5, 1.8]
    assert need(MODEL_OFFLOAD, False) == UNET_FP16_BYTES + UNET_WORKING_BYTES + MARGIN_BYTES
    assert bytes_needed(MODEL_OFFLOAD, False, bytes_per_weight=4) > 2 * UNET_FP16_BYTES  # fp32 weights on CUDA


def test_fallback_message_says_what_and_how_to_force():
    plan = plan_memory(*EIGHT_GB_CARD, "cuda:0")
    assert plan.reason == ("7.6 GiB free on cuda:0 (of 8.0 GiB): SDXL needs ~8.4 GiB in one piece; offloading "
                           "models to the CPU one at a time (slower); --offload none to force")
    lean = plan_memory(3 * GIB, 4 * GIB, "cuda:1")
    assert lean.reason == ("3.0 GiB free on cuda:1 (of 4.0 GiB): SDXL needs ~6.3 GiB one model at a time; "
                           "offloading layer by layer to the CPU (much slower), the VAE decoding in "
                           f"{TILE_PIXELS}-px tiles; --offload model to force")
    assert not plan_memory(80 * GIB, 80 * GIB, "cuda:0").announce


def test_user_choice_overrides_auto():
    forced = plan_memory(*EIGHT_GB_CARD, "cuda:0", requested="none")
    assert (forced.offload, forced.announce) == (FULL, True) and "as --offload none asks" in forced.reason
    assert "may run out of memory" in forced.reason
    asked = plan_memory(80 * GIB, 80 * GIB, "cuda:0", requested="sequential")
    assert (asked.offload, asked.vae_tiling, asked.announce) == (SEQUENTIAL_OFFLOAD, False, False)
    assert plan_memory(*EIGHT_GB_CARD, "cuda:0", requested="model").offload == MODEL_OFFLOAD
    assert plan_memory(None, None, "cuda:0", requested="model").offload == MODEL_OFFLOAD  # free memory unknown
    with pytest.raises(ValueError, match="offload must be one of auto, none, model, sequential"):
        plan_memory(*EIGHT_GB_CARD, "cuda:0", requested="cpu")


@pytest.mark.parametrize("requested", ["auto", "none", "model", "sequential"])
def test_cpu_runs_everything_in_place(requested):
    plan = plan_memory(None, None, "cpu", requested)
    assert (plan.offload, plan.vae_tiling) == (FULL, False)
    assert plan.announce == (requested in ("model", "sequential"))
    if plan.announce:
        assert plan.reason.startswith(f"--offload {requested} ignored: on the CPU")


@pytest.fixture
def pipe(tmp_path):
    return tiny_sdxl_pipeline(tmp_path)


def test_model_offload_hooks_target_the_gpu_and_leave_weights_on_the_cpu(pipe):
    """enable_model_cpu_offload only installs hooks, so it runs for real here with a CUDA target."""
    apply_memory_plan(pipe, MemoryPlan(MODEL_OFFLOAD, True, ""), torch.device("cuda"))
    assert execution_device(pipe) == torch.device("cuda:0")
    assert pipe.unet.device.type == "cpu" and len(pipe._all_hooks) == 4  # text encoders, UNet, VAE
    vae = pipe.vae
    assert vae.use_tiling and vae.use_slicing and (vae.tile_sample_min_size, vae.tile_latent_min_size) == (512, 64)


def test_each_plan_calls_its_diffusers_method(pipe, monkeypatch):
    """enable_sequential_cpu_offload moves buffers to the device at once (a CUDA build is needed), so the methods
    are recorded here, not run."""
    calls = []
    for name in ("to", "enable_model_cpu_offload", "enable_sequential_cpu_offload"):
        monkeypatch.setattr(pipe, name, lambda *a, name=name, **k: calls.append((name, a, k)))
    gpu = torch.device("cuda")
    for offload in (FULL, MODEL_OFFLOAD, SEQUENTIAL_OFFLOAD):
        apply_memory_plan(pipe, MemoryPlan(offload, False, ""), gpu)
    assert calls == [("to", (gpu,), {}), ("enable_model_cpu_offload", (), {"device": gpu}),
                     ("enable_sequential_cpu_offload", (), {"device": gpu})]
    assert not pipe.vae.use_tiling


def run_hooks_on_plain_cpu(pipe):
    """diffusers names the offload device "cpu:0", and torch 2.13 copies a CPU tensor sent to "cpu:0", which turns
    accelerate's layer-by-layer parameters into plain tensors it then fails to offload. A GPU target names its own
    device; here the hooks are pointed at plain "cpu"."""
    for component in pipe.components.values():
        for module in component.modules() if isinstance(component, torch.nn.Module) else ():
            hook = getattr(module, "_hf_hook", None)
            for h in getattr(hook, "hooks", [hook]):
                if getattr(h, "execution_device", None) is not None:
                    h.execution_device = torch.device("cpu")


def generate(pipe, seeds=(3, 4)):
    """The command line's generation: conditioning, latents and images on the pipeline's execution device."""
    on = execution_device(pipe)
    cond = sdxl_conditioning(pipe, ["a red cat"] * len(seeds), SIZE, SIZE)
    latents = generate_latents(pipe.unet, cond, TRAINED_TIMESTEPS["sdxl_4step"], list(seeds), SIZE, SIZE,
                               progress=False, device=on)
    return latents, [im.tobytes() for im in decode_to_images(pipe.vae, latents, on)]


@pytest.mark.parametrize("offload", [MODEL_OFFLOAD, SEQUENTIAL_OFFLOAD])
def test_offloaded_generation_equals_everything_in_place(tmp_path, offload):
    expected = generate(tiny_sdxl_pipeline(tmp_path / "full"))
    pipe = tiny_sdxl_pipeline(tmp_path / "offloaded")
    apply_memory_plan(pipe, MemoryPlan(offload, False, ""), torch.device("cpu"))
    if offload == SEQUENTIAL_OFFLOAD:
        run_hooks_on_plain_cpu(pipe)
        assert pipe.unet.device.type == "meta"  # where the old `unet.device` placement put the noise
    latents, images = generate(pipe)
    torch.testing.assert_close(latents, expected[0], atol=0, rtol=0)
    assert images == expected[1]


def test_stronger_plans_go_one_step_leaner():
    model = stronger_plan(MemoryPlan(FULL, False, ""))
    assert (model.offload, model.vae_tiling, model.announce) == (MODEL_OFFLOAD, True, True)
    assert model.reason == ("CUDA ran out of memory with SDXL in one piece; retrying once, offloading models to the "
                            f"CPU one at a time (slower), the VAE decoding in {TILE_PIXELS}-px tiles "
                            "(--offload model starts that way)")
    assert stronger_plan(model).offload == SEQUENTIAL_OFFLOAD
    assert stronger_plan(stronger_plan(model)) is None


def raises_oom_once(result="done"):
    calls = []

    def run():
        calls.append(1)
        if len(calls) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return result
    return run, calls


def test_oom_under_auto_retries_once_a_step_leaner():
    run, calls = raises_oom_once()
    switched, said = [], []
    full = MemoryPlan(FULL, False, "")
    result, plan = run_with_oom_fallback(run, full, "auto", switched.append, said.append)
    assert result == "done" and len(calls) == 2 and switched == [plan] and plan == stronger_plan(full)
    assert said == [f"[DMD2] {plan.reason}"]


@pytest.mark.parametrize("requested,offload", [("none", FULL), ("model", MODEL_OFFLOAD),
                                               ("auto", SEQUENTIAL_OFFLOAD)])
def test_oom_propagates_when_asked_for_or_nothing_is_leaner(requested, offload):
    run, calls = raises_oom_once()
    switched = []
    with pytest.raises(torch.cuda.OutOfMemoryError):
        run_with_oom_fallback(run, MemoryPlan(offload, True, ""), requested, switched.append, print)
    assert len(calls) == 1 and not switched


def test_oom_retry_reruns_generation_offloaded(tmp_path):
    """The retry moves the real pipeline to model offload and the second run makes the images of the first plan."""
    expected = generate(tiny_sdxl_pipeline(tmp_path / "full"))
    pipe = tiny_sdxl_pipeline(tmp_path / "retried")
    failed = []

    def out_of_memory_once(module, args):
        if not failed:
            failed.append(1)
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
    hook = pipe.unet.register_forward_pre_hook(out_of_memory_once)
    (latents, _), plan = run_with_oom_fallback(
        lambda: generate(pipe), MemoryPlan(FULL, False, ""), "auto",
        lambda leaner: apply_memory_plan(pipe, leaner, torch.device("cpu")), say=lambda line: None)
    hook.remove()
    assert plan.offload == MODEL_OFFLOAD and len(pipe._all_hooks) == 4
    torch.testing.assert_close(latents, expected[0], atol=0, rtol=0)


def test_cli_says_when_it_offloads(tmp_path, monkeypatch, capsys):
    """`generate --device cuda:0` on an 8 GB card announces model offload and hands the plan to the loader."""
    from sampler.app import cli, pipeline

    loaded = {}

    def load(*args, memory=None, **kwargs):
        loaded["memory"] = memory
        return tiny_sdxl_pipeline(tmp_path), TRAINED_TIMESTEPS["sdxl_1step"]
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: EIGHT_GB_CARD)
    monkeypatch.setattr(pipeline, "load_dmd2_sdxl", load)
    out = tmp_path / "img.png"
    assert cli.main(["generate", "a cat", "--device", "cuda:0", "--width", "64", "--height",
                     "64", "--output", str(out), "--model", "dmd2-sdxl-4step-lora-fp16"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("[DMD2] 7.6 GiB free on cuda:0 (of 8.0 GiB): SDXL needs ~")
    assert first.endswith("offloading models to the CPU one at a time (slower); --offload none to force")
    assert loaded["memory"].offload == MODEL_OFFLOAD and out.exists()
