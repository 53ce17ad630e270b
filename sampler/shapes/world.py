"""The shapes world: a tiny prompt-conditioned pixel-space model that DMD2 distillation is proven on, offline.

Prompts are "colour shape" (20 of them, e.g. "red circle"); images are 32x32 RGB. The UNet is a real diffusers
UNet2DConditionModel that predicts epsilon on the SD scaled-linear 1000-step schedule, in pixel space (no VAE), so
the core's DMD2 sampler, denoiser and plans run it exactly as they run SD1.5 / SDXL. A model is one safetensors file
(UNet + prompt encoder, config and vocabulary in the metadata) that the command line can load and sample on a CPU.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from ..models.stamps import timesteps_from_metadata, timesteps_metadata
from ..models.files import TensorSource, write_safetensors
from ..errors import DMD2Error, WrongKindError
from ..noise import batch_seeds
from ..app.pipeline import sample_seeded, to_pil_images
from ..plans import DEFAULT_TRAINED, timesteps_for

#: Colour name -> RGB in [0, 1]; far apart so a classifier (and a viewer) cannot confuse them.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.15, 0.15),
    "green": (0.15, 0.80, 0.20),
    "blue": (0.20, 0.35, 0.95),
    "yellow": (0.95, 0.85, 0.15),
    "purple": (0.65, 0.20, 0.85),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
PROMPTS: tuple[str, ...] = tuple(f"{c} {s}" for c in COLOURS for s in SHAPES)
IMAGE_SIZE = 32
EMBED_DIM = 32
#: Word ids: 0 is the pad word of the empty (unconditional) prompt, then the colours, then the shapes.
VOCAB: tuple[str, ...] = ("",) + tuple(COLOURS) + SHAPES
_IDS = {word: i for i, word in enumerate(VOCAB)}
_KIND = "dmd2-shapes"
#: The shipped student (`python -m distill shapes-proof --ship`): the command line's offline default model.
EMBEDDED_MODEL = Path(__file__).parent / "embedded" / "dmd2_shapes_4step.safetensors"


def tokenize(prompts: Sequence[str]) -> torch.Tensor:
    """Word ids (B, 2) of (colour, shape) for "colour shape" prompts; "" is the unconditional prompt (pad ids)."""
    rows = []
    for prompt in prompts:
        words = prompt.split()
        if not words:
            rows.append([0, 0])
            continue
        if len(words) != 2 or words[0] not in COLOURS or words[1] not in SHAPES:
            raise ValueError(f"prompt {prompt!r} is not '<colour> <shape>' (or '' for no prompt): colours are "
                             f"{', '.join(COLOURS)}; shapes are {', '.join(SHAPES)}")
        rows.append([_IDS[words[0]], _IDS[words[1]]])
    return torch.tensor(rows, dtype=torch.long).reshape(len(rows), 2)


class PromptEncoder(torch.nn.Module):
    """The "text encoder": a learned embedding per word plus one per position (colour slot, shape slot).

    The pad word has its own learned embedding, so the empty prompt is a trained unconditional embedding, as CLIP's
    encoding of "" is for classifier-free guidance.
    """

    def __init__(self, dim: int = EMBED_DIM, vocab_size: int = len(VOCAB)):
        super().__init__()
        self.words = torch.nn.Embedding(vocab_size, dim)
        self.positions = torch.nn.Parameter(torch.zeros(2, dim))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, 2) word ids -> (B, 2, dim) encoder_hidden_states."""
        return self.words(ids) + self.positions


def shapes_unet(seed: int = 0) -> torch.nn.Module:
    """A freshly initialised pixel-space UNet2DConditionModel for 32x32 RGB (diffusers' own init, seeded).

    Down/up blocks have no attention; the prompt enters through the mid block's cross-attention at 8x8, which is
    enough for two words and keeps a training step near 0.3 s at batch 32 on two CPU cores.
    """
    from diffusers import UNet2DConditionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet2DConditionModel(
            sample_size=IMAGE_SIZE, in_channels=3, out_channels=3, layers_per_block=1,
            block_out_channels=(16, 32, 64), down_block_types=("DownBlock2D",) * 3,
            up_block_types=("UpBlock2D",) * 3, mid_block_type="UNetMidBlock2DCrossAttn",
            cross_attention_dim=EMBED_DIM, attention_head_dim=8, norm_num_groups=8,
        )


