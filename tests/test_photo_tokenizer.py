"""`training/train_photo_tokenizer.py`: a VQ-VAE made from a trained continuous autoencoder trains
its quantiser, projections and corrector on the source's latents through the one engine.

A tiny random `AutoencoderModel` (grey digits) -> its latents written by `latentcode-tokenize`'s
writer -> a few steps: the loss falls, the frozen encoder and decoder stay bit-identical, a
resume continues bit-identically (the fitted projections are not fitted again), the saved model
loads and tokenizes; a decoder fine-tune against the source's decoder (and its resume); images
encoded on the fly, a saved tokenizer continued, a VAE source; two
DDP processes end bit-identical (slow); the presets load with their rates. On taef2 from
../shared (skipped where absent; slow): a few steps on the photos lower the held-out latent loss.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from helpers import (
    SHARED,
    assert_preset_nests_by_group,
    load_script,
    require_shared,
    require_shared_dataset,
    reset_accelerate_state,
    tiny_model,
)
from safetensors.torch import load_file

from latentcode.modeling import AutoencoderModel, VQVAEModel
from latentcode.training.engine import Engine
from latentcode.training.photo_tokenizer_task import PhotoTokenizerTask, random_latent_crops

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")

SCRIPT = load_script("training/train_photo_tokenizer.py")
TINY_RUN = dict(
    max_train_steps=8, train_batch_size=8, num_validation_images=4, lr_warmup_steps=0, learning_rate=3e-3,
    validation_steps=0, checkpointing_steps=2, report_to="none", latent_crop=4, shuffle_buffer_size=40,
    num_validation_photos=2, source_licence="MIT (test)",
)  # fmt: skip
# 16 codes per position of the 4 x 4 latent crop, corrector of 8 channels.
TOKENIZER = dict(quantizer="vq", codebook_size=16, num_quantizers=None, corrector_config={"hidden_channels": 8})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A folder with `source` (a tiny grey AutoEncoder, f2, 4 latent channels), `source_images`
    (a one-shard parquet of 60 digits), `codes` (their latents, tokenised), `photos` (3 held-out
    grey images of 21 x 19 pixels) and `config.yaml` (a tiny run from the codes)."""
    import datasets

    from latentcode.data import load_image_stream
    from latentcode.tokenize import tokenize

    folder = tmp_path_factory.mktemp("photo-tokenizer")
    source = tiny_model("autoencoder", seed=1, in_channels=1)
    source.save_pretrained(folder / "source")
    images = [example["image"] for _, example in zip(range(63), load_image_stream("builtin:digits"))]
    table = datasets.Dataset.from_dict({"image": images[:60]}, features=datasets.Features({"image": datasets.Image()}))
    (folder / "source_images").mkdir()
    table.to_parquet(folder / "source_images" / "train-00000-of-00001.parquet")
    tokenize(source, folder / "codes", train_data_dir=str(folder / "source_images"), rows_per_shard=30, progress=False)
    (folder / "photos").mkdir()
    for index, image in enumerate(images[60:]):
        image.convert("L").resize((21, 19)).save(folder / "photos" / f"photo{index}.png")
    config = dict(
        TINY_RUN,
        pretrained_model_name_or_path=str(folder / "source"),
        latents_dataset=str(folder / "codes"),
        validation_data_dir=str(folder / "photos"),
        resolution=16,
        **TOKENIZER,
    )
    config_class = SCRIPT.PhotoTokenizerConfig
    from latentcode.training.config import load_config

    (folder / "config.yaml").write_text(yaml.safe_dump(load_config(None, config_class, **config).to_dict()))
    return folder


def engine(tiny: Path, output_dir: Path, *flags: str) -> Engine:
    config = SCRIPT.parse_args(["--config", str(tiny / "config.yaml"), "--output_dir", str(output_dir), *flags])
    reset_accelerate_state()
    return Engine(config, PhotoTokenizerTask(config))


