"""Streamed data: sources, image column, transforms, sharding, corrupt images, exact resume."""

from __future__ import annotations

import io
import logging
import random
import tarfile
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import pyarrow.parquet as pq
import pytest
import torch

from latentcode.data import (
    EpochOrder,
    ImageBatches,
    ImageTransform,
    build_image_data,
    decode_image,
    image_data_from_config,
    load_image_stream,
    resolve_image_column,
)
from latentcode.data.sources import MemorySource
from latentcode.image_processing import LatentCodeImageProcessor


def _digit_images(count: int) -> list[PIL.Image.Image]:
    from sklearn.datasets import load_digits

    pixels = np.round(load_digits().images[:count] * (255.0 / 16.0)).astype(np.uint8)
    return [PIL.Image.fromarray(image, mode="L") for image in pixels]


def _as_expected(image: PIL.Image.Image) -> torch.Tensor:
    """What the pipeline must give for an 8x8 grey image at resolution 8: exact pixels in [-1, 1]."""
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0)[None]


def _sorted_rows(images: torch.Tensor) -> list[tuple]:
    return sorted(tuple(row.tolist()) for row in images.flatten(1))


def test_builtin_digits_are_sklearn_digits_split_in_train_and_test():
    splits = {
        split: [
            np.asarray(decode_image(example["image"])) for example in load_image_stream("builtin:digits", split=split)
        ]
        for split in ("train", "test")
    }
    expected = [np.asarray(image) for image in _digit_images(1797)]
    # Every tenth image is the test split: the two partition sklearn's 1797 digits.
    assert len(splits["test"]) == 179 and len(splits["train"]) == 1797 - 179
    for index in (0, 500, 1617):
        np.testing.assert_array_equal(splits["train"][index], expected[index + index // 9])
    for index in (0, 100, 178):
        np.testing.assert_array_equal(splits["test"][index], expected[10 * index + 9])
    with pytest.raises(
        ValueError, match=r"builtin:digits has no split 'validation'; its splits are \['test', 'train'\]"
    ):
        load_image_stream("builtin:digits", split="validation")


def test_validation_split_test_holds_out_the_test_split():
    transform = ImageTransform(8, channels=1)
    batches, validation = build_image_data(
        transform=transform,
        batch_size=100,
        dataset_name="builtin:digits",
        validation_split="test",
        num_validation_images=20,
        shuffle_buffer_size=1,
    )
    test_images = [
        _as_expected(decode_image(example["image"])) for example in load_image_stream("builtin:digits", split="test")
    ]
    torch.testing.assert_close(validation, torch.stack(test_images[:20]))
    trained_on = set()
    while batches.epoch == 0:
        trained_on |= set(_sorted_rows(batches.next_batch()))
    assert not trained_on & set(_sorted_rows(torch.stack(test_images)))  # no test image is trained on
    assert len(trained_on) > 1000  # the whole train split is (distinct digit images: some repeat)


def test_builtin_photos_are_rgb_patches_of_skimage_photos():
    import skimage.data

    images = [decode_image(example["image"]) for example in load_image_stream("builtin:photos")]
    assert len(images) > 500 and all(image.size == (64, 64) and image.mode == "RGB" for image in images)
    np.testing.assert_array_equal(np.asarray(images[0]), skimage.data.astronaut()[:64, :64])


def test_transform_resize_crop_flip_matches_the_image_processor_and_pil():
    image = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8))
    centre = ImageTransform(20, channels=3)(image, random.Random(0))
    # Training sees exactly what LatentCodeImageProcessor gives at inference ...
    processor = LatentCodeImageProcessor(size=20, num_channels=3)
    torch.testing.assert_close(centre, processor(image)["pixel_values"][0])
    # ... which is PIL's bicubic resize and centre crop up to interpolation rounding.
    reference = image.resize((30, 20), PIL.Image.Resampling.BICUBIC).crop((5, 0, 25, 20))
    reference = torch.from_numpy(np.asarray(reference, np.float32) / 127.5 - 1).permute(2, 0, 1)
    assert (centre - reference).abs().mean() < 2 / 255

    grey = ImageTransform(20, channels=1)(image, random.Random(0))
    assert grey.shape == (1, 20, 20)
    grey_processor = LatentCodeImageProcessor(size=20, num_channels=1)
    torch.testing.assert_close(grey, grey_processor(image)["pixel_values"][0])

    random_crop = ImageTransform(20, channels=3, center_crop=False, random_flip=True)
    crops = {tuple(random_crop(image, random.Random(seed)).flatten()[:50].tolist()) for seed in range(12)}
    assert len(crops) > 3  # different crops and flips ...
    again = random_crop(image, random.Random(3))
    torch.testing.assert_close(again, random_crop(image, random.Random(3)))  # ... reproducible from the rng


