"""The second-stage scripts (`train_prior.py`, `train_latent_diffusion.py`) have every reliability
guarantee of `train.py`, through the one engine: kill -9 and a bit-identical resume, a NaN streak
that stops the run, the output-folder lock, gradient accumulation."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from helpers import load_script, reset_accelerate_state, tiny_model
from safetensors.torch import load_file

from latentcode.training.checkpointing import LOCK_FILE, OutputDirError, list_checkpoints
from latentcode.training.config import load_config
from latentcode.training.engine import Engine
from latentcode.training.latent_diffusion_task import LatentDiffusionTask
from latentcode.training.prior_task import PriorTask
from latentcode.training.state import NonFiniteLossError

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "faults" / "train_worker.py"
ENV = {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO / "src")}
COMMON = dict(
    dataset_name="builtin:digits", max_train_steps=8, train_batch_size=4, num_validation_images=4,
    num_samples=2, lr_warmup_steps=1, validation_steps=0, checkpointing_steps=2, report_to="none",
    random_flip=True, center_crop=False,
)  # fmt: skip
SCRIPTS = {
    "prior": ("training/train_prior.py", "vqvae", dict(hidden_size=16, num_layers=1, num_heads=2), "model.safetensors"),
    "ldm": (
        "training/train_latent_diffusion.py",
        "vae",
        dict(block_out_channels=[16, 32], norm_num_groups=8, num_inference_steps=2),
        "unet/diffusion_pytorch_model.safetensors",
    ),
}

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


@pytest.fixture(scope="module", params=sorted(SCRIPTS))
def stage(request, tmp_path_factory):
    """(name, script module, config file) of a tiny run of one second-stage script."""
    name = request.param
    script, family, options, _ = SCRIPTS[name]
    folder = tmp_path_factory.mktemp(name)
    model = tiny_model(family, in_channels=1, **({"codebook_size": 32} if family == "vqvae" else {}))
    model.save_pretrained(folder / "autoencoder")
    config = dict(COMMON, pretrained_model_name_or_path=str(folder / "autoencoder"), **options)
    module = load_script(script)
    config_class = module.PriorConfig if name == "prior" else module.LatentDiffusionConfig
    (folder / "config.yaml").write_text(yaml.safe_dump(load_config(None, config_class, **config).to_dict()))
    return name, module, folder / "config.yaml"


def engine_of(stage, output_dir: Path, *flags: str) -> Engine:
    name, script, config_file = stage
    config = script.parse_args(["--config", str(config_file), "--output_dir", str(output_dir), *flags])
    task = PriorTask(config) if name == "prior" else LatentDiffusionTask(config)
    reset_accelerate_state()
    return Engine(config, task)


def command(stage, output_dir: Path, *flags: str) -> list[str]:
    name, _, config_file = stage
    script = REPO / SCRIPTS[name][0]
    return [
        sys.executable,
        str(WORKER),
        str(script),
        "--config",
        str(config_file),
        "--output_dir",
        str(output_dir),
        *flags,
    ]


def final_weights(stage, output_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(output_dir / SCRIPTS[stage[0]][3])


@pytest.mark.slow
def test_kill_9_during_a_checkpoint_then_resume_is_bit_identical(stage, tmp_path):
    import os

    # The uninterrupted reference runs in this process (what the script's `main` runs, on one
    # thread like the subprocesses): only the killed run needs a process of its own, and the
    # resumed one checks the script's command line end to end.
    engine_of(stage, tmp_path / "reference").run()
    env = {**os.environ, **ENV}
    run = tmp_path / "run"
    killed = subprocess.run(
        command(stage, run), env={**env, "FAULT_KILL_IN_SAVE": "checkpoint-6"}, capture_output=True, text=True
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-2", "checkpoint-4"]
    resumed = subprocess.run(
        command(stage, run, "--resume_from_checkpoint", "latest"), env=env, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and "checkpoint-4" in resumed.stdout
    assert not (run / LOCK_FILE).exists()  # a clean finish removes the lock file
    assert (run / "loss.png").is_file()
    assert "loss_type" not in killed.stderr + resumed.stderr + resumed.stdout  # no transformers loss warning
    expected, actual = final_weights(stage, tmp_path / "reference"), final_weights(stage, run)
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key


def poison(engine: Engine, from_call: int) -> None:
    """The trained module's output becomes NaN from its `from_call`-th forward call on."""
    calls = []

    def hook(module, args, output):
        calls.append(1)
        if len(calls) >= from_call:
            field = "logits" if hasattr(output, "logits") else "sample"
            setattr(output, field, getattr(output, field) * float("nan"))
        return output

    engine.unwrap(engine.parts[0].module).register_forward_hook(hook)


def test_a_nan_streak_stops_the_run_before_anything_is_saved_from_it(stage, tmp_path):
    engine = engine_of(stage, tmp_path / "run", "--max_consecutive_nonfinite_steps", "3")
    poison(engine, from_call=4)  # steps 4, 5, 6 diverge
    with pytest.raises(
        NonFiniteLossError, match=r"3 steps in a row .*up to step 6.*Last good checkpoint: .*checkpoint-2"
    ):
        engine.run()
    assert engine.nonfinite.total == 3 and [p.name for p in list_checkpoints(tmp_path / "run")] == ["checkpoint-2"]
    assert not (tmp_path / "run" / SCRIPTS[stage[0]][3]).exists()  # no final model from a failed run


def test_a_second_run_on_the_same_folder_is_refused(stage, tmp_path):
    import os

    first = engine_of(stage, tmp_path / "run")
    with pytest.raises(OutputDirError, match=rf"in use by another training run \(process {os.getpid()} on "):
        engine_of(stage, tmp_path / "run")
    first.release_output_dir()
    engine_of(stage, tmp_path / "run").release_output_dir()  # free again


