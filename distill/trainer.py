"""The DMD2 training loop (Yin et al. 2024, "Improved Distribution Matching Distillation for Fast Image Synthesis").

One `step()` is one update of the critic (fake-score UNet + GAN head) and, every `ttur`-th step, first one update
of the generator (two time-scale update rule, DMD2 sec. 4.2), in the official code's order (tianweiy/DMD2
main/train_sd.py; docs/training.md maps each number to its line). The generator's inputs come from backward simulation:
its own no-grad rollout on the trained timesteps, made by `sample_dmd2` itself, so training and inference share one
definition of the timesteps and the re-noise (sec. 4.4). Runs under `accelerate` (one GPU, many, or the CPU).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from sampler.errors import DMD2Error, first_line
from sampler.plans import DEFAULT_TRAINED, check_trained
from sampler.sampling import sample_dmd2, unit_variance_scale
from sampler.schedule import sigmas_for_timesteps, training_sigmas

from . import checkpoint as ckpt
from . import losses
from .data import DistillData
from .models import build_critic, build_generator, concat_cond, guided_x0, predict_x0


@dataclass(frozen=True)
class DistillConfig:
    """Hyper-parameters. Defaults are DMD2's SDXL 4-step full-UNet recipe (`distill.recipes.RECIPES["sdxl-full"]`);
    docs/training.md gives the official file and line of each. Timestep ranges are inclusive."""

    trained_timesteps: tuple[int, ...] = DEFAULT_TRAINED
    guidance_scale: float = 8.0  # real-score CFG (DMD2: 8 for SDXL, 1.75 for SD1.5)
    batch_size: int = 2  # per process; the global batch is this times the number of processes
    ttur: int = 5  # critic updates per generator update
    lr_generator: float = 5e-7
    lr_critic: float = 5e-7
    warmup_steps: int = 500  # linear warmup from 0, counted in per-process batches (steps x processes), as official
    weight_decay: float = 0.01
    max_grad_norm: float = 10.0
    dm_timesteps: tuple[int, int] = (20, 980)  # distribution-matching loss: t ~ U[20, 980]
    fake_score_timesteps: tuple[int, int] = (0, 999)  # the fake score's denoising loss
    gan_timesteps: tuple[int, int] = (0, 999)  # noise on the GAN's real and generated inputs, drawn fresh
    gan_generator_weight: float = 5e-3  # 0 and gan_discriminator_weight 0: no GAN
    gan_discriminator_weight: float = 1e-2
    regression_weight: float = 0.0  # DMD v1 regression loss on teacher (noise, image) pairs
    backward_simulation: bool = True  # False: DMD2's ablation, multi-step inputs are noised real images
    divergence: str = "reverse_kl"  # f-distill weighting: reverse_kl (= DMD2), forward_kl, js
    lora_rank: int | None = None  # None: train the full UNet
    lora_alpha: float | None = None
    mixed_precision: str = "no"  # accelerate: no, fp16, bf16
    gradient_checkpointing: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "trained_timesteps", check_trained(self.trained_timesteps))
        for name in ("dm_timesteps", "fake_score_timesteps", "gan_timesteps"):
            low, high = value = tuple(getattr(self, name))
            if not 0 <= low <= high < len(training_sigmas()):
                raise ValueError(f"{name} must be (low, high) with 0 <= low <= high <= 999, got {value}")
            object.__setattr__(self, name, value)
        if self.ttur < 1 or self.batch_size < 1:
            raise ValueError(f"ttur and batch_size must be >= 1, got {self.ttur}, {self.batch_size}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.divergence not in losses.DIVERGENCES:
            raise ValueError(f"divergence must be one of {losses.DIVERGENCES}, got {self.divergence!r}")
        if self.divergence != "reverse_kl" and not self.uses_gan:
            raise ValueError(f"the {self.divergence} weighting needs the GAN discriminator's density ratio: "
                             f"set gan_discriminator_weight > 0")
        if self.gan_generator_weight > 0 and not self.uses_gan:
            raise ValueError("the generator's GAN term needs a discriminator: set gan_discriminator_weight > 0 too")

    @property
    def uses_gan(self) -> bool:
        """Whether the critic has a GAN head (trained by the discriminator term)."""
        return self.gan_discriminator_weight > 0


def warmup_factor(step: int, warmup_steps: int, num_processes: int = 1) -> float:
    """The learning-rate multiplier at training step `step`: linear from 0 over `warmup_steps`, then 1.

    As diffusers' constant_with_warmup schedule stepped by accelerate, which advances it once per process each step
    (so the official 500-step warmup lasts 500 / number-of-GPUs steps), and the very first update has rate 0.
    """
    done = step * num_processes
    return 1.0 if done >= warmup_steps else done / warmup_steps


class DistillTrainer:
    """Holds the generator, the frozen real score, the critic, their optimisers and the random state."""

    def __init__(self, teacher: nn.Module, data: DistillData, config: DistillConfig, accelerator: Any = None):
        from accelerate import Accelerator

        self.config = config
        self.data = data
        self.acc = accelerator or Accelerator(mixed_precision=config.mixed_precision)
        if config.uses_gan and data.real_batch(1, torch.Generator().manual_seed(0)) is None:
            raise DMD2Error("the GAN term needs real images and this problem has none: give real images, or turn "
                            "the GAN off (gan weights 0)")
        if config.regression_weight > 0 and data.regression_batch(1, torch.Generator().manual_seed(0)) is None:
            raise DMD2Error("the regression loss needs teacher (noise, image) pairs and this problem has none")
        if not config.backward_simulation and data.real_batch(1, torch.Generator().manual_seed(0)) is None:
            raise DMD2Error("training without backward simulation noises real images and this problem has none")
        torch.manual_seed(config.seed)  # the GAN head's and the LoRA's initial weights, the same in every process
        generator = build_generator(teacher, config.lora_rank, config.lora_alpha)  # copies, before any cast
        critic = build_critic(teacher, data.latent_shape if config.uses_gan else None)
        real_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.mixed_precision, torch.float32)
        self.real = teacher.requires_grad_(False).eval().to(self.acc.device)
        if real_dtype != torch.float32:
            self.real.to(real_dtype)  # no gradients through the real score: half precision is enough (as official)
        if config.gradient_checkpointing:
            generator.enable_gradient_checkpointing()
            critic.unet.enable_gradient_checkpointing()
        self._trainable_generator_keys = {name for name, p in generator.named_parameters() if p.requires_grad}
        opt_g = torch.optim.AdamW([p for p in generator.parameters() if p.requires_grad], lr=config.lr_generator,
                                  weight_decay=config.weight_decay)
        opt_c = torch.optim.AdamW(critic.parameters(), lr=config.lr_critic, weight_decay=config.weight_decay)
        # one model with its optimiser per call: FSDP2 swaps the parameters of each for sharded ones
        self.generator, self.opt_g = self.acc.prepare(generator, opt_g)
        self.critic, self.opt_c = self.acc.prepare(critic, opt_c)
        #: this process's draws (prompts, noise, timesteps): different in every process
        self.rng = torch.Generator().manual_seed(config.seed + 1000 * self.acc.process_index)
        #: draws that decide how much work a step does (the backward-simulation depth): the same in every process,
        #: so all of them run the same forwards (FSDP gathers weights in each), as the official code broadcasts it
        self.shared_rng = torch.Generator().manual_seed(config.seed + 999_999)
        self.sigma_table = training_sigmas().float()
        self.step_count = 0
        self.run_id: str | None = None  # stamps every file of this run's checkpoints (set at the first save)

    @property
    def global_batch_size(self) -> int:
        return self.config.batch_size * self.acc.num_processes

    # --- random draws (all from the CPU generators, so a resumed run draws the same numbers) ---------------------

    def _randn(self, n: int) -> torch.Tensor:
        return torch.randn((n, *self.data.latent_shape), generator=self.rng).to(self.acc.device)

    def _noised(self, x: torch.Tensor, timesteps: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x + sigma * noise, sigma, noise) at fresh timesteps ~ U[low, high] (variance-exploding form)."""
        t = torch.randint(timesteps[0], timesteps[1] + 1, (len(x),), generator=self.rng)
        sigma, noise = self.sigma_table[t].to(self.acc.device), self._randn(len(x))
        return x + sigma.view(-1, *([1] * (x.ndim - 1))) * noise, sigma, noise

    # --- the generator's inputs ----------------------------------------------------------------------------------

    @torch.no_grad()
    def simulate_inputs(self, cond: dict[str, Any], n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Backward simulation: (x, sigma) the generator sees at a random one of its trained steps.

        Step k's input is made exactly as at inference: pure unit-variance noise at the first trained timestep,
        then k no-grad generator steps with fresh re-noise, by `sample_dmd2` on the first k + 1 trained timesteps.
        """
        trained = self.config.trained_timesteps
        k = int(torch.randint(len(trained), (), generator=self.shared_rng))
        sigmas = sigmas_for_timesteps(trained[:k + 1]).float().to(self.acc.device)[:-1]
        noise = self._randn(n)
        if k == 0:
            x = pure_noise_input(noise, float(sigmas[0]))
        else:
            with self.acc.autocast():
                x = sample_dmd2(lambda x, s, **c: predict_x0(self.generator, x, s, c).float(), noise * sigmas[0],
                                sigmas, extra_args=cond, disable=True,
                                noise_sampler=lambda s, s_next: self._randn(n), pure_noise=True)
        return x, sigmas[-1].expand(n)

    @torch.no_grad()
    def forward_diffused_inputs(self, n: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """Without backward simulation (DMD2's ablation, sec. 4.4; official main/sd_unified_model.py:165-199 without
        --backward_simulation): (x, sigma, prompts) where step k's input is a real image noised to the k-th trained
        timestep, pure unit-variance noise at the first, k drawn per sample. The multi-step generator then trains on
        inputs its own rollouts at inference never give it."""
        trained = self.config.trained_timesteps
        real, prompts = self.data.real_batch(n, self.rng)
        k = torch.randint(len(trained), (n,), generator=self.rng)
        sigma = sigmas_for_timesteps(trained).float()[k].to(self.acc.device)
        noise = self._randn(n)
        x = real.to(self.acc.device).float() + sigma.view(-1, *([1] * (noise.ndim - 1))) * noise
        first = (k == 0).to(self.acc.device)
        x[first] = pure_noise_input(noise[first], float(sigmas_for_timesteps(trained[:1])[0]))
        return x, sigma, prompts

    def generator_inputs(self, n: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        """(x, sigma, cond) the generator maps to samples this step: backward-simulated from fresh prompts, or (the
        ablation) forward-diffused real images with their prompts."""
        if self.config.backward_simulation:
            cond = self.data.cond(self.data.sample_prompts(n, self.rng))
            return (*self.simulate_inputs(cond, n), cond)
        x, sigma, prompts = self.forward_diffused_inputs(n)
        return x, sigma, self.data.cond(prompts)

    # --- updates -------------------------------------------------------------------------------------------------

    def _set_learning_rates(self) -> None:
        factor = warmup_factor(self.step_count, self.config.warmup_steps, self.acc.num_processes)
        for optimizer, lr in ((self.opt_g, self.config.lr_generator), (self.opt_c, self.config.lr_critic)):
            for group in optimizer.param_groups:
                group["lr"] = lr * factor

    def generator_update(self, x_in: torch.Tensor, sigma_in: torch.Tensor, cond: dict[str, Any]
                         ) -> tuple[torch.Tensor, dict[str, float]]:
        """One generator update: distribution matching (+ GAN generator term, + regression). Returns the generator's
        samples from before the update (the critic trains on them next, as in the official loop) and the losses.

        The critic takes part with its parameters frozen (official main/sd_unified_model.py:303-310), so this turn
        leaves no gradient, and no pending gradient reduction, on it; frozen through the backward pass too, where
        gradient checkpointing recomputes its blocks exactly as they ran.
        """
        with frozen(self.critic):
            loss, x, logs = self._generator_loss(x_in, sigma_in, cond)
            self.opt_g.zero_grad(set_to_none=True)
            self.acc.backward(loss)
            self.acc.clip_grad_norm_([p for p in self.generator.parameters() if p.requires_grad],
                                     self.config.max_grad_norm)
            self.opt_g.step()
        return x.detach(), logs

    def _generator_loss(self, x_in: torch.Tensor, sigma_in: torch.Tensor, cond: dict[str, Any]
                        ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        cfg, n = self.config, len(x_in)
        uncond = self.data.cond([""] * n)
        logs: dict[str, float] = {}
        with self.acc.autocast():
            if cfg.regression_weight > 0:  # the regression pairs ride in the same generator forward
                noise, target, pair_prompts = self.data.regression_batch(n, self.rng)
                sigma0 = self.sigma_table[cfg.trained_timesteps[0]].to(self.acc.device).expand(n)
                pure = pure_noise_input(noise.to(self.acc.device), float(sigma0[0]))
                both = predict_x0(self.generator, torch.cat([x_in, pure]), torch.cat([sigma_in, sigma0]),
                                  concat_cond(cond, self.data.cond(pair_prompts))).float()
                x, x_pair = both[:n], both[n:]
            else:
                x = predict_x0(self.generator, x_in, sigma_in, cond).float()
            x_t, sigma, _ = self._noised(x.detach(), cfg.dm_timesteps)
            with torch.no_grad():
                x0_real = guided_x0(self.real, x_t, sigma, cond, uncond, cfg.guidance_scale).float()
            classify = None
            if cfg.uses_gan and (cfg.gan_generator_weight > 0 or cfg.divergence != "reverse_kl"):
                x_gan, sigma_gan, _ = self._noised(x if cfg.gan_generator_weight > 0 else x.detach(), cfg.gan_timesteps)
                classify = (x_gan, sigma_gan, cond)
            x0_fake, logits = self.critic(denoise=(x_t, sigma, cond), classify=classify)
            weights = None if cfg.divergence == "reverse_kl" else losses.f_divergence_weights(logits, cfg.divergence)
            loss = losses.distribution_matching_loss(x, x0_fake.float(), x0_real, weights)
            logs["gen/dm"] = loss.item()
            if cfg.gan_generator_weight > 0:
                gan = losses.gan_generator_loss(logits)
                logs["gen/gan"] = gan.item()
                loss = loss + cfg.gan_generator_weight * gan
            if cfg.regression_weight > 0:
                reg = losses.regression_loss(x_pair, target.to(self.acc.device))
                logs["gen/regression"] = reg.item()
                loss = loss + cfg.regression_weight * reg
        return loss, x, logs

    def critic_update(self, x: torch.Tensor, cond: dict[str, Any]) -> dict[str, float]:
        """One critic update on generator samples `x`: the fake score's denoising loss (t ~ U[0, 999]) and, with the
        GAN, the discriminator's real-vs-generated loss on freshly noised real and generated samples, all in one
        critic forward (one gradient reduction under DDP)."""
        cfg, n = self.config, len(x)
        logs: dict[str, float] = {}
        with self.acc.autocast():
            x_t, sigma, noise = self._noised(x, cfg.fake_score_timesteps)
            classify = None
            if cfg.uses_gan:
                real, real_prompts = self.data.real_batch(n, self.rng)
                both = torch.cat([x, real.to(self.acc.device).float()])
                both_t, both_sigma, _ = self._noised(both, cfg.gan_timesteps)
                classify = (both_t, both_sigma, concat_cond(cond, self.data.cond(real_prompts)))
            x0_fake, logits = self.critic(denoise=(x_t, sigma, cond), classify=classify)
            eps = (x_t - x0_fake.float()) / sigma.view(-1, *([1] * (x.ndim - 1)))
            loss = losses.denoising_loss(eps, noise)
            logs["critic/denoise"] = loss.item()
            if cfg.uses_gan:
                logits_fake, logits_real = logits.chunk(2)
                gan = losses.gan_discriminator_loss(logits_real, logits_fake)
                logs["critic/gan"] = gan.item()
                loss = loss + cfg.gan_discriminator_weight * gan
        self.opt_c.zero_grad(set_to_none=True)
        self.acc.backward(loss)
        self.acc.clip_grad_norm_(self.critic.parameters(), cfg.max_grad_norm)
        self.opt_c.step()
        return logs

    def step(self) -> dict[str, float]:
        """One training step (official main/train_sd.py:322-408): the generator maps backward-simulated inputs to
        samples and, on every ttur-th step, is updated on them first; then the critic trains on those samples."""
        cfg, n = self.config, self.config.batch_size
        self._set_learning_rates()
        x_in, sigma_in, cond = self.generator_inputs(n)
        if self.step_count % cfg.ttur == 0:
            x, logs = self.generator_update(x_in, sigma_in, cond)
        else:
            with torch.no_grad(), self.acc.autocast():
                x, logs = predict_x0(self.generator, x_in, sigma_in, cond).float(), {}
        logs.update(self.critic_update(x, cond))
        self.step_count += 1
        return logs

    def train(self, steps: int, checkpoint_dir: Path | None = None, checkpoint_every: int = 0,
              progress: bool = True) -> Iterator[dict[str, float]]:
        """Run until `steps` steps in all (a resumed trainer continues its count), yielding each step's losses."""
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, initial=self.step_count, disable=not progress or not self.acc.is_main_process,
                   desc="DMD2 distillation")
        latest: dict[str, float] = {}  # the generator's losses come every ttur-th step: show the last of each
        while self.step_count < steps:
            logs = self.step()
            latest.update(logs)
            bar.update(1)
            bar.set_postfix({k.replace("/", "_"): f"{v:.3g}" for k, v in sorted(latest.items())}, refresh=False)
            if checkpoint_dir is not None and checkpoint_every and self.step_count % checkpoint_every == 0:
                self.save_checkpoint(checkpoint_dir)
            yield logs
        bar.close()

    # --- checkpoints ---------------------------------------------------------------------------------------------

    def _full_state(self, model: nn.Module, optimizer: Any) -> tuple[dict, dict]:
        """(weights, optimiser state) keyed by parameter name, gathered whole on the main process (the others get
        empty dicts) whether the model is plain, DDP or FSDP-sharded. Every process must call it."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        return get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def _load_full_state(self, model: nn.Module, optimizer: Any, weights: dict, optimizer_state: dict) -> None:
        """Inverse of `_full_state`. Under FSDP only the main process holds the dicts and broadcasts them (model and
        optimiser separately: given together, a process with empty dicts would skip the model's broadcast)."""
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                             set_optimizer_state_dict)

        options = StateDictOptions(full_state_dict=True, strict=False, broadcast_from_rank0=self._sharded)
        set_optimizer_state_dict(model, optimizer, optimizer_state, options=options)
        set_model_state_dict(model, weights, options=options)

    @property
    def _sharded(self) -> bool:
        from accelerate.utils import DistributedType

        return self.acc.distributed_type == DistributedType.FSDP

    def _ensure_run_id(self) -> str:
        if self.run_id is None:
            from accelerate.utils import broadcast_object_list

            self.run_id = broadcast_object_list([uuid.uuid4().hex[:12]])[0]
        return self.run_id

    def save_checkpoint(self, root: Path) -> Path:
        """Save everything a bit-exact resume needs (trainable weights, optimiser moments, step, every process's
        random state) as ROOT/step-N, published whole (see `distill.checkpoint`); older checkpoints are removed
        once it is complete. Every process must call it."""
        root, step = Path(root), self.step_count
        partial, final = ckpt.partial_dir(root, step), ckpt.step_dir(root, step)
        if ckpt.saved_by(final, self.run_id):  # this very state is already saved (the last periodic save)
            return final
        stamp = {"step": step, "run_id": self._ensure_run_id()}
        if self.acc.is_main_process:
            root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir()
        self.acc.wait_for_everyone()
        generator, opt_generator = self._full_state(self.generator, self.opt_g)
        critic, opt_critic = self._full_state(self.critic, self.opt_c)
        if self.acc.is_main_process:
            ckpt.save_weights(partial / "generator.safetensors",
                              {k: v for k, v in generator.items() if k in self._trainable_generator_keys}, stamp)
            ckpt.save_weights(partial / "critic.safetensors", critic, stamp)
            ckpt.save_object(partial / "optimizers.pt", {"generator": opt_generator, "critic": opt_critic}, stamp)
        rng = {"trainer": self.rng.get_state(), "shared": self.shared_rng.get_state(), "torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        ckpt.save_object(partial / f"rng-{self.acc.process_index}.pt", rng, stamp)
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            ckpt.publish(partial, final, {"format": ckpt.FORMAT, "version": ckpt.VERSION, **stamp,
                                          "processes": self.acc.num_processes, "config": _config_record(self.config)})
            ckpt.remove_older(root, final)
        self.acc.wait_for_everyone()
        return final

    def load_checkpoint(self, folder: Path) -> None:
        """Resume from a checkpoint folder (ROOT/step-N) saved with the same settings and number of processes;
        anything else would not continue the run exactly, and is refused with a message saying why."""
        folder = Path(folder)
        manifest = ckpt.read_manifest(folder)
        if manifest.get("config") != _config_record(self.config):
            saved, now = manifest.get("config") or {}, _config_record(self.config)
            changed = sorted(k for k in now.keys() | saved.keys() if saved.get(k) != now.get(k))
            raise ckpt.CheckpointError(f"the checkpoint {folder} was trained with different settings "
                                       f"({', '.join(changed)}); resume with the same settings, or use another "
                                       f"--output to start a new run")
        if manifest["processes"] != self.acc.num_processes:
            raise ckpt.CheckpointError(f"the checkpoint {folder} was saved by {manifest['processes']} process(es) and "
                                       f"this run has {self.acc.num_processes}: an exact resume replays each "
                                       f"process's random draws, so launch {manifest['processes']} processes")
        stamp = {"step": manifest["step"], "run_id": manifest["run_id"]}
        rng = ckpt.load_object(folder / f"rng-{self.acc.process_index}.pt", stamp)
        generator = critic = {}
        optimizers: dict[str, Any] = {"generator": {}, "critic": {}}
        if self.acc.is_main_process or not self._sharded:
            generator = ckpt.load_weights(folder / "generator.safetensors", stamp)
            critic = ckpt.load_weights(folder / "critic.safetensors", stamp)
            optimizers = ckpt.load_object(folder / "optimizers.pt", stamp)
            if set(generator) != self._trainable_generator_keys:
                raise ckpt.CheckpointError(f"the checkpoint {folder} holds other generator weights than this run "
                                           f"trains (a different model or LoRA rank)")
        try:
            self._load_full_state(self.generator, self.opt_g, generator, optimizers["generator"])
            self._load_full_state(self.critic, self.opt_c, critic, optimizers["critic"])
        except (RuntimeError, KeyError, ValueError) as e:
            raise ckpt.CheckpointError(f"the checkpoint {folder} does not fit this model: "
                                       f"{first_line(e)}") from None
        self.step_count, self.run_id = int(manifest["step"]), manifest["run_id"]
        self.rng.set_state(rng["trainer"])
        self.shared_rng.set_state(rng["shared"])
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])

    def student(self) -> nn.Module | None:
        """The generator UNet (with its LoRA adapter, if any) as a plain module. Under FSDP its weights are gathered
        into a CPU copy on the main process; every process must call it then, and the others get None."""
        if not self._sharded:
            return self.acc.unwrap_model(self.generator)
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        weights = get_model_state_dict(self.generator, options=StateDictOptions(full_state_dict=True,
                                                                                 cpu_offload=True))
        if not self.acc.is_main_process:
            return None
        student = build_generator(copy.deepcopy(self.real).cpu().float(), self.config.lora_rank,
                                  self.config.lora_alpha)
        student.load_state_dict(weights)
        return student


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Parameters of `module` need no gradient inside the block (gradients still flow through it to its inputs)."""
    trainable = [p for p in module.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in trainable:
            p.requires_grad_(True)


def pure_noise_input(noise: torch.Tensor, sigma: float) -> torch.Tensor:
    """The variance-exploding input at `sigma` in which the UNet sees `noise` itself (unit variance), as
    `sample_dmd2(pure_noise=True)` feeds a generator's first step."""
    return noise * sigma * unit_variance_scale(sigma)


def _config_record(config: DistillConfig) -> dict[str, Any]:
    """The settings as JSON values (tuples as lists), as the checkpoint manifest stores them."""
    return json.loads(json.dumps(dataclasses.asdict(config)))
