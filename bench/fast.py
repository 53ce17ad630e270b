"""The fast path, switch by switch, on tiny real architectures on CPU (ratios measured side by side in one run),
and the GPU rows, which need a lent device (`device` tool) and are marked 'not measured' without one."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from sampler import timesteps_for
from sampler.app.fast import FastPath, apply_fast_path
from sampler.app.live import LiveSession
from sampler.app.pipeline import apply_dmd2_weights, generate_latents, sdxl_conditioning
from sampler.models.taesd import tiny_decoder
from sampler.models.tiny import dmd2_format_lora, tiny_sdxl_pipeline

from .timing import best_times

SIZE = 256
GPU_ROWS = [
    ("GPU SDXL 1024^2 4-step, UNet + full VAE", "<= 95 ms (2x FLOP floor) on H100"),
    ("GPU SDXL 1024^2 1-step, UNet + full VAE", "<= 50 ms on H100"),
    ("GPU SDXL 1024^2 1-step with TAESDXL", "FLOP floor 9 ms"),
    ("GPU SD1.5-arch 512^2 1-step live frames with TAESD", ">= 100 fps on H100"),
]


def lora_rows(tmp: Path) -> list[tuple[str, str, str]]:
    """Per-step UNet time with the DMD2 LoRA applied at run time (peft layers) vs fused into the weights."""
    from safetensors.torch import save_file

    from sampler.models.checkpoints import inspect_file

    unfused, fused = tiny_sdxl_pipeline(tmp / "a"), tiny_sdxl_pipeline(tmp / "b")
    path = tmp / "lora.safetensors"
    save_file(dmd2_format_lora(unfused.unet, rank=64), path)
    fused_info = inspect_file(path)
    apply_dmd2_weights(fused, path, fused_info)
    from sampler.models.files import load_state_dict

    unfused.load_lora_weights(load_state_dict(path), adapter_name="dmd2")  # A1111 / runtime style: not fused
    cond = sdxl_conditioning(fused, ["a cat"], SIZE, SIZE)
    run = {name: (lambda p=p: generate_latents(p.unet, cond, (999,), [0], SIZE, SIZE, progress=False))
           for name, p in (("unfused", unfused), ("fused", fused))}
    t = best_times(run, rounds=7)
    return [("UNet step, DMD2 LoRA at run time / fused", f"{t['unfused'] / t['fused']:.2f}x", "fused is cheaper")]


def switch_rows(tmp: Path) -> list[tuple[str, str, str]]:
    """channels_last on CPU, and a live frame split by stage (TAESD vs full VAE decode)."""
    pipe = tiny_sdxl_pipeline(tmp / "c")
    cond = sdxl_conditioning(pipe, ["a cat"], SIZE, SIZE)

    def step():
        return generate_latents(pipe.unet, cond, (999,), [0], SIZE, SIZE, progress=False)

    base = best_times({"sdpa": step}, rounds=7)["sdpa"]
    apply_fast_path(pipe.unet, FastPath(channels_last=True))
    nhwc = best_times({"nhwc": step}, rounds=7)["nhwc"]
    pipe.unet.to(memory_format=torch.contiguous_format)
    rows = [("CPU UNet step, channels_last / contiguous", f"{nhwc / base:.2f}x", "on by default only if < 1")]
    rows += dtype_and_compile_rows(pipe, cond, base)

    taesd = tiny_decoder().eval()  # PyTorch's default init: tiny random weights would make denormals, slow on CPU
    session = LiveSession(pipe, timesteps_for(1), SIZE, SIZE, taesd)
    session.frame("warm up")
    best = min((session.frame("a cat")[1] for _ in range(5)), key=lambda f: f.total)
    rows.append((f"CPU live frame {SIZE}^2, tiny SDXL-arch UNet + TAESD, cached prompt", str(best), "stage split"))
    return rows + decoder_rows(taesd)


def dtype_and_compile_rows(pipe, cond, fp32_step: float) -> list[tuple[str, str, str]]:
    """bf16 weights vs fp32, and torch.compile: its one-off cost and the per-step time after it (CPU)."""
    from sampler.app.fast import compile_and_warm

    def step():
        return generate_latents(pipe.unet, cond, (999,), [0], SIZE, SIZE, progress=False)

    pipe.unet.to(torch.bfloat16)
    bf16 = best_times({"bf16": step}, rounds=5)["bf16"]
    pipe.unet.to(torch.float32)
    cost = compile_and_warm(step, pipe.unet, torch.device("cpu"))
    compiled = best_times({"compiled": step}, rounds=7)["compiled"]
    return [("CPU UNet step, bf16 / fp32 weights", f"{bf16 / fp32_step:.2f}x", "fp16 on CUDA, fp32 on CPU"),
            ("CPU torch.compile: one-off cost", f"{cost:.1f} s", "paid once, reported"),
            ("CPU UNet step, compiled / eager", f"{compiled / fp32_step:.2f}x", "opt-in (--compile)")]


def decoder_rows(taesd: torch.nn.Module) -> list[tuple[str, str, str]]:
    """Decoding a frame: the SDXL VAE decoder (real architecture, random weights) vs the TAESD decoder."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4).eval()
    latents = torch.randn(1, 4, 16, 16)
    with torch.no_grad():
        t = best_times({"vae": lambda: vae.decode(latents), "taesd": lambda: taesd(latents)}, rounds=3)
    return [("CPU decode 128^2: SDXL VAE decoder / TAESD decoder", f"{t['vae'] / t['taesd']:.1f}x",
             "~18x (FLOPs, DESIGN.md 5)")]


def run() -> list[tuple[str, str, str]]:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        rows = lora_rows(Path(tmp)) + switch_rows(Path(tmp))
    gpu = torch.cuda.is_available()
    rows += [(name, "run bench on a GPU" if gpu else "not measured (no GPU)", target) for name, target in GPU_ROWS]
    return rows
