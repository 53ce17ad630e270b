"""Run with A1111's own Python (cwd = A1111_PATH): facts from real A1111 code, printed as one JSON object.

- "sdxl_unet": {key: shape} of the SDXL UNet built from A1111's sd_xl_base.yaml (sgm UNetModel, meta device);
- "sgm_modules": that UNet's module names, A1111-style (dots -> underscores), i.e. the LoRA lookup table;
- "compvis": {lora key: result} of the Lora extension's real convert_diffusers_name_to_compvis for the keys read
  from stdin (taken out of extensions-builtin/Lora/networks.py with ast and executed alone, because importing
  networks.py needs a running webui).
"""

import ast
import contextlib
import json
import re
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

root = Path.cwd()
sys.path[:0] = [str(root / "repositories" / "generative-models"), str(root)]

config = OmegaConf.load(root / "repositories/generative-models/configs/inference/sd_xl_base.yaml")
params = OmegaConf.to_container(config.model.params.network_config.params)
params["spatial_transformer_attn_type"] = "softmax"  # no xformers here; the weights are the same
params["use_checkpoint"] = False
with contextlib.redirect_stdout(sys.stderr), torch.device("meta"):  # sgm prints while building
    from sgm.modules.diffusionmodules.openaimodel import UNetModel
    unet = UNetModel(**params)

source = (root / "extensions-builtin/Lora/networks.py").read_text()
tree = ast.parse(source)
wanted = {"convert_diffusers_name_to_compvis", "re_digits", "re_compiled", "suffix_conversion"}
nodes = [n for n in tree.body if (isinstance(n, ast.FunctionDef) and n.name in wanted) or (
    isinstance(n, ast.Assign) and any(isinstance(t, ast.Name) and t.id in wanted for t in n.targets))]
namespace = {"re": re}
# A1111's own functions, executed from its source (S102: test code, never in the registry zip)
exec(compile(ast.Module(body=nodes, type_ignores=[]), "networks.py", "exec"), namespace)  # noqa: S102
convert = namespace["convert_diffusers_name_to_compvis"]

keys = json.loads(sys.stdin.read() or "[]")
print(json.dumps({
    "sdxl_unet": {k: list(v.shape) for k, v in unet.state_dict().items()},
    "sgm_modules": [n.replace(".", "_") for n, _ in unet.named_modules() if n],
    "compvis": {k: convert(k, False) for k in keys},
}))
