"""End to end in a real reForge (Panchovix, main 3b56b268): the shared A1111-family body (tests/webui/shared_e2e.py).

What makes reForge its own case is covered there: it has no add_sampler but a CFG denoiser that already skips the
uncond pass at CFG 1 (kept), its seeded RNG hijacks k_diff.k_diffusion.sampling (or ldm_patched's), not
k_diffusion.sampling (batch image i == the single image at seed + i), its UNet gets integer timesteps (the stock
schedule warning names them), and it pins huggingface_hub 0.25.0 (install.py must leave it).
"""

from tests.webui.shared_e2e import *  # noqa: F403  (the tests every A1111-family host shares, run here against reForge)
