"""Training recipes: the decoder-only fine-tuning phase (`decoder_finetune_fraction`), a short
real-data run where the CIFAR-10 VQ preset's recipe beats diffusers' own quantizer, and the VAE
pair of `benchmarks/bench_recipes.py` (diffusers' AutoencoderKL on latentcode's VAE objective)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from helpers import load_script, require_shared_dataset, reset_accelerate_state
from safetensors.torch import load_file
from test_training import tiny_config

from latentcode import VAEModel, VQVAEModel
from latentcode.evaluation.metrics import psnr, ssim
from latentcode.training import build_engine, load_config, train
from latentcode.training.autoencoder_task import DECODER_SIDE

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")

# A VQ-VAE run whose last half trains only the decoder: the weight EMA and the codebook's EMA,
# k-means and dead-code restarts (the preset's quantizer) all on, so all must stop or stay put.
DECODER_PHASE = dict(max_train_steps=8, decoder_finetune_fraction=0.5, use_ema=True, ema_decay=0.9)


def _is_decoder_side(key: str) -> bool:
    return key.split(".")[0] in DECODER_SIDE


def _record(engine, what) -> list:
    """`what(engine)` after every step of `engine`'s run (filled as it runs)."""
    values, train_step = [], engine.train_step

    def recording():
        logs = train_step()
        values.append(what(engine))
        return logs

    engine.train_step = recording
    return values


def _model_state(engine) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in engine.task.unwrapped.state_dict().items()}


@pytest.mark.parametrize("fraction", [1.0, -0.1, 1.5])
def test_decoder_finetune_fraction_outside_0_1_says_what_is_allowed(tmp_path, fraction):
    with pytest.raises(ValueError, match=r"decoder_finetune_fraction must be in \[0, 1\) .*got " + str(fraction)):
        tiny_config(tmp_path, decoder_finetune_fraction=fraction)


def test_decoder_phase_freezes_encoder_and_codebook_and_keeps_the_codes(tmp_path):
    engine = build_engine(tiny_config(tmp_path, **DECODER_PHASE))
    states = _record(engine, _model_state)
    engine.run()
    assert len(states) == 8
    # Steps 1-4 train everything; from step 5 on the encoder side is frozen at its EMA weights.
    encoder_keys = [k for k in states[0] if not _is_decoder_side(k)]
    decoder_keys = [k for k in states[0] if _is_decoder_side(k)]
    assert any(k.startswith("quantizer.") for k in encoder_keys) and any(k.startswith("encoder.") for k in encoder_keys)
    assert any(not torch.equal(states[0][k], states[3][k]) for k in encoder_keys if k.startswith("encoder."))
    for step in range(5, 8):
        for key in encoder_keys:
            assert torch.equal(states[4][key], states[step][key]), (step, key)
    assert all(not torch.equal(states[4][k], states[7][k]) for k in decoder_keys if k.endswith("conv_out.weight"))
    saved = load_file(tmp_path / "run" / "model.safetensors")  # the final (EMA) model
    for key in encoder_keys:
        if key in saved:
            assert torch.equal(saved[key], states[7][key]), key
    # The codes of fixed images: the same from the switch to the saved model.
    images = engine.task.validation_images
    at_switch = VQVAEModel.from_pretrained(tmp_path / "run")
    final_indices = at_switch.encode(images).indices
    at_switch.load_state_dict(states[4])
    torch.testing.assert_close(at_switch.encode(images).indices, final_indices, rtol=0, atol=0)
    assert any(not torch.equal(saved[k], states[4][k]) for k in decoder_keys if k in saved)


