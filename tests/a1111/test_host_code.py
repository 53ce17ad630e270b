"""Our conversions checked against real A1111 code: its SDXL UNet (sd_xl_base.yaml) and its Lora name mapping."""

import pytest

from sampler.models.convert import convert_lora_to_ldm_names, unet_key_map
from tests.a1111.conftest import run_host_probe
from tests.test_a1111_convert import SDXL_CONFIG, meta_unet_shapes

#: Module kinds DMD2's LoRA targets (DESIGN.md section 2).
_TARGETS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k", "attn2.to_v",
            "attn2.to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1", "conv2", "conv_shortcut",
            "time_emb_proj", "downsamplers.0.conv", "upsamplers.0.conv")


@pytest.fixture(scope="module")
def facts(a1111):
    shapes = meta_unet_shapes(SDXL_CONFIG)
    modules = sorted({k[:-len(".weight")] for k in shapes if k.endswith(".weight") and k[:-len(".weight")].endswith(_TARGETS)})
    keys = ["lora_unet_" + m.replace(".", "_") for m in modules]
    renamed = [k.removesuffix(".alpha") for k in convert_lora_to_ldm_names({k + ".alpha": 0 for k in keys})]
    return shapes, keys, renamed, run_host_probe(*a1111, keys + renamed)


def test_every_sdxl_ldm_unet_key_gets_exactly_one_source_of_the_same_shape(facts):
    shapes, _, _, probe = facts
    mapping = unet_key_map(shapes)
    ours = {v: list(shapes[k]) for k, v in mapping.items()}
    assert len(ours) == len(mapping)
    assert ours == probe["sdxl_unet"]


def test_a1111_drops_one_dmd2_lora_module_and_the_converted_lora_applies_fully(facts):
    _, keys, renamed, probe = facts
    assert len(keys) == 788  # DMD2's LoRA: 788 UNet modules
    layer_names = {"diffusion_model_" + n for n in probe["sgm_modules"]}

    def a1111_finds(key, converted):  # the Lora extension's lookup: converted name, else lora_unet -> diffusion_model
        return converted in layer_names or key.replace("lora_unet", "diffusion_model") in layer_names

    lost = [k for k in keys if not a1111_finds(k, probe["compvis"][k])]
    assert lost == ["lora_unet_up_blocks_0_upsamplers_0_conv"]
    assert len(renamed) == len(keys)
    assert [k for k in renamed if not a1111_finds(k, probe["compvis"][k])] == []
