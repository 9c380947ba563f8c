"""Evaluation metrics against references (scikit-image, scipy, pytorch-fid, hand-computed values),
the evaluation runner, its report and the `latentcode-eval` CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import PIL.Image
import pytest
import scipy.linalg
import scipy.stats
import torch
from helpers import tiny_model
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from latentcode.evaluation import (
    CodebookHistogram,
    FeatureStatistics,
    InceptionFeatures,
    MissingInceptionWeightsError,
    build_lpips,
    evaluate,
    frechet_distance,
    gaussian_bits_per_dim,
    markdown_table,
    psnr,
    ssim,
    write_report,
)
from latentcode.evaluation.cli import main as eval_main
from latentcode.evaluation.evaluate import EvaluationResult
from latentcode.evaluation.metrics import INCEPTION_WEIGHTS_ENV, _pytorch_fid_inception
from latentcode.reporting import check_metrics_report, metrics_report, read_metrics_json, write_metrics_json
from latentcode.traversal import ACTIVE_VARIANCE, per_dimension_kl, posterior_mean_activity


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    """Four real 32x32 RGB crops of scikit-image's astronaut photograph, `[4, 3, 32, 32]` in [-1, 1]."""
    import skimage.data

    photo = torch.from_numpy(skimage.data.astronaut()).permute(2, 0, 1).float() / 127.5 - 1
    return torch.stack([photo[:, 100 + 40 * i : 132 + 40 * i, 180:212] for i in range(4)])


def noisy(images: torch.Tensor, std: float, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (images + std * torch.randn(images.shape, generator=generator)).clamp(-1, 1)


# -- PSNR / SSIM --------------------------------------------------------------------------------


def test_psnr_matches_scikit_image_per_image(photos):
    reconstruction = noisy(photos, 0.1)
    ours = psnr(reconstruction, photos)
    reference = [
        peak_signal_noise_ratio(t.numpy().astype(np.float64), r.numpy().astype(np.float64), data_range=2.0)
        for t, r in zip(photos, reconstruction)
    ]
    np.testing.assert_allclose(ours.numpy(), reference, rtol=1e-10)


def test_psnr_of_known_noise_and_identical_images():
    target = torch.zeros(3, 1, 8, 8, dtype=torch.float64)
    shifted = target + torch.tensor([0.02, 0.2, 0.0], dtype=torch.float64).view(3, 1, 1, 1)
    values = psnr(shifted, target)
    # MSE = offset^2, so PSNR = 10 log10(2^2 / offset^2): 40 dB and 20 dB exactly; identical: inf.
    np.testing.assert_allclose(values[:2].numpy(), [40.0, 20.0], rtol=1e-12)
    assert values[2] == math.inf


@pytest.mark.parametrize("channels", [1, 3])
def test_ssim_matches_scikit_image(photos, channels):
    target = photos[:, :channels]
    reconstruction = noisy(target, 0.15, seed=1)
    ours = ssim(reconstruction, target)
    reference = [
        structural_similarity(
            t.numpy().astype(np.float64),
            r.numpy().astype(np.float64),
            data_range=2.0,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            channel_axis=0,
        )
        for t, r in zip(target, reconstruction)
    ]
    np.testing.assert_allclose(ours.numpy(), reference, rtol=1e-8)
    assert 0.0 < min(reference) < 0.99
    torch.testing.assert_close(ssim(target, target), torch.ones(4, dtype=torch.float64))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", [(2, 3, 150, 97), (5, 3, 20, 26)])
def test_ssim_in_pieces_matches_scikit_image(monkeypatch, shape, threads):
    """Large images run in strips (each recomputing the window's rows it shares with the next),
    small ones in groups of whole images, on worker threads where torch has several; the result is
    scikit-image's whole-image SSIM."""
    from latentcode.evaluation import metrics

    monkeypatch.setattr(metrics, "SSIM_MIN_STRIP_ROWS", 7)  # 150x97: 20 strips of 7 rows per map
    monkeypatch.setattr(metrics, "SSIM_PIECE_VALUES", 1100)  # 20x26: 2 maps per piece, 8 pieces
    pieces = metrics._ssim_pieces(shape[0] * shape[1], shape[2], shape[3])
    assert len(pieces) == (120 if shape[2] == 150 else 8)
    generator = torch.Generator().manual_seed(2)
    target = torch.rand(shape, generator=generator) * 2 - 1
    reconstruction = noisy(target, 0.2, seed=3)
    reference = [
        structural_similarity(
            t.double().numpy(),
            r.double().numpy(),
            data_range=2.0,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            channel_axis=0,
        )
        for t, r in zip(target, reconstruction)
    ]
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ours = ssim(reconstruction, target)
    finally:
        torch.set_num_threads(previous)
    np.testing.assert_allclose(ours.numpy(), reference, rtol=1e-10)


def test_metric_input_errors():
    with pytest.raises(ValueError, match="same shape"):
        psnr(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 9))
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8))


