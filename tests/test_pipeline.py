"""The standalone path against diffusers' own SDXL pipeline, on a tiny SDXL-shaped pipeline built offline."""

from pathlib import Path

import pytest
import torch

from sampler import TRAINED_TIMESTEPS, timesteps_for
from sampler.app.pipeline import (decode_to_images, generate_latents, output_paths, pick_device_and_dtype, save_images,
                                  sdxl_conditioning)
from sampler.models.tiny import tiny_sdxl_pipeline

SIZE = 64


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return tiny_sdxl_pipeline(tmp_path_factory.mktemp("tiny_sdxl"))


def diffusers_reference(pipe, prompt, timesteps, seed):
    """diffusers' StableDiffusionXLPipeline with LCMScheduler on explicit timesteps and no guidance."""
    return pipe(prompt, timesteps=list(timesteps), guidance_scale=0.0, height=SIZE, width=SIZE,
                generator=torch.Generator().manual_seed(seed), output_type="latent").images


@pytest.mark.parametrize("plan", ["sdxl_4step", "sdxl_1step"])
def test_standalone_path_matches_diffusers_sdxl_pipeline(pipe, plan):
    timesteps = TRAINED_TIMESTEPS[plan]
    cond = sdxl_conditioning(pipe, ["a red cat"], SIZE, SIZE)
    ours = generate_latents(pipe.unet, cond, timesteps, [5], SIZE, SIZE, progress=False)
    expected = diffusers_reference(pipe, "a red cat", timesteps, 5)
    # diffusers hands the UNet its start noise unscaled (LCM's init_noise_sigma is 1): unit variance at any first
    # timestep, also 399, so this also pins our first-step noise scale.
    torch.testing.assert_close(ours, expected, atol=2e-4, rtol=1e-4)


def test_conditioning_uses_dmd2_micro_conditioning(pipe):
    cond = sdxl_conditioning(pipe, ["a", "b"], 128, 64)
    assert cond["added_cond_kwargs"]["time_ids"].tolist() == [[64, 128, 0, 0, 64, 128]] * 2
    assert cond["encoder_hidden_states"].shape[0] == 2


def test_batch_image_equals_single_seed(pipe):
    cond = sdxl_conditioning(pipe, ["a cat", "a cat"], SIZE, SIZE)
    batch = generate_latents(pipe.unet, cond, timesteps_for(2), [3, 4], SIZE, SIZE, progress=False)
    single = generate_latents(pipe.unet, sdxl_conditioning(pipe, ["a cat"], SIZE, SIZE), timesteps_for(2), [4],
                              SIZE, SIZE, progress=False)
    torch.testing.assert_close(batch[1:], single, atol=1e-5, rtol=1e-5)


def test_decode_and_save(pipe, tmp_path):
    latents = torch.randn(2, 4, SIZE // 8, SIZE // 8)
    images = decode_to_images(pipe.vae, latents)
    assert [im.size for im in images] == [(SIZE, SIZE)] * 2
    paths = save_images(images, output_paths(tmp_path / "out" / "img.png", len(images)))
    assert [p.name for p in paths] == ["img-0.png", "img-1.png"] and all(p.exists() for p in paths)


@pytest.mark.parametrize("width,height", [(63, 64), (64, 0), (100, 64)])
def test_bad_size(pipe, width, height):
    with pytest.raises(ValueError, match="multiple of 64"):
        generate_latents(pipe.unet, {}, (999,), [0], width, height)


def test_device_and_dtype_choice():
    assert pick_device_and_dtype("cpu") == (torch.device("cpu"), torch.float32)
    assert pick_device_and_dtype("cpu", "bf16") == (torch.device("cpu"), torch.bfloat16)
    with pytest.raises(ValueError, match="dtype must be one of"):
        pick_device_and_dtype("cpu", "fp8")


def test_dmd2_lora_fuses_into_every_targeted_module(tmp_path):
    """The standalone path fuses a LoRA in DMD2's key format fully: W += strength * alpha / rank * up @ down."""
    from safetensors.torch import save_file

    from sampler.models.checkpoints import inspect_file
    from sampler.app.pipeline import apply_dmd2_weights
    from sampler.models.tiny import dmd2_format_lora

    pipe = tiny_sdxl_pipeline(tmp_path)
    lora = dmd2_format_lora(pipe.unet, rank=4, alpha=2.0)
    path = tmp_path / "dmd2_lora.safetensors"
    save_file(lora, path)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    apply_dmd2_weights(pipe, path, inspect_file(path), lora_strength=0.5)
    after = pipe.unet.state_dict()
    modules = [k.removesuffix(".alpha") for k in lora if k.endswith(".alpha")]
    for key in modules:
        name = key.removeprefix("lora_unet_")
        weight = next(w for w in after if w.endswith(".weight") and w.replace(".", "_") == name + "_weight")
        up, down = lora[key + ".lora_up.weight"], lora[key + ".lora_down.weight"]
        delta = (up.flatten(1) @ down.flatten(1)).reshape(before[weight].shape) * 0.5 * 2.0 / 4
        torch.testing.assert_close(after[weight] - before[weight], delta, atol=1e-6, rtol=1e-4)
    changed = [k for k in after if not torch.equal(after[k], before[k])]
    assert len(changed) == len(modules) and not any("lora" in k for k in after)


def test_cli_generate_writes_images(tmp_path, monkeypatch, capsys):
    """`python -m sampler generate` end to end on the tiny SDXL pipeline (loading is the only stand-in)."""
    from sampler.app import cli, pipeline

    monkeypatch.setattr(pipeline, "load_dmd2_sdxl",
                        lambda *a, **k: (tiny_sdxl_pipeline(tmp_path), TRAINED_TIMESTEPS["sdxl_1step"]))
    out = tmp_path / "img.png"
    assert cli.main(["generate", "a cat", "a dog", "--width", "64", "--height", "64", "--output", str(out),
                     "--model", "dmd2-sdxl-4step-lora-fp16"]) == 0
    printed = capsys.readouterr().out
    assert "timesteps [399]" in printed and (tmp_path / "img-0.png").exists() and (tmp_path / "img-1.png").exists()


def test_cli_offline_names_the_file_and_folder(tmp_path):
    import subprocess
    import sys

    env = {"HF_HUB_OFFLINE": "1", "DMD2_MODELS_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "sampler", "generate", "a cat", "--model", "dmd2-sdxl-4step-lora-fp16"],
                          capture_output=True, text=True, env=env, cwd=str(Path(__file__).parent.parent))
    assert done.returncode == 1
    assert "dmd2_sdxl_4step_lora_fp16.safetensors" in done.stderr and f"put it in {tmp_path}/loras" in done.stderr
