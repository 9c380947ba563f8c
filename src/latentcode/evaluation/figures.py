"""Evaluation pictures drawn with PIL only (no plotting library needed).

- [`bar_chart`]: a labelled bar chart; [`psnr_histogram`] and [`codebook_usage_chart`] use it.
- [`line_chart`]: labelled curves y(x), e.g. test PSNR against training steps.

(The reconstruction grid is `latentcode.grids.reconstruction_grid`.)
"""

from __future__ import annotations

import math

import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont
import torch


def bar_chart(
    heights: list[float], title: str, x_labels: tuple[str, str], y_label: str, width: int = 640, height: int = 360
) -> PIL.Image.Image:
    """Bars of `heights` from left to right, with the first and last x tick labels `x_labels`
    and the maximum on the y axis. Returns an RGB image of `width` x `height`."""
    if not heights:
        raise ValueError("bar_chart needs at least one bar, got none")
    font = PIL.ImageFont.load_default()
    image = PIL.Image.new("RGB", (width, height), "white")
    draw = PIL.ImageDraw.Draw(image)
    left, right, top, bottom = 60, width - 20, 30, height - 40
    draw.text((left, 8), title, fill="black", font=font)
    draw.line([(left, top), (left, bottom), (right, bottom)], fill="black")
    peak = max(heights) or 1.0
    bar_width = (right - left) / len(heights)
    for i, value in enumerate(heights):
        x0 = left + i * bar_width
        y0 = bottom - (bottom - top) * value / peak
        draw.rectangle([x0, y0, max(x0, x0 + bar_width - 1), bottom], fill=(66, 114, 196))
    draw.text((4, top - 4), f"{peak:.4g}", fill="black", font=font)
    draw.text((4, bottom - 10), "0", fill="black", font=font)
    draw.text((4, (top + bottom) // 2), y_label, fill="black", font=font)
    draw.text((left, bottom + 6), x_labels[0], fill="black", font=font)
    last = draw.textlength(x_labels[1], font=font)
    draw.text((right - last, bottom + 6), x_labels[1], fill="black", font=font)
    return image


def psnr_histogram(per_image_psnr: list[float], num_bins: int = 30) -> PIL.Image.Image:
    """Histogram of per-image PSNR (dB); perfect reconstructions (inf) are counted in the title."""
    finite = [value for value in per_image_psnr if math.isfinite(value)]
    perfect = len(per_image_psnr) - len(finite)
    title = f"per-image PSNR of {len(per_image_psnr)} images"
    if perfect:
        title += f" ({perfect} perfect: inf, not drawn)"
    if not finite:
        finite = [0.0]
    low, high = min(finite), max(finite)
    span = (high - low) or 1.0
    counts = [0] * num_bins
    for value in finite:
        counts[min(num_bins - 1, int((value - low) / span * num_bins))] += 1
    return bar_chart(counts, title, (f"{low:.1f} dB", f"{high:.1f} dB"), "images")


def codebook_usage_chart(counts: torch.Tensor) -> PIL.Image.Image:
    """Code frequencies `[K]` (or `[L, K]`, summed over levels) sorted from most to least used."""
    counts = counts.reshape(-1, counts.shape[-1]).sum(dim=0)
    used = int((counts > 0).sum())
    ordered = counts.sort(descending=True).values.tolist()
    title = f"codebook usage: {used} of {len(ordered)} codes used ({100 * used / len(ordered):.1f}%), by frequency"
    return bar_chart(ordered, title, ("most used", "least used"), "tokens")


LINE_COLORS = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
    (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (0, 0, 0), (255, 215, 0),
]  # fmt: skip


def line_chart(
    series: dict[str, list[tuple[float, float]]],
    title: str,
    x_label: str,
    y_label: str,
    width: int = 900,
    height: int = 520,
) -> PIL.Image.Image:
    """One polyline per entry of `series` (name -> points `(x, y)`), with a legend on the right
    and the x / y ranges on the axes. Returns an RGB image of `width` x `height`."""
    points = [point for curve in series.values() for point in curve]
    if not points:
        raise ValueError("line_chart needs at least one point, got none")
    font = PIL.ImageFont.load_default()
    image = PIL.Image.new("RGB", (width, height), "white")
    draw = PIL.ImageDraw.Draw(image)
    legend_width = 260
    left, right, top, bottom = 60, width - legend_width, 30, height - 40
    draw.text((left, 8), title, fill="black", font=font)
    draw.line([(left, top), (left, bottom), (right, bottom)], fill="black")
    x_low, x_high = min(x for x, _ in points), max(x for x, _ in points)
    y_low, y_high = min(y for _, y in points), max(y for _, y in points)
    x_span, y_span = (x_high - x_low) or 1.0, (y_high - y_low) or 1.0

    def position(x: float, y: float) -> tuple[float, float]:
        return left + (right - left) * (x - x_low) / x_span, bottom - (bottom - top) * (y - y_low) / y_span

    for i, (name, curve) in enumerate(series.items()):
        color = LINE_COLORS[i % len(LINE_COLORS)]
        pixels = [position(x, y) for x, y in sorted(curve)]
        if len(pixels) > 1:
            draw.line(pixels, fill=color, width=2)
        for x, y in pixels:
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=color)
        legend_y = top + 14 * i
        draw.line([(right + 10, legend_y + 6), (right + 30, legend_y + 6)], fill=color, width=3)
        draw.text((right + 36, legend_y), name, fill="black", font=font)
    draw.text((4, top - 4), f"{y_high:.4g}", fill="black", font=font)
    draw.text((4, bottom - 10), f"{y_low:.4g}", fill="black", font=font)
    draw.text((4, (top + bottom) // 2), y_label, fill="black", font=font)
    draw.text((left, bottom + 6), f"{x_low:.4g}", fill="black", font=font)
    draw.text(((left + right) // 2 - 20, bottom + 20), x_label, fill="black", font=font)
    last = f"{x_high:.4g}"
    draw.text((right - draw.textlength(last, font=font), bottom + 6), last, fill="black", font=font)
    return image
