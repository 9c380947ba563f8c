"""Reconstruction, distribution and code metrics of an image tokenizer.

Pixels are `[B, C, H, W]` floats in [-1, 1] throughout (the range is `data_range = 2`).

- [`psnr`], [`ssim`]: per image, as scikit-image computes them (SSIM: Gaussian window of
  11 taps, sigma 1.5, K1 = 0.01, K2 = 0.03, population covariances, only windows that fit
  inside the image, mean over channels - Wang et al., 2004).
- LPIPS comes from [`latentcode.losses.PerceptualLoss`] (built by [`build_lpips`]).
- rFID: [`InceptionFeatures`] (2048-d pool features of Inception-v3), [`FeatureStatistics`]
  (running mean and covariance) and [`frechet_distance`].
- [`CodebookHistogram`]: how often each code is used over a whole evaluation, its usage fraction
  and perplexity.
- [`gaussian_bits_per_dim`]: the VAE's negative ELBO in bits per dimension, with a
  discretised Gaussian decoder.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..losses import PerceptualLoss, as_rgb
from ..modules.quantizers.base import perplexity_of
from ..modules.workers import run_in_workers

# ----------------------------------------------------------------------------------------------
# PSNR and SSIM
# ----------------------------------------------------------------------------------------------


def _check_pair(reconstruction: torch.Tensor, target: torch.Tensor) -> None:
    if reconstruction.shape != target.shape or reconstruction.dim() != 4:
        raise ValueError(
            "expected reconstruction and target of the same shape [B, C, H, W], got "
            f"{tuple(reconstruction.shape)} and {tuple(target.shape)}"
        )


def psnr(reconstruction: torch.Tensor, target: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per image in dB: `10 log10(data_range^2 / MSE)`.

    `[B, C, H, W]` x2 -> `[B]` float64. Identical images give `inf`.
    """
    _check_pair(reconstruction, target)
    error = (reconstruction.double() - target.double()).pow(2).flatten(1).mean(dim=1)
    # log10(x / 0) is +inf in torch, which is the right answer for a perfect reconstruction.
    return 10 * torch.log10(data_range**2 / error)


SSIM_SIGMA = 1.5
SSIM_WINDOW = 11  # scikit-image's Gaussian window for sigma 1.5: 2 * round(3.5 * sigma) + 1
SSIM_K1, SSIM_K2 = 0.01, 0.03


# SSIM runs in pieces of about this many float64 values per map (1 MB: groups of whole small
# images, or horizontal strips of a large one), so that its five maps and their blurs stay in
# cache: on a 1024x768 photo 7x faster than whole-image float64 convolutions (profiled: those took
# longer than the model's forward pass). On CPU the pieces are shared out to worker threads that
# each run single-threaded ops (`latentcode.modules.workers`): the ops are short and memory-bound,
# and multi-threaded each one ends in a barrier that, on a loaded machine, waits for a descheduled
# thread (measured with 2 threads at a load of 5 on 2 cores: 100x slower than one thread).
SSIM_PIECE_VALUES = 1 << 17
# A strip recomputes the window's 10 extra rows: at least this many output rows keep that under a quarter.
SSIM_MIN_STRIP_ROWS = 32


def _gaussian_window() -> list[float]:
    offsets = torch.arange(SSIM_WINDOW, dtype=torch.float64) - (SSIM_WINDOW - 1) / 2
    weights = torch.exp(-(offsets**2) / (2 * SSIM_SIGMA**2))
    return (weights / weights.sum()).tolist()


def _valid_blur(images: torch.Tensor, window: list[float]) -> torch.Tensor:
    """Separable Gaussian blur of `[N, h, w]` over the positions where the whole window fits:
    `[N, h - 10, w - 10]`. Sums of shifted slices, not `conv2d`: PyTorch's float64 CPU
    convolution has no fast kernel."""
    size = len(window)
    height, width = images.shape[-2] - size + 1, images.shape[-1] - size + 1
    rows = images[:, :height] * window[0]
    for offset in range(1, size):
        rows.add_(images[:, offset : offset + height], alpha=window[offset])
    blurred = rows[:, :, :width] * window[0]
    for offset in range(1, size):
        blurred.add_(rows[:, :, offset : offset + width], alpha=window[offset])
    return blurred


