"""The core's seeded noise: per-item CPU streams, `renoise_seeds` (a host's re-noise tied to each item's starting
noise) and device independence (drawn on the CPU, then moved: bit-equal on any device)."""

from __future__ import annotations

import hashlib

import pytest
import torch

from sampler.noise import SeededNoise, batch_seeds, renoise_seeds

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the CPU draw is compared to "
                                                                "the same stream moved to the device)")


def spec_seed(seed: int, item: torch.Tensor) -> int:
    """renoise_seeds' documented rule, re-derived: blake2b-64 of the seed's 8 little-endian bytes, then the item's
    float32 bytes."""
    digest = hashlib.blake2b(seed.to_bytes(8, "little") + item.float().numpy().tobytes(), digest_size=8)
    return int.from_bytes(digest.digest(), "little")


def test_renoise_seeds_follow_the_rule_and_the_items_noise():
    noise = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    seeds = renoise_seeds(1234, noise, 3)
    assert seeds == [spec_seed(1234, item) for item in noise]
    assert len(set(seeds)) == 3
    assert renoise_seeds(1234, noise[1:2], 1) == seeds[1:2]  # the item alone, as in the batch
    assert renoise_seeds(1234, noise.flip(0), 3) == seeds[::-1]
    assert renoise_seeds(1235, noise, 3) != seeds
    assert renoise_seeds(1234 + 2**64, noise, 3) == seeds  # seeds are taken modulo 2**64, as torch's


def test_renoise_seeds_read_the_noise_as_float32():
    noise = torch.randn(2, 4, 8, 8).half()
    assert renoise_seeds(5, noise, 2) == renoise_seeds(5, noise.float(), 2) == renoise_seeds(5, noise.double(), 2)


def test_renoise_seeds_without_noise_use_positions():
    zeros = renoise_seeds(9, torch.zeros(3, 4, 8, 8), 3)
    assert zeros == renoise_seeds(9, None, 3) and len(set(zeros)) == 3
    assert renoise_seeds(10, None, 3) != zeros
    with pytest.raises(ValueError, match="2 items, the batch 3"):
        renoise_seeds(9, torch.zeros(2, 4), 3)


def test_seeded_noise_items_are_independent_streams():
    batch = SeededNoise(batch_seeds(10, 3), (4, 8, 8))
    alone = SeededNoise([11], (4, 8, 8))
    for _ in range(3):
        assert torch.equal(batch.draw()[1:2], alone())


def test_seeded_noise_draws_float32_on_the_cpu_then_casts():
    half = SeededNoise([3, 4], (4, 8, 8), dtype=torch.float16).draw()
    assert torch.equal(half, SeededNoise([3, 4], (4, 8, 8)).draw().half())


@CUDA
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_seeded_noise_is_the_same_on_cuda(dtype):
    seeds = renoise_seeds(1234, torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(1)), 2)
    cpu, cuda = SeededNoise(seeds, (4, 16, 16), dtype=dtype), SeededNoise(seeds, (4, 16, 16), "cuda", dtype)
    for _ in range(4):
        on_device = cuda.draw()
        assert on_device.device.type == "cuda" and on_device.dtype == dtype
        assert torch.equal(on_device.cpu(), cpu.draw())


@CUDA
def test_renoise_seeds_are_the_same_for_noise_on_cuda():
    noise = torch.randn(2, 4, 16, 16)
    assert renoise_seeds(7, noise.cuda(), 2) == renoise_seeds(7, noise, 2)
