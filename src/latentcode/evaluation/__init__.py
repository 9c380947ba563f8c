"""Evaluation of latentcode models: metrics, a runner over streamed data, reports and the
`latentcode-eval` console script.

Lazy (`latentcode.lazy`): `latentcode-eval --help` loads none of the metrics' or the runner's
dependencies; a name's module loads on its first use."""

import typing as _typing

from ..lazy import lazy_attributes as _lazy_attributes

# Public name -> the submodule that defines it.
_PUBLIC_NAMES = {
    "EvaluationImages": "evaluate",
    "EvaluationResult": "evaluate",
    "evaluate": "evaluate",
    "markdown_table": "evaluate",
    "metrics_markdown": "evaluate",
    "write_report": "evaluate",
    "CodebookHistogram": "metrics",
    "FeatureStatistics": "metrics",
    "InceptionFeatures": "metrics",
    "MissingInceptionWeightsError": "metrics",
    "build_lpips": "metrics",
    "frechet_distance": "metrics",
    "gaussian_bits_per_dim": "metrics",
    "psnr": "metrics",
    "ssim": "metrics",
}

__all__ = [  # a literal list: what IDEs and type checkers read (a test keeps it equal to _PUBLIC_NAMES)
    "CodebookHistogram",
    "EvaluationImages",
    "EvaluationResult",
    "FeatureStatistics",
    "InceptionFeatures",
    "MissingInceptionWeightsError",
    "build_lpips",
    "evaluate",
    "frechet_distance",
    "gaussian_bits_per_dim",
    "markdown_table",
    "metrics_markdown",
    "psnr",
    "ssim",
    "write_report",
]

if _typing.TYPE_CHECKING:
    from .evaluate import EvaluationImages, EvaluationResult, evaluate, markdown_table, metrics_markdown, write_report
    from .metrics import (
        CodebookHistogram,
        FeatureStatistics,
        InceptionFeatures,
        MissingInceptionWeightsError,
        build_lpips,
        frechet_distance,
        gaussian_bits_per_dim,
        psnr,
        ssim,
    )

__getattr__, __dir__ = _lazy_attributes(__name__, _PUBLIC_NAMES)
