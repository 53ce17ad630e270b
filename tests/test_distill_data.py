"""What users distil from: single-file (A1111 / ComfyUI) checkpoints read offline with the shipped configs, a folder
of captioned images turned into the prompt and real-latents files, and clear messages for bad files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from distill.data import PipelineData, RealLatents
from distill.prepare import caption_pairs, prepare_dataset
from distill.teacher import CONFIGS, find_tokenizer, load_teacher
from sampler.errors import DMD2Error
from sampler.models.convert import LDM_UNET_PREFIX, unet_key_map
from sampler.models.tiny import dmd2_format_lora, tiny_sd15_pipeline, tiny_sd15_unet

# --- a tiny SD1.5-shaped single-file checkpoint ------------------------------------------------------------------


def ldm_vae_key(key: str, num_blocks: int) -> str:
    """LDM (first_stage_model) name of a diffusers AutoencoderKL key: the layout of the original
    ldm.modules.diffusionmodules.model Encoder / Decoder (decoder up blocks in reverse order)."""
    rules = [(r"(encoder|decoder)\.conv_norm_out\.", r"\1.norm_out."),
             (r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block."),
             (r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample."),
             (r"(encoder|decoder)\.mid_block\.resnets\.(\d)\.", lambda m: f"{m[1]}.mid.block_{int(m[2]) + 1}."),
             (r"(encoder|decoder)\.mid_block\.attentions\.0\.group_norm\.", r"\1.mid.attn_1.norm."),
             (r"(encoder|decoder)\.mid_block\.attentions\.0\.to_(q|k|v)\.", r"\1.mid.attn_1.\2."),
             (r"(encoder|decoder)\.mid_block\.attentions\.0\.to_out\.0\.", r"\1.mid.attn_1.proj_out."),
             (r"decoder\.up_blocks\.(\d+)\.resnets\.", lambda m: f"decoder.up.{num_blocks - 1 - int(m[1])}.block."),
             (r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
              lambda m: f"decoder.up.{num_blocks - 1 - int(m[1])}.upsample."),
             (r"\.conv_shortcut\.", ".nin_shortcut.")]
    for pattern, replacement in rules:
        key = re.sub(pattern, replacement, key)
    return key


def write_ldm_checkpoint(pipe, path: Path) -> Path:
    """The pipeline as one LDM-layout file (model.diffusion_model / first_stage_model / cond_stage_model), the UNet
    renamed by our own key map."""
    sd = {}
    unet = pipe.unet.state_dict()
    names = unet_key_map(unet)
    sd.update({LDM_UNET_PREFIX + names[k]: v for k, v in unet.items()})
    blocks = len(pipe.vae.config.block_out_channels)
    for k, v in pipe.vae.state_dict().items():
        key = ldm_vae_key(k, blocks)
        sd["first_stage_model." + key] = v[:, :, None, None] if ".mid.attn_1." in key and v.ndim == 2 else v
    for k, v in pipe.text_encoder.state_dict().items():  # transformers >= 5.6 drops the text_model. level
        sd["cond_stage_model.transformer." + (k if k.startswith("text_model.") else "text_model." + k)] = v
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


@pytest.fixture(scope="module")
def single_file(tmp_path_factory):
    """(tiny SD1.5 pipeline, its single-file checkpoint, a config folder of its layout, its tokenizer folder)."""
    folder = tmp_path_factory.mktemp("single_file")
    pipe = tiny_sd15_pipeline(folder / "tok")
    pipe.save_pretrained(folder / "config")  # the weights in it are ignored: only the configs are read
    path = write_ldm_checkpoint(pipe, folder / "tiny_sd15.safetensors")
    return pipe, path, folder / "config", folder / "tok" / "tokenizer"


def test_a_single_file_checkpoint_loads_exactly_offline(single_file, monkeypatch):
    """diffusers' single-file converter reads back every weight we wrote, so our UNet key map and diffusers' agree."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe, path, config, tokenizer = single_file
    loaded = load_teacher(path, tokenizer, config)
    for name in ("unet", "vae", "text_encoder"):
        want, got = getattr(pipe, name).state_dict(), getattr(loaded, name).state_dict()
        assert want.keys() == got.keys(), name
        assert all(torch.equal(want[k], got[k]) for k in want), name
    assert loaded.tokenizer("abc").input_ids == pipe.tokenizer("abc").input_ids