def test_gradient_accumulation_reads_every_micro_batch(stage, tmp_path):
    engine = engine_of(stage, tmp_path / "run", "--gradient_accumulation_steps", "2", "--max_train_steps", "3")
    metrics = engine.run().metrics
    assert engine.batches.state_dict()["position"] == 3 * 2 * 4  # 3 steps of 2 micro-batches of 4 images
    assert metrics["details"]["images_seen"] == 3 * 2 * 4 and metrics["details"]["global_step"] == 3


def test_the_report_times_the_training_loop_in_wall_and_cpu_seconds(stage, tmp_path, monkeypatch):
    """A step's sleep counts in wall time only, its computing in both (metrics.json's details), so
    a benchmark on a loaded machine can read the CPU time its loop took."""
    engine = engine_of(stage, tmp_path / "run", "--max_train_steps", "2", "--checkpointing_steps", "0")
    loss = engine.task.compute_loss

    def slow_loss(engine, batch):
        time.sleep(0.3)
        computed_until = time.process_time() + 0.2
        while time.process_time() < computed_until:
            pass
        return loss(engine, batch)

    monkeypatch.setattr(engine.task, "compute_loss", slow_loss)
    details = engine.run().metrics["details"]
    wall, cpu = details["train_seconds_this_session"], details["train_cpu_seconds_this_session"]
    assert cpu >= 2 * 0.2 and wall >= 2 * (0.3 + 0.2)
    assert cpu < wall - 0.3, (wall, cpu)  # the sleeps are not CPU time


# -- second stages from a tokenised dataset (latentcode-tokenize output) -----------------------


@pytest.fixture(scope="module")
def tokenised(stage, tmp_path_factory):
    """(stage, one-shard parquet of 120 real digits, its tokenised dataset): a one-shard source
    without unreadable files, so on-the-fly and tokenised runs read the same images in the same
    order (`latentcode.training.codes`)."""
    import datasets

    from latentcode.data import load_image_stream
    from latentcode.tokenize import tokenize

    folder = tmp_path_factory.mktemp(f"{stage[0]}-tokenised")
    images = [example["image"] for _, example in zip(range(120), load_image_stream("builtin:digits"))]
    source = datasets.Dataset.from_dict({"image": images}, features=datasets.Features({"image": datasets.Image()}))
    (folder / "source").mkdir()
    source.to_parquet(folder / "source" / "train-00000-of-00001.parquet")
    from transformers import AutoModel

    model = AutoModel.from_pretrained(yaml.safe_load(stage[2].read_text())["pretrained_model_name_or_path"])
    tokenize(model, folder / "codes", train_data_dir=str(folder / "source"), rows_per_shard=50, progress=False)
    return stage, folder


def tokenised_engine(tokenised, output_dir: Path, from_codes: bool, *flags: str) -> Engine:
    stage, folder = tokenised
    data = (
        ["--codes_dataset" if stage[0] == "prior" else "--latents_dataset", str(folder / "codes")]
        if from_codes
        else ["--train_data_dir", str(folder / "source")]
    )
    no_flips = ["--no_random_flip", "--center_crop", "--shuffle_buffer_size", "40"]
    return engine_of(stage, output_dir, *data, *no_flips, *flags)


def test_training_from_tokenised_data_equals_encoding_on_the_fly(tokenised, tmp_path):
    """Same seed, same first-step (and every) loss, same validation metric, to rounding."""
    on_the_fly = tokenised_engine(tokenised, tmp_path / "fly", False, "--max_train_steps", "3").run()
    from_codes = tokenised_engine(tokenised, tmp_path / "codes", True, "--max_train_steps", "3").run()
    print("losses on the fly", on_the_fly.losses, "from codes", from_codes.losses)
    assert from_codes.losses == pytest.approx(on_the_fly.losses, rel=1e-4)
    assert from_codes.metrics["metrics"] == pytest.approx(on_the_fly.metrics["metrics"], rel=1e-4)
    assert from_codes.metrics["data"]["source"] == str(tokenised[1] / "codes")
    assert from_codes.metrics["data"]["num_images"] == on_the_fly.metrics["data"]["num_images"] == 4


def test_tokenised_data_of_another_model_is_refused(tokenised, tmp_path):
    stage, folder = tokenised
    family = SCRIPTS[stage[0]][1]
    other = tiny_model(family, seed=1, in_channels=1, **({"codebook_size": 32} if family == "vqvae" else {}))
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="holds codes of .*other weights.*tokenise the data with this model"):
        tokenised_engine(tokenised, tmp_path / "run", True, "--pretrained_model_name_or_path", str(tmp_path / "other"))


def test_training_from_tokenised_data_resumes_exactly(tokenised, tmp_path):
    import shutil

    steps = ["--max_train_steps", "4", "--checkpointing_steps", "2"]
    tokenised_engine(tokenised, tmp_path / "reference", True, *steps).run()
    shutil.copytree(tmp_path / "reference" / "checkpoint-2", tmp_path / "resumed" / "checkpoint-2")
    resumed = tokenised_engine(tokenised, tmp_path / "resumed", True, *steps, "--resume_from_checkpoint", "latest")
    assert resumed.batches.state_dict()["position"] == 2 * 4  # the data position came back with the checkpoint
    resumed.run()
    expected, actual = (
        final_weights(tokenised[0], tmp_path / "reference"),
        final_weights(tokenised[0], tmp_path / "resumed"),
    )
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key


def test_tokenised_data_of_another_resolution_is_refused(tokenised, tmp_path):
    with pytest.raises(ValueError, match=r"holds codes of shape .*this run needs .*tokenise at this resolution"):
        tokenised_engine(tokenised, tmp_path / "run", True, "--resolution", "32")
