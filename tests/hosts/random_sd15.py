"""Write an SD1.5 checkpoint with random weights in LDM layout, as A1111-family hosts load it (fp16 safetensors).

`python random_sd15.py STABLEDIFFUSION_TREE OUT.safetensors`, run by a host venv's Python (torch, einops,
transformers). The module layout comes from the real code, not from a key list: the UNet and the VAE's encoder /
decoder from Stability-AI/stablediffusion's ldm package built with SD1.5's parameters (A1111's
configs/v1-inference.yaml, below), the text encoder from transformers' CLIPTextModel with CLIP ViT-L/14's text
configuration. Weights are PyTorch's default initialisation under a fixed seed: the tests check timesteps, noise and
call counts, not pictures.
"""

import sys
from pathlib import Path

import torch

#: SD1.5 (configs/v1-inference.yaml of A1111): unet_config, first_stage_config (ddconfig, embed_dim)
UNET = dict(image_size=32, in_channels=4, out_channels=4, model_channels=320, attention_resolutions=[4, 2, 1],
            num_res_blocks=2, channel_mult=[1, 2, 4, 4], num_heads=8, use_spatial_transformer=True,
            transformer_depth=1, context_dim=768, use_checkpoint=False, legacy=False)
VAE = dict(double_z=True, z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=128, ch_mult=[1, 2, 4, 4],
           num_res_blocks=2, attn_resolutions=[], dropout=0.0)
EMBED_DIM = 4
TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
            max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)


def main(tree: Path, out: Path) -> None:
    sys.path.insert(0, str(tree))
    from ldm.modules.diffusionmodules.model import Decoder, Encoder
    from ldm.modules.diffusionmodules.openaimodel import UNetModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    state = {}

    def add(prefix: str, module: torch.nn.Module) -> None:
        state.update({prefix + k: v.detach().to(torch.float16).contiguous() for k, v in module.state_dict().items()})

    add("model.diffusion_model.", UNetModel(**UNET))
    add("first_stage_model.encoder.", Encoder(**VAE))
    add("first_stage_model.decoder.", Decoder(**VAE))
    z = VAE["z_channels"]
    add("first_stage_model.quant_conv.", torch.nn.Conv2d(2 * z, 2 * EMBED_DIM, 1))
    add("first_stage_model.post_quant_conv.", torch.nn.Conv2d(EMBED_DIM, z, 1))
    add("cond_stage_model.transformer.", CLIPTextModel(CLIPTextConfig(**TEXT)))
    state = {k: v for k, v in state.items() if not k.endswith("position_ids")}  # a buffer, not a weight
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial")
    save_file(state, str(partial))
    partial.rename(out)
    print(f"{out}: {len(state)} tensors, {sum(v.numel() for v in state.values()) / 1e6:.0f} M parameters")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