def test_stream_from_local_parquet(tmp_path):
    images = _digit_images(12)
    table = datasets.Dataset.from_dict({"label": list(range(12)), "picture": images})
    table.cast_column("picture", datasets.Image()).to_parquet(tmp_path / "part-0.parquet")

    stream = load_image_stream(train_data_dir=str(tmp_path))
    assert resolve_image_column(stream) == "picture"  # found automatically
    batches, validation = build_image_data(
        transform=ImageTransform(8, channels=1), batch_size=5, train_data_dir=str(tmp_path), num_validation_images=2
    )
    torch.testing.assert_close(validation, torch.stack([_as_expected(image) for image in images[:2]]))
    seen = torch.cat([batches.next_batch() for _ in range(2)])  # one epoch: the 10 training images
    assert _sorted_rows(seen) == _sorted_rows(torch.stack([_as_expected(image) for image in images[2:]]))


def test_stream_from_image_folder_skips_and_counts_corrupt_images(tmp_path, caplog):
    images = _digit_images(6)
    for index, image in enumerate(images):
        image.save(tmp_path / f"{index}.png")
    (tmp_path / "3_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    truncated = io.BytesIO()
    images[0].save(truncated, format="PNG")
    (tmp_path / "9_truncated.png").write_bytes(truncated.getvalue()[:40])

    batches, _ = build_image_data(
        transform=ImageTransform(8, channels=1), batch_size=1, train_data_dir=str(tmp_path), num_validation_images=1
    )
    seen = []
    while batches.epoch == 0:
        seen.append(batches.next_batch())
    while batches.epoch < 3:  # two more epochs meet the same broken files again
        batches.next_batch()
    assert batches.corrupt_images == 2  # files, not occurrences
    for name in ("3_broken.png", "9_truncated.png"):  # each named once in the log, not once per epoch
        assert sum(name in record.getMessage() for record in caplog.records) == 1, caplog.text
    expected = torch.stack([_as_expected(image) for image in images])
    assert set(_sorted_rows(torch.cat(seen[:-1]))) <= set(_sorted_rows(expected))
    assert len(seen) - 1 == 5  # the 6 readable images minus the held-out validation image


def test_stream_from_webdataset_shards(tmp_path):
    images = _digit_images(6)
    for shard in range(2):
        with tarfile.open(tmp_path / f"shard-{shard}.tar", "w") as archive:
            for index in range(3 * shard, 3 * shard + 3):
                data = io.BytesIO()
                images[index].save(data, format="PNG")
                for name, payload in ((f"{index:04d}.png", data.getvalue()), (f"{index:04d}.cls", b"1")):
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    archive.addfile(info, io.BytesIO(payload))
    batches, validation = build_image_data(
        transform=ImageTransform(8, channels=1), batch_size=5, train_data_dir=str(tmp_path), num_validation_images=1
    )
    everything = torch.cat([validation, batches.next_batch()])
    assert _sorted_rows(everything) == _sorted_rows(torch.stack([_as_expected(image) for image in images]))


def test_each_process_reads_its_own_part():
    def first_epoch(rank: int) -> list[tuple]:
        batches, _ = build_image_data(
            transform=ImageTransform(8, channels=1),
            batch_size=1,
            dataset_name="builtin:digits",
            num_validation_images=4,
            rank=rank,
            world_size=2,
        )
        rows = []
        while batches.epoch == 0:
            rows.append(tuple(batches.next_batch().flatten().tolist()))
        return rows[:-1]  # the last one already belongs to epoch 1

    rank0, rank1 = first_epoch(0), first_epoch(1)
    assert len(rank0) + len(rank1) == 1618 - 4  # the train split of the digits, minus the held-out 4
    assert len(set(rank0) & set(rank1)) < 50  # only digits that happen to be pixel-identical are shared


def test_resumed_stream_continues_exactly():
    def make() -> ImageBatches:
        batches, _ = build_image_data(
            transform=ImageTransform(12, channels=1, center_crop=False, random_flip=True),
            batch_size=7,
            dataset_name="builtin:digits",
            num_validation_images=0,
            shuffle_buffer_size=50,
            seed=3,
        )
        return batches

    original = make()
    for _ in range(300):  # past the end of the first epoch (1618 / 7 = 231.1 batches)
        original.next_batch()
    state = original.state_dict()
    assert state["epoch"] == 1
    expected = [original.next_batch() for _ in range(3)]

    resumed = make()
    resumed.load_state_dict(state)
    for batch in expected:
        torch.testing.assert_close(resumed.next_batch(), batch, rtol=0, atol=0)


def test_bad_data_fails_clearly(tmp_path):
    stream = load_image_stream("builtin:digits")
    with pytest.raises(
        ValueError, match=r"image_column='pixels' is not a column of the dataset; its columns are \['image'\]"
    ):
        resolve_image_column(stream, "pixels")
    no_images = datasets.Dataset.from_dict({"text": ["a", "b"]}).to_iterable_dataset()
    with pytest.raises(ValueError, match="found no image column"):
        resolve_image_column(no_images)
    with pytest.raises(ValueError, match="unknown embedded dataset"):
        load_image_stream("builtin:cifar")
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match="holds no images"):
        load_image_stream(train_data_dir=str(tmp_path))

    batches = ImageBatches(MemorySource("nothing", []), ImageTransform(8, 1), batch_size=2)
    with pytest.raises(ValueError, match="holds no readable images"):
        batches.next_batch()


