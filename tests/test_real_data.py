"""Real images from ../shared/datasets (skipped where absent): high-resolution evaluation on
Kodak, the CIFAR-10 training preset, and the default recipe's quality on CIFAR-10."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import PIL.Image
import pytest
import torch
import yaml
from helpers import require_shared_dataset, tiny_model

from latentcode import VQVAEConfig, VQVAEModel
from latentcode.data import FullResolutionTransform
from latentcode.evaluation import psnr
from latentcode.evaluation.cli import main as eval_main

REPO = Path(__file__).resolve().parents[1]


def test_kodak_full_resolution_evaluation_tiles_large_images(tmp_path):
    kodak = require_shared_dataset("kodak")
    folder = tmp_path / "kodak"
    folder.mkdir()
    names = ["kodim01.png", "kodim04.png"]  # 768x512 landscape and 512x768 portrait
    for name in names:
        shutil.copy(kodak / name, folder / name)
    # 16x16 sample size, downsampling 2; no attention, whose cost grows with the square of the
    # latent grid (the untiled reference below runs the whole 768x512 image).
    model = tiny_model(
        "vqvae", codebook_size=16, block_out_channels=(8, 16), attention_levels=(), mid_block_add_attention=False
    )
    model.save_pretrained(tmp_path / "model")
    output = tmp_path / "eval"
    argv = [
        "--pretrained_model_name_or_path",
        str(tmp_path / "model"),
        "--train_data_dir",
        str(folder),
        "--full_resolution",
        "--tile_sample_size",
        "128",
    ]
    assert eval_main(argv + ["--no_fid", "--no_lpips", "--output_dir", str(output)]) == 0
    saved = json.loads((output / "metrics.json").read_text())
    assert saved["metrics"]["num_images"] == 2 and saved["details"]["resolution"] == "full"
    assert saved["details"]["tile_sample_size"] == 128

    # The same numbers from the model API, image by image at full size with 128-pixel tiles.
    transform = FullResolutionTransform(3, model.downsampling_factor)
    model.enable_tiling(128)
    tiled = []
    for name in sorted(names):  # the image folder is read in file-name order
        pixels = transform(PIL.Image.open(folder / name))[None]
        assert pixels.shape[2:] in {(512, 768), (768, 512)}
        with torch.no_grad():
            tiled.append(float(psnr(model.decode_indices(model.encode(pixels).indices).sample.float(), pixels)))
    assert saved["per_image"]["psnr"] == pytest.approx(tiled, abs=1e-4)
    model.disable_tiling()
    with torch.no_grad():  # tiles were used: the whole (last) image at once gives another PSNR
        whole = float(psnr(model.decode_indices(model.encode(pixels).indices).sample.float(), pixels))
    assert abs(whole - tiled[-1]) > 1e-3


def test_cifar10_preset_trains_offline_from_the_parquet_shards(tmp_path, fresh_accelerate_state):
    """The preset as a user runs it with a local copy: only the data source, the budget and the
    width change; the quantizer recipe, the image column and everything else come from the file."""
    from latentcode.training import parse_args, train

    cifar10 = require_shared_dataset("cifar10")
    preset = REPO / "training" / "configs" / "vqvae_cifar10.yaml"
    values = yaml.safe_load(preset.read_text())
    assert values["data"]["dataset_name"] == "uoft-cs/cifar10" and values["data"]["image_column"] == "img"
    config = parse_args(
        ["--config", str(preset), "--dataset_name", "none", "--train_data_dir", str(cifar10 / "train")]
        + ["--validation_split", "none", "--output_dir", str(tmp_path / "run"), "--max_train_steps", "3"]
        + ["--train_batch_size", "4", "--num_validation_images", "4", "--mixed_precision", "no"]
        + ["--report_to", "none", "--checkpointing_steps", "0", "--validation_steps", "0", "--lr_warmup_steps", "1"]
        + ["--shuffle_buffer_size", "16", "--model.block_out_channels=[16, 32, 32]", "--model.norm_num_groups=8"]
    )
    assert config.data.image_column == "img" and config.data.train_data_dir == str(cifar10 / "train")
    train(config)
    model = VQVAEModel.from_pretrained(tmp_path / "run")
    expected = VQVAEConfig(**{**values["model"], "block_out_channels": [16, 32, 32], "norm_num_groups": 8})
    for key in ("quantizer", "codebook_size", "latent_channels", "quantizer_config"):
        assert getattr(model.config, key) == getattr(expected, key), key
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    details = metrics["details"]
    assert details["global_step"] == 3 and details["images_seen"] == 12 and details["corrupt_images"] == 0


def load_benchmark():
    """benchmarks/bench_quality.py as a module: the test trains its rows the benchmark's way."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_quality", REPO / "benchmarks" / "bench_quality.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_default_recipe_beats_diffusers_quantizer_on_cifar10():
    """`VQVAEConfig()` with only sizes set against diffusers' `VQModel` (its own quantizer) with
    the same initial backbone weights, data order, batch, optimiser and steps; test split."""
    cifar10 = require_shared_dataset("cifar10")
    bench = load_benchmark()
    # 100 steps (seeds 0-3 of both models' initialisation): ours ahead by 2.10-3.34 dB, codebook
    # usage 0.980-0.992 (0.973-0.980 over the training window); 150 steps gave 1.32-2.55 dB.
    steps, batch_size, codebook_size = 100, 8, 512
    train_images = bench.load_images(None, str(cifar10 / "train"), "train", "img", steps * batch_size)
    test_images = bench.load_images(None, str(cifar10 / "test"), "test", "img", 256)
    rows = [
        bench.diffusers_row(codebook_size),
        bench.latentcode_row(codebook_size, codebook_size=codebook_size),  # the default recipe
    ]
    bench.run(rows, train_images, test_images, steps, batch_size, 1e-3, steps, 0, log=lambda message: None)
    diffusers, ours = (row.final for row in rows)
    assert ours["psnr"] > diffusers["psnr"] + 1.0, (ours, diffusers)
    assert ours["usage"] >= 0.95, ours
    assert rows[1].model.quantizer.codebook_usage >= 0.95  # the training window agrees