def test_single_file_mistakes_are_explained(single_file, tmp_path):
    pipe, path, config, tokenizer = single_file
    lora = tmp_path / "lora.safetensors"
    save_file(dmd2_format_lora(tiny_sd15_unet(), rank=2), str(lora))
    with pytest.raises(DMD2Error, match="not a full SD1.5 / SDXL checkpoint .*looks like a lora"):
        load_teacher(lora, tokenizer, config)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DMD2Error, match="has no vocab.json or merges.txt: give --tokenizer DIR.*sd1_tokenizer"):
        find_tokenizer(tmp_path / "empty")
    with pytest.raises(DMD2Error, match="no such file or folder"):
        load_teacher(tmp_path / "nowhere.safetensors")


def test_shipped_configs_build_the_real_architectures():
    """The configs in distill/configs build SD1.5 and SDXL base exactly: their published parameter counts."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    def count(module) -> int:
        return sum(p.numel() for p in module.parameters())

    def config(base, part):
        return json.loads((CONFIGS / base / part / "config.json").read_text())

    with init_empty_weights():
        assert count(UNet2DConditionModel.from_config(config("sd15", "unet"))) == 859_520_964
        assert count(UNet2DConditionModel.from_config(config("sdxl", "unet"))) == 2_567_463_684
        for base in ("sd15", "sdxl"):
            assert count(AutoencoderKL.from_config(config(base, "vae"))) == 83_653_863
            assert count(CLIPTextModel(CLIPTextConfig.from_json_file(CONFIGS / base / "text_encoder" / "config.json"))
                         ) == 123_060_480
        big_g = CLIPTextConfig.from_json_file(CONFIGS / "sdxl" / "text_encoder_2" / "config.json")
        assert count(CLIPTextModelWithProjection(big_g)) == 694_659_840
    assert json.loads((CONFIGS / "sdxl" / "model_index.json").read_text())["force_zeros_for_empty_prompt"] is True


# --- prepare: images + captions -> prompts + latents -------------------------------------------------------------


def write_images(folder: Path, size: int, count: int) -> None:
    from PIL import Image

    g = torch.Generator().manual_seed(1)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        pixels = torch.randint(0, 256, (size, size, 3), generator=g, dtype=torch.uint8)
        Image.fromarray(pixels.numpy()).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(f"ab{'c' * i}\n")


def test_captions_become_prompt_lines(tmp_path):
    write_images(tmp_path, 8, 3)
    (tmp_path / "img1.txt").write_text("#tag line\nsecond  line\n")
    (tmp_path / "img2.txt").unlink()
    pairs, uncaptioned = caption_pairs(tmp_path)
    assert [(p.name, c) for p, c in pairs] == [("img0.png", "ab"), ("img1.png", "tag line second line")]
    assert [p.name for p in uncaptioned] == ["img2.png"]


def test_prepare_streams_the_vae_latents_of_every_image(single_file, tmp_path):
    """Each row is the VAE's sample for its image (batch size 1: the same draws as encoding one by one), times the
    scaling factor; a non-square image is centre-cropped."""
    import numpy as np
    from PIL import Image

    pipe = single_file[0]
    write_images(tmp_path / "images", 64, 3)
    wide = torch.randint(0, 256, (64, 96, 3), dtype=torch.uint8)  # 96 wide: the centre 64 columns are kept
    Image.fromarray(wide.numpy()).save(tmp_path / "images" / "wide.png")
    (tmp_path / "images" / "wide.txt").write_text("wide")
    prompts, latents = prepare_dataset(pipe.vae, tmp_path / "images", tmp_path / "data", 64, batch_size=1,
                                       seed=5, progress=False)
    assert prompts.read_text().splitlines() == ["ab", "abc", "abcc", "wide"]
    tensors = load_file(str(latents))
    assert tensors["latents"].shape == (4, 4, 8, 8) and tensors["latents"].dtype == torch.float16
    assert tensors["prompt_ids"].tolist() == [0, 1, 2, 3]
    g = torch.Generator().manual_seed(5)
    images = [torch.from_numpy(np.asarray(Image.open(tmp_path / "images" / f"img{i}.png"))).float() for i in range(3)]
    images += [wide[:, 16:80].float()]
    with torch.no_grad():
        for i, im in enumerate(images):
            x = (im.permute(2, 0, 1)[None] / 127.5 - 1.0)
            want = pipe.vae.encode(x).latent_dist.sample(g) * pipe.vae.config.scaling_factor
            assert torch.equal(tensors["latents"][i], want[0].half()), i


# --- real latents: every way the file can be wrong --------------------------------------------------------------


@pytest.mark.parametrize("tensors, message", [
    ({"images": torch.zeros(2, 4, 8, 8)}, r"needs a tensor 'latents' .*it has images \(2, 4, 8, 8\)"),
    ({"latents": torch.zeros(4, 8, 8)}, r"needs a tensor 'latents' of shape \(N, C, H, W\)"),
    ({"latents": torch.zeros(2, 4, 8, 8, dtype=torch.int32)}, "must be float16, bfloat16 or float32"),
    ({"latents": torch.zeros(2, 4, 8, 8), "prompt_ids": torch.tensor([0, 5])}, r"point at prompt lines 0..5, but the "
                                                                              r"prompt file has 2"),
    ({"latents": torch.zeros(2, 4, 8, 8), "prompt_ids": torch.tensor([0])}, "one integer per latent"),
], ids=["no-latents", "3d", "int", "ids-out-of-range", "ids-short"])
def test_bad_real_latents_are_explained(tmp_path, tensors, message):
    save_file(tensors, str(tmp_path / "r.safetensors"))
    with pytest.raises(DMD2Error, match=message):
        RealLatents(tmp_path / "r.safetensors", num_prompts=2)


def test_unreadable_or_mismatched_real_latents_are_explained(single_file, tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(DMD2Error, match="junk.safetensors is not a readable safetensors file"):
        RealLatents(tmp_path / "junk.safetensors", 1)
    save_file({"latents": torch.zeros(4, 4, 8, 8)}, str(tmp_path / "r.safetensors"))
    raw = (tmp_path / "r.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(raw[:-100])
    with pytest.raises(DMD2Error, match="cut.safetensors is not a readable .*truncated"):
        RealLatents(tmp_path / "cut.safetensors", 1)
    real = RealLatents(tmp_path / "r.safetensors", 1)
    with pytest.raises(DMD2Error, match=r"shape \(4, 8, 8\), the UNet at 128 px needs \(4, 16, 16\)"):
        PipelineData(single_file[0], ["a"], 128, real)
    assert real.rows([3, 0]).shape == (2, 4, 8, 8)


# --- end to end --------------------------------------------------------------------------------------------------


def test_a_single_file_sd15_checkpoint_distils_end_to_end(single_file, tmp_path, fresh_accelerate_state):
    """prepare + train from one .safetensors file (GAN on real latents, LoRA), offline; the LoRA loads onto the
    teacher and samples."""
    from distill.cli import main
    from sampler.models.checkpoints import inspect_file

    _, path, config, tokenizer = single_file
    write_images(tmp_path / "images", 64, 4)
    source = ["--tokenizer", str(tokenizer), "--config", str(config)]
    assert main(["prepare", str(path), str(tmp_path / "images"), "--output", str(tmp_path / "data"), *source]) == 0
    assert main(["train", str(path), *source, "--prompts", str(tmp_path / "data" / "prompts.txt"),
                 "--real-latents", str(tmp_path / "data" / "latents.safetensors"), "--output", str(tmp_path / "out"),
                 "--steps", "3", "--lora-rank", "4", "--mixed-precision", "no", "--batch-size", "2",
                 "--sample-every", "2", "--log-with", "none"]) == 0
    info = inspect_file(tmp_path / "out" / "student_lora.safetensors")
    assert (info.kind, info.format, info.trained_timesteps) == ("lora", "kohya", (999,))  # the sd15 recipe's 1 step
    from PIL import Image

    with Image.open(tmp_path / "out" / "samples" / "step-00000002.png") as grid:  # 4 prompts of 64 px in a row
        assert grid.size == (4 * 64, 64)


def test_a_full_size_sd15_file_loads_offline_with_the_shipped_configs(monkeypatch):
    """A real-architecture SD1.5 single file (DMD2_SD15_CHECKPOINT, e.g. A1111 harness's random-weight one) with
    ComfyUI's tokenizer files (COMFYUI_PATH): every component built from distill/configs/sd15, no network."""
    import os

    checkpoint, comfyui = os.environ.get("DMD2_SD15_CHECKPOINT"), os.environ.get("COMFYUI_PATH")
    if not checkpoint or not comfyui:
        pytest.skip("needs DMD2_SD15_CHECKPOINT (a full SD1.5 .safetensors) and COMFYUI_PATH (for comfy/sd1_tokenizer)")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = load_teacher(Path(checkpoint), Path(comfyui) / "comfy" / "sd1_tokenizer")
    assert sum(p.numel() for p in pipe.unet.parameters()) == 859_520_964
    ids = pipe.tokenizer(["a photo of a cat"]).input_ids[0]
    assert ids == [49406, 320, 1125, 539, 320, 2368, 49407]  # CLIP's ids for these words
    with torch.no_grad():
        assert torch.isfinite(pipe.text_encoder(torch.tensor([ids]))[0]).all()
