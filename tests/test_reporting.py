"""One report format (`latentcode.reporting`): metrics.json schema 1 as `latentcode-eval` and
training validation write it, and the one reconstruction grid."""

from __future__ import annotations

import json
import math

import PIL.Image
import pytest
import torch
from helpers import tiny_model

from latentcode.evaluation import evaluate
from latentcode.evaluation.evaluate import evaluation_report, write_report
from latentcode.grids import image_grid, reconstruction_grid
from latentcode.reporting import (
    SCHEMA,
    SCHEMA_VERSION,
    check_metrics_report,
    metrics_report,
    read_metrics_json,
    write_metrics_json,
)


def structure(report: dict) -> dict[str, str]:
    """Top-level key -> type name: what 'the same schema' compares."""
    return {key: type(value).__name__ for key, value in report.items()}


@pytest.fixture(scope="module")
def evaluated(digits):
    model = tiny_model("vqvae", in_channels=1, codebook_size=16)
    return evaluate(model, digits[:12].split(4), num_grid_images=4, throughput=False)


def training_validation_report(validation: dict) -> dict:
    """The document training validation writes: its run counters go to `details`."""
    summary = {"global_step": 20, "images_seen": 160, "final_train_loss": 0.12, "nonfinite_steps": 0}
    data = {"source": "builtin:digits", "split": "validation hold-out", "num_images": validation["num_images"]}
    return metrics_report(kind="training", model="runs/tiny", data=data, metrics=validation, details=summary)


def test_evaluation_and_training_reports_share_one_schema(evaluated, tmp_path):
    extra = {"model": "tiny", "data": {"dataset_name": "builtin:digits", "split": "test"}, "device": "cpu"}
    reports = {
        "evaluation": evaluation_report(evaluated, extra),
        "training": training_validation_report(evaluated.metrics),
    }
    for kind, report in reports.items():
        check_metrics_report(report)
        assert report["schema_version"] == SCHEMA_VERSION == 1 and report["kind"] == kind
        assert structure(report) == {key: expected.__name__ for key, expected in SCHEMA.items()}
        assert report["metrics"] == evaluated.metrics and report["data"]["num_images"] == 12
        path = write_metrics_json(report, tmp_path / kind / "metrics.json")
        assert read_metrics_json(path) == json.loads(json.dumps(report))
    evaluation = reports["evaluation"]
    assert evaluation["model"] == "tiny" and evaluation["details"] == {"device": "cpu"}
    assert evaluation["data"] == {"dataset_name": "builtin:digits", "split": "test", "num_images": 12}
    assert evaluation["per_image"]["psnr"] == evaluated.per_image_psnr

    written = json.loads(write_report(evaluated, tmp_path / "eval", extra)["metrics.json"].read_text())
    assert written == json.loads(json.dumps(evaluation))


def test_non_finite_values_are_written_as_strict_json_strings(tmp_path):
    report = metrics_report(
        kind="evaluation",
        model="m",
        data={"num_images": 2},
        metrics={"psnr": math.inf, "kl": -math.inf},
        per_image={"psnr": [math.inf, 30.0]},
        details={"loss": math.nan},
    )
    path = write_metrics_json(report, tmp_path / "metrics.json")
    saved = json.loads(path.read_text(), parse_constant=lambda name: pytest.fail(f"non-strict JSON {name}"))
    assert saved["metrics"] == {"psnr": "inf", "kl": "-inf"}
    assert saved["per_image"]["psnr"] == ["inf", 30.0] and saved["details"]["loss"] == "nan"


def test_a_bad_report_names_every_wrong_key():
    report = metrics_report(kind="training", model="m", data={"num_images": 1}, metrics={})
    with pytest.raises(ValueError, match=r"kind: expected str, got int; notes: expected list, got nothing"):
        check_metrics_report({**{k: v for k, v in report.items() if k != "notes"}, "kind": 3})
    with pytest.raises(ValueError, match=r"unknown keys \['validation'\].*'details'"):
        check_metrics_report({**report, "validation": {}})
    with pytest.raises(ValueError, match="data.num_images: expected int"):
        metrics_report(kind="training", model="m", data={"source": "x"}, metrics={})
    with pytest.raises(ValueError, match=r"metrics.grid: expected a number or string, got list"):
        metrics_report(kind="training", model="m", data={"num_images": 1}, metrics={"grid": [1]})
    with pytest.raises(ValueError, match="schema_version: expected 1, got 2"):
        check_metrics_report({**report, "schema_version": 2})


def test_a_metrics_json_from_before_the_schema_is_refused_with_its_keys(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"validation": {"psnr": 20.0}, "global_step": 3}))
    with pytest.raises(ValueError, match=r"no schema_version.*\['global_step', 'validation'\].*rerun"):
        read_metrics_json(tmp_path / "metrics.json")


def test_reconstruction_grid_upscales_small_cells_by_a_whole_factor():
    originals = torch.rand(3, 3, 16, 16) * 2 - 1
    reconstructions = -originals
    plain = reconstruction_grid(originals, reconstructions)
    assert plain.size == image_grid(torch.cat([originals, reconstructions]), num_columns=3).size
    large = reconstruction_grid(originals, reconstructions, min_cell_size=64)
    assert large.size == (plain.width * 4, plain.height * 4)
    assert large.resize(plain.size, PIL.Image.Resampling.NEAREST).tobytes() == plain.tobytes()
    assert reconstruction_grid(originals, reconstructions, min_cell_size=8).size == plain.size