def test_validation_hold_out_is_filled_from_readable_images_and_counts_bad_ones(tmp_path, caplog):
    images = _digit_images(8)
    for index in range(3):  # the first files of the stream are unreadable
        (tmp_path / f"0{index}_bad.png").write_bytes(b"not an image")
    for index, image in enumerate(images):
        image.save(tmp_path / f"1{index}.png")
    batches, validation = build_image_data(
        transform=ImageTransform(8, channels=1), batch_size=1, train_data_dir=str(tmp_path), num_validation_images=2
    )
    # The hold-out is the first two *readable* images; the bad ones are counted there, once ...
    torch.testing.assert_close(validation, torch.stack([_as_expected(image) for image in images[:2]]))
    assert len(batches.held_out_corrupt) == 3
    assert all(f"0{index}_bad.png" in caplog.text for index in range(3))
    # ... and training gets the other six, none of the held-out ones, no bad file met again.
    seen = []
    while batches.epoch == 0:
        seen.append(batches.next_batch())
    assert _sorted_rows(torch.cat(seen[:-1])) == _sorted_rows(torch.stack([_as_expected(i) for i in images[2:]]))
    assert batches.corrupt_images == 0


# ----------------------------------------------------------------------------------------------
# Local split folders, offline Hub ids (issue 20 item 1)
# ----------------------------------------------------------------------------------------------

CIFAR10 = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10"
needs_cifar10 = pytest.mark.skipif(not CIFAR10.is_dir(), reason="the local CIFAR-10 copy (../shared/datasets/cifar10)")


