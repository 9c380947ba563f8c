"""latentcode-tokenize: codes equal to the model's own encode, every readable image once (after a
crash, with two processes), the source's columns kept, clear errors on bad input."""

from __future__ import annotations

import io
import json
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import time

import datasets
import numpy as np
import PIL.Image
import pytest
import torch

from latentcode import AutoencoderConfig, AutoencoderModel, VAEConfig, VAEModel, VQVAEConfig, VQVAEModel
from latentcode.data import ImageTransform, decode_image, load_image_stream
from latentcode.tokenize import INFO_FILE, PARTS, load_codes, push_codes_to_hub, tokenize

SMALL = dict(block_out_channels=(16, 32), layers_per_block=1, latent_channels=4, norm_num_groups=8)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}


def _vqvae(seed: int = 0, channels: int = 1, **overrides) -> VQVAEModel:
    torch.manual_seed(seed)
    config = VQVAEConfig(in_channels=channels, **{**SMALL, "sample_size": 8, "codebook_size": 64, **overrides})
    return VQVAEModel(config).eval()


def _digits_test_pixels(flip: bool = False) -> torch.Tensor:
    """The test split of the embedded digits as the model's preprocessing gives them."""
    images = [decode_image(e["image"]) for e in load_image_stream("builtin:digits", split="test")]
    pixels = torch.stack([ImageTransform(8, 1)(image, random.Random(0)) for image in images])
    return pixels.flip(-1) if flip else pixels


def test_vqvae_codes_equal_the_models_encode_with_flipped_copies(tmp_path):
    model = _vqvae()
    info = tokenize(
        model, tmp_path / "codes", dataset_name="builtin:digits", split="test", rows_per_shard=50, batch_size=16,
        flip_copies=True, progress=False,
    )  # fmt: skip
    codes = datasets.load_dataset(str(tmp_path / "codes"), split="test")  # plain datasets loads it, as split test
    assert codes.num_rows == info["rows"] == 2 * 179 and info["shards"] == 4 and info["corrupt_files"] == 0
    shards = sorted(path.name for path in (tmp_path / "codes" / "data").iterdir())
    assert shards == [f"test-{unit:05d}-of-00004.parquet" for unit in range(4)]  # named as `datasets` names them
    assert info["bits_per_image"] == 16 * 6  # 4x4 tokens of log2(64) bits
    with torch.no_grad():
        expected = {flip: model.encode_to_sequence(_digits_test_pixels(flip)) for flip in (False, True)}
    for row in codes:
        index = int(row["key"])
        assert row["latent_shape"] == [4, 4]
        assert row["indices"] == expected[row["flipped"]][index].tolist(), row["key"]
    keys = sorted((int(row["key"]), row["flipped"]) for row in codes)
    assert keys == sorted((i, flip) for i in range(179) for flip in (False, True))  # each once
    card = (tmp_path / "codes" / "README.md").read_text()
    assert (
        f"`{info['config_hash']}`" in card
        and "| bits per image | 96.0 (16 tokens x log2(64)) |" in card
        and "| rows | 358 " in card
    )


