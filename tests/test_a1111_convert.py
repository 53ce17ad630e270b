"""sampler.models.convert: diffusers -> LDM UNet key map, checkpoint merge (incl. LoRA fusing), LoRA key conversion."""

import json
import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from sampler.app import cli
from sampler.models.convert import (LAYOUTS, ConversionError, convert_lora_to_ldm_names, kohya_unet_name_map,
                                    layout_from_keys, merge_checkpoint, unet_key_map)
from sampler.models.files import TensorSource, write_safetensors

SDXL_CONFIG = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 2, 10),
    cross_attention_dim=2048, attention_head_dim=(5, 10, 20), use_linear_projection=True,
    addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816)
SD15_CONFIG = dict(sample_size=64, cross_attention_dim=768)  # diffusers' defaults are SD1.5's UNet


def meta_unet(config):
    from diffusers import UNet2DConditionModel
    with torch.device("meta"):
        return UNet2DConditionModel(**config)


def meta_unet_shapes(config):
    return {k: tuple(v.shape) for k, v in meta_unet(config).state_dict().items()}


@pytest.fixture(scope="module")
def sdxl_shapes():
    return meta_unet_shapes(SDXL_CONFIG)


@pytest.mark.parametrize("base,config", [("sdxl", SDXL_CONFIG), ("sd15", SD15_CONFIG)])
def test_unet_map_round_trips_through_diffusers_own_ldm_conversion(base, config):
    """diffusers' single-file loader converts LDM -> diffusers; our map must be its exact inverse, shapes included."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint
    unet = meta_unet(config)
    shapes = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
    assert layout_from_keys(shapes) == LAYOUTS[base]
    mapping = unet_key_map(shapes)
    ldm = {"model.diffusion_model." + v: torch.empty(shapes[k], device="meta") for k, v in mapping.items()}
    back = convert_ldm_unet_checkpoint(ldm, dict(unet.config))
    assert set(back) == set(shapes)
    assert {k: tuple(v.shape) for k, v in back.items()} == shapes


def test_sdxl_upsampler_goes_where_sdxl_has_it(sdxl_shapes):
    mapping = unet_key_map(sdxl_shapes)
    assert mapping["up_blocks.0.upsamplers.0.conv.weight"] == "output_blocks.2.2.conv.weight"
    assert mapping["up_blocks.1.upsamplers.0.conv.weight"] == "output_blocks.5.2.conv.weight"
    assert mapping["down_blocks.1.downsamplers.0.conv.weight"] == "input_blocks.6.0.op.weight"
    assert mapping["add_embedding.linear_2.bias"] == "label_emb.0.2.bias"
    assert mapping["mid_block.attentions.0.transformer_blocks.9.ff.net.2.weight"] == \
        "middle_block.1.transformer_blocks.9.ff.net.2.weight"


def test_unknown_key_is_an_error():
    with pytest.raises(ConversionError):
        unet_key_map(["conv_in.weight", "down_blocks.0.resnets.0.conv1.weight", "up_blocks.0.resnets.0.conv1.weight",
                      "something.else.weight"])


def dmd2_lora_keys(shapes):
    """The key list of a DMD2-style kohya LoRA over every conv / linear weight of a UNet (a superset of DMD2's)."""
    keys = []
    for k, shape in shapes.items():
        if k.endswith(".weight") and len(shape) in (2, 4) and "norm" not in k.rsplit(".", 2)[-2]:
            module = "lora_unet_" + k[:-len(".weight")].replace(".", "_")
            keys += [module + ".lora_down.weight", module + ".lora_up.weight", module + ".alpha"]
    return keys


def test_lora_names_convert_to_existing_ldm_modules(sdxl_shapes):
    ldm_modules = {v[:-len(".weight")].replace(".", "_") for v in unet_key_map(sdxl_shapes).values()}
    keys = dmd2_lora_keys(sdxl_shapes)
    out = convert_lora_to_ldm_names({k: k for k in keys}, "sdxl")
    assert len(out) == len(keys)
    for new in out:
        module = new.rsplit(".", 2 if ".lora_" in new else 1)[0]
        assert module.removeprefix("lora_unet_") in ldm_modules, new
    assert "lora_unet_output_blocks_2_2_conv.lora_down.weight" in out
    # already-LDM keys and text-encoder keys pass through
    same = {"lora_unet_output_blocks_2_2_conv.alpha": 1, "lora_te1_text_model_encoder_layers_0_mlp_fc1.alpha": 2}
    assert convert_lora_to_ldm_names(same) == same


def test_kohya_map_is_one_to_one():
    for base in LAYOUTS:
        m = kohya_unet_name_map(base)
        assert len(set(m.values())) == len(m)


def test_write_safetensors_streams_a_readable_file(tmp_path):
    tensors = {"a": torch.arange(6, dtype=torch.float16).reshape(2, 3), "b": torch.tensor(3, dtype=torch.int64),
               "c": torch.ones(0, 4)}
    path = write_safetensors(tmp_path / "x.safetensors",
                             {k: TensorSource(v.dtype, tuple(v.shape), (lambda v=v: v)) for k, v in tensors.items()},
                             {"dmd2_plan": "sdxl_4step"})
    back = load_file(path)
    assert all(torch.equal(back[k], v) for k, v in tensors.items())
    assert json.loads(path.read_bytes()[8:8 + int.from_bytes(path.read_bytes()[:8], "little")])["__metadata__"] == \
        {"dmd2_plan": "sdxl_4step"}


# --- merge on a small SDXL-layout model (real key structure, tiny widths) ----------------------------------------

TINY_SDXL = dict(SDXL_CONFIG, block_out_channels=(32, 64, 64), attention_head_dim=(2, 4, 4), norm_num_groups=8,
                 cross_attention_dim=64, transformer_layers_per_block=(1, 1, 2), addition_time_embed_dim=8,
                 projection_class_embeddings_input_dim=64 + 48, sample_size=8)


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    from diffusers import UNet2DConditionModel
    folder = tmp_path_factory.mktemp("merge")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**TINY_SDXL)
    sd = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    save_file(sd, folder / "dmd2_sdxl_4step_unet_tiny.safetensors")
    mapping = unet_key_map(sd)
    base = {"model.diffusion_model." + v: torch.zeros_like(sd[k]) for k, v in mapping.items()}
    base["conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight"] = torch.ones(4, 2)
    base["first_stage_model.decoder.conv_in.weight"] = torch.ones(2, 2, 1, 1)
    save_file(base, folder / "sdxl_base_tiny.safetensors")
    return folder, sd, mapping


