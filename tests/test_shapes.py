"""The shapes world: vocabulary, data, model files, DMD2 generation, teacher sampler, classifier and metrics."""

import json
import math

import numpy
import pytest
import torch
from safetensors.torch import save_file

from distill.shapes.classifier import features, predict, train_classifier
from distill.shapes.data import render, sample_batch
from distill.shapes.metrics import frechet_distance, prompt_accuracy
from distill.shapes.sampling import teacher_sample
from distill.shapes.teacher import offset_noise, train_teacher
from sampler.errors import DMD2Error
from sampler.schedule import scaled_linear_alphas_cumprod
from sampler.shapes import (COLOURS, PROMPTS, SHAPES, PromptEncoder, ShapesModel, generate_shapes, image_grid,
                            load_shapes_model, save_shapes_model, shapes_unet, tokenize)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    encoder = PromptEncoder()
    with torch.no_grad():
        encoder.positions.normal_()
    return ShapesModel(shapes_unet(seed=1).eval(), encoder.eval(), (999, 749, 499, 249), "random")


# --- vocabulary -------------------------------------------------------------------------------------------------

def test_prompts_cover_every_colour_and_shape_once():
    assert len(PROMPTS) == len(set(PROMPTS)) == len(COLOURS) * len(SHAPES) == 20


def test_tokenize_round_trip_and_empty_prompt():
    vocab = [""] + list(COLOURS) + list(SHAPES)
    ids = tokenize(list(PROMPTS) + [""])
    assert ids.dtype == torch.long and ids.shape == (21, 2)
    assert [f"{vocab[c]} {vocab[s]}" for c, s in ids[:-1].tolist()] == list(PROMPTS)
    assert ids[-1].tolist() == [0, 0]
    assert len(set(ids[:-1].flatten().tolist())) == len(COLOURS) + len(SHAPES)


@pytest.mark.parametrize("prompt", ["red blob", "circle red", "red", "big red circle"])
def test_tokenize_rejects_unknown_words_naming_the_known_ones(prompt):
    with pytest.raises(ValueError, match="purple.*triangle"):
        tokenize([prompt])


# --- data ---------------------------------------------------------------------------------------------------------

def coverage(images: torch.Tensor) -> torch.Tensor:
    """Per-pixel shape coverage of red images: R - G = (0.90 - 0.15) * coverage whatever the grey background."""
    rgb = (images + 1) / 2
    return (rgb[:, 0] - rgb[:, 1]) / (COLOURS["red"][0] - COLOURS["red"][1])


def test_render_draws_the_named_colour_inside_the_shape():
    prompts = list(PROMPTS) * 2
    images = render(prompts, torch.Generator().manual_seed(0))
    assert images.shape == (40, 3, 32, 32) and images.min() >= -1 and images.max() <= 1
    for image, prompt in zip((images + 1) / 2, prompts):
        saturation = image.amax(0) - image.amin(0)  # the background is grey: saturation 0
        inside = image[:, saturation > 0.98 * saturation.max()]  # fully covered pixels, not the antialiased edge
        assert inside.shape[1] >= 30
        expected = torch.tensor(COLOURS[prompt.split()[0]])
        assert torch.allclose(inside.mean(1), expected, atol=0.01), prompt
        background = image[:, saturation < 1e-6]
        assert background.shape[1] >= 200 and background.max() < 0.2


def test_render_shapes_have_their_areas_and_stay_inside():
    """Same generator seed: same size and background, so area ratios to the square are geometry alone; a shape
    cut by the border would fall short of its area."""
    ratios = {"circle": math.pi / 4, "square": 1.0, "triangle": 3**0.5 / 4, "cross": 5 / 9}
    for seed in range(8):
        area = {s: coverage(render([f"red {s}"], torch.Generator().manual_seed(seed))).sum() for s in SHAPES}
        for shape, ratio in ratios.items():
            assert area[shape] / area["square"] == pytest.approx(ratio, abs=0.04), (seed, shape)