# -- Frechet distance and Inception features ----------------------------------------------------


def scipy_frechet_distance(features_1: np.ndarray, features_2: np.ndarray) -> float:
    """The textbook formula with scipy's matrix square root, as pytorch-fid computes it."""
    mean_1, mean_2 = features_1.mean(axis=0), features_2.mean(axis=0)
    cov_1, cov_2 = np.cov(features_1, rowvar=False), np.cov(features_2, rowvar=False)
    sqrt_product = scipy.linalg.sqrtm(cov_1 @ cov_2).real
    return float(((mean_1 - mean_2) ** 2).sum() + np.trace(cov_1 + cov_2 - 2 * sqrt_product))


def statistics_of(features: torch.Tensor, batch_size: int = 70) -> FeatureStatistics:
    stats = FeatureStatistics()
    for chunk in features.split(batch_size):
        stats.update(chunk)
    return stats


def test_frechet_distance_matches_scipy_and_is_zero_for_identical_sets():
    generator = torch.Generator().manual_seed(0)
    real = torch.randn(300, 24, generator=generator, dtype=torch.float64)
    mixing = torch.eye(24, dtype=torch.float64) + 0.3 * torch.randn(24, 24, generator=generator, dtype=torch.float64)
    fake = real @ mixing + 0.5
    stats_real, stats_fake = statistics_of(real), statistics_of(fake)
    np.testing.assert_allclose(stats_real.covariance().numpy(), np.cov(real.numpy(), rowvar=False), rtol=1e-10)
    np.testing.assert_allclose(stats_fake.mean().numpy(), fake.numpy().mean(axis=0), rtol=1e-12)

    ours = frechet_distance(stats_real.mean(), stats_real.covariance(), stats_fake.mean(), stats_fake.covariance())
    reference = scipy_frechet_distance(real.numpy(), fake.numpy())
    assert reference > 1.0
    assert ours == pytest.approx(reference, rel=1e-8)
    same = frechet_distance(stats_real.mean(), stats_real.covariance(), stats_real.mean(), stats_real.covariance())
    assert abs(same) < 1e-8


def test_frechet_distance_with_fewer_samples_than_dimensions_stays_real():
    # 2048-d features from a few hundred images give singular covariances.
    generator = torch.Generator().manual_seed(1)
    real, fake = torch.randn(20, 64, generator=generator), torch.randn(20, 64, generator=generator) + 0.1
    ours = frechet_distance(*_moments(real), *_moments(fake))
    assert math.isfinite(ours)
    assert ours == pytest.approx(scipy_frechet_distance(real.double().numpy(), fake.double().numpy()), rel=1e-4)


def _moments(features: torch.Tensor):
    stats = statistics_of(features)
    return stats.mean(), stats.covariance()


def test_fid_network_features_equal_pytorch_fid(tmp_path, monkeypatch):
    """Random weights stored as pytorch-fid's weight file: our loader picks the FID architecture and
    its pool features equal pytorch-fid's InceptionV3 with the same weights."""
    from pytorch_fid import inception as pytorch_fid_inception

    torch.manual_seed(0)
    state = _pytorch_fid_inception().state_dict()
    weights = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(state, weights)
    ours = InceptionFeatures(weights)
    monkeypatch.setattr(pytorch_fid_inception, "load_state_dict_from_url", lambda *args, **kwargs: state)
    reference = pytorch_fid_inception.InceptionV3([3], resize_input=True, normalize_input=True).eval()

    images = torch.rand(2, 3, 40, 40) * 2 - 1
    features = ours(images)
    assert features.shape == (2, 2048)
    with torch.no_grad():
        expected = reference((images + 1) / 2)[0].flatten(1)  # pytorch-fid takes [0, 1]
    torch.testing.assert_close(features, expected, rtol=1e-4, atol=1e-5)


def test_inception_features_torchvision_weights_and_grey_input(tmp_path):
    from torchvision.models.inception import Inception3

    torch.manual_seed(0)
    weights = tmp_path / "inception_v3_google-0cc3c7bd.pth"
    torch.save(Inception3(aux_logits=True, init_weights=False).state_dict(), weights)
    network = InceptionFeatures(weights)
    grey = torch.rand(1, 1, 16, 16) * 2 - 1
    features = network(grey)
    assert features.shape == (1, 2048) and torch.isfinite(features).all()
    torch.testing.assert_close(features, network(grey.expand(-1, 3, -1, -1)))  # grey is repeated to RGB


