"""Conversion of the published checkpoints in ../shared/pretrained: the disentangling-vae β-VAE
family and TAESD's taef2, each compared with a reference forward pass written here from the
published architecture description (plain torch modules with the original key names, loaded
with the original state_dict) on real images; 4- and 16-channel TAESD layouts with random
weights, also against diffusers' `AutoencoderTiny`, a published implementation of TAESD.

What "exact" means (the README's "bit-identical latents"), fp32 on a CPU:
- against published code, diffusers' `AutoencoderTiny` (4 and 16 latent channels): encoder and
  decoder outputs bit-identical (`torch.equal`). The published code of taef2 (madebyollin/taesd's
  `taesd.py`, with its group-norm pooling branch) and of disentangling-vae is not an installed
  package, so those two are checked against the reference modules below, rebuilt from the
  published descriptions and loaded with the published state_dicts:
- encoder outputs (TAESD latents; the β-VAEs' posterior mean and log-variance): bit-identical;
- decoder outputs on the originals' [0, 1] scale: within DECODER_TOLERANCE = 2**-24 (one float32
  ulp of values in [0.5, 1)): latentcode's decoder ends in [-1, 1], and mapping that back with
  `(x + 1) / 2` rounds once (measured: 2**-25 = 3.0e-8 at most)."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import require_shared
from PIL import Image
from torch import nn
from transformers import AutoModel

from latentcode.conversion.checkpoints import CheckpointError
from latentcode.conversion.disentangling_vae import from_disentangling_vae
from latentcode.conversion.taesd import from_taesd

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
PRETRAINED = SHARED / "pretrained"
DATASETS = SHARED / "datasets"
DISENTANGLING = PRETRAINED / "disentangling-vae"
CHECKPOINTS = [
    f"{loss}_{data}" for data in ("celeba", "mnist") for loss in ("VAE", "betaH", "betaB", "factor", "btcvae")
]
DECODER_TOLERANCE = 2**-24  # one rounding of the [-1, 1] -> [0, 1] mapping (see the docstring)


def require(path: Path) -> Path:
    return require_shared(path)  # skipped where absent, a failure under CI=true


def load_images(folder: Path, names: list[str], mode: str) -> torch.Tensor:
    """Images in [0, 1], `[B, C, H, W]` float32 (the originals' pixel convention)."""
    arrays = [np.asarray(Image.open(require(folder) / name).convert(mode), dtype=np.float32) / 255 for name in names]
    batch = torch.from_numpy(np.stack(arrays))
    return (batch[:, None] if batch.dim() == 3 else batch.permute(0, 3, 1, 2)).contiguous()


def assert_bit_identical(actual: torch.Tensor, expected: torch.Tensor) -> None:
    error = (actual - expected).abs().max().item()
    assert torch.equal(actual, expected), f"not bit-identical: max abs error {error:.3g}"


def assert_within_one_rounding(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Decoder outputs on the [0, 1] scale: at most DECODER_TOLERANCE apart; returns the error."""
    error = (actual - expected).abs().max().item()
    assert error <= DECODER_TOLERANCE, f"max abs error {error:.3g} > {DECODER_TOLERANCE:.3g} (one float32 rounding)"
    return error


def as_both_conventions(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(latentcode's pixels in [-1, 1], the same pixels in [0, 1] as the converted model sees them).

    `(2u - 1 + 1) / 2` differs from `u` by up to one float32 rounding (1.5e-8); the β-VAEs amplify
    such a difference about a thousandfold from input to reconstruction (betaB_mnist: 2e-5), so
    both models get the identical [0, 1] values and the comparison measures the conversion alone."""
    pixels = images * 2 - 1
    return pixels, (pixels + 1) / 2


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "conversion" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- reference: disentangling-vae's "Burgess" model, from the README's description ----------------


class BurgessEncoder(nn.Module):
    def __init__(self, channels: int, size: int, latent_dim: int):
        super().__init__()
        self.latent_dim, self.size = latent_dim, size
        self.conv1 = nn.Conv2d(channels, 32, 4, stride=2, padding=1)
        self.conv2 = nn.Conv2d(32, 32, 4, stride=2, padding=1)
        self.conv3 = nn.Conv2d(32, 32, 4, stride=2, padding=1)
        if size == 64:
            self.conv_64 = nn.Conv2d(32, 32, 4, stride=2, padding=1)
        self.lin1, self.lin2 = nn.Linear(512, 256), nn.Linear(256, 256)
        self.mu_logvar_gen = nn.Linear(256, 2 * latent_dim)

    def forward(self, x):
        x = torch.relu(self.conv3(torch.relu(self.conv2(torch.relu(self.conv1(x))))))
        if self.size == 64:
            x = torch.relu(self.conv_64(x))
        x = torch.relu(self.lin2(torch.relu(self.lin1(x.view(x.shape[0], -1)))))
        return self.mu_logvar_gen(x).view(-1, self.latent_dim, 2).unbind(-1)


class BurgessDecoder(nn.Module):
    def __init__(self, channels: int, size: int, latent_dim: int):
        super().__init__()
        self.size = size
        self.lin1, self.lin2, self.lin3 = nn.Linear(latent_dim, 256), nn.Linear(256, 256), nn.Linear(256, 512)
        if size == 64:
            self.convT_64 = nn.ConvTranspose2d(32, 32, 4, stride=2, padding=1)
        self.convT1 = nn.ConvTranspose2d(32, 32, 4, stride=2, padding=1)
        self.convT2 = nn.ConvTranspose2d(32, 32, 4, stride=2, padding=1)
        self.convT3 = nn.ConvTranspose2d(32, channels, 4, stride=2, padding=1)

    def forward(self, z):
        x = torch.relu(self.lin3(torch.relu(self.lin2(torch.relu(self.lin1(z))))))
        x = x.view(z.shape[0], 32, 4, 4)
        if self.size == 64:
            x = torch.relu(self.convT_64(x))
        return torch.sigmoid(self.convT3(torch.relu(self.convT2(torch.relu(self.convT1(x))))))


class Burgess(nn.Module):
    def __init__(self, channels: int, size: int, latent_dim: int):
        super().__init__()
        self.encoder = BurgessEncoder(channels, size, latent_dim)
        self.decoder = BurgessDecoder(channels, size, latent_dim)


def reference_burgess(folder: Path) -> Burgess:
    specs = json.loads((folder / "specs.json").read_text())
    channels, size, _ = specs["img_size"]
    model = Burgess(channels, size, specs["latent_dim"])
    model.load_state_dict(torch.load(folder / "model.pt", weights_only=True))
    return model.eval()


def real_inputs(checkpoint: str) -> torch.Tensor:
    names = [f"{i:03d}.png" for i in range(100)]
    if checkpoint.endswith("celeba"):
        return load_images(DATASETS / "celeba-samples", names, "RGB")
    return load_images(DATASETS / "mnist-samples", names, "L")


@pytest.mark.parametrize("checkpoint", CHECKPOINTS)
@torch.no_grad()
def test_disentangling_vae_conversion_is_exact_on_real_images(checkpoint):
    folder = require(DISENTANGLING / checkpoint)
    pixels, images = as_both_conventions(real_inputs(checkpoint))
    reference = reference_burgess(folder)
    model = from_disentangling_vae(folder)
    mean, logvar = reference.encoder(images)
    posterior = model.encode(pixels).latent_dist
    assert_bit_identical(posterior.mean, mean)
    assert_bit_identical(posterior.logvar, logvar)
    reconstruction = (model.decode(mean).sample + 1) / 2
    assert_within_one_rounding(reconstruction, reference.decoder(mean))
    # the whole forward pass (through the posterior mean, in eval mode) as well
    assert_within_one_rounding((model(pixels).sample + 1) / 2, reference.decoder(mean))


@torch.no_grad()
def test_disentangling_vae_command_line_writes_a_loadable_model(tmp_path):
    folder = require(DISENTANGLING / "betaB_celeba")
    load_script("convert_disentangling_vae_to_latentcode").main(
        ["--checkpoint_path", str(folder), "--output_dir", str(tmp_path)]
    )
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert (loaded.config.backbone, loaded.config.latent_channels, loaded.config.sample_size) == ("vector", 10, 64)
    assert json.loads((tmp_path / "original_specs.json").read_text())["loss"] == "betaB"
    images = real_inputs("betaB_celeba")[:8] * 2 - 1
    torch.testing.assert_close(loaded(images).sample, from_disentangling_vae(folder)(images).sample, rtol=0, atol=0)


def copy_checkpoint(tmp_path: Path, **spec_changes) -> Path:
    folder = tmp_path / "checkpoint"
    shutil.copytree(require(DISENTANGLING / "VAE_mnist"), folder)
    specs = json.loads((folder / "specs.json").read_text()) | spec_changes
    (folder / "specs.json").write_text(json.dumps(specs))
    return folder


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(latent_dim=12), "latent_dim=12"),
        (dict(model_type="Higgins"), "model_type='Higgins'"),
        (dict(img_size=[1, 28, 28]), "img_size=[1, 28, 28]"),
        (dict(img_size=[3, 32, 32]), "encoder.convs.0.weight (checkpoint (32, 1, 4, 4), model (32, 3, 4, 4))"),
    ],
)
def test_disentangling_vae_refuses_a_checkpoint_of_another_shape(tmp_path, changes, message):
    with pytest.raises(CheckpointError) as error:
        from_disentangling_vae(copy_checkpoint(tmp_path, **changes))
    assert message in str(error.value)


