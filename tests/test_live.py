"""Live generation on the tiny SDXL pipeline: cached conditioning, the TAESD decoder, stage timings."""

import pytest
import torch
from safetensors.torch import save_file

from sampler import TRAINED_TIMESTEPS
from sampler.errors import WrongKindError
from sampler.app.live import LiveSession, run_live_loop
from sampler.live import PromptCache
from sampler.app.pipeline import decode_to_images, generate_latents, sdxl_conditioning, to_pil_images
from sampler.models.taesd import decode_tiny, load_tiny_decoder, tiny_decoder
from sampler.models.tiny import randomize_, tiny_sdxl_pipeline


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return tiny_sdxl_pipeline(tmp_path_factory.mktemp("tiny_sdxl"))


def test_prompt_cache_encodes_each_prompt_once():
    calls = []
    cache = PromptCache(lambda p: calls.append(p) or {"p": p}, size=2)
    assert [cache(p)["p"] for p in ["a", "a", "b", "a", "c", "b"]] == ["a", "a", "b", "a", "c", "b"]
    assert calls == ["a", "b", "c", "b"]  # "b" was evicted by "c" (least recently used)
    assert (cache.hits, cache.misses) == (2, 4)


def test_tiny_decoder_matches_released_file_layout(tmp_path):
    decoder = randomize_(tiny_decoder(), scale=0.05)
    # 4,895,612-byte taesd(xl)_decoder.safetensors files hold 1.22 M float32 parameters: this architecture's count.
    assert sum(p.numel() for p in decoder.parameters()) == 1_222_531
    path = tmp_path / "taesdxl_decoder.safetensors"
    save_file(decoder.state_dict(), path)
    loaded = load_tiny_decoder(path)
    latents = torch.randn(2, 4, 8, 8)
    rgb = decode_tiny(loaded, latents)
    assert rgb.shape == (2, 3, 64, 64) and 0 <= rgb.min() and rgb.max() <= 1
    torch.testing.assert_close(rgb, decoder(latents).clamp(0, 1))


def test_tiny_decoder_refuses_other_files(tmp_path):
    path = tmp_path / "not_taesd.safetensors"
    save_file({"1.weight": torch.zeros(3, 3)}, path)
    with pytest.raises(WrongKindError, match="not a TAESD decoder"):
        load_tiny_decoder(path)


@pytest.mark.parametrize("tiny", [True, False])
def test_live_frames_equal_the_standalone_path(pipe, tiny):
    decoder = randomize_(tiny_decoder(), scale=0.05) if tiny else None
    session = LiveSession(pipe, TRAINED_TIMESTEPS["sdxl_1step"], 64, 64, decoder)
    image, timings = session.frame("a red cat", seed=3)
    again, _ = session.frame("a red cat", seed=3)
    assert list(timings.stages) == ["encode", "unet", "decode"] and timings.total > 0
    assert session.conditioning.hits == 1 and image.size == (64, 64)
    assert image.tobytes() == again.tobytes()
    latents = generate_latents(pipe.unet, sdxl_conditioning(pipe, ["a red cat"], 64, 64), (399,), [3], 64, 64,
                               progress=False)
    expected = to_pil_images(decode_tiny(decoder, latents)) if tiny else decode_to_images(pipe.vae, latents)
    assert image.tobytes() == expected[0].tobytes()


def test_live_loop_benchmark_summary(pipe, tmp_path, capsys):
    session = LiveSession(pipe, (999,), 64, 64, randomize_(tiny_decoder(), scale=0.05))
    frames = run_live_loop(session, ["a cat", "", "a cat", "a dog"], 0, tmp_path / "live.png", summary_after_first=True)
    assert len(frames) == 3 and (tmp_path / "live.png").exists()
    assert "mean of 2 frames after a warm-up" in capsys.readouterr().out


def test_fast_path_keeps_frames_identical(pipe):
    """channels_last and the explicit SDPA processor change kernels, not results."""
    from sampler.app.fast import FastPath, apply_fast_path

    session = LiveSession(pipe, (999,), 64, 64, randomize_(tiny_decoder(), scale=0.05))
    before = generate_latents(pipe.unet, sdxl_conditioning(pipe, ["a cat"], 64, 64), (999,), [1], 64, 64,
                              progress=False)
    apply_fast_path(pipe.unet, FastPath(channels_last=True))
    after = generate_latents(pipe.unet, sdxl_conditioning(pipe, ["a cat"], 64, 64), (999,), [1], 64, 64,
                             progress=False)
    pipe.unet.to(memory_format=torch.contiguous_format)
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)
    assert session.frame("a cat")[0].size == (64, 64)
    with pytest.raises(ValueError, match="attention must be"):
        apply_fast_path(pipe.unet, FastPath(attention="flash"))


def test_compile_cost_is_reported_once():
    from sampler.app.fast import compile_and_warm

    module = torch.nn.Linear(4, 4)
    calls = []
    cost = compile_and_warm(lambda: calls.append(module(torch.ones(1, 4))), module, torch.device("cpu"))
    assert cost > 0 and len(calls) == 1
    torch.testing.assert_close(module(torch.ones(1, 4)), calls[0])
