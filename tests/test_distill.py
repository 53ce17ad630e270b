"""DMD2 trainer: losses against hand-derived values, a smoke run, bit-exact resume, and exports that round-trip
through our own loaders and sampler."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from distill import losses
from distill.export import export_lora, export_unet, kohya_lora_state_dict, merged_unet
from distill.models import GANHead, bottleneck_size, build_generator, guided_x0, predict_x0, unet_bottleneck
from distill.checkpoint import CheckpointError, complete_checkpoints, latest_checkpoint
from distill.trainer import DistillConfig, DistillTrainer
from sampler.models.checkpoints import inspect_file
from sampler.models.stamps import TRAINED_TIMESTEPS_KEY
from sampler.models.files import load_state_dict
from sampler.errors import DMD2Error
from sampler.models.tiny import tiny_sd15_unet, tiny_sdxl_unet
from sampler.shapes.world import shapes_unet

# --- losses -----------------------------------------------------------------------------------------------------


def test_dmd_gradient_is_the_normalised_score_difference():
    x = torch.tensor([1.0, 2.0]).view(1, 1, 1, 2)
    grad = losses.dmd_gradient(x, x0_fake=torch.ones_like(x), x0_real=torch.zeros_like(x))
    # mean |x - x0_real| = 1.5, so (1 - 0) / 1.5 for both entries
    assert torch.allclose(grad, torch.full_like(x, 2 / 3))


def test_distribution_matching_loss_gradient_is_the_dmd_gradient():
    x = torch.tensor([[1.0, 2.0], [0.5, -1.0]]).view(2, 1, 1, 2).requires_grad_()
    x0_real = torch.tensor([[0.0, 0.0], [0.5, 0.0]]).view(2, 1, 1, 2)
    x0_fake = torch.tensor([[1.0, 1.0], [0.0, 1.0]]).view(2, 1, 1, 2)
    loss = losses.distribution_matching_loss(x, x0_fake, x0_real)
    loss.backward()
    # sample 0: norm 1.5 -> grad (2/3, 2/3); sample 1: norm (0 + 1) / 2 = 0.5 -> grad (-1, 2)
    expected = torch.tensor([[2 / 3, 2 / 3], [-1.0, 2.0]]).view(2, 1, 1, 2)
    assert torch.allclose(x.grad, expected / 4)
    assert math.isclose(loss.item(), 0.5 * expected.square().mean().item(), rel_tol=1e-6)


def test_f_divergence_weights_scale_each_sample():
    x = torch.ones(2, 1, 1, 1, requires_grad=True)
    losses.distribution_matching_loss(x, torch.full_like(x, 2.0), torch.zeros_like(x),
                                      weights=torch.tensor([0.5, 1.5])).backward()
    assert torch.allclose(x.grad.flatten(), torch.tensor([0.5, 1.5]) * 2.0 / 2)


def test_f_divergence_weights_hand_derived():
    logits = torch.tensor([0.0, math.log(3.0)])  # density ratios r = 1 and 3
    assert torch.equal(losses.f_divergence_weights(logits, "reverse_kl"), torch.ones(2))
    assert torch.allclose(losses.f_divergence_weights(logits, "forward_kl"), torch.tensor([0.5, 1.5]))  # r / mean
    # JS: r / (1 + r) = 0.5, 0.75 -> / 0.625
    assert torch.allclose(losses.f_divergence_weights(logits, "js"), torch.tensor([0.8, 1.2]))
    assert torch.isfinite(losses.f_divergence_weights(torch.tensor([500.0, 0.0]), "forward_kl")).all()
    with pytest.raises(ValueError, match="divergence"):
        losses.f_divergence_weights(logits, "kl")


def test_gan_losses_hand_derived():
    zero = torch.zeros(3)
    assert math.isclose(losses.gan_generator_loss(zero).item(), math.log(2), rel_tol=1e-6)
    assert math.isclose(losses.gan_discriminator_loss(zero, zero).item(), 2 * math.log(2), rel_tol=1e-6)
    # a confident, correct discriminator: real +10, fake -10 -> loss ~ 2 e^-10; the generator then pays ~10
    assert losses.gan_discriminator_loss(torch.full((2,), 10.0), torch.full((2,), -10.0)).item() < 1e-4
    assert math.isclose(losses.gan_generator_loss(torch.full((2,), -10.0)).item(), 10.0, rel_tol=1e-4)


def test_denoising_and_regression_losses_are_mse():
    a, b = torch.tensor([1.0, 3.0]), torch.tensor([0.0, 1.0])
    assert losses.denoising_loss(a, b).item() == pytest.approx(2.5)
    assert losses.regression_loss(a, b).item() == pytest.approx(2.5)


def test_guided_x0_is_classifier_free_guidance():
    unet = tiny_sd15_unet()
    x, sigma = torch.randn(2, 4, 8, 8), torch.full((2,), 2.0)
    cond, uncond = {"encoder_hidden_states": torch.randn(2, 3, 16)}, {"encoder_hidden_states": torch.zeros(2, 3, 16)}
    with torch.no_grad():
        c, u = predict_x0(unet, x, sigma, cond), predict_x0(unet, x, sigma, uncond)
        assert torch.allclose(guided_x0(unet, x, sigma, cond, uncond, 3.0), u + 3.0 * (c - u), atol=1e-5)
        assert torch.equal(guided_x0(unet, x, sigma, cond, uncond, 1.0), c)


# --- the critic and its GAN head ---------------------------------------------------------------------------------


def _layers(head) -> list[tuple]:
    out = []
    for m in head.net:
        if isinstance(m, torch.nn.Conv2d):
            out.append(("conv", m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding))
        elif isinstance(m, torch.nn.GroupNorm):
            out.append(("gn", m.num_groups, m.num_channels))
        else:
            out.append((type(m).__name__,))
    return out


def test_gan_head_is_the_official_architecture():
    """Layer for layer the heads of tianweiy/DMD2 main/sd_guidance.py:107-122 (SDXL, 1024 px: 32x32 bottleneck) and
    :125-133 (SD1.5, 512 px: 8x8), transcribed from the official code."""
    def block(kernel, stride, padding):
        return [("conv", 1280, 1280, (kernel, kernel), (stride, stride), (padding, padding)), ("gn", 32, 1280),
                ("SiLU",)]

    out = [("conv", 1280, 1, (1, 1), (1, 1), (0, 0))]
    assert _layers(GANHead(1280, (32, 32))) == block(4, 2, 1) * 3 + block(4, 4, 0) + out
    assert _layers(GANHead(1280, (8, 8))) == block(4, 2, 1) + block(4, 4, 0) + out
    logits = GANHead(64, (32, 24))(torch.randn(3, 64, 32, 24))  # non-square (SDXL 1024x768) still ends at 1x1
    assert logits.shape == (3,)


@pytest.mark.parametrize("make", [tiny_sd15_unet, tiny_sdxl_unet, shapes_unet], ids=["sd15", "sdxl", "shapes"])
def test_unet_bottleneck_is_the_mid_block_output_of_a_full_forward(make):
    """The classify path stops at the bottleneck: the same tensor diffusers' own forward hands the up blocks."""
    unet = make()
    c, size = unet.config.in_channels, unet.config.sample_size
    x, t = torch.randn(2, c, size, size), torch.tensor([999, 3])
    kwargs = {"encoder_hidden_states": torch.randn(2, 3, unet.config.cross_attention_dim)}
    if unet.config.addition_embed_type == "text_time":
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(2, 12), "time_ids": torch.randn(2, 6)}
    seen = []
    handle = unet.mid_block.register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        unet(x, t, **kwargs)
        handle.remove()
        mine = unet_bottleneck(unet, x, t, kwargs["encoder_hidden_states"], kwargs.get("added_cond_kwargs"))
    assert torch.equal(mine, seen[0])
    assert mine.shape[2:] == bottleneck_size(unet, (size, size))