@needs_cifar10
def test_a_local_cifar10_copy_trains_on_train_and_validates_on_test(caplog):
    batches, validation = build_image_data(
        transform=ImageTransform(32, channels=3),
        batch_size=4,
        train_data_dir=str(CIFAR10),
        image_column="img",
        validation_split="test",
        num_validation_images=3,
    )
    test = pq.read_table(CIFAR10 / "test" / "test-00000-of-00001.parquet", columns=["img"]).slice(0, 3)
    expected = [ImageTransform(32, 3).load(row["img"], random.Random(0)) for row in test.to_pylist()]
    torch.testing.assert_close(validation, torch.stack(expected), rtol=0, atol=0)
    assert batches.order.total == 50_000  # the whole train split, nothing held out of it
    assert batches.next_batch().shape == (4, 3, 32, 32)
    assert "holding out" not in caplog.text


def _parquet_folder(path: Path, images: list, shards: int = 1, prefix: str = "train", row_group_size=None):
    path.mkdir(parents=True, exist_ok=True)
    per_shard = -(-len(images) // shards)
    for shard in range(shards):
        part = images[shard * per_shard : (shard + 1) * per_shard]
        labels = list(range(shard * per_shard, shard * per_shard + len(part)))
        table = datasets.Dataset.from_dict({"img": part, "label": labels}).cast_column("img", datasets.Image())
        table.data.table  # noqa: B018 (materialised before writing)
        pq.write_table(
            table.data.table, path / f"{prefix}-{shard:05d}-of-{shards:05d}.parquet", row_group_size=row_group_size
        )


def test_a_folder_without_the_validation_split_holds_out_training_images_and_says_so(tmp_path, caplog):
    images = _digit_images(20)
    _parquet_folder(tmp_path / "train", images)
    with caplog.at_level(logging.WARNING):
        batches, validation = build_image_data(
            transform=ImageTransform(8, channels=1),
            batch_size=2,
            train_data_dir=str(tmp_path),
            validation_split="test",
            num_validation_images=3,
        )
    assert f"train_data_dir={str(tmp_path)!r} has no 'test' split (its splits: ['train'])" in caplog.text
    assert "holding out the first 3 readable images of the 'train' split for validation instead" in caplog.text
    assert "no validation split given" not in caplog.text  # said once, by the warning
    torch.testing.assert_close(validation, torch.stack([_as_expected(image) for image in images[:3]]))
    assert batches.order.total == 17
    with pytest.raises(ValueError, match=r"has no split 'training'; its splits are \['train'\] \(choose one with"):
        build_image_data(transform=ImageTransform(8, 1), batch_size=2, train_data_dir=str(tmp_path), split="training")


def test_a_folder_without_splits_says_how_many_images_it_holds_out_and_how_to_give_a_split(tmp_path, caplog):
    """Issue 33 item 10: without --validation_split, training holds the first readable images out
    of its own split and says so (how many, from which folder, how to give a split instead)."""
    images = _digit_images(20)
    (tmp_path / "0_bad.png").write_bytes(b"not an image")  # sorts before the digits: read, skipped
    for index, image in enumerate(images):
        image.save(tmp_path / f"1{index:02d}.png")
    with caplog.at_level(logging.INFO, logger="latentcode.data.batches"):
        batches, validation = build_image_data(
            transform=ImageTransform(8, channels=1), batch_size=2, train_data_dir=str(tmp_path), num_validation_images=4
        )
    torch.testing.assert_close(validation, torch.stack([_as_expected(image) for image in images[:4]]))
    assert batches.order.total == 21 - 5  # the four held out and the unreadable one met first
    said = [record for record in caplog.records if "no validation split given" in record.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.INFO
    message = said[0].getMessage()
    assert (
        f"holding 4 images out of training for validation, the first readable ones of train_data_dir={str(tmp_path)!r}, split 'train' (5 examples read, 1 unreadable skipped)"
        in message
    )
    assert (
        "To validate on images of a split of their own, give --validation_split NAME of a source that has one (a --train_data_dir whose train/ and test/"
        in message
    )

    caplog.clear()  # a source with another split names it
    with caplog.at_level(logging.INFO, logger="latentcode.data.batches"):
        build_image_data(transform=ImageTransform(8, channels=1), batch_size=2, dataset_name="builtin:digits")
    assert (
        "To validate on images training never sees: --validation_split test (the source's other splits: ['test'])"
        in caplog.text
    )
    caplog.clear()  # a validation split given: nothing held out of training, nothing said
    with caplog.at_level(logging.INFO, logger="latentcode.data.batches"):
        build_image_data(
            transform=ImageTransform(8, channels=1),
            batch_size=2,
            dataset_name="builtin:digits",
            validation_split="test",
        )
    assert "no validation split given" not in caplog.text


def test_an_unreachable_hub_dataset_points_to_train_data_dir(monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    expected = r"couldn't reach 'uoft-cs/cifar10' on the Hub \(.*\); for a local copy pass --train_data_dir DIR"
    with pytest.raises(ConnectionError, match=expected):
        build_image_data(transform=ImageTransform(32, 3), batch_size=2, dataset_name="uoft-cs/cifar10")
    with pytest.raises(ConnectionError, match=expected):
        load_image_stream("uoft-cs/cifar10", split="test")


# ----------------------------------------------------------------------------------------------
# Workers, the epoch order, resume in constant time (issue 21 items 1 and 2)
# ----------------------------------------------------------------------------------------------


def _random_images(count: int, size: int = 12, seed: int = 0) -> list[PIL.Image.Image]:
    rng = np.random.default_rng(seed)
    return [PIL.Image.fromarray(rng.integers(0, 256, (size, size + 4, 3), dtype=np.uint8)) for _ in range(count)]


def _write_sources(root: Path, images: list) -> dict[str, Path]:
    """The same images as a parquet folder (3 shards, row groups of 7), an image folder and
    three webdataset shards."""
    _parquet_folder(root / "parquet", images, shards=3, row_group_size=7)
    (root / "folder").mkdir()
    for index, image in enumerate(images):
        image.save(root / "folder" / f"{index:04d}.png")
    (root / "tar").mkdir()
    for shard in range(3):
        with tarfile.open(root / "tar" / f"shard-{shard}.tar", "w") as archive:
            for index in range(shard, len(images), 3):
                data = io.BytesIO()
                images[index].save(data, format="PNG")
                for name, payload in ((f"{index:04d}.png", data.getvalue()), (f"{index:04d}.cls", b"%d" % index)):
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    archive.addfile(info, io.BytesIO(payload))
    return {kind: root / kind for kind in ("parquet", "folder", "tar")}


def _batches(path, workers: int = 0, rank: int = 0, world_size: int = 1, seed: int = 5) -> ImageBatches:
    batches, _ = build_image_data(
        transform=ImageTransform(8, channels=3, center_crop=False, random_flip=True),
        batch_size=5,
        train_data_dir=str(path),
        num_validation_images=2,
        shuffle_buffer_size=9,
        seed=seed,
        rank=rank,
        world_size=world_size,
        num_workers=workers,
    )
    return batches


def test_the_epoch_order_is_a_permutation_split_between_processes_and_changes_per_epoch():
    lengths, skip = [7, 0, 12, 5], 3
    offsets = [0, 7, 7, 19]
    for world_size in (1, 2, 3):
        orders = [EpochOrder(lengths, skip, seed=1, window=4, rank=r, world_size=world_size) for r in range(world_size)]
        epochs = []
        for epoch in (0, 1):
            parts = [
                [offsets[s] + row for s, row in map(order.locate, [epoch] * order.length, range(order.length))]
                for order in orders
            ]
            every = [index for part in parts for index in part]
            assert sorted(every) == list(range(skip, 24))  # each example once, the held-out ones never
            assert max(map(len, parts)) - min(map(len, parts)) <= 24 // 4 // world_size  # balanced
            epochs.append(every)
        assert epochs[0] != epochs[1]  # reshuffled per epoch
    assert orders[0].total == 21 and orders[0].window <= 4


def test_workers_give_bit_identical_batches_and_exact_counts(tmp_path, caplog):
    images = _random_images(23)
    paths = _write_sources(tmp_path, images)
    (paths["folder"] / "0005_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (paths["folder"] / "0017_broken.png").write_bytes(b"not an image")
    for kind, path in paths.items():
        runs = {}
        for workers in (0, 1, 2):
            batches = _batches(path, workers)
            runs[workers] = [batches.next_batch() for _ in range(11)]  # more than two epochs
            assert batches.epoch == 2
            assert batches.corrupt_images == (2 if kind == "folder" else 0), kind
        for workers in (1, 2):
            for expected, batch in zip(runs[0], runs[workers]):
                torch.testing.assert_close(batch, expected, rtol=0, atol=0, msg=f"{kind}, {workers} workers")
    for name in ("0005_broken.png", "0017_broken.png"):  # logged once per run (3 runs), not per epoch
        assert sum(name in record.getMessage() for record in caplog.records) == 3, caplog.text


def _count_reads(source) -> list[int]:
    """Records the number of rows of every `source.read` from now on."""
    reads, read = [], source.read
    source.read = lambda shard, start, stop: reads.append(stop - start) or read(shard, start, stop)
    return reads


@pytest.mark.parametrize("kind", ["parquet", "folder", "tar"])
def test_resume_reads_one_window_whatever_the_position(tmp_path, kind):
    images = _random_images(41)
    path = _write_sources(tmp_path, images)[kind]
    original = _batches(path)
    batches = [original.next_batch() for _ in range(20)]  # two and a half epochs
    states = []
    replay = _batches(path)
    for _ in range(20):
        states.append(replay.state_dict())
        replay.next_batch()
    for step in (1, 4, 7, 12, 19):  # early, middle, late in an epoch, and later epochs
        resumed = _batches(path, workers=2 if step == 12 else 0)
        reads = _count_reads(resumed.examples.source)
        resumed.load_state_dict(states[step])
        torch.testing.assert_close(resumed.next_batch(), batches[step], rtol=0, atol=0, msg=f"step {step}")
        if step != 12:  # (workers read in their own processes)
            # One window (of <= 9 examples; a batch may reach into the next), not the epoch so far.
            assert sum(reads) <= 2 * resumed.order.window, (step, reads)


def test_processes_read_disjoint_parts_covering_the_epoch(tmp_path):
    images = _random_images(23)
    path = _write_sources(tmp_path, images)["tar"]

    def keys(rank: int, world_size: int) -> list[str]:
        batches = _batches(path, rank=rank, world_size=world_size)
        source, order = batches.examples.source, batches.order
        located = [order.locate(0, position) for position in range(order.length)]
        return [source.read(shard, row, row + 1)[0]["key"] for shard, row in located]

    one = keys(0, 1)
    two = [keys(0, 2), keys(1, 2)]
    assert len(one) == 21 and len(set(one)) == 21  # 23 minus the 2 held out, each once
    assert not set(two[0]) & set(two[1]) and set(two[0]) | set(two[1]) == set(one)
    assert abs(len(two[0]) - len(two[1])) <= 1


@needs_cifar10
def test_the_cifar10_preset_with_the_local_copy_as_train_data_dir_validates_on_its_test_split():
    from latentcode.training import parse_args

    preset = Path(__file__).resolve().parents[1] / "training" / "configs" / "vqvae_cifar10.yaml"
    config = parse_args(["--config", str(preset), "--train_data_dir", str(CIFAR10), "--num_validation_images", "2"])
    assert config.data.dataset_name is None and config.data.validation_split == "test"  # the preset's, kept
    batches, validation = image_data_from_config(config, channels=3, resolution=32)
    test = pq.read_table(CIFAR10 / "test" / "test-00000-of-00001.parquet", columns=["img"]).slice(0, 2)
    expected = [ImageTransform(32, 3).load(row["img"], random.Random(0)) for row in test.to_pylist()]
    torch.testing.assert_close(validation, torch.stack(expected), rtol=0, atol=0)
    assert batches.order.total == 50_000 and batches.next_batch().shape == (64, 3, 32, 32)
