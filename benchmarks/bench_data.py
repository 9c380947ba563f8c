"""Data pipeline: resume time against the position, and decoding throughput with workers.

Resume: CIFAR-10's train split (the local parquet copy, 50,000 images in 5 shards of one
10,000-row group each), the preset's batch (64) and shuffle buffer (10,000). For positions at
10 %, 50 % and 90 % of an epoch, a fresh `ImageBatches` loads the state and the time to its
first batch is measured (the source is opened before the clock starts: that cost does not
depend on the position). Constant-time resume means the three times are equal. For comparison,
the time the previous resume spent replaying the `datasets` stream (undecoded) to the position.

Workers: a folder of 256x256 JPEGs (crops of the Kodak photos), random crops and flips at 256,
batches of 16; images/s with 0, 1 and 2 DataLoader workers, against `--step_ms` of model
compute per batch run in the main process (0: data alone).

Decode: CPU milliseconds per image of the training transform (decode, resize, random crop to
256, flip) on one thread, for the 256x256 JPEG crops and for ImageNet-sized JPEGs (the Kodak
photos reduced to 500x333 / 333x500 and saved at quality 90).

    python benchmarks/bench_data.py                     # both, default sizes
    python benchmarks/bench_data.py --only resume
    python benchmarks/bench_data.py --only workers --batches 80 --step_ms 200
    python benchmarks/bench_data.py --only decode
"""

from __future__ import annotations

import argparse
import io
import random
import statistics
import tempfile
import time
from pathlib import Path

import PIL.Image
import torch

from latentcode.data import ImageTransform, build_image_data, image_only, load_image_stream

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def resume_times(repeats: int) -> dict[float, list[float]]:
    def make():
        batches, _ = build_image_data(
            transform=ImageTransform(32, channels=3, center_crop=True, random_flip=True),
            batch_size=64,
            train_data_dir=str(SHARED / "cifar10" / "train"),
            image_column="img",
            num_validation_images=0,
            shuffle_buffer_size=10_000,
        )
        return batches

    times = {}
    for fraction in (0.1, 0.5, 0.9):
        times[fraction] = []
        for _ in range(repeats):
            batches = make()
            state = {"epoch": 0, "position": int(fraction * batches.order.length), "corrupt_images": []}
            start = time.perf_counter()
            batches.load_state_dict(state)
            batches.next_batch()
            times[fraction].append(time.perf_counter() - start)
    return times


def replay_times() -> dict[float, float]:
    """What resume cost before: replaying the `datasets` stream (undecoded) up to the position."""
    times = {}
    for fraction in (0.1, 0.5, 0.9):
        stream = load_image_stream(train_data_dir=str(SHARED / "cifar10" / "train"))
        stream = image_only(stream, "img").shuffle(seed=0, buffer_size=10_000)
        start = time.perf_counter()
        examples = iter(stream)
        for _ in range(int(fraction * 50_000) + 64):
            next(examples)
        times[fraction] = time.perf_counter() - start
    return times


def kodak_jpegs(folder: Path) -> int:
    count = 0
    for path in sorted((SHARED / "kodak").glob("*.png")):
        photo = PIL.Image.open(path).convert("RGB")
        for top in range(0, photo.height - 255, 256):
            for left in range(0, photo.width - 255, 256):
                photo.crop((left, top, left + 256, top + 256)).save(
                    folder / f"{path.stem}_{top}_{left}.jpg", quality=90
                )
                count += 1
    return count


def decode_milliseconds(folder: Path, repeats: int = 4) -> dict[str, float]:
    """CPU ms per image of the random-crop training transform at 256, one thread."""
    transform = ImageTransform(256, channels=3, center_crop=False, random_flip=True)
    imagenet_sized = []
    for path in sorted((SHARED / "kodak").glob("*.png")):
        photo = PIL.Image.open(path).convert("RGB")
        size = (500, 333) if photo.width > photo.height else (333, 500)
        encoded = io.BytesIO()
        photo.resize(size, PIL.Image.BICUBIC).save(encoded, "JPEG", quality=90)
        imagenet_sized.append({"bytes": encoded.getvalue(), "path": f"{path.stem}.jpg"})
    sets = {"256x256 JPEG crops": [str(path) for path in sorted(folder.glob("*.jpg"))], "500x333 JPEGs": imagenet_sized}
    rng = random.Random(0)
    costs = {}
    for name, values in sets.items():
        start = time.process_time()
        for value in values * repeats:
            transform.load(value, rng)
        costs[name] = (time.process_time() - start) / (len(values) * repeats) * 1000
    return costs


def worker_throughput(folder: Path, workers: int, batches_to_time: int, step_ms: float) -> float:
    batches, _ = build_image_data(
        transform=ImageTransform(256, channels=3, center_crop=False, random_flip=True),
        batch_size=16,
        train_data_dir=str(folder),
        num_validation_images=0,
        num_workers=workers,
    )
    for _ in range(2):  # workers started, first chunks decoded
        batches.next_batch()
    start = time.perf_counter()
    for _ in range(batches_to_time):
        batch = batches.next_batch()
        if step_ms:
            end = time.perf_counter() + step_ms / 1000
            while time.perf_counter() < end:  # stands for the model's step on the training thread
                batch.sum()
    return batches_to_time * 16 / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["resume", "workers", "decode"], default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--step_ms", type=float, default=0.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.only in (None, "resume"):
        print(
            f"| position in the epoch | resume to first batch (s), median of {args.repeats} | replaying the stream (s) |"
        )
        print("|---|---|---|")
        replay = replay_times()
        for fraction, times in resume_times(args.repeats).items():
            spread = f"min {min(times):.3f}, max {max(times):.3f}"
            print(f"| {fraction:.0%} | {statistics.median(times):.3f} ({spread}) | {replay[fraction]:.2f} |")
    if args.only in (None, "workers"):
        with tempfile.TemporaryDirectory() as folder:
            count = kodak_jpegs(Path(folder))
            print(f"\n{count} JPEGs 256x256; step {args.step_ms} ms per batch of 16")
            if args.step_ms:
                print(f"fed from decoded tensors in memory: {16000 / args.step_ms:.1f} images/s")
            print("| workers | images/s |\n|---|---|")
            for workers in (0, 1, 2):
                rate = worker_throughput(Path(folder), workers, args.batches, args.step_ms)
                print(f"| {workers} | {rate:.1f} |")
    if args.only in (None, "decode"):
        with tempfile.TemporaryDirectory() as folder:
            kodak_jpegs(Path(folder))
            for name, milliseconds in decode_milliseconds(Path(folder)).items():
                print(f"{name}: {milliseconds:.2f} ms of CPU per image (decode, resize, crop, flip)")


if __name__ == "__main__":
    main()