def test_disentangling_vae_refuses_a_folder_of_another_kind(tmp_path):
    folder = copy_checkpoint(tmp_path)
    torch.save({"encoder": {"weight": torch.zeros(1)}}, folder / "model.pt")
    with pytest.raises(CheckpointError, match="not a state_dict"):
        from_disentangling_vae(folder)
    with pytest.raises(CheckpointError, match="no specs.json"):
        from_disentangling_vae(tmp_path)


# -- reference: TAESD's Encoder() / Decoder() sequentials, from the published description --------


class Clamp(nn.Module):
    def forward(self, x):
        return torch.tanh(x / 3) * 3


class Block(nn.Module):
    def __init__(self, n: int, use_midblock_gn: bool = False):
        super().__init__()
        conv = lambda: nn.Conv2d(n, n, 3, padding=1)  # noqa: E731
        self.conv = nn.Sequential(conv(), nn.ReLU(), conv(), nn.ReLU(), conv())
        self.skip, self.fuse = nn.Identity(), nn.ReLU()
        self.pool = None
        if use_midblock_gn:
            wide = 4 * n
            self.pool = nn.Sequential(
                nn.Conv2d(n, wide, 1, bias=False), nn.GroupNorm(4, wide), nn.ReLU(), nn.Conv2d(wide, n, 1, bias=False)
            )

    def forward(self, x):
        if self.pool is not None:
            x = x + self.pool(x)
        return self.fuse(self.conv(x) + self.skip(x))


