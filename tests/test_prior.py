"""Autoregressive prior over VQ-VAE codes of real images (scikit-learn's digits)."""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path

import PIL.Image
import pytest
import torch
from helpers import load_script, reset_accelerate_state, tiny_model
from transformers import AutoModelForCausalLM, GPT2LMHeadModel, LlamaForCausalLM

from latentcode.prior import (
    PRIOR_ARCHITECTURES,
    build_prior,
    encode_to_sequences,
    prior_loss,
    sample_images,
    sample_sequences,
    token_mapping,
)

CODEBOOK_SIZE = 32
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def digit_codes(digits):
    """A tiny VQ-VAE and the code sequences `[320, 64]` of 320 real digits (256 train, 64 held out).

    The codebook is initialised from encoder outputs of other digits (data-dependent init, as
    k-means init does) so that the codes carry image structure without training the VQ-VAE.
    """
    vqvae = tiny_model("vqvae", in_channels=1, codebook_size=CODEBOOK_SIZE)
    with torch.no_grad():
        latents = vqvae.encode(digits[-256:]).latents.permute(0, 2, 3, 1).reshape(-1, vqvae.config.codebook_dim)
        chosen = torch.randperm(len(latents), generator=torch.Generator().manual_seed(0))[:CODEBOOK_SIZE]
        vqvae.quantizer.codebook.copy_(latents[chosen])
    sequences = torch.cat(list(encode_to_sequences(vqvae, digits[:320].split(64))))
    return vqvae, sequences


def unigram_entropy(sequences: torch.Tensor) -> float:
    """Nats per code of the best model that ignores context: the codes' empirical entropy."""
    probabilities = torch.bincount(sequences.flatten(), minlength=CODEBOOK_SIZE).float() / sequences.numel()
    probabilities = probabilities[probabilities > 0]
    return -(probabilities * probabilities.log()).sum().item()