def test_render_and_sample_batch_are_deterministic():
    a, prompts_a = sample_batch(16, torch.Generator().manual_seed(3))
    b, prompts_b = sample_batch(16, torch.Generator().manual_seed(3))
    c, _ = sample_batch(16, torch.Generator().manual_seed(4))
    assert prompts_a == prompts_b and torch.equal(a, b) and not torch.equal(a, c)
    assert set(prompts_a) <= set(PROMPTS)


def test_render_refuses_the_empty_prompt():
    with pytest.raises(ValueError, match="colour"):
        render([""], torch.Generator())


# --- model files --------------------------------------------------------------------------------------------------

def test_save_load_round_trip_is_exact_at_fp16(model, tmp_path):
    path = save_shapes_model(tmp_path / "m.safetensors", model.unet, model.encoder, (999, 499), note="made in a test")
    assert not list(tmp_path.glob("*.tmp"))
    loaded = load_shapes_model(path)
    assert loaded.trained_timesteps == (999, 499) and loaded.note == "made in a test"
    assert json.dumps(dict(loaded.unet.config), sort_keys=True) == json.dumps(dict(model.unet.config), sort_keys=True)
    for original, restored in ((model.unet, loaded.unet), (model.encoder, loaded.encoder)):
        for (name, a), (_, b) in zip(original.state_dict().items(), restored.state_dict().items()):
            assert b.dtype == torch.float32 and torch.equal(a.half().float(), b), name
    assert not loaded.unet.training


def test_a_teacher_file_has_no_trained_timesteps(model, tmp_path):
    path = save_shapes_model(tmp_path / "t.safetensors", model.unet, model.encoder, dtype=torch.float32)
    assert load_shapes_model(path).trained_timesteps is None