def test_each_update_trains_all_it_owns_and_nothing_else():
    """What DDP needs: a critic update gives every critic parameter a gradient (fake score and GAN head in one
    forward); a generator update gives every trainable generator parameter one and leaves the critic untouched."""
    trainer = trainer_for(small_config(ttur=1))
    cond = trainer.data.cond(["red", "blue"])
    x_in, sigma_in = trainer.simulate_inputs(cond, 2)
    x, _ = trainer.generator_update(x_in, sigma_in, cond)
    assert all(p.grad is None for p in trainer.critic.parameters())
    assert all(p.grad is not None for p in trainer.generator.parameters() if p.requires_grad)
    assert all(p.requires_grad for p in trainer.critic.parameters())  # unfrozen again
    trainer.critic_update(x, cond)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.critic.parameters())
    without_gan = trainer_for(small_config(gan_generator_weight=0, gan_discriminator_weight=0))
    assert without_gan.acc.unwrap_model(without_gan.critic).head is None


# --- training ---------------------------------------------------------------------------------------------------


class RandomData:
    """A toy problem on the tiny SD1.5-shaped UNet: fixed random prompt embeddings, fixed random 'real' latents."""

    latent_shape = (4, 8, 8)

    def __init__(self):
        g = torch.Generator().manual_seed(7)
        self.embeds = {p: torch.randn(1, 3, 16, generator=g) for p in ("red", "blue")}
        self.embeds[""] = torch.zeros(1, 3, 16)
        self.real = torch.randn(16, *self.latent_shape, generator=g) * 0.5
        self.pairs = torch.randn(4, *self.latent_shape, generator=g), torch.randn(4, *self.latent_shape, generator=g)

    def sample_prompts(self, n, generator):
        return [("red", "blue")[i] for i in torch.randint(2, (n,), generator=generator).tolist()]

    def cond(self, prompts):
        return {"encoder_hidden_states": torch.cat([self.embeds[p] for p in prompts])}

    def real_batch(self, n, generator):
        idx = torch.randint(len(self.real), (n,), generator=generator)
        return self.real[idx], self.sample_prompts(n, generator)

    def regression_batch(self, n, generator):
        idx = torch.randint(len(self.pairs[0]), (n,), generator=generator)
        return self.pairs[0][idx], self.pairs[1][idx], ["red"] * n