def test_a_few_steps_lower_the_loss_keep_the_source_bit_identical_and_save_a_tokenizer(tiny, tmp_path):
    # The held-out latent loss after one step (the fits: projections, k-means codebook) and after 24.
    one_step = engine(tiny, tmp_path / "one", "--max_train_steps", "1").run().metrics["metrics"]
    # With the loss through the frozen decoder: gradients pass through the decoder and leave it unchanged.
    decoder_loss = ("--objective.decoder_loss_weight", "0.1", "--objective.decoder_loss_size", "4")
    engine(tiny, tmp_path / "run", "--max_train_steps", "24", "--checkpointing_steps", "0", *decoder_loss).run()
    report = json.loads((tmp_path / "run" / "metrics.json").read_text())
    metrics = report["metrics"]
    assert metrics["validation_latent_loss"] < 0.97 * one_step["validation_latent_loss"]

    source = AutoencoderModel.from_pretrained(tiny / "source")
    tokenizer = VQVAEModel.from_pretrained(tmp_path / "run")
    for name in ("encoder", "decoder"):
        expected, actual = getattr(source, name).state_dict(), getattr(tokenizer, name).state_dict()
        assert expected.keys() == actual.keys()
        for key in expected:
            assert torch.equal(expected[key], actual[key]), f"{name}.{key} changed in training"
    assert tokenizer.config.source_autoencoder["family"] == "autoencoder"

    pixels = torch.rand(2, 1, 16, 16) * 2 - 1
    indices = tokenizer.encode(pixels).indices
    assert indices.shape == (2, 8, 8) and int(indices.max()) < 16
    assert tokenizer.decode_indices(indices).sample.shape == pixels.shape

    # 10 x 9 latent positions of the 20 x 18 crop of each 21 x 19 photo, 4 bits each.
    assert metrics["bits_per_pixel"] == pytest.approx(10 * 9 * 4 / (20 * 18))
    assert metrics["tokens_per_image"] == 90 and 0 < metrics["codebook_usage"] <= 1
    assert {"psnr", "ssim", "validation_latent_loss"} <= metrics.keys()
    card = (tmp_path / "run" / "README.md").read_text()
    assert "MIT (test)" in card and str(tiny / "codes") in card and f"{metrics['psnr']:.2f}" in card
    assert "0.1 x the squared error through the frozen decoder on 2 crops of 4x4 latents" in card


def test_a_resumed_run_continues_bit_identically_without_fitting_again(tiny, tmp_path):
    steps = ["--max_train_steps", "4", "--checkpointing_steps", "2"]
    engine(tiny, tmp_path / "reference", *steps).run()
    shutil.copytree(tmp_path / "reference" / "checkpoint-2", tmp_path / "resumed" / "checkpoint-2")
    resumed = engine(tiny, tmp_path / "resumed", *steps, "--resume_from_checkpoint", "latest")
    assert resumed.task.fitted and resumed.batches.state_dict()["position"] == 2 * 8
    resumed.run()
    assert_same_saved_weights(tmp_path / "reference", tmp_path / "resumed")


FINETUNE = (
    "--objective.decoder_loss_weight", "1", "--objective.decoder_loss_size", "4", "--objective.finetune_decoder",
)  # fmt: skip


def assert_same_saved_weights(expected_dir, actual_dir) -> None:
    """Two saved models hold bit-identical tensors under the same names."""
    expected = load_file(expected_dir / "model.safetensors")
    actual = load_file(actual_dir / "model.safetensors")
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key


def assert_same_weights(module: torch.nn.Module, original: torch.nn.Module) -> None:
    expected, actual = original.state_dict(), module.state_dict()
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key


def decoder_changed(module: torch.nn.Module, original: torch.nn.Module) -> bool:
    reference = original.state_dict()
    return any(not torch.equal(tensor, reference[key]) for key, tensor in module.state_dict().items())


def test_finetune_decoder_trains_the_decoder_against_the_source_decoder_and_resumes(tiny, tmp_path):
    """--objective.finetune_decoder: the saved tokenizer's decoder changed and is recorded so (config
    and card), its encoder is the source's; the target is a frozen copy of the source's decoder,
    also after a resume (whose VQ-VAE holds the checkpoint's fine-tuned decoder), and the resumed
    run ends bit-identical. Continuing the fine-tuned tokenizer with a decoder loss is refused."""
    steps = ["--max_train_steps", "4", "--checkpointing_steps", "2"]
    reference = engine(tiny, tmp_path / "reference", *steps, *FINETUNE)
    reference.run()
    source = AutoencoderModel.from_pretrained(tiny / "source")
    assert_same_weights(reference.model.target_decoder.decoder, source.decoder)
    tokenizer = VQVAEModel.from_pretrained(tmp_path / "reference")
    assert tokenizer.config.source_autoencoder["decoder_finetuned"] is True
    assert tokenizer.config.source_autoencoder["frozen"] is True
    assert decoder_changed(tokenizer.decoder, source.decoder)
    assert_same_weights(tokenizer.encoder, source.encoder)
    card = (tmp_path / "reference" / "README.md").read_text()
    assert "the decoder fine-tuned on the quantised code against the source decoder's output" in card
    assert "1 x the squared error between the fine-tuned decoder's images of the estimate and the source" in card

    shutil.copytree(tmp_path / "reference" / "checkpoint-2", tmp_path / "resumed" / "checkpoint-2")
    resumed = engine(tiny, tmp_path / "resumed", *steps, *FINETUNE, "--resume_from_checkpoint", "latest")
    assert decoder_changed(resumed.model.vqvae.decoder, source.decoder)  # the checkpoint's
    assert_same_weights(resumed.model.target_decoder.decoder, source.decoder)
    resumed.run()
    assert_same_saved_weights(tmp_path / "reference", tmp_path / "resumed")

    continued = ["--pretrained_model_name_or_path", str(tmp_path / "reference"), "--max_train_steps", "1"]
    with pytest.raises(ValueError, match=r"decoder was fine-tuned already .* --objective.decoder_loss_weight 0"):
        engine(tiny, tmp_path / "refused", *continued, "--objective.decoder_loss_weight", "0.1")


