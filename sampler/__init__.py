"""Host-free DMD2 core: schedule math, trained-timestep plans and the DMD2 sampler (torch only).

ComfyUI (`nodes/`), A1111 / Forge (`extension/`) and the command line (`python -m sampler`) all call this package,
so a fix here reaches every host. The core is the modules here: `schedule.py`, `plans.py`, `sampling.py`,
`noise.py`, `denoiser.py`, `errors.py`, `live.py`. Beside it, each in its own sub-package and importing the core, never the
other way round: `models/` (catalog, downloads, weight files, conversion), `app/` (the standalone command line,
pipeline, live mode) and `shapes/` (the offline shapes world and its embedded DMD2 student).
"""

from .noise import SeededNoise, batch_seeds
from .plans import DEFAULT_TRAINED, TRAINED_TIMESTEPS, spread, start_index, timesteps_for
from .sampling import check_sigmas, sample_dmd2, unit_variance_scale
from .schedule import (
    scaled_linear_alphas_cumprod,
    sigma_to_timestep,
    sigmas_for_timesteps,
    sigmas_from_alphas_cumprod,
    timestep_to_sigma,
    training_sigmas,
)

__all__ = [
    "DEFAULT_TRAINED", "TRAINED_TIMESTEPS", "SeededNoise", "batch_seeds", "check_sigmas", "sample_dmd2",
    "scaled_linear_alphas_cumprod", "sigma_to_timestep", "sigmas_for_timesteps", "sigmas_from_alphas_cumprod",
    "spread", "start_index", "timestep_to_sigma", "timesteps_for", "training_sigmas", "unit_variance_scale",
]
