"""DMD2 training cost: one training iteration (one generator update and its `ttur` critic updates).

CPU: the tiny SD1.5-shaped UNet (arithmetic check of the loop's cost split). GPU (when lent): the real SD1.5
architecture with random weights, LoRA rank 64 generator, full fake-score critic, bf16 autocast and gradient
checkpointing, at growing batch sizes until memory runs out: seconds and peak memory per iteration, which is what
a user distilling a finetune on a 24 GB or 80 GB card needs to know.
"""

from __future__ import annotations

import time

import torch

from distill.trainer import DistillConfig, DistillTrainer

TTUR = 5


class RandomPromptData:
    """Random frozen 'text embeddings' per prompt and random real latents, shaped like SD1.5 at `size` px."""

    def __init__(self, latent_size: int, tokens: int, dim: int, device: torch.device):
        g = torch.Generator().manual_seed(0)
        self.latent_shape = (4, latent_size, latent_size)
        self.embeds = {p: torch.randn(1, tokens, dim, generator=g).to(device) for p in ("a", "b", "")}
        self.real = torch.randn(8, *self.latent_shape, generator=g)

    def sample_prompts(self, n, generator):
        return ["a" if i else "b" for i in torch.randint(2, (n,), generator=generator).tolist()]

    def cond(self, prompts):
        return {"encoder_hidden_states": torch.cat([self.embeds[p] for p in prompts])}

    def real_batch(self, n, generator):
        return self.real[torch.randint(len(self.real), (n,), generator=generator)], self.sample_prompts(n, generator)

    def regression_batch(self, n, generator):
        return None


def iteration_seconds(trainer: DistillTrainer, iterations: int = 2) -> float:
    """Mean wall time of one generator update + TTUR critic updates, after one warm-up iteration."""
    sync = torch.cuda.synchronize if trainer.acc.device.type == "cuda" else (lambda: None)
    for _ in range(TTUR):
        trainer.step()
    sync()
    start = time.perf_counter()
    for _ in range(iterations * TTUR):
        trainer.step()
    sync()
    return (time.perf_counter() - start) / iterations


def cpu_rows() -> list[tuple[str, str, str]]:
    from accelerate import Accelerator

    from sampler.models.tiny import tiny_sd15_unet

    config = DistillConfig(trained_timesteps=(999, 749, 499, 249), guidance_scale=2.0, batch_size=2, ttur=TTUR,
                           lora_rank=4)
    trainer = DistillTrainer(tiny_sd15_unet(), RandomPromptData(8, 3, 16, torch.device("cpu")), config,
                             Accelerator(cpu=True))
    seconds = iteration_seconds(trainer)
    return [("CPU DMD2 training iteration (1 generator + 5 critic updates), tiny SD1.5-arch UNet, batch 2",
             f"{seconds * 1000:.0f} ms", "arithmetic check (no target)")]


def gpu_rows(batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32)) -> list[tuple[str, str, str]]:
    name = "GPU DMD2 iteration, SD1.5 512^2, LoRA 64, bf16, grad. checkpointing, batch {}"
    if not torch.cuda.is_available():
        return [(name.format("1-32"), "not measured (no GPU)", "time and peak memory per batch size")]
    from accelerate import Accelerator
    from diffusers import UNet2DConditionModel

    rows = []
    for batch in batch_sizes:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        try:
            teacher = UNet2DConditionModel()  # the default config is the SD1.5 UNet (860 M parameters)
            config = DistillConfig(guidance_scale=1.75, batch_size=batch, ttur=TTUR, lora_rank=64,
                                   mixed_precision="bf16", gradient_checkpointing=True)
            trainer = DistillTrainer(teacher, RandomPromptData(64, 77, 768, torch.device("cuda")), config,
                                     Accelerator(mixed_precision="bf16"))
            seconds = iteration_seconds(trainer)
            peak = torch.cuda.max_memory_allocated() / 2**30
            rows.append((name.format(batch), f"{seconds:.2f} s, peak {peak:.1f} GiB", "fits 24 GB / 80 GB?"))
        except torch.cuda.OutOfMemoryError:
            rows.append((name.format(batch), "out of memory", "fits 24 GB / 80 GB?"))
            break
        finally:
            trainer = teacher = None
    return rows


def run() -> list[tuple[str, str, str]]:
    torch.manual_seed(0)
    return cpu_rows() + gpu_rows()
