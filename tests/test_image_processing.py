"""LatentCodeImageProcessor: exact uint8 round trips, PIL-equivalent resizing and channel
conversion, Hub-style save/load beside a model."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import skimage.data
import torch
from helpers import tiny_model
from transformers import AutoImageProcessor, AutoModel

from latentcode import LatentCodeImageProcessor


def test_uint8_round_trip_is_exact_for_every_input_type_and_channel_count():
    """No resizing happens when the image already has the processor's size: uint8 -> [-1, 1]
    float -> uint8 must give back the input bit for bit."""
    photo = skimage.data.astronaut()[200:232, 200:232]  # real RGB, [32, 32, 3] uint8
    alpha = skimage.data.camera()[:32, :32]
    images = {
        1: photo.mean(axis=2).round().astype(np.uint8),
        3: photo,
        4: np.dstack([photo, alpha]),
    }
    for channels, image in images.items():
        processor = LatentCodeImageProcessor(size=32, num_channels=channels)
        hwc = image.reshape(32, 32, channels)
        inputs = {
            "numpy": image,
            "pil": PIL.Image.fromarray(image),
            "torch_chw": torch.from_numpy(hwc).permute(2, 0, 1),
            "numpy_batch": hwc[None],
        }
        for name, value in inputs.items():
            pixel_values = processor(value).pixel_values
            assert pixel_values.shape == (1, channels, 32, 32) and pixel_values.dtype == torch.float32, name
            assert pixel_values.min() >= -1 and pixel_values.max() <= 1
            assert np.array_equal(processor.postprocess(pixel_values, "np")[0], hwc), (channels, name)
            assert torch.equal(processor.postprocess(pixel_values, "pt")[0], torch.from_numpy(hwc).permute(2, 0, 1))
            pil = processor.postprocess(pixel_values, "pil")[0]
            assert pil.mode == {1: "L", 3: "RGB", 4: "RGBA"}[channels]
            assert np.array_equal(np.asarray(pil), image)


def test_normalisation_and_float_inputs():
    processor = LatentCodeImageProcessor(size=2)
    image = np.array([[[0, 255, 51]] * 2] * 2, dtype=np.uint8)  # [2, 2, 3]
    expected = torch.tensor([-1.0, 1.0, 51 / 127.5 - 1]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    assert torch.allclose(processor(image).pixel_values, expected, atol=1e-6)
    assert torch.allclose(processor(image.astype(np.float32) / 255).pixel_values, expected, atol=1e-6)
    assert isinstance(processor(image, return_tensors="np").pixel_values, np.ndarray)
    # Model outputs beyond [-1, 1] are clipped, not wrapped around.
    assert processor.postprocess(torch.full((1, 3, 2, 2), 1.5), "np").max() == 255
    assert processor.postprocess(torch.full((3, 2, 2), -3.0), "np").min() == 0


def test_resize_and_center_crop_match_pil():
    """Shorter side to `size` (antialiased bicubic), then the centre square, as PIL would."""
    photo = skimage.data.coffee()  # real RGB photo, 400 x 600
    processor = LatentCodeImageProcessor(size=64)
    ours = processor.postprocess(processor(photo).pixel_values, "np")[0].astype(np.float64)
    resized = PIL.Image.fromarray(photo).resize((96, 64), PIL.Image.Resampling.BICUBIC)  # (width, height)
    reference = np.asarray(resized.crop((16, 0, 80, 64))).astype(np.float64)
    assert ours.shape == reference.shape == (64, 64, 3)
    # torch's antialiased bicubic and PIL's differ by rounding, not by geometry.
    assert np.abs(ours - reference).mean() < 0.5
    assert np.abs(ours - reference).max() <= 16
    # A one-pixel shift of the crop would be far off: the comparison can fail.
    shifted = np.asarray(resized.crop((17, 0, 81, 64))).astype(np.float64)
    assert np.abs(ours - shifted).mean() > 2 * np.abs(ours - reference).mean()


def test_channel_conversion_matches_pil():
    photo = skimage.data.chelsea()[:48, :48]  # real RGB
    rgba = np.dstack([photo, np.full((48, 48), 77, np.uint8)])
    cases = [(photo, 1, "L"), (rgba, 3, "RGB"), (rgba, 1, "L"), (photo[..., 0], 3, "RGB"), (photo, 4, "RGBA")]
    for image, channels, mode in cases:
        processor = LatentCodeImageProcessor(size=48, num_channels=channels)
        ours = processor.postprocess(processor(image).pixel_values, "np")[0].astype(int)
        reference = np.asarray(PIL.Image.fromarray(image).convert(mode)).reshape(48, 48, channels).astype(int)
        # PIL's luma uses fixed-point arithmetic: at most one grey level apart.
        assert np.abs(ours - reference).max() <= 1, (image.shape, mode)


def test_input_errors():
    processor = LatentCodeImageProcessor(size=8)
    with pytest.raises(ValueError, match=r"float images must be in \[0, 1\]"):
        processor(torch.rand(3, 8, 8) * 2 - 1)
    with pytest.raises(ValueError, match="expected uint8"):
        processor(np.zeros((8, 8), dtype=np.int32))
    with pytest.raises(ValueError, match=r"\[H, W, C\] with C in \[1, 3, 4\]"):
        processor(np.zeros((8, 8, 2), dtype=np.uint8))
    with pytest.raises(ValueError, match="different sizes"):
        LatentCodeImageProcessor(size=8, do_center_crop=False)([np.zeros((8, 8)), np.zeros((8, 16))])
    with pytest.raises(ValueError, match="cannot crop 8x8 from a 4x4"):
        processor(np.zeros((4, 4), dtype=np.uint8), do_resize=False)
    with pytest.raises(ValueError, match="num_channels"):
        LatentCodeImageProcessor(num_channels=2)
    with pytest.raises(ValueError, match="output_type"):
        processor.postprocess(torch.zeros(1, 3, 8, 8), "jpeg")


def test_saved_beside_the_model_and_loaded_with_auto_classes(tmp_path, digits):
    model = tiny_model("vqvae", in_channels=1)
    processor = LatentCodeImageProcessor.from_model_config(model.config, resample=PIL.Image.Resampling.BILINEAR)
    assert (processor.size, processor.num_channels) == (16, 1)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)

    loaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(loaded) is LatentCodeImageProcessor
    assert loaded.to_dict() == processor.to_dict()
    smaller = AutoImageProcessor.from_pretrained(tmp_path, size=8)  # overrides apply; the crop follows
    assert smaller(np.zeros((16, 16), np.uint8)).pixel_values.shape == (1, 1, 8, 8)

    # End to end on real digits: uint8 images -> processor -> model -> postprocess.
    images = ((digits[:4, 0] + 1) * 127.5).round().byte().numpy()  # [4, 16, 16] uint8
    reloaded = AutoModel.from_pretrained(tmp_path)
    with torch.no_grad():
        reconstruction = reloaded(loaded(list(images)).pixel_values).sample
    outputs = loaded.postprocess(reconstruction)
    assert [image.size for image in outputs] == [(16, 16)] * 4 and outputs[0].mode == "L"


def _encoded(array: np.ndarray, fmt: str) -> bytes:
    import io

    buffer = io.BytesIO()
    PIL.Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def test_16_bit_and_float_images_are_scaled_by_bit_depth_in_processor_and_training():
    """PIL's convert clips 16-bit values to 255 and truncates floats to 0; both paths must scale
    by the bit depth instead, through the one shared conversion."""
    import io
    import random

    from latentcode.data import ImageTransform

    ramp = np.linspace(0, 65535, 64 * 64).round().astype(np.uint16).reshape(64, 64)
    half = np.full((64, 64), 0.5, np.float32)
    expected_ramp = torch.from_numpy(ramp.astype(np.float32) / 65535)[None] * 2 - 1
    processor = LatentCodeImageProcessor(size=64, num_channels=1)
    transform = ImageTransform(64, channels=1)
    for array, fmt, expected in ((ramp, "PNG", expected_ramp), (half, "TIFF", torch.zeros(1, 64, 64))):
        data = _encoded(array, fmt)
        for pixels in (
            processor(PIL.Image.open(io.BytesIO(data)))["pixel_values"][0],  # inference
            transform.load({"bytes": data, "path": f"x.{fmt.lower()}"}, random.Random(0)),  # training
            processor(array)["pixel_values"][0],  # the raw array
        ):
            torch.testing.assert_close(pixels, expected, atol=1e-6, rtol=0)
    rgb = LatentCodeImageProcessor(size=64, num_channels=3)(PIL.Image.open(io.BytesIO(_encoded(ramp, "PNG"))))
    torch.testing.assert_close(rgb["pixel_values"][0], expected_ramp.expand(3, -1, -1), atol=1e-6, rtol=0)

    # What cannot be converted is refused, naming what came.
    with pytest.raises(ValueError, match=r"float images must be in \[0, 1\], got values in \[2, 2\]"):
        processor(PIL.Image.fromarray(np.full((8, 8), 2.0, np.float32)))
    with pytest.raises(ValueError, match="NaN or inf"):
        processor(np.full((8, 8), np.nan, np.float32))
    with pytest.raises(ValueError, match=r"mode I\) with values in \[-5, 70000\]"):
        processor(PIL.Image.fromarray(np.array([[-5, 70000]], np.int32)))
    with pytest.raises(ValueError, match="got dtype torch.int64"):
        processor(np.zeros((8, 8), np.int64))


def test_a_grey_scale_image_for_an_rgb_processor_is_logged_once(caplog, tmp_path):
    """Converted as PIL converts (the channel repeated), and said once per processor, with the fix;
    colour inputs and grey inputs for a grey model are silent; the flag is not saved."""
    processor = LatentCodeImageProcessor(size=8)
    grey = PIL.Image.linear_gradient("L").resize((8, 8))
    with caplog.at_level("WARNING", logger="latentcode.image_processing"):
        pixels = processor([grey, np.asarray(grey)]).pixel_values
        processor(torch.zeros(1, 8, 8))
        processor(grey.convert("RGB"))
    assert torch.equal(pixels[:, 0], pixels[:, 1]) and torch.equal(pixels[:, 1], pixels[:, 2])
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 1, messages
    assert "grey-scale image was converted to RGB" in messages[0] and "image.convert('RGB')" in messages[0]
    caplog.clear()
    with caplog.at_level("WARNING", logger="latentcode.image_processing"):
        LatentCodeImageProcessor(size=8).preprocess(grey.convert("RGB"))
        LatentCodeImageProcessor(size=8, num_channels=1).preprocess(grey)
    assert not caplog.records
    processor.save_pretrained(tmp_path)
    assert "_grey_input_logged" not in (tmp_path / "preprocessor_config.json").read_text()
