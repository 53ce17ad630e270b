"""End to end in a real A1111: the extension loads, DMD2 is listed, and txt2img / img2img / hires fix run exact DMD2.

A1111 is started (tests/webui/harness.py) with this repository symlinked into its extensions folder (plus
tests/webui/probe, a test-only extension that logs every UNet call), on a free 127.0.0.1 port, with a
real-architecture random-weight checkpoint at 64x64; the symlinks are removed afterwards. The tests both hosts share
are in tests/webui/shared_e2e.py; what only A1111 checks is here.
"""

import os
import urllib.request

import pytest

from tests.webui.harness import A1111, TXT2IMG, checkpoint, pixels
from tests.webui.shared_e2e import *  # noqa: F403  (the tests both hosts share, run here against A1111)


def test_merged_checkpoint_loads_in_a1111_and_reproduces_its_unet_exactly(server, a1111, tmp_path):
    """The merge tool's output is a checkpoint A1111 loads: base = the test checkpoint, UNet = that checkpoint's own
    UNet turned into diffusers format (by diffusers' converter); the merged file must give the identical image,
    and its dmd2_plan stamp must choose the plan."""
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint
    from safetensors import safe_open
    from safetensors.torch import save_file

    from sampler.models.checkpoints import inspect_file
    from sampler.models.convert import merge_checkpoint

    root, _ = a1111
    base = checkpoint(A1111, root)
    if inspect_file(base).base != "sd15":
        pytest.skip(f"{base.name} is not an SD1.5 checkpoint")
    import torch
    with torch.device("meta"):
        config = dict(UNet2DConditionModel(cross_attention_dim=768).config)
    with safe_open(str(base), "pt") as f:
        ldm = {k: f.get_tensor(k) for k in f.keys() if k.startswith("model.diffusion_model.")}
    save_file(convert_ldm_unet_checkpoint(ldm, config), tmp_path / "dmd2_sd15_1step_unet_e2e.safetensors")
    del ldm
    name = f"dmd2-e2e-merged-{os.getpid()}"
    merged = root / "models" / "Stable-diffusion" / f"{name}.safetensors"
    try:
        merge_checkpoint(base, merged, unet=tmp_path / "dmd2_sd15_1step_unet_e2e.safetensors")
        request = urllib.request.Request(server.url + "refresh-checkpoints", b"", method="POST")
        urllib.request.urlopen(request, timeout=120).read()
        reference, _, _ = server.post("txt2img", dict(TXT2IMG, steps=1, override_settings={"dmd2_plan": "SD1.5 1-step"}))
        image, info, calls = server.post("txt2img", dict(TXT2IMG, steps=1,
                                                         override_settings={"sd_model_checkpoint": name}))
        assert f"Model: {name}," in info["infotexts"][0]
        assert "DMD2 plan: SD1.5 1-step" in info["infotexts"][0]  # from the merged file's dmd2_plan metadata
        assert [c["t"] for c in calls] == [[999.0]]
        assert pixels(image) == pixels(reference)  # the PNGs differ only in their embedded infotext
    finally:
        merged.unlink(missing_ok=True)
