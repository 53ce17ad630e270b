"""Test-only Forge extension: records every UNet call (batch size, timesteps) and the sampler objects of each
sampling pass as JSON lines in $DMD2_PROBE_LOG.

Installed next to the DMD2 extension by tests/forge only. Forge's UNet is the nn.Module at
`p.sd_model.forge_objects.unet.model.diffusion_model`; Forge's KModel.apply_model hands it the timesteps its
predictor computed (an integer argmin over the sigma table), so this logs what the UNet really saw, independently of
the DMD2 code under test.
"""

import json
import os

from modules import scripts


def _write(record):
    path = os.environ.get("DMD2_PROBE_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def _record(module, args, kwargs):
    x = args[0] if args else kwargs.get("x")
    t = args[1] if len(args) > 1 else kwargs.get("timesteps")
    _write({"batch": int(x.shape[0]), "t": [float(v) for v in t.flatten().tolist()], "std": float(x.float().std())})


def _qualname(obj):
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


class DMD2ForgeProbe(scripts.Script):
    def title(self):
        return "DMD2 Forge test probe"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def process_before_every_sampling(self, p, *args, **kwargs):
        sampler = p.sampler
        _write({"sampler": _qualname(sampler), "cfg_denoiser": _qualname(sampler.model_wrap_cfg)})
        unet = p.sd_model.forge_objects.unet.model.diffusion_model
        if not getattr(unet, "_dmd2_probe", False):
            unet.register_forward_pre_hook(_record, with_kwargs=True)
            unet._dmd2_probe = True
