"""DMD2 training cost: time and peak memory of training steps.

CPU: the tiny SD1.5-shaped UNet (an arithmetic check of the loop's cost split). GPU (when there is one): the real
SD1.5 and SDXL architectures (the configs shipped in distill/configs) with random weights, under each official
recipe, with and without gradient checkpointing, on one process: peak memory of a step that updates the generator
and the critic (the most expensive kind), and the time of that step and of a critic-only step. One row:

    python -m bench.distill --recipe sdxl-full [--gradient-checkpointing] [--batch-size 2] [--lora-rank 64]
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from typing import Any

import torch

from distill.recipes import RECIPES
from distill.teacher import CONFIGS
from distill.trainer import DistillConfig, DistillTrainer

from .timing import print_table


class RandomPromptData:
    """Random frozen 'text embeddings' per prompt (SDXL: with pooled embeddings and size ids) and random real
    latents, shaped for `unet` at `latent_size`."""

    def __init__(self, unet: torch.nn.Module, latent_size: int, tokens: int, device: torch.device | str):
        g = torch.Generator().manual_seed(0)
        config = unet.config
        self.latent_shape = (config.in_channels, latent_size, latent_size)
        self.embeds = {p: torch.randn(1, tokens, config.cross_attention_dim, generator=g).to(device)
                       for p in ("a", "b", "")}
        self.added = None
        if config.addition_embed_type == "text_time":
            pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
            size = latent_size * 8
            self.added = {"text_embeds": torch.randn(1, pooled, generator=g).to(device),
                          "time_ids": torch.tensor([[size, size, 0, 0, size, size]], dtype=torch.float32).to(device)}
        self.real = torch.randn(8, *self.latent_shape, generator=g)

    def sample_prompts(self, n, generator):
        return ["a" if i else "b" for i in torch.randint(2, (n,), generator=generator).tolist()]

    def cond(self, prompts):
        cond: dict[str, Any] = {"encoder_hidden_states": torch.cat([self.embeds[p] for p in prompts])}
        if self.added is not None:
            cond["added_cond_kwargs"] = {k: v.expand(len(prompts), -1) for k, v in self.added.items()}
        return cond

    def real_batch(self, n, generator):
        return self.real[torch.randint(len(self.real), (n,), generator=generator)], self.sample_prompts(n, generator)

    def regression_batch(self, n, generator):
        return None


def step_seconds(trainer: DistillTrainer) -> tuple[float, float]:
    """(seconds of a step with a generator update, mean seconds of a critic-only step), after one warm-up step."""
    sync = torch.cuda.synchronize if trainer.acc.device.type == "cuda" else (lambda: None)
    ttur = trainer.config.ttur
    times = []
    for _ in range(ttur + 1):  # steps 0 (generator, warm-up), 1..ttur-1 (critic only), ttur (generator)
        sync()
        start = time.perf_counter()
        trainer.step()
        sync()
        times.append(time.perf_counter() - start)
    critic = sum(times[1:ttur]) / max(1, ttur - 1)
    return times[ttur], critic


def cpu_rows() -> list[tuple[str, str, str]]:
    from accelerate import Accelerator

    from sampler.models.tiny import tiny_sd15_unet

    config = DistillConfig(trained_timesteps=(999, 749, 499, 249), guidance_scale=2.0, batch_size=2, ttur=5,
                           lora_rank=4, warmup_steps=0)
    unet = tiny_sd15_unet()
    trainer = DistillTrainer(unet, RandomPromptData(unet, 8, 3, "cpu"), config, Accelerator(cpu=True))
    generator, critic = step_seconds(trainer)
    return [("CPU DMD2 step, tiny SD1.5-arch UNet, LoRA 4, batch 2",
             f"generator+critic {generator * 1000:.0f} ms, critic only {critic * 1000:.0f} ms",
             "arithmetic check (no target)")]


def gpu_row(recipe: str, **overrides: Any) -> tuple[str, str, str]:
    """One measured row: the official `recipe` with `overrides`, random weights, one process on the GPU."""
    from accelerate import Accelerator
    from diffusers import UNet2DConditionModel

    settings = {**RECIPES[recipe], "warmup_steps": 0, **overrides}
    config = DistillConfig(**settings)
    base = "sdxl" if recipe.startswith("sdxl") else "sd15"
    unet_config = json.loads((CONFIGS / base / "unet" / "config.json").read_text())
    size = unet_config["sample_size"] * 8
    what = (f"GPU DMD2 step, {recipe} ({'LoRA ' + str(config.lora_rank) if config.lora_rank else 'full UNet'}, "
            f"{config.mixed_precision}{', grad. ckpt' if config.gradient_checkpointing else ''}), batch "
            f"{config.batch_size}, {size} px")
    trainer = teacher = None
    try:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        with torch.device("cuda"):
            teacher = UNet2DConditionModel.from_config(unet_config)
        data = RandomPromptData(teacher, size // 8, 77, "cuda")
        trainer = DistillTrainer(teacher, data, config, Accelerator(mixed_precision=config.mixed_precision))
        resident = torch.cuda.memory_allocated() / 2**30
        generator, critic = step_seconds(trainer)
        peak = torch.cuda.max_memory_allocated() / 2**30
        result = (f"peak {peak:.1f} GiB (weights alone {resident:.1f} GiB; AdamW's states come at the first update); "
                  f"step with generator update {generator:.2f} s, critic-only step {critic:.2f} s")
    except torch.cuda.OutOfMemoryError:
        result = f"out of memory ({torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB card)"
    finally:
        trainer = teacher = None
        gc.collect()
        torch.cuda.empty_cache()
    return what, result, torch.cuda.get_device_name(0)


#: the GPU rows `python -m bench` measures: every official recipe as published, and with gradient checkpointing
GPU_ROWS = (("sd15", {}), ("sd15", {"gradient_checkpointing": False}), ("sdxl-lora", {}),
            ("sdxl-lora", {"gradient_checkpointing": True}), ("sdxl-full", {}),
            ("sdxl-full", {"gradient_checkpointing": True}))


def gpu_rows() -> list[tuple[str, str, str]]:
    if not torch.cuda.is_available():
        return [("GPU DMD2 step, SD1.5 / SDXL recipes", "not measured (no GPU)", "peak memory and time per step")]
    return [gpu_row(recipe, **overrides) for recipe, overrides in GPU_ROWS]


def run() -> list[tuple[str, str, str]]:
    torch.manual_seed(0)
    return cpu_rows() + gpu_rows()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.distill", description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", choices=sorted(RECIPES), required=True)
    parser.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lora-rank", type=int)
    args = parser.parse_args()
    overrides = {k: v for k, v in (("gradient_checkpointing", args.gradient_checkpointing),
                                   ("batch_size", args.batch_size), ("lora_rank", args.lora_rank)) if v is not None}
    if not torch.cuda.is_available():
        raise SystemExit("python -m bench.distill measures GPU memory: no CUDA device here")
    print_table([gpu_row(args.recipe, **overrides)], header=("measure", "result", "device"))


if __name__ == "__main__":
    main()