def taesd_encoder(latent_channels: int, gn: bool) -> nn.Sequential:
    down = lambda: nn.Conv2d(64, 64, 3, padding=1, stride=2, bias=False)  # noqa: E731
    return nn.Sequential(
        nn.Conv2d(3, 64, 3, padding=1), Block(64),
        down(), Block(64), Block(64), Block(64),
        down(), Block(64), Block(64), Block(64),
        down(), Block(64, gn), Block(64, gn), Block(64, gn),
        nn.Conv2d(64, latent_channels, 3, padding=1),
    )  # fmt: skip


def taesd_decoder(latent_channels: int, gn: bool) -> nn.Sequential:
    up = lambda: nn.Upsample(scale_factor=2)  # noqa: E731
    conv = lambda: nn.Conv2d(64, 64, 3, padding=1, bias=False)  # noqa: E731
    return nn.Sequential(
        Clamp(), nn.Conv2d(latent_channels, 64, 3, padding=1), nn.ReLU(),
        Block(64, gn), Block(64, gn), Block(64, gn), up(), conv(),
        Block(64), Block(64), Block(64), up(), conv(),
        Block(64), Block(64), Block(64), up(), conv(),
        Block(64), nn.Conv2d(64, 3, 3, padding=1),
    )  # fmt: skip


@torch.no_grad()
def check_taesd_exact(model, encoder: nn.Module, decoder: nn.Module, images: torch.Tensor) -> float:
    """Encode / decode `images` (in [0, 1]) with both: bit-identical latents, decoder outputs
    within one rounding; returns the decoder's max abs error."""
    pixels, images = as_both_conventions(images)
    latents = encoder(images)
    assert_bit_identical(model.encode(pixels).latents, latents)
    return assert_within_one_rounding((model.decode(latents).sample + 1) / 2, decoder(latents))


def test_taef2_conversion_is_exact_on_real_images():
    folder = require(PRETRAINED / "taesd")
    encoder, decoder = taesd_encoder(32, True).eval(), taesd_decoder(32, True).eval()
    encoder.load_state_dict(torch.load(folder / "taef2_encoder.pth", weights_only=True))
    decoder.load_state_dict(torch.load(folder / "taef2_decoder.pth", weights_only=True))
    model = from_taesd(folder / "taef2_encoder.pth", folder / "taef2_decoder.pth")
    assert (model.config.latent_channels, model.config.tiny_midblock_pooling, model.downsampling_factor) == (
        32,
        True,
        8,
    )
    with pytest.raises(ValueError, match="AutoencoderTiny has no group-norm pooling branch"):
        model.to_diffusers()  # diffusers has no architecture for taef2
    faces = load_images(DATASETS / "celeba-samples", [f"{i:03d}.png" for i in range(8)], "RGB")
    check_taesd_exact(model, encoder, decoder, faces)
    # one portrait and one landscape photo; a 192x128 centre crop keeps the test to seconds on a
    # CPU (full resolution: see the Kodak PSNR measurement in benchmarks/README.md)
    for name in ("kodim04.png", "kodim23.png"):
        photo = load_images(DATASETS / "kodak", [name], "RGB")
        top, left = (photo.shape[2] - 128) // 2, (photo.shape[3] - 192) // 2
        check_taesd_exact(model, encoder, decoder, photo[:, :, top : top + 128, left : left + 192].contiguous())