def test_merge_replaces_every_unet_tensor_and_stamps_the_plan(tiny_files, tmp_path):
    folder, sd, mapping = tiny_files
    out = merge_checkpoint(folder / "sdxl_base_tiny.safetensors", tmp_path / "merged.safetensors",
                           unet=folder / "dmd2_sdxl_4step_unet_tiny.safetensors", dtype=torch.float16)
    merged = load_file(out)
    for k, v in mapping.items():
        torch.testing.assert_close(merged["model.diffusion_model." + v], sd[k].half())
    assert merged["first_stage_model.decoder.conv_in.weight"].dtype == torch.float16
    from sampler.models.checkpoints import inspect_file
    from sampler.models.files import read_safetensors_header
    assert read_safetensors_header(out)["__metadata__"]["dmd2_plan"] == "sdxl_4step"
    assert inspect_file(out).kind == "checkpoint"


def test_merge_refuses_a_unet_that_does_not_fit(tiny_files, tmp_path):
    folder, sd, _ = tiny_files
    partial = {k: v for k, v in sd.items() if not k.startswith("up_blocks.2.resnets.2")}
    save_file(partial, tmp_path / "broken_unet.safetensors")
    with pytest.raises(ConversionError, match="get no tensor"):
        merge_checkpoint(folder / "sdxl_base_tiny.safetensors", tmp_path / "m.safetensors",
                         unet=tmp_path / "broken_unet.safetensors")
    assert not (tmp_path / "m.safetensors").exists()


def test_fused_lora_equals_the_lora_delta(tiny_files, tmp_path):
    folder, sd, mapping = tiny_files
    g = torch.Generator().manual_seed(3)
    lora = {}
    picks = ["up_blocks.0.upsamplers.0.conv.weight", "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight"]
    for k in picks:
        w = sd[k]
        module = "lora_unet_" + k[:-len(".weight")].replace(".", "_")
        rank = 4
        down_shape = (rank, *w.shape[1:]) if w.ndim == 4 else (rank, w.shape[1])
        up_shape = (w.shape[0], rank, 1, 1) if w.ndim == 4 else (w.shape[0], rank)
        lora[module + ".lora_down.weight"] = torch.randn(down_shape, generator=g)
        lora[module + ".lora_up.weight"] = torch.randn(up_shape, generator=g)
        lora[module + ".alpha"] = torch.tensor(2.0)
    save_file(lora, tmp_path / "dmd2_sdxl_4step_lora_tiny.safetensors")
    out = merge_checkpoint(folder / "sdxl_base_tiny.safetensors", tmp_path / "fused.safetensors",
                           lora=tmp_path / "dmd2_sdxl_4step_lora_tiny.safetensors", lora_strength=0.5)
    merged = load_file(out)
    for k in picks:
        module = "lora_unet_" + k[:-len(".weight")].replace(".", "_")
        down, up = lora[module + ".lora_down.weight"], lora[module + ".lora_up.weight"]
        expected = 0.5 * (2.0 / 4) * (up.flatten(1) @ down.flatten(1)).reshape(sd[k].shape)
        torch.testing.assert_close(merged["model.diffusion_model." + mapping[k]], expected)  # base is zeros


