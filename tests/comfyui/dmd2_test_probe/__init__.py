"""Test-only ComfyUI nodes for the end-to-end suite (installed next to the DMD2 pack in a throw-away custom_nodes).

- DMD2TestProbe: wraps the MODEL's diffusion model (DIFFUSION_MODEL wrapper) and appends, for every UNet call, the
  integer timesteps and input statistics it received to a JSON-lines file; saves the first call's input tensor.
  An optional sleep per call makes interrupt tests deterministic. It also wraps ComfyUI's progress-bar hook (what
  the UI's progress bar and step previews go through) to log (value, total, has_preview) next to the calls, and
  writes the MODEL it got (weight dtype, number of patched weights) to a .model.json file.
- DMD2TestReference: the same run computed directly with the core `sample_dmd2` on BaseModel.apply_model, bypassing
  ComfyUI's sampler machinery and our glue: the result the glue must reproduce (starting noise from ComfyUI's
  prepare_noise, re-noise from the core's SeededNoise / renoise_seeds).
- DMD2TestSaveLatent: writes a LATENT to a file the test reads back.
"""

import json
import os
import sys
import time

import torch
from safetensors.torch import save_file

import comfy.model_management
import comfy.patcher_extension
import comfy.sample
import comfy.utils

_progress_logs = []


def _recording_hook(hook):
    def record(value, total, preview, *args, **kwargs):
        for path in _progress_logs[-1:]:
            with open(path, "a") as f:
                f.write(json.dumps({"value": value, "total": total, "preview": preview is not None}) + "\n")
        return hook(value, total, preview, *args, **kwargs)

    record.dmd2_test = True
    return record


def _core():
    """The DMD2 pack's core, as ComfyUI loaded it (under a module name made from the pack's path)."""
    for name, module in list(sys.modules.items()):
        mappings = getattr(module, "NODE_CLASS_MAPPINGS", None)
        if isinstance(mappings, dict) and "DMD2KSampler" in mappings and name + ".sampler" in sys.modules:
            return sys.modules[name + ".sampler"]
    raise RuntimeError("the DMD2 pack is not loaded")


class DMD2TestProbe:
    CATEGORY = "testing/DMD2"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "wrap"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "log_path": ("STRING", {"default": ""}),
                             "sleep": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 60.0})}}

    def wrap(self, model, log_path, sleep):
        _progress_logs.append(log_path + ".progress")
        hook = comfy.utils.PROGRESS_BAR_HOOK
        if hook is not None and not getattr(hook, "dmd2_test", False):
            comfy.utils.set_progress_bar_global_hook(_recording_hook(hook))
        def probe(executor, x, timesteps, *args, **kwargs):
            record = {"t": [float(t) for t in timesteps.flatten()], "std": float(x.float().std()),
                      "mean": float(x.float().mean()), "shape": list(x.shape)}
            first = log_path + ".first.safetensors"
            if not os.path.exists(first):
                save_file({"x": x.float().cpu().contiguous()}, first)
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            if sleep:
                time.sleep(sleep)
            return executor(x, timesteps, *args, **kwargs)

        with open(log_path + ".model.json", "w") as f:
            json.dump({"dtype": str(model.model.get_dtype()), "patches": len(model.patches)}, f)
        m = model.clone()
        m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "dmd2_test_probe", probe)
        return (m,)


class DMD2TestReference:
    CATEGORY = "testing/DMD2"
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "positive": ("CONDITIONING",), "latent_image": ("LATENT",),
                             "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF}),
                             "timesteps": ("STRING", {"default": "999,749,499,249"})}}

    def run(self, model, positive, latent_image, seed, timesteps):
        core = _core()
        plan = [int(t) for t in timesteps.split(",")]
        comfy.model_management.load_models_gpu([model])
        base = model.model
        sigmas = core.sigmas_for_timesteps(plan, base.model_sampling.sigmas.cpu()).float()
        latent = latent_image["samples"]
        noise = comfy.sample.prepare_noise(latent, seed)
        cond = positive[0][0].repeat(latent.shape[0], 1, 1)
        empty = torch.count_nonzero(latent) == 0
        init = latent if empty else base.process_latent_in(latent)
        # the pack's re-noise convention (sampler/noise.py): per item, seeded from the seed and its starting noise
        renoise = core.noise.SeededNoise(core.noise.renoise_seeds(seed, noise, latent.shape[0]), latent.shape[1:])

        def denoiser(x, sigma):
            return base.apply_model(x, sigma, c_crossattn=cond)

        start = noise * sigmas[0] + init
        out = core.sample_dmd2(denoiser, start, sigmas, noise_sampler=renoise, pure_noise=bool(empty), disable=True)
        return ({"samples": base.process_latent_out(out)},)


class DMD2TestSaveLatent:
    CATEGORY = "testing/DMD2"
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "save"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",), "path": ("STRING", {"default": ""})}}

    def save(self, samples, path):
        save_file({"samples": samples["samples"].float().cpu().contiguous()}, path)
        return ()


NODE_CLASS_MAPPINGS = {"DMD2TestProbe": DMD2TestProbe, "DMD2TestReference": DMD2TestReference,
                       "DMD2TestSaveLatent": DMD2TestSaveLatent}