def _labelled_parquet(folder, count: int = 30, broken=(7,)):
    rng = np.random.default_rng(0)
    images = []
    for index in range(count):
        buffer = io.BytesIO()
        PIL.Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(buffer, format="PNG")
        images.append({"bytes": buffer.getvalue() if index not in broken else b"broken", "path": None})
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"])})
    table = datasets.Dataset.from_dict({"img": images, "label": [i % 3 for i in range(count)]}, features=features)
    folder.mkdir()
    table.to_parquet(folder / "train-00000-of-00001.parquet")
    return images


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_vae_latents_keep_labels_and_count_a_corrupt_row_once(tmp_path, dtype):
    images = _labelled_parquet(tmp_path / "source")
    torch.manual_seed(0)
    model = VAEModel(VAEConfig(in_channels=3, sample_size=8, **SMALL)).eval()
    info = tokenize(
        model, tmp_path / "codes", train_data_dir=str(tmp_path / "source"), rows_per_shard=8, batch_size=5,
        latent_dtype=dtype, num_workers=1, progress=False,
    )  # fmt: skip
    assert info["rows"] == 29 and info["examples"] == 30 and info["corrupt_files"] == 1
    codes = load_codes(tmp_path / "codes", expected_model=model)
    assert codes.features["label"] == datasets.ClassLabel(names=["a", "b", "c"])
    assert codes.features["latent_mean"].feature.dtype == dtype
    codes = codes[:]  # all rows, as tensors
    keys = [int(key) for key in codes["key"]]
    assert keys == [i for i in range(30) if i != 7]  # parquet row indices, the broken one left out
    assert codes["label"].tolist() == [i % 3 for i in keys]
    pixels = torch.stack([ImageTransform(8, 3).load(images[i], random.Random(0)) for i in keys])
    with torch.no_grad():
        posterior = model.encode(pixels).latent_dist
    atol = 0 if dtype == "float32" else 2e-3
    torch.testing.assert_close(codes["latent_mean"].float(), posterior.mean.flatten(1), rtol=1e-3, atol=atol)
    torch.testing.assert_close(codes["latent_std"].float(), posterior.std.flatten(1), rtol=1e-3, atol=atol)
    assert codes["latent_shape"][0].tolist() == [4, 4, 4]
    # Bits per image: the model's own cost of the code (`code_size`, the KL in bits), over the rows.
    with torch.no_grad():
        expected_bits = model.code_size(model.encode(pixels, return_dict=True))
    assert info["bits_per_image"] == pytest.approx(expected_bits.bits.mean().item(), rel=1e-5)
    assert info["bits_meaning"] == expected_bits.meaning == "KL to the prior N(0, I)"


def test_autoencoder_codes_of_an_image_folder_are_keyed_by_relative_path(tmp_path):
    rng = np.random.default_rng(1)
    for folder in ("cats", "dogs"):
        (tmp_path / "source" / folder).mkdir(parents=True)
        for index in range(3):
            PIL.Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
                tmp_path / "source" / folder / f"{index}.png"
            )
    torch.manual_seed(0)
    model = AutoencoderModel(AutoencoderConfig(in_channels=3, sample_size=8, **SMALL)).eval()
    info = tokenize(model, tmp_path / "codes", train_data_dir=str(tmp_path / "source"), progress=False)
    assert info["bits_per_image"] == 32 * 4 * 4 * 4 and info["bits_meaning"] == "64 float32 values, uncompressed"
    codes = load_codes(tmp_path / "codes", expected_model=model)[:]
    assert codes["key"] == [f"{folder}/{i}.png" for folder in ("cats", "dogs") for i in range(3)]
    assert codes["label"].tolist() == [0, 0, 0, 1, 1, 1]
    first = ImageTransform(8, 3)(PIL.Image.open(tmp_path / "source" / "cats" / "0.png"), random.Random(0))
    with torch.no_grad():
        expected = model.encode(first[None]).latents.flatten(1)[0]
    torch.testing.assert_close(codes["latents"][0], expected, rtol=1e-5, atol=1e-6)


def _keys(folder, split: str = "train") -> list[tuple[str, bool]]:
    codes = datasets.load_dataset(str(folder), split=split)[:]
    return sorted(zip(codes["key"], codes["flipped"]))