def test_decoder_phase_starts_at_the_fitted_step_count_of_a_time_budget_and_stays(tmp_path):
    engine = build_engine(tiny_config(tmp_path, max_train_time=5, decoder_finetune_fraction=0.25))
    # Simulated step times: 1/8 s, then 1/16 s once the decoder-only phase has begun (its steps
    # skip the encoder's backward pass), so the re-fits then raise the step count.
    costs = []

    def clock():
        while len(costs) < engine.global_step:
            costs.append(1 / 16 if engine.task.decoder_only else 1 / 8)
        return sum(costs[: engine.global_step])

    engine.clock = clock
    phases = _record(engine, lambda engine_: engine_.task.decoder_only)
    totals = _record(engine, lambda engine_: engine_.schedule.total_steps)
    engine.run()
    # First fitted after 25 steps (3.125 s) to 25 + 1.875 s / (1/8 s) = 40 steps: the phase is the last 10.
    assert totals[24] == 40 and phases.index(True) == 40 - math.floor(0.25 * 40)
    # The cheaper steps raise the count; the phase, once begun, stays to the end of the run.
    total = engine.schedule.total_steps
    assert total > 40 and len(phases) == total and phases == [False] * 30 + [True] * (total - 30)
    assert sum(costs) == pytest.approx(5.0, abs=1 / 16)


@pytest.mark.parametrize("checkpoint", [2, 6], ids=["before-the-switch", "after-the-switch"])
def test_resume_across_the_decoder_phase_is_bit_identical(tmp_path, checkpoint):
    values = dict(DECODER_PHASE, checkpointing_steps=2, random_flip=True, center_crop=False)
    train(tiny_config(tmp_path, "reference", **values))
    reset_accelerate_state()
    saved = tmp_path / "reference" / f"checkpoint-{checkpoint}"
    train(tiny_config(tmp_path, "resumed", **values, resume_from_checkpoint=str(saved)))
    for folder in ("", "checkpoint-8"):  # the final (EMA) model and the live weights
        reference = load_file(tmp_path / "reference" / folder / "model.safetensors")
        resumed = load_file(tmp_path / "resumed" / folder / "model.safetensors")
        assert reference.keys() == resumed.keys()
        for key in reference:
            torch.testing.assert_close(reference[key], resumed[key], rtol=0, atol=0, msg=key)


def test_decoder_phase_off_by_default_and_on_a_step_budget_starts_where_stated(tmp_path):
    from latentcode.training.autoencoder_task import decoder_finetune_start

    config = tiny_config(tmp_path)
    assert config.optimization.decoder_finetune_fraction == 0.0 and decoder_finetune_start(config, 100) is None
    config = tiny_config(tmp_path, decoder_finetune_fraction=0.3)
    assert decoder_finetune_start(config, 100) == 70 and decoder_finetune_start(config, None) is None


# -- the CIFAR-10 VQ preset against diffusers' own quantizer, on real images ----------------------

# The one-core preset scaled down to seconds: its recipe (quantizer, weight EMA, schedule shape,
# optimiser, precision), a narrower backbone and fewer, smaller steps, the same for both rows.
SCALED = dict(model=dict(block_out_channels=[8, 16, 16], layers_per_block=1, norm_num_groups=4))
STEPS, BATCH, WARMUP = 40, 16, 4
MARGIN_DB = 0.5  # measured: 14.32 vs 12.75 dB (1,000 test images, one thread)


def test_vq_preset_recipe_beats_diffusers_quantizer_on_cifar10_at_equal_steps(tmp_path):
    cifar = require_shared_dataset("cifar10")
    bench = load_script("benchmarks/bench_recipes.py")
    preset = bench.CONFIGS / "vqvae_cifar10_cpu.yaml"
    schedule = dict(max_train_steps=STEPS, train_batch_size=BATCH, lr_warmup_steps=WARMUP)
    config = load_config(
        preset,
        **SCALED,
        **schedule,
        output_dir=str(tmp_path / "latentcode"),
        train_data_dir=str(cifar / "train"),
        validation_split=None,
        shuffle_buffer_size=STEPS * BATCH,
        num_validation_images=16,
        checkpointing_steps=0,
        validation_steps=0,
        report_to="none",
    )
    ours = bench.Row("latentcode", 8192, 1, train(config).model, is_latentcode=True)
    values = bench.preset(preset)
    values.update(schedule)
    values["model"].update(SCALED["model"])
    peer = bench.peer_row("diffusers VQModel", "diffusers", values)
    train_images = bench.load_images(None, str(cifar / "train"), "train", "img", STEPS * BATCH)
    bench.train_peer(peer, values, bench.peer_batches(train_images, BATCH, seed=0), steps=STEPS)
    assert peer.steps == STEPS
    test_images = bench.load_images(None, str(cifar / "test"), "test", "img", 1000)
    ours_psnr, peer_psnr = (bench.evaluate(row, test_images)["psnr"] for row in (ours, peer))
    print(f"test PSNR after {STEPS} steps: latentcode preset {ours_psnr:.2f} dB, diffusers VQModel {peer_psnr:.2f} dB")
    assert ours_psnr > peer_psnr + MARGIN_DB, (ours_psnr, peer_psnr)


