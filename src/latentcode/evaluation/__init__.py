"""Evaluation of latentcode models: metrics, a runner over streamed data, reports and the
`latentcode-eval` console script."""

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

__all__ = [
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