def test_loading_other_files_raises_dmd2error(tmp_path):
    save_file({"conv_in.weight": torch.zeros(4, 4)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(DMD2Error, match="not a shapes model"):
        load_shapes_model(tmp_path / "other.safetensors")
    torch.save({"a": torch.zeros(1)}, tmp_path / "m.pt")
    with pytest.raises(DMD2Error, match="safetensors"):
        load_shapes_model(tmp_path / "m.pt")


# --- DMD2 generation ----------------------------------------------------------------------------------------------

def test_generate_shapes_is_seeded_per_image(model):
    prompts = ["red circle", "blue square", "green cross"]
    batch = generate_shapes(model, prompts, seed=7)
    assert batch.shape == (3, 3, 32, 32) and batch.min() >= 0 and batch.max() <= 1
    assert batch.std() > 0.05  # a real picture of noise, not a clamped constant
    assert torch.equal(batch, generate_shapes(model, prompts, seed=7))
    single = generate_shapes(model, prompts[2:], seed=9)
    torch.testing.assert_close(batch[2:], single, atol=1e-5, rtol=0)
    assert not torch.allclose(batch, generate_shapes(model, prompts, seed=8))


def test_generate_shapes_steps_follow_the_trained_plan(model):
    one = generate_shapes(model, ["red circle"], seed=0, steps=1)
    four = generate_shapes(model, ["red circle"], seed=0)
    assert not torch.allclose(one, four)


def test_image_grid_places_and_upscales_images():
    images = torch.rand(5, 3, 32, 32)
    grid = image_grid(images, columns=3, scale=2)
    assert grid.size == (3 * 64, 2 * 64)
    pixels = torch.from_numpy(numpy.array(grid)).float() / 255
    torch.testing.assert_close(pixels[64 + 2 * 5 + 1, 64 + 2 * 7], images[4, :, 5, 7], atol=1 / 255, rtol=0)
    assert pixels[64:, 128:].max() == 0


# --- teacher ------------------------------------------------------------------------------------------------------

def ddim_reference(unet, encoder, prompts, steps, guidance, seed):
    """DDIM (eta 0) written out by hand on trailing timesteps, the unconditional and conditional passes separate."""
    abar = scaled_linear_alphas_cumprod().float()
    timesteps = [round(1000 - i * 1000 / steps) - 1 for i in range(steps)]
    x = torch.stack([torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(seed + i))
                     for i in range(len(prompts))])
    cond, uncond = encoder(tokenize(prompts)), encoder(tokenize([""] * len(prompts)))
    for t in timesteps:
        eps = unet(x, t, encoder_hidden_states=cond).sample
        if guidance != 1:
            eps_uncond = unet(x, t, encoder_hidden_states=uncond).sample
            eps = eps_uncond + guidance * (eps - eps_uncond)
        prev = t - 1000 // steps
        a, a_prev = abar[t], abar[prev] if prev >= 0 else abar[0]
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    return x.clamp(-1, 1)


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_teacher_sample_is_ddim_with_cfg(model, guidance):
    """Guidance 1 equals the conditional model alone, although the sampler always runs both passes in one batch."""
    prompts = ["yellow triangle", "purple cross"]
    with torch.no_grad():
        expected = ddim_reference(model.unet, model.encoder, prompts, 4, guidance, seed=5)
    ours = teacher_sample(model.unet, model.encoder, prompts, steps=4, guidance_scale=guidance, seed=5)
    assert ours.shape == (2, 3, 32, 32)
    torch.testing.assert_close(ours, expected, atol=2e-4, rtol=0)


def test_offset_noise_adds_one_offset_per_image_and_channel():
    plain = offset_noise(torch.Size([400, 3, 32, 32]), 0.0, torch.Generator().manual_seed(0))
    assert torch.equal(plain, torch.randn(400, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    offset = offset_noise(torch.Size([400, 3, 32, 32]), 0.5, torch.Generator().manual_seed(0))
    means = offset.mean(dim=(2, 3))
    assert means.std().item() == pytest.approx((0.25 + 1 / 1024) ** 0.5, rel=0.1)
    torch.testing.assert_close(offset - means[:, :, None, None], plain - plain.mean(dim=(2, 3), keepdim=True),
                               atol=1e-5, rtol=0)


def test_train_teacher_runs_and_returns_frozen_ema_models():
    unet, encoder = train_teacher(steps=2, batch_size=4, seed=0, progress=False)
    assert not unet.training and not encoder.training
    assert not any(p.requires_grad for p in list(unet.parameters()) + list(encoder.parameters()))
    assert not torch.equal(unet.conv_out.weight, shapes_unet(seed=0).conv_out.weight)


# --- classifier and metrics ---------------------------------------------------------------------------------------

def test_classifier_learns_quickly():
    images, prompts = sample_batch(200, torch.Generator().manual_seed(99))
    untrained = train_classifier(steps=0, seed=0, progress=False)
    trained = train_classifier(steps=40, seed=0, batch_size=32, progress=False)
    before, after = prompt_accuracy(untrained, images, prompts), prompt_accuracy(trained, images, prompts)
    assert after > max(0.2, before + 0.1), (before, after)
    assert features(trained, images).shape == (200, 64)
    assert set(predict(trained, images)) <= set(PROMPTS)


def test_frechet_distance_of_identical_sets_is_zero():
    feats = torch.randn(300, 16, generator=torch.Generator().manual_seed(0))
    assert abs(frechet_distance(feats, feats)) < 1e-8


def test_frechet_distance_of_a_shift_is_the_squared_mean_difference():
    """Same covariance: the trace terms cancel, tr(S) + tr(S) - 2 tr((S^2)^1/2) = 0, leaving |delta|^2."""
    feats = torch.randn(500, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3
    delta = torch.arange(8, dtype=torch.float64) - 2.5
    assert frechet_distance(feats, feats + delta) == pytest.approx(float(delta.square().sum()), rel=1e-9)


def test_frechet_distance_of_diagonal_covariances():
    """Rows of a 4x4 Hadamard matrix (zero mean, orthogonal) scaled per dimension: covariances are diagonal,
    diag(4/3 * s^2), so FD = sum (sqrt(4/3) s_a - sqrt(4/3) s_b)^2 = 4/3 * sum (s_a - s_b)^2."""
    pattern = torch.tensor([[1.0, 1.0, -1.0, -1.0], [1.0, -1.0, 1.0, -1.0]]).T.double()
    s_a, s_b = torch.tensor([1.0, 2.0]).double(), torch.tensor([3.0, 0.5]).double()
    expected = 4 / 3 * float((s_a - s_b).square().sum())
    assert frechet_distance(pattern * s_a, pattern * s_b + 1.0) == pytest.approx(expected + 2.0, rel=1e-9)
