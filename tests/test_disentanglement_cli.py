"""latentcode-disentanglement on a tiny random vector VAE saved to disk: the JSON (reporting
schema), the markdown table, the per-dimension figure and the model card section."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
from helpers import tiny_vector_model

from latentcode.evaluation import disentanglement_cli as cli
from latentcode.reporting import read_metrics_json

TINY_SIZES = {
    "beta_vae": dict(batch_size=8, num_train=40, num_eval=20),
    "factor_vae": dict(batch_size=8, num_train=40, num_eval=20, num_variance_estimate=100),
    "mig": dict(num_train=200),
    "dci": dict(num_train=60, num_test=30),
    "sap": dict(num_train=100, num_test=50),
}


@pytest.fixture
def tiny_vae(tmp_path):
    tiny_vector_model("vae").save_pretrained(tmp_path / "model")
    (tmp_path / "model" / "README.md").write_text("# a tiny VAE\n")
    return tmp_path / "model"


def test_scores_a_saved_model_and_writes_json_table_figure_and_card(tiny_vae, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "FAST_SIZES", TINY_SIZES)
    out = tmp_path / "scores"
    assert cli.main([str(tiny_vae), "--output_dir", str(out), "--fast", "--update_model_card", "--device", "cpu"]) == 0

    report = read_metrics_json(out / "disentanglement.json")
    assert report["kind"] == "disentanglement" and report["model"] == str(tiny_vae)
    assert set(report["metrics"]) == {
        "beta_vae_score", "factor_vae_score", "mig", "dci_disentanglement", "dci_completeness",
        "dci_informativeness", "sap_score",
    }  # fmt: skip
    assert all(0.0 <= value <= 1.0 for value in report["metrics"].values())
    # images encoded: BetaVAE 2 x 8 per point, FactorVAE 100 (+ 8 per point unless every dimension
    # is pruned, as a random-init VAE's barely varying ones are), MIG, DCI, SAP one each
    factor_vae_points = 60 * 8 if report["details"]["results"]["factor_vae"]["num_active_dims"] else 0
    assert report["data"]["num_images"] == 60 * 16 + 100 + factor_vae_points + 200 + 90 + 150
    information = np.array([report["per_dimension"][f"mutual_information_{name}"] for name in cli.FACTOR_NAMES])
    assert information.shape == (5, 4) and (information >= 0).all()
    assert np.allclose(information.T, report["details"]["results"]["mig"]["mutual_information"])

    table = (out / "disentanglement.md").read_text()
    assert "| MIG |" not in table and f"| mig | {report['metrics']['mig']:.4f} |" in table
    figure = PIL.Image.open(out / "disentanglement_dimensions.png")
    assert figure.mode == "RGB" and figure.size[1] > 4 * 26  # a row per latent dimension
    card = (tiny_vae / "README.md").read_text()
    assert card.startswith("# a tiny VAE") and card.count(cli.MARKER_START) == 1 and table in card
    assert table in capsys.readouterr().out

    # Scoring again replaces the card's section instead of adding a second one.
    cli.main([str(tiny_vae), "--output_dir", str(out), "--fast", "--metrics", "mig", "--update_model_card"])
    card = (tiny_vae / "README.md").read_text()
    assert card.count(cli.MARKER_START) == 1 and "dci" not in card


def test_same_seed_same_scores(tiny_vae, tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "FAST_SIZES", TINY_SIZES)
    scores = []
    for run in range(2):
        cli.main([str(tiny_vae), "--output_dir", str(tmp_path / str(run)), "--fast", "--metrics", "mig,sap"])
        scores.append(read_metrics_json(tmp_path / str(run) / "disentanglement.json")["metrics"])
    assert scores[0] == scores[1]


def test_bad_arguments_raise_clear_errors(tiny_vae, tmp_path):
    with pytest.raises(ValueError, match="--metrics takes a comma-separated list of beta_vae, factor_vae, mig"):
        cli.main([str(tiny_vae), "--metrics", "mig,modularity"])
    tiny_vector_model("vae", sample_size=32).save_pretrained(tmp_path / "small")
    with pytest.raises(
        ValueError, match="dSprites images are 64x64 grey-scale; the model takes 1 channels at sample_size 32"
    ):
        cli.main([str(tmp_path / "small"), "--output_dir", str(tmp_path / "out")])


def test_full_sizes_encode_every_image_once_and_fast_sizes_draw_on_demand():
    """At disentanglement_lib's sizes the five metrics would draw 2.93 million images: four times
    the dataset, so main() encodes each image once; --fast's draw fewer than it holds."""
    full = 2 * 64 * 15000 + (10000 + 64 * 15000) + 10000 + 15000 + 15000
    assert cli.images_drawn(list(cli.DEFAULT_METRICS), fast=False) == full > cli.NUM_IMAGES
    assert cli.images_drawn(list(cli.DEFAULT_METRICS), fast=True) < cli.NUM_IMAGES
    assert cli.images_drawn(["mig", "sap"], fast=False) == 10000 + 15000


def test_sampled_mig_is_refused_at_once_for_a_model_without_a_posterior(tmp_path):
    tiny_vector_model("autoencoder").save_pretrained(tmp_path / "autoencoder")
    with pytest.raises(ValueError, match="sampled_mig estimates MIG from samples of a VAE's posterior"):
        cli.main([str(tmp_path / "autoencoder"), "--metrics", "mig,sampled_mig", "--output_dir", str(tmp_path / "o")])