def test_convert_lora_file_cli(tmp_path):
    lora = {"lora_unet_up_blocks_0_upsamplers_0_conv.lora_down.weight": torch.ones(2, 4, 3, 3),
            "lora_unet_up_blocks_0_upsamplers_0_conv.lora_up.weight": torch.ones(4, 2, 1, 1),
            "lora_unet_up_blocks_0_upsamplers_0_conv.alpha": torch.tensor(1.0)}
    save_file(lora, tmp_path / "l.safetensors", metadata={"ss_network_dim": "2"})
    # Only the upsampler: nothing in these keys says SDXL or SD1.5, so the base must be named.
    assert cli.main(["convert-lora", str(tmp_path / "l.safetensors"), str(tmp_path / "o.safetensors")]) == 1
    assert not (tmp_path / "o.safetensors").exists()
    assert cli.main(["convert-lora", str(tmp_path / "l.safetensors"), str(tmp_path / "o.safetensors"),
                     "--base", "sdxl"]) == 0
    out = load_file(tmp_path / "o.safetensors")
    assert set(out) == {"lora_unet_output_blocks_2_2_conv.lora_down.weight",
                        "lora_unet_output_blocks_2_2_conv.lora_up.weight", "lora_unet_output_blocks_2_2_conv.alpha"}


def test_merge_tab_handler_writes_into_the_models_folder_and_reports_errors(tiny_files, tmp_path):
    from tests.a1111.support import load_pack
    load_pack()
    from dmd2_pack.extension.ui import run_merge
    folder, _, _ = tiny_files
    base, unet = str(folder / "sdxl_base_tiny.safetensors"), str(folder / "dmd2_sdxl_4step_unet_tiny.safetensors")
    assert run_merge(base, unet, "", 1.0, "merged", tmp_path).startswith("Wrote")
    assert (tmp_path / "merged.safetensors").is_file()
    assert "exists" in run_merge(base, unet, "", 1.0, "merged", tmp_path)
    assert run_merge(base, unet, "", 1.0, "../escape", tmp_path).startswith("Error")
    assert run_merge(base, "", "", 1.0, "x", tmp_path).startswith("Error")


# --- what merge and convert-lora are given is checked, like the loaders check it ----------------------------------

SD15_MODULE = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"
SD15_LORA = {SD15_MODULE + ".lora_down.weight": torch.ones(4, 768), SD15_MODULE + ".lora_up.weight": torch.ones(640, 4),
             SD15_MODULE + ".alpha": torch.tensor(4.0)}
VAE = {"decoder.conv_in.weight": torch.ones(8, 4, 3, 3), "decoder.up.0.block.0.conv1.weight": torch.ones(8, 8, 3, 3)}
PEFT_LORA = {"unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight": torch.ones(4, 2048),
             "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_B.weight": torch.ones(640, 4)}


def saved(tmp_path, name, tensors):
    save_file(tensors, tmp_path / name)
    return str(tmp_path / name)


def run(capsys, *argv):
    """`python -m sampler` in this process: (exit status, stderr); an escaping exception fails the test."""
    status = cli.main(list(argv))
    return status, capsys.readouterr().err


def test_convert_lora_checks_what_it_is_given(tmp_path, capsys):
    out = str(tmp_path / "out.safetensors")
    cases = [(saved(tmp_path, "vae.safetensors", VAE), [], "is a VAE, but a LoRA is needed"),
             (saved(tmp_path, "sd15.safetensors", SD15_LORA), ["--base", "sdxl"],
              "SD1.5 lora, but the model it is used with is SDXL"),
             (saved(tmp_path, "peft.safetensors", PEFT_LORA), [], "LoRA in peft layout.*kohya")]
    for src, extra, words in cases:
        status, err = run(capsys, "convert-lora", src, out, *extra)
        assert status == 1 and err.startswith("error: ") and "Traceback" not in err
        assert re.search(words, err), err
        assert not (tmp_path / "out.safetensors").exists()
    # Without --base the LoRA's own base is used: SD1.5 names, not SDXL's.
    assert run(capsys, "convert-lora", str(tmp_path / "sd15.safetensors"), out)[0] == 0
    expected = kohya_unet_name_map("sd15")["lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"]
    assert {k.split(".")[0] for k in load_file(out)} == {expected} != \
        kohya_unet_name_map("sdxl")["lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"]


