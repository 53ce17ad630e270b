"""`python -m bench`: run every benchmark and print one table."""

import torch
from diffusers.utils import logging as diffusers_logging
from transformers.utils import logging as transformers_logging

from . import core, distill, fast
from .timing import print_table

if __name__ == "__main__":
    diffusers_logging.set_verbosity_error()  # keeps the table readable (LoRA prefix notices and the like)
    transformers_logging.set_verbosity_error()
    # Random toy weights drive some activations into denormal floats, which CPUs process ~100x slower; real models
    # rarely do. Flushing them keeps CPU ratios about the arithmetic, not about denormal handling.
    torch.set_flush_denormal(True)
    print_table(core.run() + fast.run() + distill.run())