def test_finetune_decoder_without_a_decoder_loss_is_refused_at_once(tiny):
    with pytest.raises(ValueError, match=r"needs objective.decoder_loss_weight > 0, got 0; give --objective.decod"):
        SCRIPT.parse_args(["--config", str(tiny / "config.yaml"), "--objective.finetune_decoder"])


def test_decoder_learning_rate_sets_the_fine_tuned_decoders_rate_on_the_runs_schedule(tiny, tmp_path):
    """--objective.decoder_learning_rate: the decoding side (decoder and the source's projection,
    exactly) is its own parameter group at that rate times the schedule's factor, the other parts
    at the run's rate; the decoder's weights move by about its rate, the others' by the run's."""
    flags = ["--max_train_steps", "2", "--checkpointing_steps", "0", *FINETUNE, "--lr_scheduler", "cosine"]
    run = engine(tiny, tmp_path / "slow", *flags, "--objective.decoder_learning_rate", "1e-4")
    vqvae = run.model.vqvae
    trained, decoder = run.parts[0].optimizer.param_groups
    decoder_ids = {
        id(p)
        for part in (vqvae.decoder, vqvae.post_quant_conv.pretrained)
        if part is not None
        for p in part.parameters()
    }
    assert {id(p) for p in decoder["params"]} == decoder_ids
    assert not decoder_ids & {id(p) for p in trained["params"]} and trained["params"]
    assert trained["lr"] == pytest.approx(run.schedule.lr()) and decoder["lr"] == pytest.approx(run.schedule.lr() / 30)
    run.schedule.step()
    run._apply_learning_rate()
    assert decoder["lr"] == pytest.approx(1e-4 * run.schedule.factor(run.schedule.step_count))

    # Adam moves a weight by at most about its rate per step: 2 steps at 1e-6 against the run's 3e-3.
    slow = engine(tiny, tmp_path / "slower", *flags, "--objective.decoder_learning_rate", "1e-6")
    trained, decoder = slow.parts[0].optimizer.param_groups
    before = [[p.detach().clone() for p in group["params"]] for group in (trained, decoder)]
    slow.run()
    trained_step, decoder_step = (
        max(float((p.detach() - old).abs().max()) for p, old in zip(group["params"], saved, strict=True))
        for group, saved in zip((trained, decoder), before)
    )
    assert 0 < decoder_step < 1e-5 and trained_step > 1e-4


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--objective.decoder_learning_rate", "1e-4"], r"decoder is frozen in this run; add --objective.finetune_dec"),
        ([*FINETUNE, "--objective.decoder_learning_rate", "0"], r"decoder_learning_rate must be > 0, got 0"),
    ],
)
def test_a_decoder_learning_rate_without_a_fine_tune_or_not_positive_is_refused_at_once(tiny, flags, message):
    with pytest.raises(ValueError, match=message):
        SCRIPT.parse_args(["--config", str(tiny / "config.yaml"), *flags])


def test_images_encoded_on_the_fly_and_a_saved_tokenizer_continue(tiny, tmp_path):
    flags = ["--max_train_steps", "2", "--checkpointing_steps", "0"]
    on_the_fly = ["--train_data_dir", str(tiny / "source_images"), "--latents_dataset", "null"]
    engine(tiny, tmp_path / "fly", *flags, *on_the_fly).run()
    first = VQVAEModel.from_pretrained(tmp_path / "fly")
    continued = engine(
        tiny, tmp_path / "more", *flags, *on_the_fly, "--pretrained_model_name_or_path", str(tmp_path / "fly")
    )
    assert continued.task.fitted  # a tokenizer made earlier keeps its projections
    continued.run()
    assert torch.equal(
        VQVAEModel.from_pretrained(tmp_path / "more").encoder.conv_in.weight, first.encoder.conv_in.weight
    )
    with pytest.raises(ValueError, match="drop --latents_dataset"):
        engine(tiny, tmp_path / "refused", *flags, "--pretrained_model_name_or_path", str(tmp_path / "fly"))


