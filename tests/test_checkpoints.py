"""Safe loading and inspection: real key layouts (meta-device diffusers UNets, DMD2's LoRA keys), bad files refused."""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sampler.models.catalog import Catalog, load_catalog
from sampler.models.tiny import dmd2_format_lora
from sampler.models.checkpoints import (check_compatible, convert_to_safetensors, inspect_file, inspect_state_dict,
                                 load_state_dict, resolve_model)
from sampler.errors import (BaseMismatchError, CorruptFileError, ModelNotFoundError, UnknownModelError,
                            UnsafeFileError, WrongKindError)

CATALOG = load_catalog()

# The real UNet configs (stabilityai/stable-diffusion-xl-base-1.0 and runwayml SD1.5 unet/config.json).
SDXL_UNET = dict(
    sample_size=128, layers_per_block=2, block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
SD15_UNET = dict(sample_size=64, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
                 cross_attention_dim=768, attention_head_dim=8)
def meta_unet(config: dict) -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel(**config)


@pytest.fixture(scope="module")
def sdxl_unet():
    return meta_unet(SDXL_UNET)


@pytest.fixture(scope="module")
def sd15_unet():
    return meta_unet(SD15_UNET)


def meta(*shape: int) -> torch.Tensor:
    return torch.empty(shape, device="meta")


def test_diffusers_unets(sdxl_unet, sd15_unet):
    info = inspect_state_dict(sdxl_unet.state_dict(), catalog=CATALOG)
    assert (info.kind, info.base, info.format, info.entry) == ("unet", "sdxl", "diffusers", None)
    assert info.num_tensors == 1680 and sum(v.numel() for v in sdxl_unet.state_dict().values()) == 2_567_463_684
    info = inspect_state_dict(sd15_unet.state_dict(), catalog=CATALOG)
    assert (info.kind, info.base, info.format) == ("unet", "sd15", "diffusers")


def test_dmd2_lora_key_format(sdxl_unet, sd15_unet):
    sd = dmd2_format_lora(sdxl_unet, device="meta")
    assert len(sd) == 3 * 788
    info = inspect_state_dict(sd, name="dmd2_sdxl_4step_lora_fp16.safetensors", catalog=CATALOG)
    assert (info.kind, info.base, info.format) == ("lora", "sdxl", "kohya")
    assert info.entry.id == "dmd2-sdxl-4step-lora-fp16" and info.matched_by == "name"
    assert info.trained_timesteps == (999, 749, 499, 249)
    # The same format built on SD1.5 is an SD1.5 LoRA (cross-attention width 768).
    assert inspect_state_dict(dmd2_format_lora(sd15_unet, rank=4, device="meta")).base == "sd15"


@pytest.mark.parametrize("keys,expected", [
    ({"unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight": (8, 2048),
      "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_B.weight": (640, 8)}, ("sdxl", "peft")),
    ({"down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight": (8, 768)}, ("sd15", "peft")),
    ({"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor.to_k_lora.down.weight": (4, 768),
      "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor.to_k_lora.up.weight": (320, 4)},
     ("sd15", "diffusers")),
    ({"lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": (4, 768)}, ("sdxl", "kohya")),
    ({"lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": (4, 768)}, ("sd15", "kohya")),
])
def test_lora_layouts(keys, expected):
    info = inspect_state_dict({k: meta(*s) for k, s in keys.items()})
    assert (info.kind, (info.base, info.format)) == ("lora", expected)


LDM_SDXL_UNET = {"input_blocks.0.0.weight": (320, 4, 3, 3), "out.2.weight": (4, 320, 3, 3),
                 "label_emb.0.0.weight": (1280, 2816),
                 "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": (640, 2048)}
LDM_SD15_UNET = {"input_blocks.0.0.weight": (320, 4, 3, 3), "out.2.weight": (4, 320, 3, 3),
                 "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768)}


def prefixed(keys: dict, prefix: str) -> dict:
    return {prefix + k: v for k, v in keys.items()}


@pytest.mark.parametrize("keys,expected", [
    (LDM_SDXL_UNET, ("unet", "sdxl", "ldm")),
    (LDM_SD15_UNET, ("unet", "sd15", "ldm")),
    ({**prefixed(LDM_SDXL_UNET, "model.diffusion_model."), "first_stage_model.decoder.conv_in.weight": (512, 4, 3, 3),
      "conditioner.embedders.1.model.text_projection": (1280, 1280)}, ("checkpoint", "sdxl", "ldm")),
    ({**prefixed(LDM_SD15_UNET, "model.diffusion_model."), "first_stage_model.decoder.conv_in.weight": (512, 4, 3, 3),
      "cond_stage_model.transformer.text_model.final_layer_norm.weight": (768,)}, ("checkpoint", "sd15", "ldm")),
    ({"decoder.conv_in.weight": (512, 4, 3, 3), "decoder.up.0.block.0.conv1.weight": (128, 256, 3, 3)},
     ("vae", None, "ldm")),
    ({"3.conv.4.bias": (64,), "8.conv.0.weight": (64, 64, 3, 3)}, ("taesd", None, "taesd")),
    ({"something.else": (3,)}, ("unknown", None, "unknown")),
])
def test_ldm_checkpoint_vae_layouts(keys, expected):
    info = inspect_state_dict({k: meta(*s) for k, s in keys.items()}, catalog=CATALOG)
    assert (info.kind, info.base, info.format) == expected


def small_lora(path: Path) -> Path:
    save_file({"lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight":
               torch.zeros(4, 2048), "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k.alpha":
               torch.tensor(8.0)}, path)
    return path


def test_inspect_file_reads_only_the_header(tmp_path):
    info = inspect_file(small_lora(tmp_path / "my_lora.safetensors"), catalog=CATALOG)
    assert (info.kind, info.base, info.entry) == ("lora", "sdxl", None)


def test_recognised_by_sha256_whatever_the_name(tmp_path):
    path = small_lora(tmp_path / "renamed.safetensors")
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    entry = replace(CATALOG.get("dmd2-sdxl-4step-lora-fp16"), sha256=sha, size=None)
    catalog = Catalog((entry,))
    assert inspect_file(path, catalog=catalog).entry is None  # not hashed yet, and the name says nothing
    info = inspect_file(path, catalog=catalog, hash_file=True)
    assert (info.entry, info.matched_by, info.trained_timesteps) == (entry, "sha256", (999, 749, 499, 249))
    # The hash is recorded: the next inspection recognises the file without hashing it again.
    assert inspect_file(path, catalog=catalog).matched_by == "sha256"


def test_name_fallback_for_renamed_dmd2_files(sdxl_unet):
    info = inspect_state_dict(sdxl_unet.state_dict(), name="DMD2-SDXL-1step.safetensors", catalog=CATALOG)
    assert info.entry.plan == "sdxl_1step" and info.trained_timesteps == (399,)
    # A name that says DMD2 does not make an SD1.5 UNet an SDXL DMD2 entry.
    sd15 = {k: meta(*s) for k, s in LDM_SD15_UNET.items()}
    assert inspect_state_dict(sd15, name="dmd2_sdxl_4step_unet_fp16.safetensors", catalog=CATALOG).entry is None


def test_truncated_safetensors(tmp_path):
    path = tmp_path / "unet.safetensors"
    save_file({"conv_in.weight": torch.zeros(320, 4, 3, 3), "time_embedding.linear_1.weight": torch.zeros(64, 64)},
              path)
    data = path.read_bytes()
    for cut in (len(data) - 100, 20, 4):
        path.write_bytes(data[:cut])
        with pytest.raises(CorruptFileError, match="truncated|not a safetensors|damaged"):
            inspect_file(path, catalog=CATALOG)
        with pytest.raises(CorruptFileError):
            load_state_dict(path)


class RunsCode:
    """A pickle payload that would create a file if unpickled with plain pickle.load."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_malicious_pickle_is_refused_not_run(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.bin"
    payload = {"conv_in.weight": torch.zeros(2), "x": RunsCode(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with path.open("wb") as f:
            pickle.dump(payload, f, protocol=2)
    with pytest.raises(UnsafeFileError, match="refused"):
        load_state_dict(path)
    with pytest.raises(UnsafeFileError):
        inspect_file(path, catalog=CATALOG)
    assert not marker.exists()


def test_pickle_state_dict_loads_weights_only(tmp_path):
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"conv_in.weight": torch.ones(2)}, "global_step": 5}, path)
    assert list(load_state_dict(path)) == ["conv_in.weight"]
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(CorruptFileError):
        load_state_dict(path)


SDXL_CHECKPOINT = {**prefixed(LDM_SDXL_UNET, "model.diffusion_model."),
                   "conditioner.embedders.1.model.text_projection": (1280, 1280)}
SDXL_LORA = {"lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": (64, 2048)}


@pytest.mark.parametrize("keys,want,match", [
    (SDXL_CHECKPOINT, "unet", "full checkpoint .*Load Checkpoint"),
    (LDM_SDXL_UNET, "checkpoint", "UNet only.*Load Diffusion Model.*sdxl-base-1.0.*A1111 cannot"),
    (SDXL_LORA, "unet", "LoRA.*LoraLoader"),
    ({"something.else": (3,)}, "unet", "not a model file this pack recognises"),
])
def test_wrong_kind_explains_what_to_use(keys, want, match):
    info = inspect_state_dict({k: meta(*s) for k, s in keys.items()}, name="x.safetensors", catalog=CATALOG)
    with pytest.raises(WrongKindError, match=match):
        check_compatible(info, want)


def test_wrong_base(sd15_unet, sdxl_unet):
    lora = inspect_state_dict(dmd2_format_lora(sd15_unet, rank=4, device="meta"), name="sd15_lora.safetensors")
    with pytest.raises(BaseMismatchError, match="SD1.5 lora, but the model it is used with is SDXL"):
        check_compatible(lora, "lora", base="sdxl")
    unet = inspect_state_dict(sdxl_unet.state_dict(), name="u.safetensors")
    with pytest.raises(BaseMismatchError, match="SDXL unet.*SD1.5"):
        check_compatible(unet, "unet", base="sd15")
    check_compatible(unet, "unet", base="sdxl")


def catalog_with_pickle(tmp_path: Path) -> tuple[Catalog, Path]:
    """A catalog whose 1-step UNet entry is a tiny .bin we made, and that file placed where resolve_model looks."""
    folder = tmp_path / "models" / "diffusion_models"
    folder.mkdir(parents=True)
    src = folder / "dmd2_sdxl_1step_unet_fp16.bin"
    torch.save({"conv_in.weight": torch.ones(320, 4, 3, 3), "time_embedding.linear_1.weight": torch.ones(8, 8),
                "add_embedding.linear_1.weight": torch.ones(8, 8)}, src)
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    return Catalog((replace(CATALOG.get("dmd2-sdxl-1step-unet-fp16"), sha256=sha, size=src.stat().st_size),)), src


def test_catalog_pickle_converted_once(tmp_path):
    catalog, src = catalog_with_pickle(tmp_path)
    resolved = resolve_model("dmd2-sdxl-1step-unet-fp16", tmp_path / "models", catalog=catalog)
    assert resolved.path.name == "dmd2_sdxl_1step_unet_fp16.converted.safetensors" and resolved.source == src
    assert (resolved.info.kind, resolved.info.base, resolved.info.trained_timesteps) == ("unet", "sdxl", (399,))
    assert torch.equal(load_state_dict(resolved.path)["conv_in.weight"], torch.ones(320, 4, 3, 3))
    src.unlink()  # the converted copy is used from now on, without the pickle
    again = resolve_model("dmd2-sdxl-1step-unet-fp16", tmp_path / "models", catalog=catalog)
    assert again.path == resolved.path and again.info.matched_by == "metadata" and again.source is None


def test_convert_refuses_a_malicious_pickle(tmp_path):
    path = tmp_path / "evil.bin"
    torch.save({"x": RunsCode(tmp_path / "pwned")}, path)
    with pytest.raises(UnsafeFileError):
        convert_to_safetensors(path, CATALOG.get("dmd2-sdxl-1step-unet-fp16"))
    assert not (tmp_path / "pwned").exists() and list(tmp_path.iterdir()) == [path]


def test_resolve_model_specs(tmp_path):
    path = small_lora(tmp_path / "mine.safetensors")
    assert resolve_model(str(path), tmp_path, catalog=CATALOG).info.kind == "lora"
    with pytest.raises(UnknownModelError, match="dmd2-sdxl-4step-lora-fp16"):
        resolve_model("dmd2-sdxl-8step", tmp_path, catalog=CATALOG)
    with pytest.raises(ModelNotFoundError):
        resolve_model(str(tmp_path / "missing.safetensors"), tmp_path, catalog=CATALOG)


def test_a_damaged_converted_copy_is_made_again(tmp_path):
    """The .converted.safetensors of a verified pickle is ours: damaged, it is rebuilt from the source, not fatal."""
    catalog, src = catalog_with_pickle(tmp_path)
    first = resolve_model("dmd2-sdxl-1step-unet-fp16", tmp_path / "models", catalog=catalog)
    first.path.write_bytes(first.path.read_bytes()[:40])
    again = resolve_model("dmd2-sdxl-1step-unet-fp16", tmp_path / "models", catalog=catalog)
    assert again.path == first.path and again.source == src
    assert torch.equal(load_state_dict(again.path)["conv_in.weight"], torch.ones(320, 4, 3, 3))
