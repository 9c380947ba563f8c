"""Every kind of bad image in a training folder, and a parquet file with a bad row: each file is
converted correctly or skipped, counted once and named once in the log, however many epochs
meet it; never a crash, never a silently wrong tensor."""

from __future__ import annotations

import io
import random
import struct
import zlib
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import pytest
import torch

from latentcode.data import ImageTransform, build_image_data, decode_image

pytestmark = pytest.mark.slow

RESOLUTION = 8


def _png_claiming_size(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header claims `width` x `height` (a decompression bomb), CRC fixed up."""
    buffer = io.BytesIO()
    PIL.Image.new("L", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    header = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = header
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + header))
    return bytes(data)


def _expected(image: PIL.Image.Image) -> torch.Tensor:
    """PIL's own RGB conversion and resize (the reference), as [-1, 1] pixels."""
    rgb = image.convert("RGB").resize((RESOLUTION, RESOLUTION), PIL.Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(rgb, np.float32) / 127.5 - 1).permute(2, 0, 1)


def _bad_image_folder(folder: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Write the zoo; return {file: expected tensor (or None: checked separately)} for the
    readable files and the names of the ones that must be skipped."""
    rng = np.random.default_rng(0)
    photo = PIL.Image.fromarray(rng.integers(0, 256, (RESOLUTION, RESOLUTION, 3), dtype=np.uint8))
    readable = {}

    photo.save(folder / "a_wrong_extension.jpg", format="PNG")  # a PNG named .jpg
    readable["a_wrong_extension.jpg"] = _expected(photo)
    PIL.Image.new("RGB", (1, 1), (200, 10, 90)).save(folder / "b_one_pixel.png")
    readable["b_one_pixel.png"] = _expected(PIL.Image.new("RGB", (RESOLUTION, RESOLUTION), (200, 10, 90)))
    photo.convert("CMYK").save(folder / "c_cmyk.tif")
    readable["c_cmyk.tif"] = _expected(PIL.Image.open(folder / "c_cmyk.tif"))
    photo.convert("P").save(folder / "d_palette.png")
    readable["d_palette.png"] = _expected(PIL.Image.open(folder / "d_palette.png"))
    rgba = photo.convert("RGBA")
    rgba.putalpha(60)
    rgba.save(folder / "e_rgba.png")
    readable["e_rgba.png"] = _expected(photo)  # alpha dropped, colours kept (not premultiplied)
    frames = [photo, PIL.Image.new("RGB", photo.size, (255, 255, 255))]
    frames[0].save(folder / "f_animated.gif", save_all=True, append_images=frames[1:], duration=100)
    readable["f_animated.gif"] = _expected(PIL.Image.open(folder / "f_animated.gif"))  # the first frame
    ramp = np.linspace(0, 65535, RESOLUTION * RESOLUTION).round().astype(np.uint16).reshape(RESOLUTION, RESOLUTION)
    PIL.Image.fromarray(ramp).save(folder / "g_16_bit.png")
    readable["g_16_bit.png"] = torch.from_numpy(ramp / 65535 * 2 - 1).float().expand(3, -1, -1)
    huge = PIL.Image.fromarray(rng.integers(0, 256, (3000, 4000, 3), dtype=np.uint8)).save(folder / "h_huge.jpg")
    readable["h_huge.jpg"] = None  # checked below: decoded at a reduced scale

    skipped = ["i_truncated.png", "j_zero_bytes.png", "k_not_an_image.png", "l_bomb.png", "m_float_out_of_range.tif"]
    encoded = io.BytesIO()
    photo.save(encoded, format="PNG")
    (folder / "i_truncated.png").write_bytes(encoded.getvalue()[:60])
    (folder / "j_zero_bytes.png").write_bytes(b"")
    (folder / "k_not_an_image.png").write_text("hello")
    (folder / "l_bomb.png").write_bytes(_png_claiming_size(30000, 30000))
    PIL.Image.fromarray(np.full((RESOLUTION, RESOLUTION), 2.0, np.float32)).save(folder / "m_float_out_of_range.tif")
    del huge
    return readable, skipped


def test_every_kind_of_bad_image_is_converted_or_skipped_and_counted_once(tmp_path, caplog):
    readable, skipped = _bad_image_folder(tmp_path)
    transform = ImageTransform(RESOLUTION, channels=3)
    for name, expected in readable.items():
        pixels = transform.load({"path": str(tmp_path / name), "bytes": None}, random.Random(0))
        assert pixels.shape == (3, RESOLUTION, RESOLUTION) and torch.isfinite(pixels).all(), name
        if expected is not None:
            torch.testing.assert_close(pixels, expected, atol=4 / 255, rtol=0, msg=name)
    # The huge JPEG is decoded at 1/8 scale (still >= 4 x the resolution), not at 4000x3000.
    assert decode_image(str(tmp_path / "h_huge.jpg"), min_size=4 * RESOLUTION).size == (500, 375)

    batches, validation = build_image_data(
        transform=transform, batch_size=1, train_data_dir=str(tmp_path), num_validation_images=1, shuffle_buffer_size=1
    )
    assert validation.shape == (1, 3, RESOLUTION, RESOLUTION)
    seen = 0
    while batches.epoch < 3:  # three epochs over the same bad files
        batch = batches.next_batch()
        assert torch.isfinite(batch).all() and batch.abs().max() <= 1
        seen += batches.epoch == 0
    assert seen == len(readable) - 1  # every readable file but the held-out one, in the first epoch
    assert batches.corrupt_images == len(skipped)
    messages = [record.getMessage() for record in caplog.records]
    for name in skipped:
        named = [message for message in messages if name in message]
        assert len(named) == 1, (name, messages)  # logged once, with its path
    assert "cannot convert image" in next(m for m in messages if "m_float_out_of_range" in m)
    assert "DecompressionBombError" in next(m for m in messages if "l_bomb" in m)


def test_a_parquet_file_with_a_bad_row(tmp_path, caplog):
    rng = np.random.default_rng(1)
    rows = []
    for index in range(6):
        buffer = io.BytesIO()
        PIL.Image.fromarray(rng.integers(0, 256, (RESOLUTION, RESOLUTION), dtype=np.uint8)).save(buffer, format="PNG")
        rows.append({"bytes": buffer.getvalue(), "path": f"row{index}.png"})
    rows[3] = {"bytes": b"\x89PNG\r\n\x1a\n broken", "path": None}
    table = datasets.Dataset.from_dict({"image": rows}, features=datasets.Features({"image": datasets.Image()}))
    table.to_parquet(tmp_path / "part-0.parquet")

    batches, _ = build_image_data(
        transform=ImageTransform(RESOLUTION, channels=1),
        batch_size=2,
        train_data_dir=str(tmp_path),
        num_validation_images=1,
    )
    for _ in range(8):  # several epochs of the 4 good training rows
        assert torch.isfinite(batches.next_batch()).all()
    assert batches.corrupt_images == 1
    bad = [record.getMessage() for record in caplog.records if "unreadable" in record.getMessage()]
    assert len(bad) == 1 and "bytes, sha1 " in bad[0], bad  # named by a digest of its bytes, once
