"""Training loop: config and CLI, bad input, GAN and LPIPS wiring, NaN steps, exact resume,
crash during a checkpoint write, bf16, the Quickstart command, push_to_hub without network.

Multi-process DDP is in test_training_ddp.py.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import reset_accelerate_state
from safetensors.torch import load_file

from latentcode import VQVAEModel
from latentcode.data import ImageTransform, build_image_data
from latentcode.evaluation import evaluate
from latentcode.families import get_family
from latentcode.training import NonFiniteLossError, build_engine, load_config, parse_args, train
from latentcode.training.checkpointing import list_checkpoints
from latentcode.training.config import (
    MAPPING_SECTIONS,
    AutoencoderOptimization,
    TrainingConfig,
    build_parser,
    option_groups,
)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "training" / "configs").glob("*.yaml"))
TINY_MODEL = dict(
    in_channels=1,
    block_out_channels=[16, 32],
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=8,
    mid_block_add_attention=False,
)


def tiny_run_values(output_dir: Path, family: str = "vqvae", **overrides) -> dict:
    """Training settings of a 16x16 grey model on the embedded digits (seconds per run), as the
    keyword arguments of `load_config`; the DDP and fault tests run them in subprocesses."""
    model = dict(TINY_MODEL, **({"codebook_size": 32} if family == "vqvae" else {}))
    values = dict(
        output_dir=str(output_dir),
        model_family=family,
        model=model,
        dataset_name="builtin:digits",
        resolution=16,
        train_batch_size=8,
        max_train_steps=6,
        learning_rate=1e-3,
        lr_warmup_steps=1,
        num_validation_images=8,
        checkpointing_steps=0,
        validation_steps=0,
        report_to="none",
    )
    values.update(overrides)
    return values


def tiny_config(tmp_path: Path, name: str = "run", family: str = "vqvae", **overrides) -> TrainingConfig:
    """`tiny_run_values` loaded as a `TrainingConfig`."""
    return load_config(**tiny_run_values(tmp_path / name, family, **overrides))


# Every state a resume must restore: discriminator (+ its optimiser), EMA, random crops and
# flips, the scheduler. (LPIPS is stateless and costs seconds to build; it has its own test.)
VQGAN_OPTIONS = dict(
    disc_weight=0.5,
    disc_start=2,
    disc_num_layers=2,
    disc_channels=8,
    use_ema=True,
    ema_decay=0.9,
    center_crop=False,
    random_flip=True,
    checkpointing_steps=2,
)


# Tiny models gain nothing from intra-op threads, and on a busy machine spinning OpenMP threads
# make them an order of magnitude slower; subprocesses get the same setting.
SINGLE_THREAD_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def _weights(folder: Path, name: str = "model.safetensors") -> dict[str, torch.Tensor]:
    return load_file(folder / name)


def _assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_weight_ema_equals_diffusers_in_fp32_and_keeps_moving_for_bf16_weights():
    from diffusers.training_utils import EMAModel as DiffusersEMAModel

    from latentcode.training.ema import EMAModel

    torch.manual_seed(0)
    weights = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(7))]
    ours, theirs = EMAModel(weights, decay=0.95), DiffusersEMAModel(weights, decay=0.95)
    for _ in range(30):
        with torch.no_grad():
            for weight in weights:
                weight.add_(torch.randn_like(weight))
        ours.step(weights)
        theirs.step(weights)
        for mine, reference in zip(ours.shadow, theirs.shadow_params):
            torch.testing.assert_close(mine, reference, rtol=1e-6, atol=1e-6)

    # Past the warm-up (decay 0.999), bf16 weights move by one bf16 step (1/128 at 1.0).
    bf16 = [torch.nn.Parameter(torch.ones(64, dtype=torch.bfloat16))]
    ours, theirs = EMAModel(bf16, decay=0.999), DiffusersEMAModel(bf16, decay=0.999)
    ours.num_updates = theirs.optimization_step = 100_000
    with torch.no_grad():
        bf16[0].fill_(1 + 1 / 128)
    for _ in range(2000):
        ours.step(bf16)
        theirs.step(bf16)
    assert torch.all(theirs.shadow_params[0] == 1.0)  # every update (1e-3 of 1/128) rounds away in bf16
    assert torch.all(ours.shadow[0] > 1 + 0.8 / 128)  # 1 - 0.999**2000 = 86% of the way in fp32


# -- configuration --------------------------------------------------------------------------------


def test_cli_overrides_yaml_overrides_defaults():
    config = parse_args(
        [
            "--config",
            str(REPO / "training/configs/quickstart.yaml"),
            "--learning_rate",
            "0.5",
            "--model.codebook_size",
            "64",
            "--model.block_out_channels=[8, 16]",
            "--no_center_crop",
            "--checkpoints_total_limit",
            "none",
        ]
    )
    quickstart = yaml.safe_load((REPO / "training/configs/quickstart.yaml").read_text())
    assert (
        config.optimization.learning_rate == 0.5
        and config.data.center_crop is False
        and config.checkpoints.checkpoints_total_limit is None
    )
    assert config.model["codebook_size"] == 64 and config.model["block_out_channels"] == [8, 16]
    assert config.model["latent_channels"] == quickstart["model"]["latent_channels"]  # kept from the file
    assert config.optimization.train_batch_size == quickstart["optimization"]["train_batch_size"]
    assert config.optimization.adam_beta1 == AutoencoderOptimization().adam_beta1

    help_text = build_parser().format_help()
    for name, group in option_groups(TrainingConfig).items():
        assert name in MAPPING_SECTIONS or f"--{group + '.' if group else ''}{name}" in help_text
    assert "--model.KEY" in help_text


def test_command_line_data_source_overrides_the_presets(tmp_path):
    preset = REPO / "training" / "configs" / "vqvae_mnist.yaml"
    assert yaml.safe_load(preset.read_text())["data"]["dataset_name"]  # a preset with a Hub dataset
    config = parse_args(["--config", str(preset), "--train_data_dir", str(tmp_path)])
    assert (config.data.train_data_dir, config.data.dataset_name, config.data.dataset_config_name) == (
        str(tmp_path),
        None,
        None,
    )
    local = tmp_path / "local.yaml"
    local.write_text(yaml.safe_dump({"data": {"train_data_dir": str(tmp_path)}}))
    config = parse_args(["--config", str(local), "--dataset_name", "builtin:photos"])
    assert (config.data.dataset_name, config.data.train_data_dir) == ("builtin:photos", None)


def test_unknown_keys_fail_with_a_suggestion(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("learning_rat: 0.1\n")
    with pytest.raises(ValueError, match="unknown training config key 'learning_rat'; did you mean learning_rate"):
        load_config(path)
    with pytest.raises(
        ValueError, match=r"unknown model \(VQVAEConfig\) key 'codebook_sise'; did you mean codebook_size"
    ):
        load_config(model={"codebook_sise": 8})
    with pytest.raises(ValueError, match="mixed_precision must be one of"):
        load_config(mixed_precision="fp8")
    with pytest.raises(SystemExit):
        parse_args(["--not_an_option", "1"])


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_a_presets_comment_says_what_it_is_and_leaves_measurements_to_the_benchmarks(path):
    """A preset's leading comment: what it is in a few lines, plus its command lines (`#   ...`);
    the narrative of how its settings were measured lives in benchmarks/README.md."""
    lines = path.read_text().splitlines()
    header = lines[: next(i for i, line in enumerate(lines) if line and not line.startswith("#"))]
    prose = [line for line in header if not line.startswith("#   ")]
    assert 1 <= len(prose) <= 5, (
        f"{path.name}: {len(prose)} lines of comment; move the narrative to benchmarks/README.md"
    )
    if any(word in " ".join(prose) for word in (" dB", "measured", "Measured", "s per step")):
        assert "benchmarks/README.md" in " ".join(prose), path.name


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_configs_are_valid(path):
    config = load_config(path)
    model_config = get_family(config.model_family).config_class(
        **{"sample_size": config.data.resolution, **config.model}
    )
    assert config.data.resolution % model_config.downsampling_factor == 0
    if config.adversarial.disc_weight > 0:
        assert config.data.resolution >= 2 ** (config.adversarial.disc_num_layers + 2)


def test_bad_input_fails_before_training(tmp_path):
    with pytest.raises(ValueError, match="resolution=17 is not divisible by the model's downsampling factor 2"):
        build_engine(tiny_config(tmp_path, resolution=17))
    with pytest.raises(
        ValueError, match=r"image_column='pixels' is not a column of the dataset; its columns are \['image'\]"
    ):
        build_engine(tiny_config(tmp_path, image_column="pixels"))
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "only.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="the dataset has no readable image"):
        build_engine(tiny_config(tmp_path, dataset_name=None, train_data_dir=str(folder)))
    assert not (tmp_path / "run").exists() or not list_checkpoints(tmp_path / "run")


# -- what one step does ---------------------------------------------------------------------------


def test_discriminator_trains_from_disc_start_and_lpips_reaches_decoder(tmp_path):
    lpips = dict(perceptual_weight=0.1, perceptual_pretrained=False)  # random VGG backbone
    engine = build_engine(tiny_config(tmp_path, **VQGAN_OPTIONS, **lpips))
    discriminator = engine.unwrap(engine.parts[1].module)
    initial = [p.detach().clone() for p in discriminator.parameters()]

    pixels = engine.task.validation_images[:4]
    # Both loss calls below see the same codebook: no EMA step or dead-code expiry in between.
    engine.task.unwrapped.quantizer.eval()
    last_layer = engine.task.unwrapped.decoder.last_layer

    def objective():  # before disc_start: reconstruction, LPIPS and the VQ terms
        return engine.task.objective(engine.task.model(pixels), pixels, step=0, last_layer=last_layer)

    loss, logs = objective()
    perceptual_grad = torch.autograd.grad(logs["perceptual_loss"], last_layer, retain_graph=True)[0]
    assert perceptual_grad.abs().sum() > 0  # LPIPS is computed with gradients, into the decoder
    total_grad = torch.autograd.grad(loss, last_layer)[0]
    reconstruction_grad = torch.autograd.grad(objective()[1]["reconstruction_loss"], last_layer)[0]
    expected = reconstruction_grad + 0.1 * perceptual_grad  # the VQ terms do not reach the decoder
    torch.testing.assert_close(total_grad, expected, rtol=0, atol=1e-4 * expected.abs().max().item())
    engine.task.unwrapped.quantizer.train()

    for _ in range(2):  # steps 1 and 2: before disc_start
        logs = engine.train_step()
        engine.global_step += 1
        assert "discriminator_loss" not in logs
        assert all(torch.equal(a, b) for a, b in zip(initial, discriminator.parameters()))
    logs = engine.train_step()
    assert {"discriminator_loss", "generator_adversarial_loss", "adversarial_weight"} <= logs.keys()
    assert logs["adversarial_weight"] > 0
    assert 0 < logs["codebook_usage"] <= 1 and logs["perplexity"] > 1
    changed = [not torch.equal(a, b) for a, b in zip(initial, discriminator.parameters())]
    # Its own optimiser step moved every weight. (Not the last layer's bias: with the hinge loss
    # its gradient is exactly 0 while every logit of the equal-sized real and fake halves is
    # inside the margin, as at initialisation.)
    assert all(changed[:-1])
    assert all(p.requires_grad for p in discriminator.parameters())  # unfrozen after the generator pass


def poison_forward(engine, bad_calls, value: float = float("nan")) -> None:
    """Make the model's reconstruction `value` (NaN / inf) on the forward calls (1-based) in
    `bad_calls`, as a diverging run would (the model itself refuses NaN pixels)."""
    calls = []

    def hook(module, args, output):
        calls.append(1)
        if bad_calls(len(calls)):
            output.sample = output.sample * value
        return output

    engine.task.unwrapped.register_forward_hook(hook)


def test_nonfinite_steps_are_skipped_and_counted(tmp_path):
    engine = build_engine(tiny_config(tmp_path))
    poison_forward(engine, lambda call: call in (3, 4))
    result = engine.run()
    assert result.metrics["details"]["nonfinite_steps"] == 2
    assert [torch.isnan(torch.tensor(x)).item() for x in result.losses] == [False, False, True, True, False, False]
    assert all(torch.isfinite(p).all() for p in result.model.parameters())


def test_no_checkpoint_is_written_or_rotated_away_during_a_nan_streak(tmp_path):
    config = tiny_config(
        tmp_path, checkpointing_steps=2, checkpoints_total_limit=1, max_consecutive_nonfinite_steps=3, max_train_steps=8
    )
    engine = build_engine(config)
    poison_forward(engine, lambda call: call > 2, float("inf"))  # steps 3, 4, 5 diverge
    with pytest.raises(NonFiniteLossError, match=r"3 steps in a row .*Last good checkpoint: .*checkpoint-2"):
        engine.run()
    # Step 4 fell in the streak: no checkpoint of it, so the keep-1 rotation kept the good one.
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["checkpoint-2"]
    good = _weights(tmp_path / "run" / "checkpoint-2")
    assert all(torch.isfinite(w).all() for w in good.values())
    assert json.loads((tmp_path / "run" / "checkpoint-2" / "trainer_state.json").read_text())["nonfinite_steps"] == 0
    assert not (tmp_path / "run" / "model.safetensors").exists()  # no final model from a failed run


# -- checkpoints and exact resume -----------------------------------------------------------------


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """A 6-step VQGAN-style run with checkpoints at steps 2, 4 and 6."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    train(tiny_config(folder, **VQGAN_OPTIONS))
    reset_accelerate_state()
    return folder / "run"


