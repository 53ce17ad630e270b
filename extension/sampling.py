"""The DMD2 sampler and scheduler as A1111 / Forge call them; the math is the core's (`sampler/`).

Nothing here imports A1111: the host hands us its denoiser, its sigma table and its seeded RNG (`p.rng`, or
k-diffusion's module-level `torch`, which the host swaps for it), so the same code serves every A1111-family host and
the tests.
"""

from __future__ import annotations

import importlib
import logging
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import torch

from ..sampler.plans import spread
from ..sampler.sampling import sample_dmd2
from ..sampler.schedule import sigma_to_timestep, sigmas_for_timesteps

log = logging.getLogger("dmd2")


def seeded_noise_sampler(x: torch.Tensor, rng: Any = None, hijacked: str = "k_diffusion.sampling"
                         ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The host's seeded per-image noise, as its stock ancestral samplers draw it.

    `rng`: the run's `p.rng` (A1111's modules.rng.ImageRNG: per-image seeds, subseeds, CPU/GPU/NV source). Every
    host's TorchHijack answers k-diffusion's `torch.randn_like` with `p.rng.next()`, so drawing from it directly
    gives the same stream whichever k-diffusion copy the host hijacks (reForge: k_diff.k_diffusion or ldm_patched's).
    Without it, the default noise sampler of the hijacked module `hijacked`; without k-diffusion, torch.randn_like.
    """
    if rng is not None:
        return lambda sigma, sigma_next: rng.next().to(x)
    try:
        module = importlib.import_module(hijacked)
    except ImportError:
        return lambda sigma, sigma_next: torch.randn_like(x)
    return module.default_noise_sampler(x)


def sample(model: Callable[..., torch.Tensor], x: torch.Tensor, sigmas: torch.Tensor,
           extra_args: dict[str, Any] | None = None, callback: Callable[[dict], None] | None = None,
           disable: bool | None = None, noise_sampler: Callable | None = None, pure_noise: bool = False) -> torch.Tensor:
    """DMD2 sampling in A1111's k-diffusion convention (`model` is its CFG denoiser), with the host's seeded noise.

    `pure_noise`: x is txt2img noise scaled by sigma_0 (A1111 without its "SGM noise multiplier" option); the core
    rescales it to sqrt(1 + sigma_0^2) so the UNet sees unit-variance noise (the SDXL 1-step model at t=399 needs
    this). Never set it for img2img / hires fix, where x holds the init latent, nor when the host already applied
    sqrt(1 + sigma_0^2).
    """
    if noise_sampler is None:
        noise_sampler = seeded_noise_sampler(x)
    return sample_dmd2(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable,
                       noise_sampler=noise_sampler, pure_noise=pure_noise)


def schedule(n: int, trained: Sequence[int], sigma_table: torch.Tensor | None) -> torch.Tensor:
    """A1111 scheduler result for `n` steps: n + 1 float32 sigmas ending in 0, every one on a trained timestep.

    The plan is proportional (`spread`), so the tail A1111 cuts from it for img2img (`sigmas[steps - t_enc - 1:]`)
    and hires fix (an int(steps / denoise)-step schedule) still lands only on trained timesteps. `sigma_table` is the
    host's own per-timestep sigmas (its float32 buffer), so its sigma_to_t (log interpolation in A1111, argmin in
    Forge) maps each sigma back to exactly our integer timestep.
    """
    table = None if sigma_table is None else sigma_table.detach().to("cpu", torch.float64)
    return sigmas_for_timesteps(spread(trained, n), table).to(torch.float32)


def off_plan_timesteps(sigmas: torch.Tensor, trained: Sequence[int], sigma_table: torch.Tensor | None,
                       host_sigma_to_t: Callable[[torch.Tensor], torch.Tensor] | None = None,
                       integer: bool = False) -> list[float]:
    """Timesteps of a schedule that are not trained ones (a stock scheduler picked with the DMD2 sampler).

    The list names the timesteps the UNet really gets: `integer` for hosts whose UNet is called through a
    ComfyUI-style model_sampling (the Forge family: the integer nearest in log sigma over `sigma_table`); else the
    host's own `host_sigma_to_t` (A1111's model wrapper: it interpolates, or quantizes with its option on), else
    A1111's interpolation over `sigma_table`.
    """
    positive = sigmas[:-1].detach().clamp_min(1e-8)
    table = None if sigma_table is None else sigma_table.detach().to("cpu", torch.float64)
    if integer or host_sigma_to_t is None:
        steps = sigma_to_timestep(positive.to("cpu", torch.float64), table, quantize=integer)
    else:
        steps = host_sigma_to_t(positive).detach().to("cpu", torch.float64).flatten()
    return [round(float(t), 2) for t in steps if min(abs(float(t) - s) for s in trained) > 1e-3]


# --- one model call per step at CFG 1 (A1111 only: the Forge family's CFG function already skips the uncond pass)

def take_rows(obj: Any, start: int, stop: int, rows: int) -> Any:
    """`obj` (a tensor, or dicts / lists of them, as A1111 builds conditioning) cut to rows start:stop of `rows`."""
    if isinstance(obj, torch.Tensor):
        return obj[start:stop] if obj.ndim > 0 and obj.shape[0] == rows else obj
    if isinstance(obj, dict):
        return {k: take_rows(v, start, stop, rows) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(take_rows(v, start, stop, rows) for v in obj)
    return obj


class CondRowsOnly:
    """Stands in for the denoiser's forward during one CFG step: runs the conditional rows only.

    A1111's CFG denoiser evaluates `batch` conditional rows followed by `batch` unconditional rows (in one call or
    in chunks, in that order) and combines them as u + (c - u) * scale. At scale 1 with one prompt of weight 1 per
    image the result is c whatever u is, so the unconditional rows are answered with the conditional outputs (same
    x, same sigma: checked, else they are evaluated); u + (c - c) * 1 then gives c exactly. Everything else in the
    CFG step (callbacks, masks, previews, interrupt) runs unchanged.
    """

    def __init__(self, forward: Callable[..., torch.Tensor], batch: int):
        self.forward = forward
        self.batch = batch
        self.seen = 0
        self.cond_x: list[torch.Tensor] = []
        self.cond_sigma: list[torch.Tensor] = []
        self.cond_out: list[torch.Tensor] = []
        self.model_calls = 0

    def _run(self, x, sigma, kwargs, start, stop, rows):
        self.model_calls += 1
        return self.forward(x[start:stop], sigma[start:stop], **take_rows(kwargs, start, stop, rows))

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        rows, start = x.shape[0], self.seen
        self.seen += rows
        if start + rows > 2 * self.batch:  # not the layout we know: evaluate as asked
            self.model_calls += 1
            return self.forward(x, sigma, **kwargs)
        n_cond = min(rows, max(self.batch - start, 0))
        parts = []
        if n_cond:
            out = self._run(x, sigma, kwargs, 0, n_cond, rows)
            self.cond_x.append(x[:n_cond])
            self.cond_sigma.append(sigma[:n_cond])
            self.cond_out.append(out)
            parts.append(out)
        if rows > n_cond:
            u0, u1 = start + n_cond - self.batch, start + rows - self.batch
            have = sum(len(c) for c in self.cond_out)
            if u1 <= have and torch.equal(torch.cat(self.cond_x)[u0:u1], x[n_cond:]) and torch.equal(
                    torch.cat(self.cond_sigma)[u0:u1], sigma[n_cond:]):
                parts.append(torch.cat(self.cond_out)[u0:u1])
            else:
                parts.append(self._run(x, sigma, kwargs, n_cond, rows, rows))
        return parts[0] if len(parts) == 1 else torch.cat(parts)


def cond_only_possible(cond: Any, cond_scale: float) -> bool:
    """True when CFG at this scale equals the conditional prediction: scale 1, one prompt of weight 1 per image.

    `cond` is A1111's MulticondLearnedConditioning (`.batch`: per image, the AND-ed prompts with their weights).
    """
    if cond_scale != 1.0:
        return False
    batch = getattr(cond, "batch", None)
    if not batch:
        return False
    return all(len(prompts) == 1 and getattr(prompts[0], "weight", None) == 1.0 for prompts in batch)


@contextmanager
def cond_rows_only(module: torch.nn.Module, batch: int) -> Iterator[CondRowsOnly]:
    """Route `module(...)` calls through CondRowsOnly for the duration of one CFG step."""
    own = module.__dict__.get("forward")  # another extension may have set an instance forward: keep it
    rows = CondRowsOnly(module.forward, batch)
    module.forward = rows
    try:
        yield rows
    finally:
        if own is None:
            del module.forward
        else:
            module.forward = own