@pytest.mark.parametrize(
    "architecture, model_class", [("gpt2", GPT2LMHeadModel), ("llama", LlamaForCausalLM)], ids=["gpt2", "llama"]
)
def test_prior_learns_digit_codes_and_samples_decodable_images(digit_codes, architecture, model_class):
    vqvae, sequences = digit_codes
    train, held_out = sequences[:256], sequences[256:]
    assert sequences.shape == (320, 64) and sequences.unique().numel() > CODEBOOK_SIZE // 2

    torch.manual_seed(0)
    prior = build_prior(
        CODEBOOK_SIZE, vqvae.latent_shape(), architecture=architecture, hidden_size=64, num_layers=2, num_heads=2
    )
    assert isinstance(prior, model_class) and prior.config.vocab_size == CODEBOOK_SIZE + 1
    mapping = token_mapping(prior.config)
    optimizer = torch.optim.AdamW(prior.parameters(), lr=3e-3)
    with torch.no_grad():
        initial = prior_loss(prior.eval(), held_out, mapping).item()
    assert abs(initial - math.log(CODEBOOK_SIZE + 1)) < 0.3  # untrained: close to uniform

    prior.train()
    for step in range(30):
        batch = train[(step % 8) * 32 : (step % 8 + 1) * 32]
        loss = prior_loss(prior, batch, mapping)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        final = prior_loss(prior.eval(), held_out, mapping).item()
    # Held-out loss drops, and below what code frequencies alone explain: the prior uses context.
    assert final < initial - 0.3
    assert final < unigram_entropy(train)

    codes = sample_sequences(prior, 3, seed=0)
    assert codes.shape == (3, 64) and codes.dtype == torch.long
    assert 0 <= codes.min() and codes.max() < CODEBOOK_SIZE
    assert torch.equal(codes, sample_sequences(prior, 3, seed=0))  # seeded
    images = sample_images(prior, vqvae, 3, seed=0)
    assert images.shape == (3, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(images, vqvae.decode_indices(codes.view(3, 8, 8)).sample)


def test_saved_prior_samples_the_same(tmp_path, digit_codes):
    vqvae, _ = digit_codes
    torch.manual_seed(0)
    prior = build_prior(CODEBOOK_SIZE, vqvae.latent_shape(), hidden_size=32, num_layers=1, num_heads=2).eval()
    prior.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.config.latent_shape == [8, 8]
    assert token_mapping(loaded.config) == token_mapping(prior.config)
    assert torch.equal(sample_sequences(loaded, 2, seed=3), sample_sequences(prior, 2, seed=3))


def test_prior_config_errors():
    with pytest.raises(ValueError, match="architecture must be one of"):
        build_prior(16, (4, 4), architecture="mamba")
    with pytest.raises(ValueError, match="divisible by num_heads"):
        build_prior(16, (4, 4), hidden_size=30, num_heads=4)


def test_train_prior_script_names_the_architectures_that_build_prior_accepts():
    """The script names them without importing transformers (for --help); they must stay the originals."""
    assert load_script("training/train_prior.py").PRIOR_ARCHITECTURE_NAMES == PRIOR_ARCHITECTURES


def test_train_prior_script(tmp_path, fresh_accelerate_state):
    """training/train_prior.py end to end on streamed real digits: prior, samples, model card."""
    vqvae_dir, output_dir = tmp_path / "vqvae", tmp_path / "prior"
    tiny_model("vqvae", in_channels=1, codebook_size=CODEBOOK_SIZE).save_pretrained(vqvae_dir)
    argv = [
        "--pretrained_model_name_or_path", str(vqvae_dir), "--output_dir", str(output_dir),
        "--dataset_name", "builtin:digits", "--max_train_steps", "6", "--train_batch_size", "8",
        "--validation_steps", "3", "--num_validation_images", "16", "--num_samples", "4",
        "--hidden_size", "32", "--num_layers", "1", "--num_heads", "2", "--lr_warmup_steps", "1",
    ]  # fmt: skip
    # In this process, through the script's command line and `main` (the second-stage kill test
    # runs the script as a program): no second interpreter start for the same code.
    script = load_script("training/train_prior.py")
    script.main(script.parse_args(argv))

    prior = AutoModelForCausalLM.from_pretrained(output_dir)
    assert prior.config.latent_shape == [8, 8] and prior.config.vqvae_name_or_path == str(vqvae_dir)
    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert metrics["kind"] == "prior" and metrics["details"]["global_step"] == 6
    assert 0 < metrics["metrics"]["nll"] < 2 * math.log(CODEBOOK_SIZE + 1)
    assert PIL.Image.open(output_dir / "samples.png").size == (2 * (16 + 4),) * 2  # 2 x 2 grid, 2-px padding
    assert sorted(p.name for p in (output_dir / "samples").iterdir()) == ["step_000003.png", "step_000006.png"]
    card = (output_dir / "README.md").read_text()
    assert "$" not in card.split("## Usage")[0] and f"{metrics['metrics']['nll']:.4f}" in card


def test_train_prior_takes_a_config_file_checkpoints_and_resumes_exactly(tmp_path):
    """The prior script shares train.py's machinery: --config YAML (flags override it),
    --checkpointing_steps, --resume_from_checkpoint, --validation_split, --report_to."""
    import importlib.util
    import shutil

    import yaml
    from safetensors.torch import load_file

    from latentcode.training.config import load_config

    spec = importlib.util.spec_from_file_location("train_prior", REPO / "training" / "train_prior.py")
    script = importlib.util.module_from_spec(spec)
    sys.modules["train_prior"] = script  # dataclasses look their module up
    spec.loader.exec_module(script)
    vqvae_dir = tmp_path / "vqvae"
    tiny_model("vqvae", in_channels=1, codebook_size=CODEBOOK_SIZE).save_pretrained(vqvae_dir)
    options = dict(
        pretrained_model_name_or_path=str(vqvae_dir), dataset_name="builtin:digits", validation_split="train",
        max_train_steps=99, train_batch_size=4, num_validation_images=4, num_samples=2, hidden_size=16,
        num_layers=1, num_heads=2, lr_warmup_steps=1, validation_steps=0, checkpointing_steps=2, report_to="none",
    )  # fmt: skip
    nested = load_config(None, script.PriorConfig, **options).to_dict()  # the YAML's form: by group
    (tmp_path / "prior.yaml").write_text(yaml.safe_dump(nested))

    def run(output_dir, *flags):
        reset_accelerate_state()
        argv = ["--config", str(tmp_path / "prior.yaml"), "--output_dir", str(output_dir), "--max_train_steps", "4"]
        config = script.parse_args([*argv, *flags])
        assert (
            config.optimization.max_train_steps == 4 and config.optimization.train_batch_size == 4
        )  # flags over the YAML
        return script.main(config)

    environment_threads = torch.get_num_threads()
    run(tmp_path / "uninterrupted")
    assert sorted(p.name for p in (tmp_path / "uninterrupted").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    shutil.copytree(tmp_path / "uninterrupted" / "checkpoint-2", tmp_path / "resumed" / "checkpoint-2")
    run(tmp_path / "resumed", "--resume_from_checkpoint", "latest")
    assert torch.get_num_threads() == environment_threads
    expected = load_file(tmp_path / "uninterrupted" / "model.safetensors")
    resumed = load_file(tmp_path / "resumed" / "model.safetensors")
    assert expected.keys() == resumed.keys()
    for key in expected:
        assert torch.equal(expected[key], resumed[key]), key


@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
def test_prior_loss_is_transformers_causal_lm_loss_without_its_warning(architecture):
    """`prior_loss` equals the loss transformers computes from `labels`, and (unlike passing labels
    to GPT-2, whose class name maps to no loss type) logs no `loss_type=None` warning."""
    torch.manual_seed(0)
    prior = build_prior(16, (4, 4), architecture=architecture, hidden_size=32, num_layers=1, num_heads=2)
    mapping = token_mapping(prior.config)
    codes = torch.randint(0, 16, (3, 16))
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    library_logger = logging.getLogger("transformers")
    logging.Logger.warning_once.cache_clear()  # transformers warns once per process
    library_logger.addHandler(handler)
    try:
        loss = prior_loss(prior, codes, mapping)
    finally:
        library_logger.removeHandler(handler)
    assert not [r.getMessage() for r in records if "loss_type" in r.getMessage()]
    tokens = mapping.codes_to_tokens(codes)
    torch.testing.assert_close(loss, prior(input_ids=tokens, labels=tokens).loss, rtol=1e-6, atol=1e-6)
    loss.backward()  # the gradient reaches the model
    assert prior.lm_head.weight.grad is not None