# -- the VAE pair: diffusers' AutoencoderKL on latentcode's VAE objective ---------------------------

# The one-core VAE preset's shape at 8/16/16, a KL weight large enough that a wrong KL scale shows
# in the loss, and a KL warm-up to check its factor.
VAE_VALUES = dict(
    model_family="vae",
    model=dict(
        block_out_channels=[8, 16, 16],
        layers_per_block=1,
        norm_num_groups=4,
        mid_block_add_attention=False,
        latent_channels=4,
        kl_weight=0.5,
    ),
    kl_warmup_steps=10,
)


def _vae_pair(bench):
    """The AutoencoderKL peer of `VAE_VALUES` and latentcode's `VAEModel` with its weights and KL
    weight (diffusers' config has no KL weight: it is given again)."""
    peer = bench.vae_peer_row("diffusers AutoencoderKL", VAE_VALUES)
    model = VAEModel.from_diffusers(peer.model, kl_weight=VAE_VALUES["model"]["kl_weight"]).train()
    ours = bench.VAERow("latentcode", model, True, peer.objective)
    return peer, ours


def test_autoencoderkl_peer_loss_is_latentcode_vae_objective_on_the_same_weights():
    bench = load_script("benchmarks/bench_recipes.py")
    peer, ours = _vae_pair(bench)
    assert type(peer.model).__name__ == "AutoencoderKL" and peer.objective.kl_weight == 0.5
    pixels = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    reference = ours.model(pixels, generator=torch.Generator().manual_seed(1))  # the same posterior noise
    kl_term = 0.5 * reference.kl / (3 * 32 * 32)  # KL: nats per image, batch mean
    assert kl_term > 1e-3 * reference.loss  # large enough that a wrong scale would show
    # After the warm-up: latentcode's own `model(x).loss`; during it (step 3 of 10): 0.3 of the KL term.
    for step, expected in ((10, reference.loss), (3, reference.reconstruction_loss + 0.3 * kl_term)):
        peer.steps = step
        loss = peer.loss(pixels, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-7, msg=f"step {step}")


def test_vae_rows_are_scored_on_the_posterior_mean_with_their_kl_in_nats_per_image():
    bench = load_script("benchmarks/bench_recipes.py")
    peer, ours = _vae_pair(bench)
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    pixels = bench.to_pixels(images)
    model = ours.model.eval()
    with torch.no_grad():
        encoded = model.encode(pixels)
        reconstruction = model.reconstruct_encoded(encoded).clamp(-1, 1)  # the decoded mean
        kl_nats = model.code_size(encoded).bits.float() * math.log(2)  # the family's rate, in nats
    model.train()
    expected = dict(psnr=float(psnr(reconstruction, pixels).mean()), ssim=float(ssim(reconstruction, pixels).mean()))
    for row in (peer, ours):
        scores = bench.evaluate(row, images, batch_size=4)
        assert scores.keys() == {"psnr", "ssim", "kl", "eval_images"}, row.name
        assert scores["eval_images"] == 6
        for key, value in {**expected, "kl": float(kl_nats.mean())}.items():
            assert scores[key] == pytest.approx(value, rel=1e-4), (row.name, key)
        assert bench.rate(row, images) == {"latent_shape": [4, 8, 8], "kl_weight": 0.5, "kl_warmup_steps": 10}