def _ssim_map_sum(x: torch.Tensor, y: torch.Tensor, window: list[float], data_range: float) -> torch.Tensor:
    """`[N, h, w]` float64 x2 -> `[N]`: the sum of the SSIM map over the valid positions."""
    mean_x, mean_y = _valid_blur(x, window), _valid_blur(y, window)
    var_x = _valid_blur(x * x, window) - mean_x**2
    var_y = _valid_blur(y * y, window) - mean_y**2
    cov_xy = _valid_blur(x * y, window) - mean_x * mean_y
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    ssim_map = ((2 * mean_x * mean_y + c1) * (2 * cov_xy + c2)) / ((mean_x**2 + mean_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.sum(dim=(1, 2))


def ssim(reconstruction: torch.Tensor, target: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Structural similarity per image, `[B, C, H, W]` x2 -> `[B]` float64.

    Equals `skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=data_range, channel_axis=...)`. Images must be at
    least 11 pixels on each side.
    """
    _check_pair(reconstruction, target)
    batch, channels, height, width = target.shape
    if min(height, width) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got {height}x{width}")
    x = reconstruction.reshape(batch * channels, height, width)
    y = target.reshape(batch * channels, height, width)
    window = _gaussian_window()
    valid_height, valid_width = height - SSIM_WINDOW + 1, width - SSIM_WINDOW + 1
    pieces = _ssim_pieces(batch * channels, height, width)
    sums = torch.zeros(len(pieces), batch * channels, dtype=torch.float64, device=target.device)

    def add_piece(index: int) -> None:
        maps, top, stop = pieces[index]
        rows = slice(top, stop + SSIM_WINDOW - 1)  # the rows of valid outputs top..stop-1 need
        sums[index, maps] = _ssim_map_sum(x[maps, rows].double(), y[maps, rows].double(), window, data_range)

    if target.device.type == "cpu" and torch.get_num_threads() > 1:
        run_in_workers(add_piece, range(len(pieces)), min(torch.get_num_threads(), len(pieces)))
    else:
        for index in range(len(pieces)):
            add_piece(index)
    return (sums.sum(dim=0) / (valid_height * valid_width)).view(batch, channels).mean(dim=1)


def _ssim_pieces(num_maps: int, height: int, width: int) -> list[tuple[slice, int, int]]:
    """`(maps, top, stop)` pieces of SSIM's valid output rows `top..stop-1` of `maps`, each about
    `SSIM_PIECE_VALUES` values: groups of whole maps where one fits, else strips of each map."""
    valid_height = height - SSIM_WINDOW + 1
    if height * width <= SSIM_PIECE_VALUES:
        group = SSIM_PIECE_VALUES // (height * width)
        return [(slice(first, first + group), 0, valid_height) for first in range(0, num_maps, group)]
    rows = max(SSIM_MIN_STRIP_ROWS, SSIM_PIECE_VALUES // width - SSIM_WINDOW + 1)
    return [
        (slice(index, index + 1), top, min(top + rows, valid_height))
        for index in range(num_maps)
        for top in range(0, valid_height, rows)
    ]


# ----------------------------------------------------------------------------------------------
# LPIPS
# ----------------------------------------------------------------------------------------------


# The ImageNet weights of each LPIPS backbone: the `lpips` package loads them through torchvision,
# which downloads them into torch's hub cache the first time (AlexNet's are 233 MB).
LPIPS_BACKBONE_WEIGHTS = {
    "alex": "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
    "vgg": "https://download.pytorch.org/models/vgg16-397923af.pth",
    "squeeze": "https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth",
}


def lpips_backbone_weights(net: str = "alex") -> tuple[Path, str]:
    """`(path, url)`: where torchvision keeps the ImageNet weights of LPIPS backbone `net`
    (`$TORCH_HOME/hub/checkpoints`) and where it downloads them from when that file is missing."""
    if net not in LPIPS_BACKBONE_WEIGHTS:
        raise ValueError(f"LPIPS backbone must be one of {sorted(LPIPS_BACKBONE_WEIGHTS)}, got {net!r}")
    url = LPIPS_BACKBONE_WEIGHTS[net]
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[1], url


def hub_offline() -> bool:
    """Whether downloads are off: `HF_HUB_OFFLINE` (or `TRANSFORMERS_OFFLINE`) as huggingface_hub
    reads it at import, or as set since."""
    from huggingface_hub import constants

    values = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE"))
    return bool(constants.HF_HUB_OFFLINE) or any(
        (value or "").upper() in ("1", "ON", "YES", "TRUE") for value in values
    )


def build_lpips(net: str = "alex", pretrained: bool = True, how_to_disable: str = "pass lpips=None") -> PerceptualLoss:
    """LPIPS as a metric: `module(reconstruction, target)` -> `[B]` distances.

    AlexNet is the backbone the LPIPS paper recommends for evaluation. Its ImageNet weights come
    from torch's hub cache ([`lpips_backbone_weights`]), downloaded there on first use as
    `from_pretrained` downloads a model; with `HF_HUB_OFFLINE=1` nothing is downloaded. Raises
    `RuntimeError` saying where to put the weights when they are not there offline or cannot be
    loaded.
    """
    path, url = lpips_backbone_weights(net)
    if pretrained and not path.is_file() and hub_offline():
        raise RuntimeError(
            f"HF_HUB_OFFLINE is set and the ImageNet weights of LPIPS' {net!r} backbone are not in {path.parent}; "
            f"to enable LPIPS, download {url} there (or run once online), or {how_to_disable}"
        )
    with warnings.catch_warnings():
        # lpips asks torchvision for the weights with its deprecated `pretrained=True` argument.
        warnings.filterwarnings("ignore", category=UserWarning, module="torchvision.models._utils")
        return PerceptualLoss(net=net, pretrained=pretrained, how_to_disable=how_to_disable)


# ----------------------------------------------------------------------------------------------
# Inception features and the Frechet distance
# ----------------------------------------------------------------------------------------------

INCEPTION_WEIGHTS_ENV = "LATENTCODE_INCEPTION_WEIGHTS"
# The two weight files people have: pytorch-fid's port of the TensorFlow FID network (the one
# published FID numbers use) and torchvision's ImageNet Inception-v3.
PYTORCH_FID_WEIGHTS = (
    "pt_inception-2015-12-05-6726825d.pth",
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
)
TORCHVISION_WEIGHTS = (
    "inception_v3_google-0cc3c7bd.pth",
    "https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth",
)


class MissingInceptionWeightsError(FileNotFoundError):
    """The Inception-v3 weights rFID needs are not on this machine."""


def resolve_inception_weights(weights_path: str | os.PathLike | None = None) -> Path:
    """The Inception weight file to use: `weights_path`, else `$LATENTCODE_INCEPTION_WEIGHTS`,
    else one of the two known files in torch's hub cache (`$TORCH_HOME/hub/checkpoints`).

    Raises [`MissingInceptionWeightsError`] saying where to get the file and how to pass it.
    """
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    candidates = [weights_path, os.environ.get(INCEPTION_WEIGHTS_ENV)]
    candidates += [checkpoints / PYTORCH_FID_WEIGHTS[0], checkpoints / TORCHVISION_WEIGHTS[0]]
    explicit = weights_path is not None or os.environ.get(INCEPTION_WEIGHTS_ENV) is not None
    for candidate in candidates:
        if candidate is not None and Path(candidate).is_file():
            return Path(candidate)
        if candidate is not None and explicit:
            break  # a path the user named must exist; do not fall back silently
    named = f"'{weights_path or os.environ.get(INCEPTION_WEIGHTS_ENV)}' does not exist" if explicit else "none given"
    raise MissingInceptionWeightsError(
        f"rFID needs Inception-v3 weights ({named}). Download one of\n"
        f"  {PYTORCH_FID_WEIGHTS[1]}  (pytorch-fid's FID network: the numbers papers report; "
        "also `pip install pytorch-fid`)\n"
        f"  {TORCHVISION_WEIGHTS[1]}  (torchvision's ImageNet Inception-v3)\n"
        f"and pass its path with --inception_weights PATH (or inception_weights=PATH, or "
        f"${INCEPTION_WEIGHTS_ENV}=PATH), or put it unrenamed in {checkpoints}. "
        "Use --no_fid to skip rFID."
    )


def _pytorch_fid_inception() -> nn.Module:
    """torchvision's Inception-v3 with the blocks of the TensorFlow FID network (pytorch-fid's
    `fid_inception_v3`, without its download)."""
    try:
        from pytorch_fid import inception as fid
    except ImportError as error:
        raise ImportError(
            f"{PYTORCH_FID_WEIGHTS[0]} is pytorch-fid's FID network; its blocks come from the pytorch-fid "
            "package: pip install pytorch-fid"
        ) from error
    from torchvision.models.inception import Inception3

    network = Inception3(num_classes=1008, aux_logits=False, init_weights=False)
    network.Mixed_5b = fid.FIDInceptionA(192, pool_features=32)
    network.Mixed_5c = fid.FIDInceptionA(256, pool_features=64)
    network.Mixed_5d = fid.FIDInceptionA(288, pool_features=64)
    network.Mixed_6b = fid.FIDInceptionC(768, channels_7x7=128)
    network.Mixed_6c = fid.FIDInceptionC(768, channels_7x7=160)
    network.Mixed_6d = fid.FIDInceptionC(768, channels_7x7=160)
    network.Mixed_6e = fid.FIDInceptionC(768, channels_7x7=192)
    network.Mixed_7b = fid.FIDInceptionE_1(1280)
    network.Mixed_7c = fid.FIDInceptionE_2(2048)
    return network


class InceptionFeatures(nn.Module):
    """Inception-v3 pool features for FID: `[B, C, H, W]` in [-1, 1] -> `[B, 2048]` float32.

    Built from pytorch-fid's blocks (features equal to its `InceptionV3`, tested), but loading a
    local weight file: pytorch-fid's class downloads its weights, which fails offline.

    Images are made RGB (grey repeated, alpha dropped) and resized to 299x299 bilinearly, as
    pytorch-fid does; [-1, 1] is the input range both weight sets were trained with.

    Args:
        weights_path: pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (1008 classes: the
            FID network, needs the `pytorch-fid` package) or torchvision's
            `inception_v3_google-0cc3c7bd.pth`; see [`resolve_inception_weights`].
    """

    def __init__(self, weights_path: str | os.PathLike | None = None):
        super().__init__()
        from torchvision.models.inception import Inception3

        self.weights_path = resolve_inception_weights(weights_path)
        state = torch.load(self.weights_path, map_location="cpu", weights_only=True)
        fid_network = state["fc.weight"].shape[0] == 1008
        self.network = _pytorch_fid_inception() if fid_network else Inception3(aux_logits=True, init_weights=False)
        self.network.load_state_dict(state)
        # `transform_input` would re-normalise ImageNet-standardised input; ours is already [-1, 1].
        self.network.transform_input = False
        self.network.fc = nn.Identity()
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):
        return super().train(False)  # batch norm and dropout stay in inference mode

    @torch.no_grad()
    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        images = as_rgb(pixels.float())
        images = F.interpolate(images, size=(299, 299), mode="bilinear", align_corners=False)
        return self.network(images)


class FeatureStatistics:
    """Running mean and covariance of feature vectors, in float64.

    `update([N, D])` adds features; `mean()` is `[D]`, `covariance()` the `[D, D]` unbiased
    covariance (`numpy.cov`'s default, as pytorch-fid uses).
    """

    def __init__(self):
        self.count = 0
        self.total: torch.Tensor | None = None
        self.total_outer: torch.Tensor | None = None

    def update(self, features: torch.Tensor) -> None:
        if features.dim() != 2:
            raise ValueError(f"expected features [N, D], got shape {tuple(features.shape)}")
        features = features.detach().double().cpu()
        if self.total is None:
            self.total = features.new_zeros(features.shape[1])
            self.total_outer = features.new_zeros(features.shape[1], features.shape[1])
        self.count += features.shape[0]
        self.total += features.sum(dim=0)
        self.total_outer += features.T @ features

    def mean(self) -> torch.Tensor:
        self._check(1)
        return self.total / self.count

    def covariance(self) -> torch.Tensor:
        self._check(2)
        mean = self.mean()
        return (self.total_outer - self.count * torch.outer(mean, mean)) / (self.count - 1)

    def _check(self, minimum: int) -> None:
        if self.count < minimum:
            raise ValueError(f"need at least {minimum} feature vectors, got {self.count}")


def frechet_distance(mean_1: torch.Tensor, cov_1: torch.Tensor, mean_2: torch.Tensor, cov_2: torch.Tensor) -> float:
    """Frechet distance between N(mean_1, cov_1) and N(mean_2, cov_2):
    `|m1 - m2|^2 + tr(C1 + C2 - 2 (C1 C2)^(1/2))`.

    `tr((C1 C2)^(1/2))` is computed as the sum of square roots of the eigenvalues of the
    symmetric PSD matrix `C1^(1/2) C2 C1^(1/2)`, which has the same spectrum as `C1 C2`;
    this stays real and stable where a general matrix square root (`scipy.linalg.sqrtm`)
    returns complex parts for near-singular covariances. Inputs `[D]`, `[D, D]`; float64.
    (Ours, not pytorch-fid's `calculate_frechet_distance`: that one is the scipy `sqrtm` form and
    needs an epsilon offset when there are fewer images than feature dimensions; tests compare
    both to scipy.)
    """
    mean_1, mean_2, cov_1, cov_2 = (t.double() for t in (mean_1, mean_2, cov_1, cov_2))
    eigenvalues, eigenvectors = torch.linalg.eigh(cov_1)
    sqrt_cov_1 = (eigenvectors * eigenvalues.clamp_min(0).sqrt()) @ eigenvectors.T
    product = sqrt_cov_1 @ cov_2 @ sqrt_cov_1
    trace_sqrt = torch.linalg.eigvalsh((product + product.T) / 2).clamp_min(0).sqrt().sum()
    distance = (mean_1 - mean_2).pow(2).sum() + torch.trace(cov_1) + torch.trace(cov_2) - 2 * trace_sqrt
    return float(distance)


# ----------------------------------------------------------------------------------------------
# Codebook usage
# ----------------------------------------------------------------------------------------------


class CodebookHistogram:
    """How often each of `codebook_size` codes is used, accumulated over a whole evaluation
    (the quantizers' `CodebookUsageWindow` is the training-time sliding window).

    `update(indices)` takes `[B, h, w]` (one code per position; a vector latent's `[B, G]`) or
    `[B, h, w, L]` (L codes per position, e.g. residual levels, each counted in its own
    histogram). `levels` (a model's `num_quantizers`) says L where the shape does not: a vector
    latent's `[B, G, L]`; None takes L from a 4-D `[B, h, w, L]` and 1 otherwise.
    """

    def __init__(self, codebook_size: int, levels: int | None = None):
        if codebook_size < 1:
            raise ValueError(f"codebook_size must be >= 1, got {codebook_size}")
        if levels is not None and levels < 1:
            raise ValueError(f"levels must be >= 1, got {levels}")
        self.codebook_size, self.levels = codebook_size, levels
        self.counts: torch.Tensor | None = None  # [L, K] int64

    def update(self, indices: torch.Tensor) -> None:
        levels = self.levels or (indices.shape[-1] if indices.dim() == 4 else 1)
        if (
            indices.is_floating_point()
            or indices.dim() not in (2, 3, 4)
            or (levels > 1 and indices.shape[-1] != levels)
        ):
            expected = "[B, h, w] or [B, G]" if levels == 1 else f"[B, h, w, {levels}] or [B, G, {levels}]"
            raise ValueError(f"expected integer indices {expected}, got {indices.dtype} {tuple(indices.shape)}")
        levels = indices.reshape(-1, levels).long().cpu()
        if levels.numel() and (levels.min() < 0 or levels.max() >= self.codebook_size):
            raise ValueError(
                f"indices must be in [0, {self.codebook_size}), got values in [{int(levels.min())}, {int(levels.max())}]"
            )
        counts = torch.stack([torch.bincount(level, minlength=self.codebook_size) for level in levels.T])
        self.counts = counts if self.counts is None else self.counts + counts

    def usage(self) -> float:
        """Fraction of codes used at least once (mean over levels)."""
        return float((self.counts > 0).double().mean())

    def perplexity(self) -> float:
        """exp(entropy) of the code distribution in nats (mean over levels): the effective
        number of codes; `codebook_size` when all are used equally."""
        return float(perplexity_of(self.counts).mean())


# ----------------------------------------------------------------------------------------------
# VAE likelihood
# ----------------------------------------------------------------------------------------------


def discretized_gaussian_log_likelihood(
    target: torch.Tensor, mean: torch.Tensor, std: float, num_levels: int = 256
) -> torch.Tensor:
    """log P(target) per image in nats, with each value of `target` one of `num_levels`
    evenly spaced levels in [-1, 1] and P the mass of N(mean, std^2) over that level's bin
    (the outermost bins reach to -inf / +inf, as in PixelCNN++ and DDPM).

    `target`, `mean` `[B, C, H, W]` -> `[B]` float64.
    """
    _check_pair(mean, target)
    half_bin = 1.0 / (num_levels - 1)
    normal = torch.distributions.Normal(mean.double(), std)
    target = target.double()
    upper = torch.where(target > 1 - half_bin, torch.ones_like(target), normal.cdf(target + half_bin))
    lower = torch.where(target < -1 + half_bin, torch.zeros_like(target), normal.cdf(target - half_bin))
    # Far in the tails both CDFs round to the same value; the density times the bin width is
    # then the accurate mass.
    mass = upper - lower
    log_density = normal.log_prob(target) + math.log(2 * half_bin)
    log_mass = torch.where(mass > 1e-12, mass.clamp_min(1e-300).log(), log_density)
    return log_mass.flatten(1).sum(dim=1)


def gaussian_bits_per_dim(
    target: torch.Tensor, reconstruction_mean: torch.Tensor, kl: torch.Tensor, decoder_std: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Negative ELBO per image, in nats and in bits per dimension.

    `-ELBO = -log p(x | z) + KL(q(z|x) || p(z))` with `z` one posterior sample, `p(x | z)` the
    discretised Gaussian of [`discretized_gaussian_log_likelihood`] around the decoder output
    and `kl` `[B]` in nats. Bits per dimension divide by `C*H*W * ln 2`.

    Returns `(negative_elbo [B], bits_per_dim [B])`, float64.
    """
    negative_elbo = -discretized_gaussian_log_likelihood(target, reconstruction_mean, decoder_std) + kl.double()
    return negative_elbo, negative_elbo / (target[0].numel() * math.log(2))


def decoder_std_from_kl_weight(kl_weight: float) -> float:
    """The Gaussian decoder std (in [-1, 1] pixel units) under which `model(x).loss`, MSE +
    `kl_weight * KL / (C*H*W)`, is the negative ELBO up to scale: `sqrt(kl_weight / 2)`."""
    if kl_weight <= 0:
        raise ValueError(f"kl_weight must be > 0 to define a decoder std, got {kl_weight}; pass decoder_std")
    return math.sqrt(kl_weight / 2)
