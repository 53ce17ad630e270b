"""Test-only extension for the A1111-family hosts: records every UNet call (batch size, timesteps, input std, and the
input and output tensors themselves: the tests use 64x64 images, 256 latent values a row) as JSON lines in
$DMD2_PROBE_LOG, and in the Forge family also the sampler objects of each sampling pass.

Installed next to the DMD2 extension by the end-to-end tests only (tests/webui/harness.py); it lets them check which
timesteps the UNet really saw and how many times it was called, independently of the DMD2 code under test.
- A1111: the UNet is `p.sd_model.model.diffusion_model`, hooked in `process`.
- Forge family (Forge, reForge, Forge Classic, Neo): the UNet is the nn.Module at `p.sd_model.forge_objects.unet.model.diffusion_model`, hooked in
  `process_before_every_sampling`; Forge's KModel.apply_model hands it the timesteps its predictor computed (an
  integer argmin over the sigma table).
"""

import json
import os

from modules import scripts


def _write(record):
    path = os.environ.get("DMD2_PROBE_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def _record(module, args, kwargs, output):
    x = args[0] if args else kwargs.get("x")
    t = args[1] if len(args) > 1 else kwargs.get("timesteps")
    _write({"batch": int(x.shape[0]), "t": [float(v) for v in t.flatten().tolist()], "std": float(x.float().std()),
            "x": x.float().flatten(1).tolist(), "out": output.float().flatten(1).tolist()})


def _hook(unet):
    if not getattr(unet, "_dmd2_probe", False):
        unet.register_forward_hook(_record, with_kwargs=True)
        unet._dmd2_probe = True


def _qualname(obj):
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _is_forge(p):
    return hasattr(p.sd_model, "forge_objects")


class DMD2Probe(scripts.Script):
    def title(self):
        return "DMD2 test probe"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def process(self, p, *args):
        if not _is_forge(p):
            _hook(p.sd_model.model.diffusion_model)

    def process_before_every_sampling(self, p, *args, **kwargs):
        if _is_forge(p):
            sampler = p.sampler
            _write({"sampler": _qualname(sampler), "cfg_denoiser": _qualname(sampler.model_wrap_cfg)})
            _hook(p.sd_model.forge_objects.unet.model.diffusion_model)