def small_config(**overrides) -> DistillConfig:
    settings = dict(trained_timesteps=(999, 499), guidance_scale=2.0, batch_size=2, ttur=2, lr_generator=1e-3,
                    lr_critic=1e-3, warmup_steps=0, gan_generator_weight=0.1, gan_discriminator_weight=0.1)
    settings.update(overrides)
    return DistillConfig(**settings)


def trainer_for(config: DistillConfig) -> DistillTrainer:
    from accelerate import Accelerator

    return DistillTrainer(tiny_sd15_unet(), RandomData(), config, Accelerator(cpu=True))


def params(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def critic_eval_loss(trainer: DistillTrainer, batch: dict) -> float:
    """The critic's denoising loss on a fixed batch of generator samples, noise and timesteps."""
    with torch.no_grad():
        x0, _ = trainer.critic(denoise=(batch["x_t"], batch["sigma"], batch["cond"]))
        eps = (batch["x_t"] - x0) / batch["sigma"].view(-1, 1, 1, 1)
        return losses.denoising_loss(eps, batch["noise"]).item()


def test_smoke_run_losses_finite_critic_learns_generator_moves():
    trainer = trainer_for(small_config())
    g = torch.Generator().manual_seed(3)
    cond = trainer.data.cond(["red", "blue"] * 4)
    x_in, sigma_in = trainer.simulate_inputs(cond, 8)
    with torch.no_grad():
        x = predict_x0(trainer.student(), x_in, sigma_in, cond)
    sigma = trainer.sigma_table[torch.randint(20, 981, (8,), generator=g)]
    noise = torch.randn(x.shape, generator=g)
    batch = {"x_t": x + sigma.view(-1, 1, 1, 1) * noise, "sigma": sigma, "noise": noise, "cond": cond}
    before_loss, before = critic_eval_loss(trainer, batch), params(trainer.student())
    logs = list(trainer.train(6, progress=False))
    assert {"gen/dm", "gen/gan", "critic/denoise", "critic/gan"} <= {k for step in logs for k in step}
    assert all(math.isfinite(v) for step in logs for v in step.values())
    assert critic_eval_loss(trainer, batch) < before_loss
    moved = [k for k, v in params(trainer.student()).items() if not torch.equal(v, before[k])]
    assert len(moved) > len(before) // 2


def test_mixed_precision_trains_float32_copies_of_the_teacher(fresh_accelerate_state):
    """bf16 autocast with the real score stored in bf16 (as official), but the generator and critic are float32
    copies of the float32 teacher: their weights and AdamW states stay full precision."""
    teacher = tiny_sd15_unet()
    weights = params(teacher)
    from accelerate import Accelerator

    trainer = DistillTrainer(teacher, RandomData(), small_config(mixed_precision="bf16"),
                             Accelerator(cpu=True, mixed_precision="bf16"))
    assert next(trainer.real.parameters()).dtype == torch.bfloat16
    for model in (trainer.student(), trainer.acc.unwrap_model(trainer.critic).unet):
        assert all(p.dtype == torch.float32 for p in model.parameters())
        assert all(torch.equal(v, weights[k]) for k, v in params(model).items() if k in weights)


@pytest.mark.parametrize("overrides", [dict(), dict(lora_rank=4, divergence="js", regression_weight=0.5)],
                         ids=["full-unet", "lora-js-regression"])
def test_resume_is_bit_exact(tmp_path, overrides):
    config = small_config(**overrides)
    straight = trainer_for(config)
    list(straight.train(4, progress=False))

    first = trainer_for(config)
    list(first.train(2, checkpoint_dir=tmp_path / "ckpt", checkpoint_every=1, progress=False))
    assert [p.name for p in complete_checkpoints(tmp_path / "ckpt")] == ["step-00000002"]  # older ones removed
    resumed = trainer_for(config)
    resumed.load_checkpoint(latest_checkpoint(tmp_path / "ckpt"))
    assert resumed.step_count == 2
    list(resumed.train(4, progress=False))

    for a, b in ((straight.student(), resumed.student()), (straight.critic, resumed.critic)):
        pa, pb = params(a), params(b)
        assert pa.keys() == pb.keys()
        assert all(torch.equal(pa[k], pb[k]) for k in pa), "resumed run diverged"


@pytest.fixture
def saved(tmp_path):
    """A complete checkpoint at step 1, and the trainer that wrote it."""
    trainer = trainer_for(small_config())
    trainer.step()
    return trainer.save_checkpoint(tmp_path / "ckpt"), trainer


def test_resume_refuses_other_settings_and_process_counts(saved):
    folder, _ = saved
    with pytest.raises(CheckpointError, match=r"different settings \(ttur\)"):
        trainer_for(small_config(ttur=3)).load_checkpoint(folder)
    manifest = json.loads((folder / "checkpoint.json").read_text())
    (folder / "checkpoint.json").write_text(json.dumps({**manifest, "processes": 2}))
    with pytest.raises(CheckpointError, match="saved by 2 process"):
        trainer_for(small_config()).load_checkpoint(folder)


@pytest.mark.parametrize("damage, message", [
    (lambda f: (f / "rng-0.pt").unlink(), "rng-0.pt is missing"),
    (lambda f: (f / "checkpoint.json").unlink(), "checkpoint.json is missing"),
    (lambda f: (f / "checkpoint.json").write_text("{not json"), "checkpoint.json is damaged"),
    (lambda f: (f / "critic.safetensors").write_bytes(b""), r"critic.safetensors has 0 bytes"),
    (lambda f: (f / "optimizers.pt").write_bytes((f / "optimizers.pt").read_bytes()[:1000]),
     r"optimizers.pt has 1,000 bytes"),
], ids=["missing-file", "no-manifest", "bad-manifest", "zero-byte", "truncated"])
def test_damaged_checkpoints_are_named_not_tracebacks(saved, damage, message):
    folder, _ = saved
    damage(folder)
    with pytest.raises(CheckpointError, match=message) as e:
        trainer_for(small_config()).load_checkpoint(folder)
    assert str(folder) in str(e.value)


def test_a_file_from_another_checkpoint_is_foreign(saved, tmp_path):
    folder, trainer = saved
    trainer.step()
    other = trainer.save_checkpoint(tmp_path / "other")  # the same run one step later
    shutil.copyfile(other / "rng-0.pt", folder / "rng-0.pt")
    manifest = json.loads((folder / "checkpoint.json").read_text())
    manifest["files"]["rng-0.pt"] = (folder / "rng-0.pt").stat().st_size  # even with a matching manifest
    (folder / "checkpoint.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="rng-0.pt does not belong to this checkpoint .*copied in"):
        trainer_for(small_config()).load_checkpoint(folder)


def test_an_interrupted_save_leaves_the_previous_checkpoint_newest(saved):
    """A kill while writing step 2 leaves only its partial folder, which resuming never reads."""
    folder, trainer = saved
    partial = folder.parent / ".step-00000002.partial"
    partial.mkdir()
    (partial / "generator.safetensors").write_bytes(b"half")
    assert latest_checkpoint(folder.parent) == folder
    trainer.step()
    assert trainer.save_checkpoint(folder.parent).name == "step-00000002"
    assert [p.name for p in folder.parent.iterdir()] == ["step-00000002"]  # partial and step 1 cleaned up


def test_config_rejects_bad_settings():
    with pytest.raises(ValueError, match="strictly decreasing"):
        DistillConfig(trained_timesteps=(499, 999))
    with pytest.raises(ValueError, match="density ratio"):
        DistillConfig(divergence="js", gan_generator_weight=0, gan_discriminator_weight=0)
    with pytest.raises(DMD2Error, match="real images"):
        DistillTrainer(tiny_sd15_unet(), type("NoReal", (RandomData,), {"real_batch": lambda *a: None})(),
                       small_config())


def test_backward_simulation_feeds_the_sampler_s_own_rollout():
    """Step k's input is the sampler's k-step run on the trained timesteps, re-noised to trained[k]."""
    from sampler.sampling import sample_dmd2
    from sampler.schedule import sigmas_for_timesteps

    trainer = trainer_for(small_config(trained_timesteps=(999, 749, 499)))
    cond = trainer.data.cond(["red"])
    for _ in range(6):  # until the draw picks the last step
        state = trainer.rng.get_state()
        x, sigma = trainer.simulate_inputs(cond, 1)
        if math.isclose(float(sigma[0]), float(sigmas_for_timesteps((499,))[0]), rel_tol=1e-6):
            break
    else:
        pytest.fail("never drew the last trained step")
    trainer.rng.set_state(state)  # the step was drawn from shared_rng, the same in every process
    noise = torch.randn((1, 4, 8, 8), generator=trainer.rng)
    sigmas = sigmas_for_timesteps((999, 749, 499)).float()[:-1]
    expected = sample_dmd2(lambda x, s, **c: predict_x0(trainer.student(), x, s, c), noise * sigmas[0], sigmas,
                           extra_args=cond, disable=True,
                           noise_sampler=lambda *_: torch.randn((1, 4, 8, 8), generator=trainer.rng),
                           pure_noise=True)
    assert torch.equal(x, expected)


def test_without_backward_simulation_inputs_are_noised_real_images():
    """DMD2's ablation: the UNet sees sqrt(abar_t) x_real + sqrt(1 - abar_t) noise at a trained timestep t drawn per
    sample (DDPM's forward process, re-derived here from alphas_cumprod), and the noise itself at the first one."""
    from sampler.schedule import scaled_linear_alphas_cumprod

    trained = (999, 749, 499)
    trainer = trainer_for(small_config(trained_timesteps=trained, backward_simulation=False))
    state = trainer.rng.get_state()
    x, sigma, prompts = trainer.forward_diffused_inputs(32)
    trainer.rng.set_state(state)
    real, real_prompts = trainer.data.real_batch(32, trainer.rng)
    k = torch.randint(len(trained), (32,), generator=trainer.rng)
    noise = torch.randn((32, 4, 8, 8), generator=trainer.rng)
    assert prompts == real_prompts and set(k.tolist()) == {0, 1, 2}
    abar = scaled_linear_alphas_cumprod()[torch.tensor(trained)[k]].float().view(-1, 1, 1, 1)
    expected = torch.where((k == 0).view(-1, 1, 1, 1), noise, abar.sqrt() * real + (1 - abar).sqrt() * noise)
    unet_input = x / (1 + sigma.view(-1, 1, 1, 1) ** 2).sqrt()
    assert torch.allclose(unet_input, expected, atol=1e-5)
    logs = list(trainer.train(2, progress=False))
    assert all(math.isfinite(v) for step in logs for v in step.values())
    with pytest.raises(DMD2Error, match="noises real images"):
        DistillTrainer(tiny_sd15_unet(), type("NoReal", (RandomData,), {"real_batch": lambda *a: None})(),
                       small_config(backward_simulation=False, gan_generator_weight=0, gan_discriminator_weight=0))


def test_regression_pretraining_fits_the_pairs_from_pure_noise_at_the_conditioning_timestep():
    """The pretrained copy's one-step x0 from a pair's noise, re-derived from the UNet's epsilon at t=399 on the raw
    noise (x0 = (x - sqrt(1 - abar) eps) / sqrt(abar)), moves towards the pair's target; the teacher is untouched."""
    from distill.pretrain import regression_pretrain
    from sampler.schedule import scaled_linear_alphas_cumprod

    data, teacher = RandomData(), tiny_sd15_unet()
    before = params(teacher)
    noise, target = data.pairs
    cond = data.cond(["red"] * len(noise))
    abar = float(scaled_linear_alphas_cumprod()[399])

    def pair_error(unet) -> float:
        with torch.no_grad():
            eps = unet(noise, torch.full((len(noise),), 399), **cond, return_dict=False)[0]
        return float(((noise - (1 - abar) ** 0.5 * eps) / abar**0.5 - target).square().mean())

    student = regression_pretrain(teacher, data, 399, steps=30, batch_size=4, lr=1e-3, progress=False)
    assert pair_error(student) < 0.8 * pair_error(teacher)
    assert all(torch.equal(v, before[k]) for k, v in params(teacher).items())
    assert not any(p.requires_grad for p in student.parameters())


# --- export round trip ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lora_student():
    torch.manual_seed(0)
    student = build_generator(tiny_sd15_unet(), lora_rank=4)
    with torch.no_grad():
        for name, p in student.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.2)
    return student


def test_lora_export_is_dmd2_s_kohya_format_and_carries_the_timesteps(tmp_path, lora_student):
    path = export_lora(lora_student, tmp_path / "student_lora.safetensors", (999, 749, 499, 249), torch.float32)
    info = inspect_file(path)
    assert (info.kind, info.format) == ("lora", "kohya")
    assert info.trained_timesteps == (999, 749, 499, 249)
    assert info.timesteps_source == f"{TRAINED_TIMESTEPS_KEY} metadata of student_lora.safetensors"
    sd = load_state_dict(path)
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight" in sd
    assert "lora_unet_up_blocks_1_resnets_0_conv1.lora_up.weight" in sd
    assert sd["lora_unet_mid_block_resnets_0_conv1.alpha"].item() == 0.5  # rank 4 -> alpha 4 / 8


def test_exported_lora_loads_through_diffusers_and_matches_the_student(tmp_path, lora_student):
    """The kohya file, read by our loader and applied by diffusers' LoRA loader as the pipeline does, reproduces the
    student exactly (up to float rounding)."""
    from diffusers import StableDiffusionPipeline

    path = export_lora(lora_student, tmp_path / "student_lora.safetensors", (999,), torch.float32)
    fresh = tiny_sd15_unet()
    state_dict, alphas = StableDiffusionPipeline.lora_state_dict(load_state_dict(path))
    fresh.load_lora_adapter(state_dict, network_alphas=alphas, adapter_name="x", prefix="unet")
    x, t, c = torch.randn(2, 4, 8, 8), torch.tensor([999, 500]), torch.randn(2, 3, 16)
    with torch.no_grad():
        assert torch.allclose(fresh(x, t, encoder_hidden_states=c).sample,
                              lora_student(x, t, encoder_hidden_states=c).sample, atol=1e-5)


def test_full_unet_export_samples_like_the_student(tmp_path, lora_student):
    from sampler.sampling import sample_dmd2
    from sampler.denoiser import DiffusersDenoiser
    from sampler.noise import SeededNoise
    from sampler.plans import timesteps_for
    from sampler.schedule import sigmas_for_timesteps

    path = export_unet(lora_student, tmp_path / "student_unet.safetensors", (999, 499), torch.float32)
    info = inspect_file(path)
    assert (info.kind, info.format, info.trained_timesteps) == ("unet", "diffusers", (999, 499))
    loaded = tiny_sd15_unet()
    loaded.load_state_dict(load_state_dict(path))
    sigmas = sigmas_for_timesteps(timesteps_for(2, info.trained_timesteps))
    cond = {"encoder_hidden_states": torch.randn(1, 3, 16)}

    def run(unet):
        noise = SeededNoise([5], (4, 8, 8))
        return sample_dmd2(DiffusersDenoiser(unet), noise.draw() * sigmas[0], sigmas, cond, disable=True,
                           noise_sampler=noise, pure_noise=True)

    with torch.no_grad():
        assert torch.allclose(run(loaded), run(merged_unet(lora_student)), atol=1e-5)
        assert not torch.allclose(run(loaded), run(tiny_sd15_unet()), atol=1e-3)  # the LoRA is really in it


def test_full_students_have_no_lora_to_export():
    with pytest.raises(DMD2Error, match="export it as a UNet"):
        kohya_lora_state_dict(build_generator(tiny_sd15_unet()))


# --- command line -----------------------------------------------------------------------------------------------


def test_train_command_distils_a_diffusers_pipeline_and_resumes(tmp_path, fresh_accelerate_state):
    """`python -m distill train` on a (tiny) SDXL pipeline folder: trains, checkpoints, exports a LoRA our loaders
    and the standalone pipeline apply, and a rerun with more steps resumes from the checkpoint."""
    from distill.cli import main
    from sampler.app.pipeline import apply_dmd2_weights, generate_latents, sdxl_conditioning
    from sampler.models.tiny import tiny_sdxl_pipeline

    tiny_sdxl_pipeline(tmp_path / "tok").save_pretrained(tmp_path / "teacher")
    (tmp_path / "prompts.txt").write_text("# training prompts\nabc\n\nxyz\n")
    args = [str(tmp_path / "teacher"), "--prompts", str(tmp_path / "prompts.txt"), "--output", str(tmp_path / "out"),
            "--timesteps", "999,499", "--no-gan", "--lora-rank", "4", "--steps", "2", "--lr-generator", "1e-3"]
    assert main(["train", *args]) == 0
    info = inspect_file(tmp_path / "out" / "student_lora.safetensors")
    assert (info.kind, info.format, info.trained_timesteps) == ("lora", "kohya", (999, 499))
    assert main(["train", *args[:-3], "3", "--lr-generator", "1e-3"]) == 0
    assert latest_checkpoint(tmp_path / "out" / "checkpoints").name == "step-00000003"

    pipe = tiny_sdxl_pipeline(tmp_path / "tok2")
    apply_dmd2_weights(pipe, tmp_path / "out" / "student_lora.safetensors", info)
    cond = sdxl_conditioning(pipe, ["abc"], 64, 64)
    latents = generate_latents(pipe.unet, cond, info.trained_timesteps, [0], 64, 64, progress=False)
    assert latents.shape == (1, 4, 8, 8) and torch.isfinite(latents).all()


def test_train_command_explains_bad_input(tmp_path, capsys):
    from distill.cli import main

    (tmp_path / "empty.txt").write_text("\n# nothing\n")
    assert main(["train", str(tmp_path), "--prompts", str(tmp_path / "empty.txt")]) == 1
    assert "has no prompts" in capsys.readouterr().err
    (tmp_path / "p.txt").write_text("a cat\n")
    assert main(["train", str(tmp_path / "nowhere"), "--prompts", str(tmp_path / "p.txt")]) == 1
    assert "no such file or folder" in capsys.readouterr().err
    (tmp_path / "folder").mkdir()
    assert main(["train", str(tmp_path / "folder"), "--prompts", str(tmp_path / "p.txt")]) == 1
    assert "cannot load a diffusers pipeline from" in capsys.readouterr().err
