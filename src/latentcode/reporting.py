"""What a run reports, in one format: `metrics.json` (one versioned schema) and the metrics table.

Every producer writes `metrics.json` through [`write_metrics_json`]: `latentcode-eval`
(`kind="evaluation"`) and training validation (`kind="training"`; the prior and latent-diffusion
scripts name their own kind). Schema version 1:

    {
      "schema_version": 1,
      "kind": "evaluation",                 # who wrote it
      "model": "org/vqvae-celeba",          # the model's folder or Hub id
      "data": {"num_images": 500, ...},     # what was measured on: source, split, counts
      "metrics": {"psnr": 27.1, ...},       # name -> number (or "inf" / "-inf" / "nan": JSON has none)
      "per_image": {"psnr": [27.3, ...]},   # name -> one value per image (may be empty)
      "per_dimension": {"kl": [3.1, ...]},  # optional: name -> one value per latent dimension
      "notes": ["rFID from 500 images: ..."],
      "details": {...}                      # the producer's own: options, steps, timings
    }

`per_dimension` was added to schema 1 as an optional key: files without it (every file written
before it, and every model without a posterior) read as before. A VAE's evaluation writes there the mean
KL of each latent dimension (`kl`, nats; a grid's channels summed over positions) and its activity
(`activity`: the variance over images of its posterior mean, Burda et al. 2016; added 2026-12-07),
and under `metrics` `active_dimensions`, the dimensions whose activity exceeds
`active_dimension_threshold`. (Files written before 2026-12-07 counted the dimensions whose KL
exceeded 0.01 nats, which counts a collapsed posterior moved off the prior as active.)

Training validation, for example, writes its validation metrics with its run counters as details:

```python
report = metrics_report(kind="training", model=str(output_dir), metrics=validation, details=summary,
                        data={"source": "builtin:digits", "split": "validation", "num_images": 64})
write_metrics_json(report, output_dir / "metrics.json")
```

[`read_metrics_json`] reads one back and refuses files of another schema with a clear message.
Reconstruction grids are `latentcode.grids.reconstruction_grid`; figures are in
`latentcode.evaluation.figures`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

SCHEMA_VERSION = 1

# Top-level keys of metrics.json and the type of each value.
SCHEMA: dict[str, type] = {
    "schema_version": int,
    "kind": str,
    "model": str,
    "data": dict,
    "metrics": dict,
    "per_image": dict,
    "notes": list,
    "details": dict,
}
# Top-level keys that a report may hold (schema 1, added later) and the type of each value.
OPTIONAL_SCHEMA: dict[str, type] = {"per_dimension": dict}


def metrics_report(
    *,
    kind: str,
    model: str,
    data: dict,
    metrics: dict,
    per_image: dict | None = None,
    per_dimension: dict | None = None,
    notes: list[str] | tuple[str, ...] = (),
    details: dict | None = None,
) -> dict:
    """The `metrics.json` document (see the module docstring); `data` must hold `num_images`;
    `per_dimension` (name -> one number per latent dimension) is written only when given."""
    report = {
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "model": str(model),
        "data": dict(data),
        "metrics": dict(metrics),
        "per_image": {name: list(values) for name, values in (per_image or {}).items()},
        "notes": list(notes),
        "details": dict(details or {}),
    }
    if per_dimension is not None:
        report["per_dimension"] = {name: [float(value) for value in values] for name, values in per_dimension.items()}
    check_metrics_report(report)
    return report


def check_metrics_report(report: dict) -> None:
    """Raise a ValueError naming every key of `report` that is missing or of the wrong type."""
    if not isinstance(report, dict):
        raise ValueError(f"a metrics report is a dict with keys {list(SCHEMA)}, got {type(report).__name__}")
    problems = [
        f"{key}: expected {expected.__name__}, got "
        + (type(report[key]).__name__ if key in report else "nothing (missing)")
        for key, expected in SCHEMA.items()
        if not isinstance(report.get(key), expected) or isinstance(report.get(key), bool)
    ]
    problems += [
        f"{key}: expected {expected.__name__}, got {type(report[key]).__name__}"
        for key, expected in OPTIONAL_SCHEMA.items()
        if key in report and not isinstance(report[key], expected)
    ]
    unknown = sorted(set(report) - set(SCHEMA) - set(OPTIONAL_SCHEMA))
    if unknown:
        problems.append(f"unknown keys {unknown} (producer-specific values go under 'details')")
    if not problems and report["schema_version"] != SCHEMA_VERSION:
        problems.append(f"schema_version: expected {SCHEMA_VERSION}, got {report['schema_version']}")
    if not problems and not isinstance(report["data"].get("num_images"), int):
        problems.append(f"data.num_images: expected int, got {report['data'].get('num_images')!r}")
    if not problems:
        problems += [f"metrics.{name}: expected a number or string, got {type(value).__name__}"
                     for name, value in report["metrics"].items() if not isinstance(value, (int, float, str))]  # fmt: skip
    if problems:
        raise ValueError("not a latentcode metrics report (metrics.json schema 1): " + "; ".join(problems))


def _json_safe(value):
    """JSON has no infinity or NaN: non-finite floats are written as the strings "inf", "-inf", "nan"."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