def test_missing_inception_weights_error_says_how_to_supply_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv(INCEPTION_WEIGHTS_ENV, raising=False)
    with pytest.raises(MissingInceptionWeightsError) as error:
        InceptionFeatures()
    message = str(error.value)
    for needle in ("pt_inception-2015-12-05-6726825d.pth", "inception_v3_google-0cc3c7bd.pth", "--inception_weights"):
        assert needle in message
    assert str(tmp_path / "torch_home" / "hub" / "checkpoints") in message
    with pytest.raises(MissingInceptionWeightsError, match="nope.pth' does not exist"):
        InceptionFeatures(tmp_path / "nope.pth")


# -- codebook usage and bits per dimension ------------------------------------------------------


def test_codebook_usage_and_perplexity_hand_computed():
    usage = CodebookHistogram(codebook_size=4)
    usage.update(torch.tensor([[[0, 0], [1, 1]]]))  # codes 0 and 1 twice each
    assert usage.usage() == 0.5 and usage.perplexity() == pytest.approx(2.0)
    usage.update(torch.tensor([[[2, 3], [2, 3]]]))  # now all four equally often
    assert usage.usage() == 1.0 and usage.perplexity() == pytest.approx(4.0)

    levels = CodebookHistogram(codebook_size=4)  # [B, h, w, L]: one histogram per level
    levels.update(torch.tensor([[[[0, 1], [0, 2]], [[0, 3], [0, 1]]]]))
    # level 0 uses one code (perplexity 1), level 1 three codes with counts 2, 1, 1
    level_1 = math.exp(-(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)))
    assert levels.usage() == pytest.approx((1 / 4 + 3 / 4) / 2)
    assert levels.perplexity() == pytest.approx((1.0 + level_1) / 2)
    with pytest.raises(ValueError, match=r"indices must be in \[0, 4\)"):
        usage.update(torch.tensor([[[4]]]))


def test_bits_per_dim_hand_computed():
    # Two pixel values on the 8-bit grid of [-1, 1]: one at the top edge (bin reaches +inf), one inside.
    target = torch.tensor([1.0, -1 + 2 * 100 / 255], dtype=torch.float64).view(1, 2, 1, 1)
    mean = torch.tensor([0.98, -0.2], dtype=torch.float64).view(1, 2, 1, 1)
    std, half_bin, kl = 0.05, 1 / 255, torch.tensor([3.0])
    normal = scipy.stats.norm
    top = 1 - normal.cdf(1 - half_bin, loc=0.98, scale=std)
    inner_value = -1 + 2 * 100 / 255
    inner = normal.cdf(inner_value + half_bin, -0.2, std) - normal.cdf(inner_value - half_bin, -0.2, std)
    expected_nll = -(math.log(top) + math.log(inner)) + 3.0
    negative_elbo, bits_per_dim = gaussian_bits_per_dim(target, mean, kl, std)
    assert float(negative_elbo) == pytest.approx(expected_nll, rel=1e-9)
    assert float(bits_per_dim) == pytest.approx(expected_nll / (2 * math.log(2)), rel=1e-9)


# -- the runner, its report and the CLI ---------------------------------------------------------


def digit_batches(digits: torch.Tensor, count: int = 48, batch_size: int = 16):
    return list(digits[:count].split(batch_size))


