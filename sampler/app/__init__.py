"""The standalone application: `python -m sampler generate|live` on diffusers components, with no host.

- `cli.py`: the command line (its `models`, `merge` and `convert-lora` verbs live in `sampler/models/cli.py`).
- `pipeline.py`: SDXL text-to-image with the DMD2 UNet or LoRA and the core's sampler.
- `live.py`: interactive frames (prompt cache, latest-wins scheduling, stage timings).
- `memory.py`: where SDXL's weights live on small GPUs (offload plans, OOM retry).
- `fast.py`: measured speed switches (channels-last, attention backend, torch.compile).
- `taesd.py`: the tiny preview decoder.
"""
