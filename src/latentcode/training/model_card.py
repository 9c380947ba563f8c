"""Model cards: templates shipped in the package (`latentcode/model_cards/`, copies of the
repository's top-level `model_cards/`), filled with `string.Template`."""

from __future__ import annotations

import string
from importlib.resources import files


def render_model_card(template: str, values: dict) -> str:
    """Fill the `$name` placeholders of the shipped template `template` (`"training"`, `"prior"`) with
    `values`; a placeholder without a value raises KeyError (a template and its caller must agree),
    `$$` is a literal dollar."""
    path = files("latentcode").joinpath("model_cards", f"{template}.md")
    if not path.is_file():
        raise FileNotFoundError(f"no model card template {template!r} in the latentcode package ({path})")
    return string.Template(path.read_text()).substitute(values)