def test_evaluate_vqvae_metrics_equal_direct_computation(digits, tmp_path):
    model = tiny_model("vqvae", in_channels=1, codebook_size=32)
    lpips = build_lpips(pretrained=False)  # random backbone: checks the plumbing, not LPIPS values
    pixels = torch.nn.functional.interpolate(digits[:48], scale_factor=2)  # LPIPS needs >= 32x32
    result = evaluate(model, list(pixels.split(16)), lpips=lpips, num_grid_images=5)

    with torch.no_grad():
        indices = model.encode(pixels).indices
        reconstruction = model.decode_indices(indices).sample
        expected_lpips = lpips(reconstruction, pixels).mean()
    metrics = result.metrics
    assert metrics["num_images"] == 48
    assert metrics["psnr"] == pytest.approx(float(psnr(reconstruction, pixels).mean()), rel=1e-6)
    assert metrics["ssim"] == pytest.approx(float(ssim(reconstruction, pixels).mean()), rel=1e-6)
    assert metrics["lpips"] == pytest.approx(float(expected_lpips), rel=1e-5)
    counts = torch.bincount(indices.flatten(), minlength=32)
    assert metrics["codebook_usage"] == pytest.approx(float((counts > 0).float().mean()))
    probabilities = counts.double() / counts.sum()
    entropy = -(probabilities[probabilities > 0] * probabilities[probabilities > 0].log()).sum()
    assert metrics["perplexity"] == pytest.approx(float(entropy.exp()))
    assert metrics["encode_images_per_s"] > 0 and metrics["decode_images_per_s"] > 0
    assert result.originals.shape == result.reconstructions.shape == (5, 1, 32, 32)

    paths = write_report(result, tmp_path, extra={"model": "tiny"})
    saved = json.loads(paths["metrics.json"].read_text())
    assert saved["model"] == "tiny" and saved["metrics"]["num_images"] == 48 and len(saved["per_image"]["psnr"]) == 48
    assert "| codebook perplexity |" in paths["metrics.md"].read_text()
    grid = PIL.Image.open(paths["reconstructions.png"])
    assert grid.height < grid.width  # two rows (originals, reconstructions) of five
    assert PIL.Image.open(paths["codebook_usage.png"]).size == PIL.Image.open(paths["psnr_histogram.png"]).size


def test_evaluate_vae_kl_and_bits_per_dim(digits):
    model = tiny_model("vae", in_channels=1)
    batches = digit_batches(digits, count=32)
    result = evaluate(model, batches, decoder_std=0.1, seed=3)

    # The same computation by hand: posterior samples drawn in order from one seeded generator.
    generator = torch.Generator().manual_seed(3)
    kl, bits = [], []
    with torch.no_grad():
        for pixels in batches:
            posterior = model.encode(pixels).latent_dist
            sample = model.decode(posterior.sample(generator=generator)).sample
            kl.append(posterior.kl())
            bits.append(gaussian_bits_per_dim(pixels, sample, posterior.kl(), 0.1)[1])
    assert result.metrics["kl"] == pytest.approx(float(torch.cat(kl).double().mean()), rel=1e-6)
    assert result.metrics["bits_per_dim"] == pytest.approx(float(torch.cat(bits).mean()), rel=1e-6)
    assert result.metrics["decoder_std"] == 0.1 and result.metrics["bits_per_dim"] > 0
    assert "codebook_usage" not in result.metrics


def test_perfect_reconstructions_give_infinite_psnr_in_the_report(tmp_path):
    images = torch.zeros(2, 1, 16, 16)
    result = EvaluationResult(
        metrics={"num_images": 2, "psnr": math.inf, "perfect_reconstructions": 2},
        per_image_psnr=[math.inf, math.inf],
        originals=images,
        reconstructions=images,
    )
    paths = write_report(result, tmp_path)
    saved = json.loads(paths["metrics.json"].read_text())  # strict JSON: no Infinity token
    assert saved["metrics"]["psnr"] == "inf" and saved["per_image"]["psnr"] == ["inf", "inf"]
    assert "| PSNR (dB, mean per image) | inf |" in markdown_table(result.metrics)


def test_cli_writes_report_for_a_saved_model(tmp_path):
    model = tiny_model("vqvae", in_channels=1, codebook_size=16)
    model.save_pretrained(tmp_path / "model")
    output = tmp_path / "eval"
    argv = [
        "--pretrained_model_name_or_path",
        str(tmp_path / "model"),
        "--dataset_name",
        "builtin:digits",
        "--max_images",
        "40",
        "--batch_size",
        "16",
    ]
    assert eval_main(argv + ["--no_fid", "--no_lpips", "--output_dir", str(output)]) == 0
    saved = json.loads((output / "metrics.json").read_text())
    assert saved["metrics"]["num_images"] == 40 and saved["details"]["resolution"] == 16
    assert saved["schema_version"] == 1 and saved["kind"] == "evaluation" and saved["data"]["num_images"] == 40
    assert {"metrics.md", "reconstructions.png", "psnr_histogram.png", "codebook_usage.png"} <= {
        path.name for path in output.iterdir()
    }
    with pytest.raises(MissingInceptionWeightsError):
        eval_main(argv + ["--no_lpips", "--inception_weights", str(tmp_path / "missing.pth")])


def test_cli_without_lpips_weights_suggests_its_own_flag(tmp_path, monkeypatch, capsys):
    import lpips

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(lpips, "LPIPS", offline)
    model = tiny_model("vqvae", in_channels=1, codebook_size=16)
    model.save_pretrained(tmp_path / "model")
    argv = ["--pretrained_model_name_or_path", str(tmp_path / "model"), "--dataset_name", "builtin:digits"]
    argv += ["--max_images", "8", "--no_fid"]
    assert eval_main(argv + ["--output_dir", str(tmp_path / "eval")]) == 0
    message = capsys.readouterr().err
    assert "LPIPS skipped" in message and "pass --no_lpips" in message and "perceptual_weight" not in message


