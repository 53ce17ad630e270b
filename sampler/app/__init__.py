"""The standalone application: `python -m sampler generate|live` on diffusers components, with no host.

- `cli.py`: the command line (its `models`, `merge` and `convert-lora` verbs live in `sampler/models/cli.py`).
- `pipeline.py`: SDXL text-to-image with the DMD2 UNet or LoRA and the core's sampler.
- `live.py`: interactive frames on the command line (the shared scheduling and timing pieces are `sampler/live.py`).
- `memory.py`: where SDXL's weights live on small GPUs (offload plans, OOM retry).
- `fast.py`: measured speed switches (channels-last, attention backend, torch.compile).
"""
