"""Model files: the catalog (models.json), verified downloads, safe reading / writing and inspection of weight
files, conversion to the LDM layout A1111 / Forge want, and the `models` / `merge` / `convert-lora` commands.

- `catalog.py`: every DMD2 file and its companions, pinned by repo, revision and sha256.
- `download.py`: sha256-verified, atomic downloads of catalog files.
- `files.py`: reading and writing safetensors / weights-only pickles (the only module that touches the bytes).
- `stamps.py`: the metadata our tools stamp into files (trained timesteps, plan), read by every host.
- `checkpoints.py`: what a file is (kind, base, trained timesteps) and model spec -> file on disk.
- `convert.py`: diffusers <-> LDM UNet keys, checkpoint merge, LoRA key renaming.
- `cli.py`: the command-line verbs above.
- `taesd.py`: the TAESD / TAESDXL tiny preview decoder (architecture and safe loading).
- `tiny.py`: real diffusers architectures at toy widths with random weights (tests, benchmarks, smoke runs).
"""