def test_a_crash_mid_run_resumes_without_duplicates_or_gaps(tmp_path, monkeypatch, caplog):
    import latentcode.tokenize.writer as module

    model = _vqvae()
    arguments = dict(dataset_name="builtin:digits", split="test", rows_per_shard=20, batch_size=8, progress=False)
    written, write_unit = [], module.write_unit

    def crash_after_three(output_dir, name, table, note):
        if len(written) == 3:  # a half-written file, as a kill during the write leaves
            (output_dir / PARTS / f".{name}.999.tmp").write_bytes(b"PAR1 half")
            raise KeyboardInterrupt
        written.append(note["unit"])
        write_unit(output_dir, name, table, note)

    monkeypatch.setattr(module, "write_unit", crash_after_three)
    with pytest.raises(KeyboardInterrupt):
        tokenize(model, tmp_path / "codes", **arguments)
    assert not (tmp_path / "codes" / INFO_FILE).exists() and not (tmp_path / "codes" / "README.md").exists()
    with pytest.raises(ValueError, match="unfinished latentcode-tokenize output: rerun the same"):
        load_codes(tmp_path / "codes")
    # One shard as the previous version named them (every split's "train-"): resumed just the same.
    os.replace(
        tmp_path / "codes" / PARTS / "test-00001-of-00009.parquet", tmp_path / "codes" / PARTS / "train-00001.parquet"
    )
    monkeypatch.setattr(module, "write_unit", write_unit)
    resumed = []
    monkeypatch.setattr(
        module,
        "write_unit",
        lambda output_dir, name, table, note: resumed.append(note["unit"]) or write_unit(output_dir, name, table, note),
    )
    with caplog.at_level(logging.INFO, logger="latentcode.tokenize"):
        info = tokenize(model, tmp_path / "codes", **arguments)
    assert sorted(resumed) == [3, 4, 5, 6, 7, 8]  # only the missing units are encoded again
    assert (
        f"resuming the unfinished tokenisation in {str(tmp_path / 'codes')!r}: 3 of 9 shards (60 of 179 images) are "
        "written; encoding the other 6 (119 images)"
    ) in caplog.text
    assert info["rows"] == 179 and _keys(tmp_path / "codes", "test") == sorted((str(i), False) for i in range(179))
    shards = sorted(path.name for path in (tmp_path / "codes" / "data").iterdir())
    assert shards == [f"test-{unit:05d}-of-00009.parquet" for unit in range(9)]
    # Other settings on an unfinished folder are refused; a finished one is left as it is.
    (tmp_path / "other" / PARTS).mkdir(parents=True)
    (tmp_path / "other" / PARTS / "settings.json").write_text(json.dumps({"resolution": 16}))
    with pytest.raises(ValueError, match=r"unfinished tokenisation with other settings \(.*resolution: 16 -> 8"):
        tokenize(model, tmp_path / "other", **arguments)


def test_load_codes_reads_the_split_written_and_folders_of_the_previous_naming(tmp_path):
    """Shards are named by the split tokenised; `load_codes` reads it by default or by name, and
    still reads folders whose shards are all named train-NNNNN.parquet (written before)."""
    model = _vqvae()
    tokenize(model, tmp_path / "codes", dataset_name="builtin:digits", split="test", rows_per_shard=100, progress=False)
    expected = load_codes(tmp_path / "codes")[:]["indices"]
    assert expected.shape == (179, 16)
    torch.testing.assert_close(load_codes(tmp_path / "codes", split="test")[:]["indices"], expected)
    with pytest.raises(ValueError, match=r"holds the codes of split 'test' only, not 'validation'; load_codes\(path\)"):
        load_codes(tmp_path / "codes", split="validation")

    old = tmp_path / "old"  # the same codes as the previous version laid them out
    (old / "data").mkdir(parents=True)
    for unit in range(2):
        os.replace(
            tmp_path / "codes" / "data" / f"test-{unit:05d}-of-00002.parquet",
            old / "data" / f"train-{unit:05d}.parquet",
        )
    info = json.loads((tmp_path / "codes" / INFO_FILE).read_text())
    del info["dataset_split"]
    (old / INFO_FILE).write_text(json.dumps(info))
    (old / "README.md").write_text((tmp_path / "codes" / "README.md").read_text())
    for split in (None, "test", "train"):
        torch.testing.assert_close(load_codes(old, expected_model=model, split=split)[:]["indices"], expected)


def _tokenize_command(model_dir, output_dir, *extra) -> list[str]:
    return [
        *("-m", "latentcode.tokenize", "--pretrained_model_name_or_path", str(model_dir)),
        *("--dataset_name", "builtin:photos", "--resolution", "32", "--rows_per_shard", "40", "--batch_size", "8"),
        *("--dataloader_num_workers", "0", "--output_dir", str(output_dir), *extra),
    ]


def _photos_model(tmp_path):
    model = _vqvae(channels=3, block_out_channels=(32, 64, 64), sample_size=32)
    model.save_pretrained(tmp_path / "model")
    return model