def test_resume_is_bit_identical(uninterrupted, tmp_path):
    assert [p.name for p in list_checkpoints(uninterrupted)] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    config = tiny_config(tmp_path, **VQGAN_OPTIONS, resume_from_checkpoint=str(uninterrupted / "checkpoint-2"))
    train(config)
    resumed = tmp_path / "run"
    _assert_identical(_weights(uninterrupted), _weights(resumed))  # the final (EMA) model
    for name in ("model.safetensors", "model_1.safetensors"):  # live autoencoder and discriminator
        _assert_identical(_weights(uninterrupted / "checkpoint-6", name), _weights(resumed / "checkpoint-6", name))
    reference = json.loads((uninterrupted / "metrics.json").read_text())["metrics"]
    assert json.loads((resumed / "metrics.json").read_text())["metrics"] == reference


def test_decoding_workers_give_the_weights_of_decoding_in_the_training_process(uninterrupted, tmp_path):
    """--dataloader_num_workers 2, resumed from a checkpoint of the 0-worker run: every crop, flip
    and batch comes from the example's position, so the weights are the 0-worker run's, bit for bit."""
    checkpoint = str(uninterrupted / "checkpoint-2")
    train(tiny_config(tmp_path, **VQGAN_OPTIONS, dataloader_num_workers=2, resume_from_checkpoint=checkpoint))
    _assert_identical(_weights(uninterrupted), _weights(tmp_path / "run"))