def test_lpips_offline_without_cached_weights_is_skipped_without_a_download(tmp_path, monkeypatch, capsys):
    """HF_HUB_OFFLINE=1 and no backbone weights in torch's hub cache: nothing is downloaded, and
    one line says how to enable LPIPS."""

    def download(url, *args, **kwargs):
        raise AssertionError(f"tried to download {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="HF_HUB_OFFLINE is set") as error:
        build_lpips("alex", how_to_disable="pass --no_lpips")
    expected_file = tmp_path / "torch" / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    assert str(expected_file.parent) in str(error.value) and "download.pytorch.org" in str(error.value)
    model = tiny_model("vqvae", in_channels=1, codebook_size=16)
    model.save_pretrained(tmp_path / "model")
    argv = ["--pretrained_model_name_or_path", str(tmp_path / "model"), "--dataset_name", "builtin:digits"]
    assert eval_main(argv + ["--max_images", "4", "--no_fid", "--output_dir", str(tmp_path / "eval")]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "LPIPS" in line]
    assert len(lines) == 1 and lines[0].startswith("LPIPS skipped: HF_HUB_OFFLINE is set"), lines
    assert "alexnet-owt-7be5be79.pth" in lines[0] and "pass --no_lpips" in lines[0]
    assert not expected_file.exists()


def test_lpips_offline_uses_cached_backbone_weights(tmp_path, monkeypatch):
    """With the backbone's weights in torch's hub cache, LPIPS builds offline from them."""
    import torchvision

    def download(url, *args, **kwargs):
        raise AssertionError(f"tried to download {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from latentcode.evaluation.metrics import lpips_backbone_weights

    path, url = lpips_backbone_weights("squeeze")  # SqueezeNet: a 5 MB file, AlexNet's is 233 MB
    assert path == tmp_path / "torch" / "hub" / "checkpoints" / "squeezenet1_1-b8a52dc0.pth" and url.endswith(path.name)
    path.parent.mkdir(parents=True)
    backbone = torchvision.models.squeezenet1_1()
    torch.save(backbone.state_dict(), path)
    lpips = build_lpips("squeeze")
    first_conv = lpips.lpips.net.slice1[0].weight
    torch.testing.assert_close(first_conv, backbone.features[0].weight)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    assert lpips(images, images).abs().max() < 1e-6 and (lpips(images, images.flip(-1)) > 0).all()
    with pytest.raises(ValueError, match="one of"):
        build_lpips("resnet")


# -- latentcode-eval as a user meets it: held-out split, progress, summary, model argument -----


def test_cli_scores_the_held_out_split_with_a_progress_bar_and_a_summary(tmp_path, capsys):
    model = tiny_model("vqvae", in_channels=1, codebook_size=16)
    model.save_pretrained(tmp_path / "model")
    argv = ["--pretrained_model_name_or_path", str(tmp_path / "model"), "--dataset_name", "builtin:digits"]
    argv += ["--max_images", "24", "--batch_size", "8", "--no_fid", "--no_lpips", "--output_dir", str(tmp_path / "e")]
    assert eval_main(argv) == 0
    saved = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert saved["data"]["split"] == "test"
    captured = capsys.readouterr()
    assert "on split 'test' of builtin:digits" in captured.err
    assert "24/24" in captured.err and "img/s" in captured.err  # tqdm: count, rate (and time left)
    summary = captured.out.strip().splitlines()[-1]
    assert summary.startswith("scored 24 images of split 'test' of builtin:digits in ")
    assert f"PSNR {saved['metrics']['psnr']:.2f} dB" in summary and "codebook usage" in summary


def test_cli_scores_the_whole_held_out_split_by_default(tmp_path):
    """No --max_images: every image of the split (the README's numbers are on whole test splits)."""
    from latentcode.data import BUILTIN_DATASETS, builtin_split
    from latentcode.evaluation.cli import build_parser

    assert build_parser().parse_args(["--pretrained_model_name_or_path", "m"]).max_images is None
    model = tiny_model("vqvae", in_channels=1, codebook_size=16)
    model.save_pretrained(tmp_path / "model")
    argv = ["--pretrained_model_name_or_path", str(tmp_path / "model"), "--dataset_name", "builtin:digits"]
    assert eval_main(argv + ["--batch_size", "64", "--no_fid", "--no_lpips", "--output_dir", str(tmp_path / "e")]) == 0
    saved = json.loads((tmp_path / "e" / "metrics.json").read_text())
    test_images = len(builtin_split(BUILTIN_DATASETS["builtin:digits"](), "test"))
    assert saved["metrics"]["num_images"] == test_images == 179 and saved["data"]["max_images"] is None


def final_progress(err: str) -> str:
    """The last state of the `evaluating` bar in captured stderr."""
    return [line for line in err.replace("\r", "\n").splitlines() if line.startswith("evaluating:")][-1]


def test_cli_progress_bar_counts_the_images_present(tmp_path, capsys):
    """The bar's total is the folder's 7 images, not --max_images; a smaller --max_images caps it,
    and skipped unreadable images leave a full bar over the images scored."""
    model = tiny_model("vqvae", in_channels=1, codebook_size=16)
    model.save_pretrained(tmp_path / "model")
    images = tmp_path / "images"
    images.mkdir()
    for index in range(7):
        PIL.Image.new("L", (20 + index, 16), color=index * 30).save(images / f"{index}.png")
    argv = ["--pretrained_model_name_or_path", str(tmp_path / "model"), "--train_data_dir", str(images)]
    argv += ["--no_fid", "--no_lpips", "--output_dir", str(tmp_path / "e"), "--full_resolution"]
    for extra, expected in (([], "7/7"), (["--max_images", "1000"], "7/7"), (["--max_images", "3"], "3/3")):
        capsys.readouterr()
        assert eval_main(argv + extra) == 0
        err = capsys.readouterr().err
        first = next(line for line in err.replace("\r", "\n").splitlines() if line.startswith("evaluating:"))
        assert f"0/{expected.split('/')[1]}" in first and expected in final_progress(err), err
    (images / "3.png").write_bytes(b"not a png")
    assert eval_main(argv) == 0
    assert "6/6" in final_progress(capsys.readouterr().err)


def test_progress_total_of_a_hub_dataset_comes_from_its_split_sizes():
    """A Hub dataset is not listed file by file: its card's split sizes give the total, if any."""
    from types import SimpleNamespace

    from latentcode.evaluation.cli import images_in_split

    args = SimpleNamespace(dataset_name="org/photos", train_data_dir=None, split="test")
    sized = SimpleNamespace(info=SimpleNamespace(splits={"test": SimpleNamespace(num_examples=10000)}))
    assert images_in_split(args, sized) == 10000
    assert images_in_split(args, SimpleNamespace(info=SimpleNamespace(splits=None))) is None


def test_full_resolution_tiles_are_at_least_256_pixels_by_default(tmp_path):
    """A 16-pixel model evaluated at full resolution tiles at 256 pixels unless told otherwise."""
    model = tiny_model("vqvae", in_channels=1, codebook_size=16)
    assert model.config.sample_size < 256
    model.save_pretrained(tmp_path / "model")
    images = tmp_path / "images"
    images.mkdir()
    PIL.Image.new("L", (40, 24)).save(images / "a.png")
    argv = ["--pretrained_model_name_or_path", str(tmp_path / "model"), "--train_data_dir", str(images)]
    argv += ["--no_fid", "--no_lpips", "--output_dir", str(tmp_path / "e"), "--full_resolution"]
    assert eval_main(argv) == 0
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["details"]["tile_sample_size"] == 256
    assert eval_main(argv + ["--tile_sample_size", "16"]) == 0
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["details"]["tile_sample_size"] == 16


def test_held_out_split_is_test_then_validation_then_train(tmp_path):
    from latentcode.evaluation.cli import held_out_split

    assert held_out_split("builtin:photos", None, None) == "test"
    assert held_out_split(None, None, None) == "test"
    image = PIL.Image.new("RGB", (8, 8))
    layouts = {"test": ("train", "test"), "validation": ("train", "validation"), "train": ("photos",)}
    for expected, folders in layouts.items():
        for folder in folders:
            (tmp_path / expected / folder).mkdir(parents=True)
            image.save(tmp_path / expected / folder / "a.png")
        assert held_out_split(None, None, str(tmp_path / expected)) == expected


def test_cli_warnings_do_not_land_inside_the_progress_bar(tmp_path, capsys):
    """A corrupt image's warning is written on its own line above the bar (tqdm.write)."""
    model = tiny_model("vqvae", in_channels=1, codebook_size=16)
    model.save_pretrained(tmp_path / "model")
    images = tmp_path / "images"
    images.mkdir()
    for index in range(6):
        PIL.Image.new("L", (16, 16), color=index * 40).save(images / f"{index}.png")
    (images / "3.png").write_bytes(b"not a png")
    argv = ["--pretrained_model_name_or_path", str(tmp_path / "model"), "--train_data_dir", str(images)]
    argv += ["--max_images", "5", "--batch_size", "2", "--no_fid", "--no_lpips", "--output_dir", str(tmp_path / "e")]
    assert eval_main(argv) == 0
    err = capsys.readouterr().err
    warning = next(line for line in err.replace("\r", "\n").splitlines() if "skipping unreadable" in line)
    assert "evaluating:" not in warning and "img/s" not in warning, err


# -- per-dimension KL, activity and active dimensions ----------------------------------------------------


def constant_posterior_vae(backbone: str, mean: list[float], logvar: list[float]):
    """A VAE whose posterior is N(mean, exp(logvar)) in every dimension for every image: its
    `quant_conv` (a linear map on a vector latent, a 1x1 convolution on a grid) outputs its bias."""
    if backbone == "vector":
        fields = dict(backbone="vector", sample_size=32, vector_hidden_channels=8, vector_hidden_size=16)
    else:
        fields = dict(block_out_channels=(8, 8), norm_num_groups=4, layers_per_block=1, sample_size=32)
    model = tiny_model("vae", in_channels=1, latent_channels=len(mean), **fields)
    with torch.no_grad():
        model.quant_conv.weight.zero_()
        model.quant_conv.bias.copy_(torch.tensor(mean + logvar))
    return model


# KL(N(m, e^v) || N(0, 1)) = (m^2 + e^v - 1 - v) / 2 per position: 0, 0.005, 2 and (0.5 - 1 + ln 2) / 2.
KNOWN_MEAN, KNOWN_LOGVAR = [0.0, 0.1, 2.0, 0.0], [0.0, 0.0, 0.0, math.log(0.5)]
KNOWN_KL = [0.0, 0.005, 2.0, (math.log(2) - 0.5) / 2]


@pytest.mark.parametrize("backbone, positions", [("vector", 1), ("ldm", 16 * 16)])
def test_a_posterior_off_the_prior_but_the_same_for_every_image_has_kl_and_no_active_dimension(
    backbone, positions, digits, tmp_path
):
    # The failure that counting dimensions by KL hid: every image gets the same posterior, away
    # from N(0, I), so the code spends KL and says nothing about the image.
    model = constant_posterior_vae(backbone, KNOWN_MEAN, KNOWN_LOGVAR)
    pixels = torch.nn.functional.interpolate(digits[:12], size=32)
    result = evaluate(model, list(pixels.split(5)), decoder_std=0.1, throughput=False)
    expected = [value * positions for value in KNOWN_KL]  # a grid's channel sums its 16x16 positions
    assert result.per_dimension_kl == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert sum(result.per_dimension_kl) == pytest.approx(result.metrics["kl"], rel=1e-6)
    assert result.per_dimension_activity == pytest.approx([0.0] * 4, abs=1e-9)
    assert result.metrics["active_dimensions"] == 0
    assert result.metrics["active_dimension_threshold"] == ACTIVE_VARIANCE == 0.01

    paths = write_report(result, tmp_path, extra={"model": "constant"})
    saved = read_metrics_json(paths["metrics.json"])
    assert saved["per_dimension"]["kl"] == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert saved["per_dimension"]["activity"] == pytest.approx([0.0] * 4, abs=1e-9)
    assert saved["metrics"]["active_dimensions"] == 0
    table = paths["metrics.md"].read_text()
    assert "| active latent dimensions |" in table and f"| 2 | {2.0 * positions:.3f} | 0.000 | no |" in table
    assert "| 0 | 0.000 | 0.000 | no |" in table and "-0.000" not in table


def variance_over_images(model, pixels: torch.Tensor) -> torch.Tensor:
    """Each latent dimension's population variance over `pixels` of its posterior mean, by hand:
    `[D]` (a grid's channel: the mean over its positions)."""
    variance = model.encode(pixels).latent_dist.mean.double().var(dim=0, unbiased=False)  # [D] or [C, h, w]
    return variance.reshape(len(variance), -1).mean(1)


@pytest.mark.parametrize("backbone", ["vector", "ldm"])
def test_activity_is_the_variance_over_images_of_the_posterior_mean(backbone, digits):
    # Dimension 0's mean follows the image with variance 1, dimension 1's with 1e-4 (under the
    # 0.01 threshold), dimension 2 is constant: each random row of `quant_conv` rescaled to its
    # variance (the variance scales with the square of the row; the bias does not enter).
    model = constant_posterior_vae(backbone, [0.0, 0.0, 1.0], [0.0, 0.0, 0.0])
    pixels = torch.nn.functional.interpolate(digits[:20], size=32)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        weight = model.quant_conv.weight  # [6, hidden] (vector) or [6, hidden, 1, 1] (grid)
        for dim, target in ((0, 1.0), (1, 1e-4)):
            weight[dim].copy_(torch.randn(weight[dim].shape, generator=generator))
            weight[dim] *= math.sqrt(target / variance_over_images(model, pixels)[dim].item())
    result = evaluate(model, list(pixels.split(7)), decoder_std=0.1, throughput=False)
    assert result.per_dimension_activity == pytest.approx([1.0, 1e-4, 0.0], rel=1e-5, abs=1e-12)
    assert result.per_dimension_activity == pytest.approx(posterior_mean_activity(model, pixels).tolist(), rel=1e-5)
    assert result.metrics["active_dimensions"] == 1
    # dimension 2 spends KL (mean 1: 0.5 nats a position) and is not active
    assert result.per_dimension_kl[2] == pytest.approx(0.5 * (1 if backbone == "vector" else 16 * 16), rel=1e-5)


def test_per_dimension_kl_of_the_evaluation_is_the_traversal_one(digits):
    model = tiny_model("vae", in_channels=1)
    batches = digit_batches(digits, count=32)
    result = evaluate(model, batches, decoder_std=0.1)
    expected = per_dimension_kl(model, torch.cat(batches))
    assert result.per_dimension_kl == pytest.approx(expected.tolist(), rel=1e-5)
    assert sum(result.per_dimension_kl) == pytest.approx(result.metrics["kl"], rel=1e-6)
    activity = posterior_mean_activity(model, torch.cat(batches))
    assert result.per_dimension_activity == pytest.approx(activity.tolist(), rel=1e-4, abs=1e-9)
    assert result.metrics["active_dimensions"] == int((activity > ACTIVE_VARIANCE).sum())


def test_models_without_a_posterior_report_no_per_dimension_kl(digits, tmp_path):
    for family in ("autoencoder", "vqvae"):
        result = evaluate(tiny_model(family, in_channels=1), digit_batches(digits, count=8))
        assert result.per_dimension_kl is None and "active_dimensions" not in result.metrics
        saved = json.loads(write_report(result, tmp_path / family)["metrics.json"].read_text())
        assert "per_dimension" not in saved  # the file is the schema-1 file it always was


def test_per_dimension_is_an_optional_key_of_schema_1(tmp_path):
    report = metrics_report(kind="evaluation", model="m", data={"num_images": 1}, metrics={"psnr": 30.0})
    assert "per_dimension" not in report  # a file written before the key existed reads as before
    write_metrics_json(report, tmp_path / "old.json")
    assert read_metrics_json(tmp_path / "old.json") == report
    with pytest.raises(ValueError, match="per_dimension: expected dict, got list"):
        check_metrics_report({**report, "per_dimension": [1.0]})
    with pytest.raises(ValueError, match=r"unknown keys \['per_dim'\]"):
        check_metrics_report({**report, "per_dim": {}})


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_training_model_card_shows_the_kl_of_each_latent_dimension(tmp_path):
    from latentcode.training import load_config, train

    model = dict(in_channels=1, block_out_channels=[8, 8], layers_per_block=1, latent_channels=3, norm_num_groups=4)
    config = load_config(
        output_dir=str(tmp_path / "run"), model_family="vae", model=model, dataset_name="builtin:digits",
        resolution=16, train_batch_size=8, max_train_steps=2, num_validation_images=8, report_to="none",
    )  # fmt: skip
    train(config)
    card = (tmp_path / "run" / "README.md").read_text()
    saved = read_metrics_json(tmp_path / "run" / "metrics.json")
    assert "KL and activity of each latent dimension" in card
    assert "| latent dimension | KL (nats) | activity | active |" in card
    assert [line for line in card.splitlines() if line.startswith(("| 0 |", "| 1 |", "| 2 |"))][2].startswith("| 2 |")
    assert f"| active latent dimensions | {saved['metrics']['active_dimensions']} |" in card
    kl = saved["per_dimension"]["kl"]  # metrics.json holds the values the card shows
    assert len(kl) == 3 and sum(kl) == pytest.approx(saved["metrics"]["kl"], rel=1e-6)
    activity = saved["per_dimension"]["activity"]
    assert len(activity) == 3 and saved["metrics"]["active_dimensions"] == sum(a > 0.01 for a in activity)
    assert "$" not in card.replace("$$", "")
