"""The loss curve of a run as a PNG (`loss.png` beside `reconstructions.png`), drawn with PIL
so that training needs no plotting library."""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw

WIDTH, HEIGHT, MARGIN = 640, 360, 56


def _ticks(low: float, high: float, log: bool) -> list[tuple[float, str]]:
    """Five labelled y values between `low` and `high` (in plot units: log10 when `log`)."""
    values = [low + (high - low) * i / 4 for i in range(5)]
    return [(value, f"{10**value:.3g}" if log else f"{value:.3g}") for value in values]


def write_loss_plot(losses: list[float], path: str | Path, title: str = "training loss") -> None:
    """Draw `losses` (one per optimiser step; NaN/inf steps left out) against the step into `path`;
    a log scale when every value is positive and they span more than a factor 10."""
    points = [(step, loss) for step, loss in enumerate(losses, start=1) if math.isfinite(loss)]
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    draw.text((MARGIN, 12), f"{title}, {len(losses)} steps", fill="black")
    left, top, right, bottom = MARGIN, 32, WIDTH - 16, HEIGHT - 32
    draw.rectangle((left, top, right, bottom), outline="black")
    if points:
        values = [loss for _, loss in points]
        log = min(values) > 0 and max(values) > 10 * min(values)
        scaled = [math.log10(v) if log else v for v in values]
        low, high = min(scaled), max(scaled)
        high = high if high > low else low + 1.0
        last = max(points[-1][0], 2)

        def xy(step: int, value: float) -> tuple[float, float]:
            return (
                left + (right - left) * (step - 1) / (last - 1),
                bottom - (bottom - top) * (value - low) / (high - low),
            )

        for value, label in _ticks(low, high, log):
            y = xy(1, value)[1]
            draw.line((left - 4, y, left, y), fill="black")
            draw.text((4, y - 6), label, fill="black")
        draw.text((left, bottom + 8), "1", fill="black")
        draw.text((right - 40, bottom + 8), f"step {last}", fill="black")
        line = [xy(step, value) for (step, _), value in zip(points, scaled)]
        draw.line(line if len(line) > 1 else line * 2, fill=(31, 119, 180), width=2)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