KILL_DURING_WRITE = """
import json, os, signal, sys
from accelerate import Accelerator

save_state = Accelerator.save_state

def save_state_then_die(self, output_dir, **kwargs):
    result = save_state(self, output_dir, **kwargs)
    if "checkpoint-4" in str(output_dir):  # the files are written, the rename has not happened
        os.kill(os.getpid(), signal.SIGKILL)
    return result

Accelerator.save_state = save_state_then_die
from latentcode.training import load_config, train
train(load_config(**json.loads(sys.argv[1])))
"""


def test_killed_during_checkpoint_write_resumes_from_previous_checkpoint(uninterrupted, tmp_path):
    config = tiny_config(tmp_path, **VQGAN_OPTIONS)
    killed = subprocess.run(
        [sys.executable, "-c", KILL_DURING_WRITE, json.dumps(config.to_dict())],
        capture_output=True,
        text=True,
        env=SINGLE_THREAD_ENV,
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    run = tmp_path / "run"
    assert (run / ".checkpoint-4.tmp" / "model.safetensors").exists()  # the half-written checkpoint
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-2"]

    train(tiny_config(tmp_path, **VQGAN_OPTIONS, resume_from_checkpoint="latest"))
    assert not (run / ".checkpoint-4.tmp").exists()  # cleaned up by the next save
    _assert_identical(_weights(uninterrupted), _weights(run))


# -- precision, end products ----------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is refused on CPU only")
def test_fp16_on_cpu_says_what_to_use_instead(tmp_path):
    with pytest.raises(ValueError, match=r"mixed_precision='fp16' needs a CUDA GPU.*use 'no'.*or 'bf16'"):
        build_engine(tiny_config(tmp_path, mixed_precision="fp16"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the fallback is for runs on the CPU")
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_a_gpu_presets_mixed_precision_falls_back_to_fp32_on_the_cpu_and_a_flag_forces_bf16(
    tmp_path, caplog, precision
):
    """Issue 33: a GPU preset's bf16 made a CPU run 5x slower per step, without a word. A --config
    file's bf16 / fp16 now trains in fp32 with a warning naming the flag; bf16 given on the command
    line is kept, with a warning naming the flag that turns it off."""
    preset = tmp_path / "gpu_preset.yaml"
    values = load_config(**tiny_run_values(tmp_path / "run", mixed_precision=precision)).to_dict()
    preset.write_text(yaml.safe_dump(values))
    with caplog.at_level("WARNING", logger="latentcode.training.engine"):
        engine = build_engine(parse_args(["--config", str(preset)]))
    assert engine.accelerator.mixed_precision == "no" and engine.config.compute.mixed_precision == "no"
    assert f"asks for mixed_precision {precision!r}" in caplog.text and "--mixed_precision bf16" in caplog.text
    engine.release_output_dir()

    reset_accelerate_state()
    caplog.clear()
    with caplog.at_level("WARNING", logger="latentcode.training.engine"):
        engine = build_engine(
            parse_args(["--config", str(preset), "--mixed_precision", "bf16", "--output_dir", str(tmp_path / "forced")])
        )
    assert engine.accelerator.mixed_precision == "bf16"
    assert "--mixed_precision no trains in fp32" in caplog.text
    engine.release_output_dir()


def test_the_help_texts_name_the_vae_objectives_that_validation_accepts():
    """config.py names them without importing torch (for --help); they must stay the originals."""
    from latentcode.disentanglement import RECONSTRUCTION_DISTRIBUTIONS, VAE_OBJECTIVES
    from latentcode.training.config import RECONSTRUCTION_DISTRIBUTION_NAMES, VAE_OBJECTIVE_NAMES

    assert VAE_OBJECTIVE_NAMES == VAE_OBJECTIVES and RECONSTRUCTION_DISTRIBUTION_NAMES == RECONSTRUCTION_DISTRIBUTIONS


def test_threads_option_reaches_torch_in_the_run_and_metrics_json(tmp_path, monkeypatch):
    """`--threads N` (issue 33): the run computes with N intra-op threads and says so in
    metrics.json. The suite runs with 1 thread (conftest), so 2 shows the option took effect."""
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # set by the run; restored after the test
        monkeypatch.setenv(variable, "1")
    assert parse_args(["--threads", "2"]).compute.threads == 2 and parse_args([]).compute.threads is None
    with pytest.raises(ValueError, match=r"threads must be a whole number >= 1.*got 0"):
        parse_args(["--threads", "0"])
    before = torch.get_num_threads()
    try:
        result = train(tiny_config(tmp_path, threads=2, max_train_steps=1))
        assert torch.get_num_threads() == 2 and os.environ["OMP_NUM_THREADS"] == "2"
    finally:
        torch.set_num_threads(before)
    assert result.metrics["details"]["threads"] == 2
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["details"]["threads"] == 2


def test_bf16_autocast_run(tmp_path):
    engine = build_engine(tiny_config(tmp_path, mixed_precision="bf16", max_train_steps=6, learning_rate=3e-3))
    pixels = engine.task.validation_images[:4]
    output = engine.task.model(pixels)
    # accelerate hands outputs back as fp32; values computed in bf16 are exactly representable in it
    sample, quantized = output.sample.detach(), output.quantized.detach()
    assert torch.equal(sample, sample.bfloat16().float())  # the backbone runs under autocast ...
    assert quantized.dtype == torch.float32 and not torch.equal(
        quantized, quantized.bfloat16().float()
    )  # ... the quantizer in fp32
    initial = {k: v.clone() for k, v in engine.task.unwrapped.state_dict().items()}
    result = engine.run()
    assert all(p.dtype == torch.float32 for p in result.model.parameters())  # fp32 master weights
    assert all(torch.isfinite(torch.tensor(result.losses)))
    assert any(not torch.equal(initial[k], v) for k, v in result.model.state_dict().items())
    assert result.metrics["details"]["nonfinite_steps"] == 0


def test_quickstart_command_writes_model_grid_metrics(tmp_path):
    output = tmp_path / "quickstart"
    command = [
        *(sys.executable, "-m", "accelerate.commands.launch"),
        *("--config_file", str(REPO / "training/accelerate_config.yaml")),  # the README's command
        str(REPO / "training/train.py"),
        *("--config", str(REPO / "training/configs/quickstart.yaml"), "--output_dir", str(output)),
        *("--max_train_steps", "4", "--train_batch_size", "8", "--checkpointing_steps", "2", "--validation_steps", "2"),
        *("--model.block_out_channels", "[16, 32]"),
    ]
    env = {**SINGLE_THREAD_ENV, "HF_HOME": str(tmp_path / "hf")}  # no user-level accelerate config
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    # With the shipped launch settings, neither the launcher nor the run states a warning
    # (test_command_lines checks that accelerate does warn without them).
    assert "were not passed" not in done.stderr and "warn" not in done.stderr.lower(), done.stderr
    # The preset gives no validation split: the run says what it holds out of training (issue 33 item 10).
    assert "no validation split given: holding 32 images out of training for validation, the first readable ones " in (
        done.stderr
    )

    for name in ("model.safetensors", "config.json", "reconstructions.png", "loss.png", "metrics.json", "README.md"):
        assert (output / name).is_file(), name
    assert not (output / ".latentcode.lock").exists()  # a clean finish removes the lock file (issue 20)
    import PIL.Image

    assert PIL.Image.open(output / "loss.png").size == (640, 360)  # the loss curve beside the reconstructions
    summary = [line for line in done.stdout.splitlines() if line.startswith("done: 4 steps")]
    assert len(summary) == 1 and "s/step" in summary[0] and str(output) in summary[0]  # the one-line summary
    assert "it/s" in done.stderr or "s/it" in done.stderr  # tqdm's rate (and ETA) on the progress bar
    assert (output / "preprocessor_config.json").is_file()
    assert list((output / "logs").rglob("events.out.tfevents.*"))  # tensorboard by default
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["schema_version"] == 1 and metrics["kind"] == "training"
    assert metrics["details"]["global_step"] == 4 and metrics["details"]["images_seen"] == 32

    model = VQVAEModel.from_pretrained(output)
    quickstart = load_config(REPO / "training/configs/quickstart.yaml")
    _, validation = build_image_data(
        transform=ImageTransform(quickstart.data.resolution, channels=1),
        batch_size=1,
        dataset_name=quickstart.data.dataset_name,
        num_validation_images=quickstart.data.num_validation_images,
    )
    reloaded = evaluate(model, validation.split(8)).metrics
    assert reloaded["psnr"] == pytest.approx(
        metrics["metrics"]["psnr"], rel=1e-5
    )  # the saved model is the one measured
    import PIL.Image

    grid = PIL.Image.open(output / "reconstructions.png")
    # 32 images of 32x32, each padded by 2 pixels on every side: 4 rows of originals + 4 of reconstructions
    assert grid.mode == "L" and grid.size == (8 * 36, 8 * 36)
    card = (output / "README.md").read_text()
    assert "VQVAEModel.from_pretrained" in card and "| PSNR (dB, mean per image) |" in card
    assert "$" not in card.replace("$$", "")


def test_training_validation_and_latentcode_eval_agree_on_the_same_model_and_images(tmp_path):
    import PIL.Image

    from latentcode.evaluation.cli import main as latentcode_eval
    from latentcode.image_processing import pixels_to_uint8

    engine = build_engine(tiny_config(tmp_path))
    # The images as 8-bit files hold them (resizing leaves values between the 8-bit levels).
    images = pixels_to_uint8(engine.task.validation_images)
    engine.task.validation_images = images.float() / 127.5 - 1
    engine.task.unwrapped.train()
    engine.task.unwrapped(engine.task.validation_images)  # one training forward: k-means, a codebook worth measuring
    validation = engine.task.validate(engine, tmp_path / "grid.png")
    assert engine.task.unwrapped.training  # validation leaves the model as it found it
    engine.task.unwrapped.save_pretrained(tmp_path / "model")
    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(images):
        PIL.Image.fromarray(image[0].numpy()).save(folder / f"{i:03d}.png")
    arguments = [
        "--pretrained_model_name_or_path",
        str(tmp_path / "model"),
        "--train_data_dir",
        str(folder),
        "--resolution",
        "16",
    ]
    arguments += ["--no_fid", "--no_lpips", "--device", "cpu", "--output_dir", str(tmp_path / "eval")]
    assert latentcode_eval(arguments) == 0
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())["metrics"]
    assert evaluated["num_images"] == validation["num_images"] == 8
    for name in ("psnr", "mse", "l1", "ssim", "codebook_usage", "perplexity"):
        assert evaluated[name] == pytest.approx(validation[name], rel=1e-5), name
    assert validation["perplexity"] > 2  # a codebook in use: the comparison is not vacuous


def test_push_to_hub_without_network_fails_after_the_local_save(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    config = tiny_config(
        tmp_path, max_train_steps=2, push_to_hub=True, hub_model_id="someone/tiny", hub_token="hf_test"
    )
    config.compute.gradient_checkpointing, config.optimization.gradient_accumulation_steps = (
        True,
        2,
    )  # these code paths run too
    with pytest.raises(
        RuntimeError, match=r"the model is saved in .*run, but uploading it to the Hub as someone/tiny failed"
    ):
        train(config)
    saved = VQVAEModel.from_pretrained(tmp_path / "run")
    assert saved.config.codebook_size == 32
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["details"]["images_seen"] == 2 * 2 * 8


# -- a wall-clock budget (--max_train_time) -------------------------------------------------------


def test_durations_parse_with_units_and_bad_ones_say_how():
    from latentcode.training.schedule import parse_duration

    assert [parse_duration(t) for t in ("900", "90s", "15m", "2h", "1.5h", 30, None)] == [
        900,
        90,
        900,
        7200,
        5400,
        30,
        None,
    ]
    with pytest.raises(ValueError, match=r"max_train_time='15 minutes' is not a duration: .*\(90s, 15m, 2h\)"):
        parse_duration("15 minutes")
    with pytest.raises(ValueError, match="must be > 0 seconds"):
        tiny_config(Path("unused"), max_train_time="0")


def test_schedule_factors_follow_transformers_schedulers():
    from transformers import get_scheduler

    from latentcode.training.schedule import RunSchedule

    for kind in ("constant", "constant_with_warmup", "linear", "cosine"):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        reference = get_scheduler(kind, optimizer, num_warmup_steps=3, num_training_steps=10)
        ours = RunSchedule(kind, 1.0, 3, 10)
        assert [ours.factor(step) for step in range(11)] == pytest.approx(
            [reference.lr_lambdas[0](step) for step in range(11)], abs=1e-15
        ), kind


def simulated_clock(engine, seconds_per_step) -> None:
    """Make `engine`'s time budget count `seconds_per_step(step)` for each step (1-based) instead
    of the wall clock: the clock reads the sum over the steps done, so a resumed run, which starts
    at a later step, reads the same times as the run it continues."""
    engine.clock = lambda: sum(seconds_per_step(step) for step in range(1, engine.global_step + 1))


@pytest.mark.parametrize("first, then", [(0.1, 0.05), (0.05, 0.1)], ids=["speeds-up", "slows-down"])
def test_a_time_budget_refits_the_schedule_as_the_step_time_changes_and_ends_at_the_budget(tmp_path, first, then):
    # The machine's speed changes after step 40, once the first fit (after 25 steps) has been made:
    # another job ends (steps twice as fast) or starts (twice as slow) beside the run.
    budget = 5.0
    engine = build_engine(tiny_config(tmp_path, max_train_time=budget, lr_scheduler="cosine", lr_warmup_steps=2))
    simulated_clock(engine, lambda step: first if step <= 40 else then)
    result = engine.run()
    details = result.metrics["details"]
    assert engine.schedule.fitted and engine.global_step == engine.schedule.total_steps
    assert engine.schedule.lr() == 0.0  # the cosine schedule's end value: it reached its end
    # It ends within one step of the budget, never past it by more than that step.
    assert budget - then <= details["train_seconds"] < budget + then, details["train_seconds"]
    assert details["max_train_time"] == budget
    assert (tmp_path / "run" / "loss.png").is_file() and (tmp_path / "run" / "metrics.json").is_file()


def test_a_time_budget_measures_after_start_up_and_stops_steps_slower_than_the_budget():
    from latentcode.training.schedule import RunSchedule, TimeBudget

    def observe(budget: TimeBudget, step_seconds, steps: int) -> RunSchedule:
        schedule, elapsed = RunSchedule("cosine", 1.0, 0, None), 0.0
        for step in range(steps):
            seconds = step_seconds(step) if callable(step_seconds) else step_seconds
            schedule.step()
            elapsed += seconds
            budget.observe(schedule, seconds, elapsed)
            if schedule.fitted:
                break
        return schedule

    # 0.25 s steps, 100 s: 5 start-up steps ignored, 20 measured (5 % of the budget), then 375
    # more to fill the budget
    schedule = observe(TimeBudget(100.0), 0.25, 1000)
    assert schedule.fitted and schedule.step_count == 25 and schedule.total_steps == 400
    # fast steps are measured over 5 % of the budget too, not over a fixed count: steps of 2^-7 s
    # that slow to 2^-6 s after the first 105 (another process starting beside the run) are
    # fitted to their mean over the 370 steps that fill 5 s, not to the first 20 steps' 2^-7 s
    schedule = observe(TimeBudget(100.0), lambda step: 2**-7 if step < 105 else 2**-6, 100_000)
    assert schedule.step_count == 375 and schedule.total_steps == 375 + math.floor((100 - 5 * 2**-7 - 5) / (5 / 370))
    # 2 s steps, 100 s: the 5 % of the budget (5 s) is spent during start-up, so measuring begins
    # at the third step and ends after five measured steps (10 s: twice the 5 %)
    schedule = observe(TimeBudget(100.0), 2.0, 1000)
    assert schedule.step_count == 7 and schedule.total_steps == 50
    # steps slower than the whole budget: the run stops after the step that spent it
    schedule = observe(TimeBudget(100.0), 60.0, 1000)
    assert schedule.step_count == 2 and schedule.total_steps == 2


def test_a_refit_keeps_the_learning_rate_continuous_and_follows_the_new_step_time():
    from latentcode.training.schedule import RunSchedule, TimeBudget

    # A refit keeps the decay's progress: the rate at the refit step is the same under the old and
    # the new count, and the rest of the decay is spread over the new remaining steps.
    for kind in ("linear", "cosine"):
        schedule = RunSchedule(kind, 1.0, 2, 10)
        for _ in range(6):
            schedule.step()
        before = schedule.lr()
        schedule.refit(18)
        assert schedule.lr() == pytest.approx(before, abs=1e-15)
        rates = [schedule.factor(step) for step in range(6, 19)]
        assert all(a > b for a, b in zip(rates, rates[1:])) and rates[-1] == 0.0, kind
        # halfway through what was left, half of what was left of the progress
        assert schedule.progress(12) == pytest.approx(schedule.progress(6) + (1 - schedule.progress(6)) / 2)

    # 0.25 s steps fit 400 steps of a 100 s budget after 25 steps (6.25 s); then each step takes
    # 0.5 s: 5 s (5 % of the budget) later, 10 steps on, the count is fitted again from that mean.
    budget, schedule, elapsed = TimeBudget(100.0), RunSchedule("cosine", 1.0, 0, None), 0.0
    totals = []
    for step in range(1, 1000):
        seconds = 0.25 if step <= 25 else 0.5
        schedule.step()
        elapsed += seconds
        budget.observe(schedule, seconds, elapsed)
        totals.append(schedule.total_steps)
        if schedule.fitted and step >= schedule.total_steps:
            break
    assert totals[24] == 400 and totals[33] == 400
    assert totals[34] == 35 + math.floor((100 - 11.25) / 0.5)
    assert step == schedule.total_steps and elapsed == pytest.approx(100.0, abs=0.5)


def test_a_resumed_time_budgeted_run_continues_the_identical_schedule(tmp_path):
    # Steps slow down from step 30 on, so the count is fitted again several times after the
    # checkpoint the run resumes from; the same step times give the identical run.
    values = dict(max_train_time=4, checkpointing_steps=3, random_flip=True, center_crop=False)

    def run(name: str, **resume):
        engine = build_engine(tiny_config(tmp_path, name, **values, **resume))
        simulated_clock(engine, lambda step: 0.05 if step < 30 else 0.08)
        result = engine.run()
        reset_accelerate_state()
        return engine, result

    reference, reference_result = run("reference")
    checkpoint = tmp_path / "reference" / "checkpoint-30"
    saved = torch.load(checkpoint / "custom_checkpoint_0.pkl", weights_only=True)
    assert saved["fitted"] and saved["total_steps"] > reference.global_step  # fitted, and fitted again later
    resumed, resumed_result = run("resumed", resume_from_checkpoint=str(checkpoint))
    assert resumed.global_step == reference.global_step
    assert resumed_result.losses == reference_result.losses[30:]
    _assert_identical(_weights(tmp_path / "reference"), _weights(tmp_path / "resumed"))


def test_a_parts_group_factors_set_each_parameter_groups_rate_and_bad_ones_are_refused():
    from latentcode.training.engine import Part

    first, second = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW([{"params": first.parameters()}, {"params": second.parameters()}])
    assert Part("model", first, optimizer, group_factors=(1.0, 0.1)).rates(2e-3) == pytest.approx([2e-3, 2e-4])
    assert Part("model", first, optimizer).rates(2e-3) == [2e-3, 2e-3]
    assert Part("model", first, optimizer, learning_rate=5e-4).rates(2e-3) == [5e-4, 5e-4]
    with pytest.raises(
        ValueError, match=r"one positive rate factor per parameter group of its optimiser \(2\), got \(1.0,\)"
    ):
        Part("model", first, optimizer, group_factors=(1.0,))
    with pytest.raises(ValueError, match=r"got \(1.0, 0.0\)"):
        Part("model", first, optimizer, group_factors=(1.0, 0.0))
    with pytest.raises(ValueError, match=r"learning_rate 0.0005 replaces it with a constant one; give one of the two"):
        Part("model", first, optimizer, learning_rate=5e-4, group_factors=(1.0, 1.0))