def write_metrics_json(report: dict, path: str | Path) -> Path:
    """Check `report` ([`metrics_report`]) and write it as strict JSON at `path`; returns the path."""
    check_metrics_report(report)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_json_safe(report), indent=2, allow_nan=False) + "\n")
    return path


def read_metrics_json(path: str | Path) -> dict:
    """A `metrics.json` written by [`write_metrics_json`]; older files (no `schema_version`) and
    other schemas are refused, naming what they hold."""
    report = json.loads(Path(path).read_text())
    if isinstance(report, dict) and "schema_version" not in report:
        raise ValueError(
            f"{path} has no schema_version: it was written before latentcode's metrics.json schema 1 "
            f"(keys {sorted(report)}); rerun latentcode-eval (or the training) to write it again"
        )
    check_metrics_report(report)
    return report


# ----------------------------------------------------------------------------------------------
# The metrics as a table (metrics.md, model cards, the console)
# ----------------------------------------------------------------------------------------------

METRIC_LABELS = {
    "num_images": "images",
    "psnr": "PSNR (dB, mean per image)",
    "psnr_of_mean_mse": "PSNR of the mean MSE (dB)",
    "ssim": "SSIM",
    "mse": "MSE ([-1, 1] pixels)",
    "l1": "L1 ([-1, 1] pixels)",
    "lpips": "LPIPS",
    "rfid": "rFID",
    "codebook_usage": "codebook usage",
    "perplexity": "codebook perplexity",
    "codebook_size": "codebook size",
    "bits_per_pixel": "bits / pixel (tokens x log2 K / pixels)",
    "kl": "KL (nats / image)",
    "negative_elbo": "negative ELBO (nats / image)",
    "bits_per_dim": "bits / dim",
    "decoder_std": "decoder std used for bits / dim",
    "active_dimensions": "active latent dimensions",
    "active_dimension_threshold": "variance over images of the posterior mean above which a dimension is active",
    "perfect_reconstructions": "perfect reconstructions",
    "encode_images_per_s": "encode (images / s)",
    "decode_images_per_s": "decode (images / s)",
}


def _format(value) -> str:
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else str(value)
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.0f}"
    return str(value)


def markdown_table(metrics: dict) -> str:
    """The metrics as a two-column markdown table (the model card includes it)."""
    lines = ["| metric | value |", "|---|---:|"]
    lines += [f"| {METRIC_LABELS.get(name, name)} | {_format(value)} |" for name, value in metrics.items()]
    return "\n".join(lines) + "\n"


def per_dimension_table(kl: list[float], activity: list[float], threshold: float) -> str:
    """The KL (nats) and the activity (variance over images of the posterior mean) of each latent
    dimension as a markdown table, with whether the activity exceeds `threshold` (the dimension is
    active: its code changes with the image)."""
    lines = ["| latent dimension | KL (nats) | activity | active |", "|---:|---:|---:|:---:|"]
    # KL is non-negative; float rounding can leave -1e-9 at the prior, which would print as "-0.000".
    lines += [
        f"| {i} | {max(0.0, spent):.3f} | {varies:.3f} | {'yes' if varies > threshold else 'no'} |"
        for i, (spent, varies) in enumerate(zip(kl, activity, strict=True))
    ]
    return "\n".join(lines) + "\n"


__all__ = [
    "METRIC_LABELS",
    "OPTIONAL_SCHEMA",
    "SCHEMA",
    "SCHEMA_VERSION",
    "check_metrics_report",
    "markdown_table",
    "metrics_report",
    "per_dimension_table",
    "read_metrics_json",
    "write_metrics_json",
]