def test_a_vae_source_trains_on_its_tokenised_posterior_means(tiny, tmp_path):
    from latentcode.tokenize import load_codes, tokenize

    vae = tiny_model("vae", seed=2, in_channels=1)
    vae.save_pretrained(tmp_path / "vae")
    tokenize(vae, tmp_path / "codes", train_data_dir=str(tiny / "source_images"), rows_per_shard=30, progress=False)
    flags = ["--pretrained_model_name_or_path", str(tmp_path / "vae"), "--latents_dataset", str(tmp_path / "codes")]
    run = engine(tiny, tmp_path / "run", *flags, "--max_train_steps", "2", "--checkpointing_steps", "0")
    means = load_codes(tmp_path / "codes")[:4]["latent_mean"].float().unflatten(1, (4, 8, 8))
    assert torch.equal(run.task.validation_batch, means)  # the held-out rows' posterior means, not their stds
    run.run()
    assert VQVAEModel.from_pretrained(tmp_path / "run").config.source_autoencoder["family"] == "vae"


def test_latent_patches_train_one_token_per_patch_and_refuse_crops_that_do_not_split(tiny, tmp_path):
    flags = ["--tokenizer.latent_patch_size", "2", "--max_train_steps", "2", "--checkpointing_steps", "0"]
    engine(tiny, tmp_path / "run", *flags).run()
    tokenizer = VQVAEModel.from_pretrained(tmp_path / "run")
    assert tokenizer.config.latent_patch_size == 2 and tokenizer.downsampling_factor == 4
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())["metrics"]
    # 5 x 4 tokens (one per 2x2 latent positions) of the 20 x 16 crop of each 21 x 19 photo, 4 bits each.
    assert metrics["tokens_per_image"] == 20
    assert metrics["bits_per_pixel"] == pytest.approx(5 * 4 * 4 / (20 * 16))
    assert "A token codes 4x4 pixels (2x2 latent positions)." in (tmp_path / "run" / "README.md").read_text()
    with pytest.raises(ValueError, match="latent_crop=3 does not split into the tokens' 2x2 patches"):
        engine(tiny, tmp_path / "refused", *flags, "--data.latent_crop", "3")
    with pytest.raises(ValueError, match="resolution=18 is not a multiple of the model's downsampling factor 4"):
        engine(tiny, tmp_path / "refused", *flags, "--data.latent_crop", "null", "--data.resolution", "18")


def test_random_latent_crops_are_seeded_and_refuse_a_crop_larger_than_the_grid():
    latents = torch.arange(2 * 3 * 6 * 5, dtype=torch.float32).view(2, 3, 6, 5)
    crops = random_latent_crops(latents, 4, torch.Generator().manual_seed(0))
    assert crops.shape == (2, 3, 4, 4)
    assert torch.equal(crops, random_latent_crops(latents, 4, torch.Generator().manual_seed(0)))
    assert random_latent_crops(latents, None, torch.Generator()) is latents
    with pytest.raises(ValueError, match="latent_crop 7 is larger than the latent grid 6x5"):
        random_latent_crops(latents, 7, torch.Generator())