@pytest.fixture(scope="module")
def killed_then_rerun(tmp_path_factory):
    """A one-process `latentcode-tokenize` of the photos killed (-9) once it wrote 2 shards, then
    run again to the end: (folder with "model" and "codes", shards done at the kill, the rerun).
    The two-process test compares its shards with these: one process, once more, and no second
    run of the same command."""
    folder = tmp_path_factory.mktemp("tokenize-killed")
    _photos_model(folder)
    command = [sys.executable, *_tokenize_command(folder / "model", folder / "codes")]
    process = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    parts = folder / "codes" / PARTS
    deadline = time.monotonic() + 300
    while len(list(parts.glob("train-*.parquet"))) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_at_kill = len(list(parts.glob("train-*.parquet")))
    assert process.returncode == -signal.SIGKILL and not (folder / "codes" / "README.md").exists()
    finished = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    return folder, done_at_kill, finished


@pytest.mark.slow
def test_kill_9_then_rerun_gives_every_image_once(killed_then_rerun):
    folder, done_at_kill, finished = killed_then_rerun
    info = json.loads((folder / "codes" / INFO_FILE).read_text())
    total = len(list(load_image_stream("builtin:photos")))
    assert 2 <= done_at_kill < info["shards"]  # killed mid-run
    assert _keys(folder / "codes") == sorted((str(i), False) for i in range(total))
    assert "images" in finished.stdout and "bits per image" in finished.stdout
    # The rerun says it resumes, and how far the killed run got (the shards of 40 images each).
    assert (
        f"resuming the unfinished tokenisation in {str(folder / 'codes')!r}: {done_at_kill} of {info['shards']} "
        in (finished.stderr)
    )
    assert f"({done_at_kill * 40:,} of {total:,} images) are written; encoding the other " in finished.stderr


@pytest.mark.slow
def test_two_processes_write_disjoint_shards_equal_to_one_process(killed_then_rerun, tmp_path):
    folder = killed_then_rerun[0]  # its model, and its codes: one process's
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    launch = [
        *(sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"),
        *("--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port)),
    ]
    env = {**ENV, "ACCELERATE_USE_CPU": "1"}
    two = subprocess.run([*launch, *_tokenize_command(folder / "model", tmp_path / "two")], env=env,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    codes = {name: datasets.load_dataset(str(path), split="train") for name, path in
             (("one", folder / "codes"), ("two", tmp_path / "two"))}  # fmt: skip
    one_rows, two_rows = codes["one"][:], codes["two"][:]
    assert two_rows["key"] == one_rows["key"] == [str(i) for i in range(codes["one"].num_rows)]
    assert two_rows["indices"] == one_rows["indices"]


def test_bad_inputs_fail_clearly(tmp_path, monkeypatch):
    model = _vqvae()
    (tmp_path / "a_file").write_text("")
    with pytest.raises(OSError, match=r"cannot write to --output_dir .*a_file/codes.*choose a folder you can write to"):
        tokenize(model, tmp_path / "a_file" / "codes", dataset_name="builtin:digits", progress=False)
    with pytest.raises(ValueError, match="latent_dtype must be one of"):
        tokenize(model, tmp_path / "x", latent_dtype="int8", progress=False)

    tokenize(model, tmp_path / "codes", dataset_name="builtin:digits", split="test", progress=False)
    other = _vqvae(seed=1)
    with pytest.raises(ValueError, match="same config as the expected model, other weights"):
        load_codes(tmp_path / "codes", expected_model=other)
    bigger = _vqvae(codebook_size=128)
    with pytest.raises(ValueError, match=r"holds codes of another model: vqvae .*config hash [0-9a-f]{12}, but the"):
        load_codes(tmp_path / "codes", expected_model=bigger)
    with pytest.raises(ValueError, match="is not a latentcode-tokenize output"):
        load_codes(tmp_path)

    shard = next((tmp_path / "codes" / "data").glob("*.parquet"))
    table = datasets.Dataset.from_parquet(str(shard)).remove_columns("indices")
    table.to_parquet(shard)
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['indices'\] that vqvae codes need"):
        load_codes(tmp_path / "codes", expected_model=model)

    from huggingface_hub import HfApi

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(HfApi, "create_repo", offline)
    with pytest.raises(
        RuntimeError, match=r"the tokenised dataset is saved in .*codes, but uploading it to the Hub as me/codes failed "
        r"\(ConnectionError: no network\)\. Nothing is lost: .*; rerun the same command with --push_to_hub"
    ):  # fmt: skip
        push_codes_to_hub(tmp_path / "codes", "me/codes")
    assert (tmp_path / "codes" / "README.md").exists()  # the local dataset stays complete