def test_recipe_table_gives_vae_rows_a_kl_column_and_their_own_rate():
    bench = load_script("benchmarks/bench_recipes.py")
    common = dict(note="n", kodak=None, load_average_before=[1.0] * 3, load_average_after=[2.0] * 3)
    training = dict(steps=10, train_seconds=60.4)
    vq = dict(name="vq", family="vqvae", bits_per_image=832, training=training, **common)
    vq["final"] = dict(psnr=20.0, ssim=0.5, usage=0.9, perplexity=10.0, eval_images=100)
    vae = dict(name="vae", family="vae", latent_shape=[4, 8, 8], kl_weight=1e-3, training=training, **common)
    vae["final"] = dict(psnr=25.0, ssim=0.8, kl=123.45, eval_images=100)
    table = bench.markdown([vae, vq], 60)
    assert "VQ: 832 bits/image (8x8 tokens, K = 8192); VAE: 8x8x4 latent, KL weight 0.001." in table
    assert "| usage | KL (nats/image) | Kodak PSNR (dB) |" in table
    rows = [line for line in table.splitlines() if line.startswith("| v")]
    assert rows == [  # VQ rows first
        "| vq | 10 | 60 | 100 | 20.00 | 0.500 | 90.0% | - | - | 1.0 -> 2.0 | n |",
        "| vae | 10 | 60 | 100 | 25.00 | 0.800 | - | 123.5 | - | 1.0 -> 2.0 | n |",
    ]
    only_vae = bench.markdown([vae], 60)
    assert "bits" not in only_vae and "KL weight 0.001" in only_vae and "KL (nats/image)" in only_vae
    only_vq = bench.markdown([vq], 60)
    assert "KL" not in only_vq and "| usage | Kodak PSNR (dB) |" in only_vq


def test_vae_recipes_take_a_vae_preset_and_say_so_otherwise():
    bench = load_script("benchmarks/bench_recipes.py")
    args = bench.parse(["--recipes", "latentcode vae cpu", "diffusers AutoencoderKL"])
    for name in ("latentcode vae cpu", "diffusers AutoencoderKL", *bench.DEFAULT_RECIPES):
        bench.check_recipe(name, bench.RECIPES[name], args)  # the presets of every row's family
    assert bench.peer_preset_values(bench.RECIPES["diffusers AutoencoderKL"], args)["model"]["kl_weight"] == 1e-3
    assert "latentcode vae cpu" not in bench.DEFAULT_RECIPES
    args = bench.parse(["--vae_peer_preset", "vqvae_cifar10_cpu.yaml"])
    with pytest.raises(ValueError, match="--vae_peer_preset vqvae_cifar10_cpu.yaml is a 'vqvae' preset"):
        bench.check_recipe("diffusers AutoencoderKL", bench.RECIPES["diffusers AutoencoderKL"], args)
    wrong = bench.Recipe("vae_cifar_cpu.yaml")  # family defaults to vqvae
    with pytest.raises(ValueError, match="is a 'vqvae' row, but vae_cifar_cpu.yaml trains a 'vae' model"):
        bench.check_recipe("wrong", wrong, args)


def test_latentcode_vae_row_is_the_vae_train_py_saved_on_the_presets_objective(tmp_path):
    cifar = require_shared_dataset("cifar10")
    bench = load_script("benchmarks/bench_recipes.py")
    recipe = bench.RECIPES["latentcode vae cpu"]
    scaled = ["--model.block_out_channels", "[8, 16, 16]", "--model.norm_num_groups", "4"]
    recipe = bench.Recipe(recipe.config, [*scaled, "--shuffle_buffer_size", "64"], family=recipe.family)
    args = SimpleNamespace(budget=2.0, train_data_dir=str(cifar / "train"), seed=0)
    row, curve, training = bench.train_latentcode("latentcode vae cpu", recipe, args, tmp_path)
    assert isinstance(row, bench.VAERow) and isinstance(row.model, VAEModel) and row.is_latentcode
    assert row.model.config.block_out_channels == [8, 16, 16] and training["steps"] >= 1
    saved = load_file(tmp_path / "latentcode_vae_cpu" / "model.safetensors")
    assert all(torch.equal(saved[key], value) for key, value in row.model.state_dict().items())
    images = bench.load_images(None, str(cifar / "test"), "test", "img", 4)
    # The preset's 8x8x4 latent and KL weight, no KL warm-up: what the run trained with.
    assert bench.rate(row, images) == {"latent_shape": [4, 8, 8], "kl_weight": 1e-3, "kl_warmup_steps": 0}