@dataclass
class ShapesModel:
    """A loaded shapes model: UNet, prompt encoder, the DMD2 timesteps it was trained on (None: a teacher)."""

    unet: torch.nn.Module
    encoder: PromptEncoder
    trained_timesteps: tuple[int, ...] | None
    note: str

    def cond(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """UNet conditioning for `prompts` (extra_args of the DMD2 sampler)."""
        device = next(self.encoder.parameters()).device
        return {"encoder_hidden_states": self.encoder(tokenize(prompts).to(device))}


def _vocab_json() -> str:
    return json.dumps({"colours": COLOURS, "shapes": SHAPES})


def save_shapes_model(path: Path | str, unet: torch.nn.Module, encoder: PromptEncoder,
                      trained_timesteps: Sequence[int] | None = None, note: str = "",
                      dtype: torch.dtype = torch.float16) -> Path:
    """Write UNet and encoder to one safetensors file (keys `unet.*`, `encoder.*`), atomically.

    The metadata carries what loading needs without this repository's defaults: the UNet config, the vocabulary,
    the trained timesteps ("999,749,499,249") of a DMD2 generator, and a free-text note (how it was made).
    """
    tensors = {f"{prefix}.{k}": TensorSource(dtype, tuple(v.shape), lambda v=v: v.detach())
               for prefix, module in (("unet", unet), ("encoder", encoder)) for k, v in module.state_dict().items()}
    metadata = {"format": "pt", "dmd2_kind": _KIND, "dmd2_unet_config": json.dumps(dict(unet.config)),
                "dmd2_vocab": _vocab_json(), "dmd2_note": note}
    if trained_timesteps is not None:
        metadata.update(timesteps_metadata(trained_timesteps))
    return write_safetensors(path, tensors, metadata)


def load_shapes_model(path: Path | str, device: str | torch.device = "cpu") -> ShapesModel:
    """Load a file written by `save_shapes_model`, weights in float32, in eval mode."""
    from diffusers import UNet2DConditionModel

    from ..models.files import load_state_dict, read_safetensors_header

    path = Path(path)
    if path.suffix != ".safetensors":
        raise WrongKindError(f"{path.name}: shapes models are .safetensors files written by save_shapes_model")
    metadata = read_safetensors_header(path).get("__metadata__") or {}
    if metadata.get("dmd2_kind") != _KIND:
        raise WrongKindError(f"{path} is not a shapes model (its metadata has no dmd2_kind={_KIND!r}); shapes "
                             f"models are written by sampler.shapes.save_shapes_model")
    if json.loads(metadata["dmd2_vocab"]) != json.loads(_vocab_json()):
        raise DMD2Error(f"{path} was trained on another shapes vocabulary ({metadata['dmd2_vocab']}) than this "
                        f"version's ({_vocab_json()})")
    sd = {k: v.float() for k, v in load_state_dict(path).items()}
    unet = UNet2DConditionModel.from_config(json.loads(metadata["dmd2_unet_config"]))
    unet.load_state_dict({k[len("unet."):]: v for k, v in sd.items() if k.startswith("unet.")})
    encoder_sd = {k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")}
    encoder = PromptEncoder(dim=encoder_sd["words.weight"].shape[1])
    encoder.load_state_dict(encoder_sd)
    trained = timesteps_from_metadata(metadata, path.name)
    return ShapesModel(unet.to(device).eval(), encoder.to(device).eval(), trained, metadata.get("dmd2_note", ""))


@torch.no_grad()
def generate_shapes(model: ShapesModel, prompts: Sequence[str], seed: int = 0,
                    steps: int | None = None) -> torch.Tensor:
    """DMD2 images (B, 3, 32, 32) in [0, 1] for `prompts`; image i from seed `seed + i`.

    Runs `steps` passes (default: one per trained timestep) on the model's trained timesteps; a model without them
    (a teacher) gets the 4-step plan, which only a DMD2 generator draws well.
    """
    trained = model.trained_timesteps or DEFAULT_TRAINED
    timesteps = timesteps_for(steps or len(trained), trained)
    x0 = sample_seeded(model.unet, model.cond(prompts), timesteps, batch_seeds(seed, len(prompts)),
                       (model.unet.config.in_channels, IMAGE_SIZE, IMAGE_SIZE), progress=False)
    return ((x0 + 1) / 2).clamp(0, 1)


def image_grid(images: torch.Tensor, columns: int, scale: int = 4) -> Any:
    """One PIL image of `images` (B, 3, H, W) in [0, 1], `columns` per row, each upscaled `scale`x by nearest
    neighbour (32 pixels are too small to look at); empty cells of the last row are black."""
    b, c, h, w = images.shape
    rows = -(-b // columns)
    cells = torch.cat([images.float().cpu(), images.new_zeros(rows * columns - b, c, h, w).float().cpu()])
    grid = cells.reshape(rows, columns, c, h, w).permute(2, 0, 3, 1, 4).reshape(1, c, rows * h, columns * w)
    grid = grid.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    return to_pil_images(grid)[0]
