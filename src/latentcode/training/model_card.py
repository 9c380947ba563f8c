"""Model cards: templates in the repository's `model_cards/` folder, filled with `string.Template`."""

from __future__ import annotations

import string
from pathlib import Path


def render_model_card(template: str | Path, values: dict) -> str:
    """Fill `$name` placeholders of the template file with `values`; a placeholder without a value
    raises KeyError (a template and its caller must agree), `$$` is a literal dollar."""
    return string.Template(Path(template).read_text()).substitute(values)


def metrics_table(metrics: dict[str, float]) -> str:
    """A Markdown table of metric names and values."""
    rows = [f"| {name} | {value:.4g} |" for name, value in metrics.items()]
    return "\n".join(["| metric | value |", "|---|---|", *rows])