@pytest.mark.slow
def test_taef2_photo_tokenizer_trains_a_few_steps(tmp_path):
    from latentcode.conversion.taesd import from_taesd

    folder = require_shared(SHARED / "pretrained" / "taesd", "the TAESD checkpoints")
    photos = require_shared_dataset("photos/train")
    kodak = require_shared_dataset("kodak")
    from_taesd(folder / "taef2_encoder.pth", folder / "taef2_decoder.pth").save_pretrained(tmp_path / "taef2")
    common = [
        "--pretrained_model_name_or_path", str(tmp_path / "taef2"), "--train_data_dir", str(photos),
        "--resolution", "96", "--train_batch_size", "16", "--data.latent_crop", "8", "--checkpointing_steps", "0",
        "--num_validation_images", "4", "--tokenizer.quantizer_config", "{dead_code_restart: false}",
        "--learning_rate", "1e-3", "--tokenizer.source_licence", "MIT",
    ]  # fmt: skip

    def run(name: str, *flags: str) -> dict:
        config = SCRIPT.parse_args([*common, "--output_dir", str(tmp_path / name), *flags])
        reset_accelerate_state()
        return Engine(config, PhotoTokenizerTask(config)).run().metrics["metrics"]

    # The held-out latent loss after the first step (the fits) and after a few more.
    fitted = run("one", "--max_train_steps", "1")
    kodak_photo = ["--data.validation_data_dir", str(kodak), "--data.num_validation_photos", "1"]
    trained = run("run", "--max_train_steps", "8", *kodak_photo)
    assert trained["validation_latent_loss"] < fitted["validation_latent_loss"], (fitted, trained)
    # f8, 2 levels of 256 codes per position: 16 bits per 64 pixels.
    assert trained["bits_per_pixel"] == pytest.approx(0.25) and trained["tokens_per_image"] == 96 * 64 * 2
    assert trained["psnr"] > 10
    assert "MIT" in (tmp_path / "run" / "README.md").read_text()


PRESETS = sorted((Path(__file__).resolve().parents[1] / "training" / "configs" / "photo_tokenizer").glob("*.yaml"))
# taef2 codes 8 x 8 pixels per latent position.
PRESET_RATES = {"taef2": 0.25, "taef2_low_rate": 0.09375}


@pytest.mark.parametrize("preset", PRESETS, ids=[path.stem for path in PRESETS])
def test_each_preset_nests_its_options_by_group_loads_and_has_its_rate(preset):
    import math

    from latentcode.training.config import load_config

    config_class = SCRIPT.PhotoTokenizerConfig
    assert_preset_nests_by_group(preset, config_class)
    config = load_config(preset, config_class)
    tokenizer = config.tokenizer
    bits = (tokenizer.num_quantizers or 1) * math.log2(tokenizer.codebook_size)
    assert bits / 64 == PRESET_RATES[preset.stem]
    assert config.tokenizer.source_licence == "MIT" and "benchmarks/README.md" in preset.read_text()


# Run in each of two DDP processes: trains the tiny tokenizer, writes rank-R.safetensors (every
# weight and buffer of the VQ-VAE) and rank-R.json (the module types its forward calls went through).
REPLICA = """
import json, sys
from pathlib import Path
from safetensors.torch import save_file
from helpers import load_script
from latentcode.training.engine import Engine
from latentcode.training.photo_tokenizer_task import PhotoTokenizerTask

script = load_script("training/train_photo_tokenizer.py")
config = script.parse_args(json.loads(sys.argv[1]))
out = Path(sys.argv[2])
engine = Engine(config, PhotoTokenizerTask(config))
rank = engine.accelerator.process_index
forward_calls = []
engine.parts[0].module.register_forward_pre_hook(lambda module, args: forward_calls.append(type(module).__name__))
result = engine.run()
tensors = {key: value.contiguous() for key, value in result.model.vqvae.state_dict().items()}
save_file(tensors, out / f"rank{rank}.safetensors")
(out / f"rank{rank}.json").write_text(json.dumps({"forward_calls": forward_calls, "losses": result.losses}))
"""


@pytest.mark.slow
def test_two_ddp_processes_fit_and_train_identical_replicas(tiny, tmp_path):
    """Fits (projections on the gathered batch, k-means codebooks) and gradients are the same on
    both processes: the replicas end bit-identical although each reads its own crops."""
    import os
    import subprocess
    import sys

    from helpers import free_port

    (tmp_path / "replica.py").write_text(REPLICA)
    argv = ["--config", str(tiny / "config.yaml"), "--output_dir", str(tmp_path / "run"), "--max_train_steps", "4"]
    command = [
        *(sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"),
        *("--num_machines", "1", "--machine_rank", "0", "--main_process_ip", "127.0.0.1"),
        *("--main_process_port", str(free_port()), "--mixed_precision", "no", "--dynamo_backend", "no"),
        *(str(tmp_path / "replica.py"), json.dumps(argv), str(tmp_path)),
    ]
    tests = Path(__file__).resolve().parent
    env = {
        **os.environ,
        "ACCELERATE_USE_CPU": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(tests.parent / "src"), str(tests)]),
    }
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    reports = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    for report in reports:
        assert report["forward_calls"] == ["DistributedDataParallel"] * 4
    assert reports[0]["losses"] != reports[1]["losses"]  # each process trains on its own crops
    weights = [load_file(tmp_path / f"rank{rank}.safetensors") for rank in (0, 1)]
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key