def save_taesd(tmp_path: Path, encoder: nn.Module, decoder: nn.Module) -> tuple[Path, Path]:
    paths = tmp_path / "encoder.pth", tmp_path / "decoder.pth"
    torch.save(encoder.state_dict(), paths[0])
    torch.save(decoder.state_dict(), paths[1])
    return paths


def random_images(size: int = 32) -> torch.Tensor:
    return torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))


def test_16_channel_layout_with_random_weights(tmp_path):
    torch.manual_seed(0)
    encoder, decoder = taesd_encoder(16, False).eval(), taesd_decoder(16, False).eval()
    model = from_taesd(*save_taesd(tmp_path, encoder, decoder))
    assert (model.config.latent_channels, model.config.tiny_midblock_pooling) == (16, False)
    check_taesd_exact(model, encoder, decoder, random_images())
    exported = model.to_diffusers()  # a 16-channel AutoencoderTiny (taesd3 / taef1 in diffusers)
    pixels = random_images() * 2 - 1
    with torch.no_grad():
        latents = exported.encode(pixels).latents
        assert latents.shape == (2, 16, 4, 4)
        assert_bit_identical(model.decode(latents).sample, exported.decode(latents).sample)


@pytest.mark.parametrize("latent_channels", [4, 16])
def test_taesd_is_bit_identical_to_diffusers_autoencoder_tiny(tmp_path, latent_channels):
    """Against published code: diffusers' `AutoencoderTiny` (TAESD's 4-channel layout, and the
    16-channel one of taesd3 / taef1), its weights saved in TAESD's layout and converted."""
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    tiny = AutoencoderTiny(latent_channels=latent_channels).eval()
    # diffusers keeps TAESD's layer indices, except that its decoder applies the clamp outside
    # the sequential: TAESD's decoder layer i is diffusers' layer i - 1.
    state = tiny.state_dict()
    encoder = {k.removeprefix("encoder.layers."): v for k, v in state.items() if k.startswith("encoder.")}
    decoder = {}
    for key, value in state.items():
        if key.startswith("decoder.layers."):
            index, rest = key.removeprefix("decoder.layers.").split(".", 1)
            decoder[f"{int(index) + 1}.{rest}"] = value
    torch.save(encoder, tmp_path / "encoder.pth")
    torch.save(decoder, tmp_path / "decoder.pth")
    model = from_taesd(tmp_path / "encoder.pth", tmp_path / "decoder.pth")
    for size in (32, 96):
        pixels = random_images(size) * 2 - 1
        with torch.no_grad():
            latents = tiny.encode(pixels).latents
            assert_bit_identical(model.encode(pixels).latents, latents)
            assert_bit_identical(model.decode(latents).sample, tiny.decode(latents).sample)
    # and back: the TAESD import exports to the AutoencoderTiny it came from, weight for weight
    exported = model.to_diffusers().state_dict()
    assert exported.keys() == state.keys() and all(torch.equal(value, state[key]) for key, value in exported.items())


def test_taesd_command_line_writes_a_loadable_model(tmp_path):
    torch.manual_seed(0)
    encoder_path, decoder_path = save_taesd(tmp_path, taesd_encoder(4, False), taesd_decoder(4, False))
    output = tmp_path / "converted"
    load_script("convert_taesd_to_latentcode").main(
        ["--encoder_path", str(encoder_path), "--decoder_path", str(decoder_path), "--output_dir", str(output)]
    )
    loaded = AutoModel.from_pretrained(output).eval()
    assert (loaded.config.backbone, loaded.config.latent_channels) == ("tiny", 4)
    pixels = random_images() * 2 - 1
    with torch.no_grad():
        expected = from_taesd(encoder_path, decoder_path)(pixels).sample
        torch.testing.assert_close(loaded(pixels).sample, expected, rtol=0, atol=0)


def test_taesd_refuses_files_of_another_kind(tmp_path):
    torch.manual_seed(0)
    encoder_path, decoder_path = save_taesd(tmp_path, taesd_encoder(4, False), taesd_decoder(16, False))
    with pytest.raises(CheckpointError, match="different TAESD variants"):
        from_taesd(encoder_path, decoder_path)
    with pytest.raises(CheckpointError, match="swapped"):
        from_taesd(decoder_path, encoder_path)
    torch.save({"weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="no TAESD residual blocks"):
        from_taesd(tmp_path / "other.pth", decoder_path)