def test_convert_lora_never_overwrites_silently(tmp_path, capsys):
    src = saved(tmp_path, "sd15.safetensors", SD15_LORA)
    status, err = run(capsys, "convert-lora", src, src, "--overwrite")
    assert status == 1 and "also an input" in err
    (tmp_path / "taken.safetensors").write_bytes(b"mine")
    status, err = run(capsys, "convert-lora", src, str(tmp_path / "taken.safetensors"))
    assert status == 1 and "exists" in err and "--overwrite" in err
    assert (tmp_path / "taken.safetensors").read_bytes() == b"mine"
    assert run(capsys, "convert-lora", src, str(tmp_path / "taken.safetensors"), "--overwrite")[0] == 0
    status, err = run(capsys, "convert-lora", src, str(tmp_path / "out.ckpt"))
    assert status == 1 and "must end in .safetensors" in err


def test_merge_checks_what_it_is_given(tiny_files, tmp_path, capsys):
    folder, sd, _ = tiny_files
    base, unet = str(folder / "sdxl_base_tiny.safetensors"), str(folder / "dmd2_sdxl_4step_unet_tiny.safetensors")
    out = str(tmp_path / "merged.safetensors")
    cases = [
        (["--base", unet, "--unet", unet], "is a UNet only.*full checkpoint .* is needed"),
        (["--base", base, "--unet", saved(tmp_path, "vae.safetensors", VAE)], "is a VAE, but a UNet only"),
        (["--base", base, "--lora", unet], "is a UNet only.*but a LoRA is needed"),
        (["--base", base, "--lora", saved(tmp_path, "sd15.safetensors", SD15_LORA)],
         "SD1.5 lora, but the model it is used with is SDXL"),
        (["--base", base, "--lora", saved(tmp_path, "peft.safetensors", PEFT_LORA)], "peft layout"),
        (["--base", base], "nothing to merge"),
        (["--base", base, "--unet", unet, "--output", base, "--overwrite"], "also an input"),
        (["--base", str(tmp_path), "--unet", unet], "is a folder, not a model file"),
        (["--base", str(tmp_path / "nope.safetensors"), "--unet", unet], "no such file"),
        (["--base", base, "--unet", unet, "--output", str(tmp_path / "m.bin")], "must end in .safetensors"),
    ]
    for args, words in cases:
        argv = ["merge", *args] + ([] if "--output" in args else ["--output", out])
        status, err = run(capsys, *argv)
        assert status == 1 and "Traceback" not in err and re.search(words, err), (args, err)
        assert not (tmp_path / "merged.safetensors").exists()
    unet_module = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"
    te = saved(tmp_path, "te_lora.safetensors", {  # an SDXL LoRA of the UNet and the first text encoder
        "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.ones(4, 768),
        "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.ones(3072, 4),
        unet_module + ".lora_down.weight": torch.ones(4, 64), unet_module + ".lora_up.weight": torch.ones(64, 4)})
    status, err = run(capsys, "merge", "--base", base, "--lora", te, "--output", out)
    assert status == 1 and "adapts the text encoders" in err, err


def test_merge_and_the_a1111_tab_say_the_same_about_damaged_files(tiny_files, tmp_path, capsys):
    """A damaged header (entry without data_offsets) reaches the command line and the A1111 tab as one message."""
    from tests.a1111.support import load_pack
    load_pack()
    from dmd2_pack.extension.ui import run_merge

    folder, _, _ = tiny_files
    raw = (folder / "dmd2_sdxl_4step_unet_tiny.safetensors").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    del header["conv_in.weight"]["data_offsets"]
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    broken = tmp_path / "broken_unet.safetensors"
    broken.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + n:])
    base = str(folder / "sdxl_base_tiny.safetensors")
    status, err = run(capsys, "merge", "--base", base, "--unet", str(broken), "--output",
                      str(tmp_path / "m.safetensors"))
    tab = run_merge(base, str(broken), "", 1.0, "m2", tmp_path)
    assert status == 1 and "damaged safetensors header (tensor 'conv_in.weight' has data_offsets None" in err
    assert tab == "Error: " + err.removeprefix("error: ").strip()
    assert not (tmp_path / "m.safetensors").exists() and not (tmp_path / "m2.safetensors").exists()
    # An error nobody planned for reaches the tab as a line too (the traceback goes to the console log).
    import dmd2_pack.extension.ui as ui
    original = ui.merge_checkpoint
    ui.merge_checkpoint = lambda *a, **k: {}["boom"]
    try:
        assert run_merge(base, str(broken), "", 1.0, "m3", tmp_path).startswith("Error: unexpected KeyError")
    finally:
        ui.merge_checkpoint = original
