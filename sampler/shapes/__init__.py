"""The shapes world: a tiny prompt-conditioned pixel-space model that DMD2 distillation is proven on, offline.

`world.py` is the runtime (vocabulary, prompt encoder, 32x32 UNet, one-file save / load, DMD2 generation, image
grid); `embedded/` holds the shipped DMD2 student that `python -m sampler generate` falls back on without SDXL
weights. Training the teacher and the students is `distill/shapes/`.
"""

from .world import (COLOURS, EMBEDDED_MODEL, IMAGE_SIZE, PROMPTS, SHAPES, PromptEncoder, ShapesModel, generate_shapes,
                    image_grid, load_shapes_model, save_shapes_model, shapes_unet, tokenize)

__all__ = ["COLOURS", "EMBEDDED_MODEL", "IMAGE_SIZE", "PROMPTS", "SHAPES", "PromptEncoder", "ShapesModel",
           "generate_shapes", "image_grid", "load_shapes_model", "save_shapes_model", "shapes_unet", "tokenize"]
