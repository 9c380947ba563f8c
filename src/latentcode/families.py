"""The registry of model families: name -> config class -> model class -> diffusers class.

Each model class in `modeling.py` enters it with the [`register_family`] decorator, so the
registry is filled once `latentcode.modeling` is imported (importing `latentcode` does that).
Everything that dispatches on a family (presets, the training CLI, conversion, Auto-class
registration, tests) reads it here. This module imports no model code, so any module may use it
without an import cycle.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    """One model family.

    Attributes:
        name: the family's short name in configs and command lines (`"vqvae"`).
        config_class: its `LatentCodeConfig` subclass.
        model_class: its `LatentCodePreTrainedModel` subclass.
        diffusers_class_name: the diffusers class it converts to and from exactly
            (`"VQModel"`, `"AutoencoderKL"`), or `None` when diffusers has none.
    """

    name: str
    config_class: type
    model_class: type
    diffusers_class_name: str | None

    @property
    def diffusers_class(self) -> type:
        """The diffusers model class (imported on demand: diffusers is heavy)."""
        if self.diffusers_class_name is None:
            raise ValueError(
                f"{self.model_class.__name__} has no diffusers counterpart; diffusers has {_counterparts()}"
            )
        import diffusers

        return getattr(diffusers, self.diffusers_class_name)


FAMILIES: dict[str, Family] = {}


def register_family(name: str, diffusers_class_name: str | None = None):
    """Class decorator entering a model class (and its `config_class`) as family `name`."""

    def register(model_class: type) -> type:
        FAMILIES[name] = Family(name, model_class.config_class, model_class, diffusers_class_name)
        return model_class

    return register


def get_family(name: str) -> Family:
    """The family called `name`; a `ValueError` lists the known names otherwise."""
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; expected one of {sorted(FAMILIES)}")
    return FAMILIES[name]


def family_of(model_or_config) -> Family:
    """The family of a model or config (instance or class), subclasses included."""
    klass = model_or_config if isinstance(model_or_config, type) else type(model_or_config)
    for family in FAMILIES.values():
        if issubclass(klass, (family.model_class, family.config_class)):
            return family
    raise ValueError(f"{klass.__name__} belongs to no latentcode model family ({sorted(FAMILIES)})")


def family_for_diffusers(diffusers_class_name: str) -> Family:
    """The family that converts from the diffusers class called `diffusers_class_name`."""
    for family in FAMILIES.values():
        if family.diffusers_class_name == diffusers_class_name:
            return family
    raise ValueError(f"cannot convert a diffusers {diffusers_class_name}: supported are {_counterparts()}")


def _counterparts() -> str:
    """'VQModel (<-> VQVAEModel) and AutoencoderKL (<-> VAEModel)', for error messages."""
    return " and ".join(
        f"{family.diffusers_class_name} (<-> {family.model_class.__name__})"
        for family in FAMILIES.values()
        if family.diffusers_class_name is not None
    )


__all__ = ["FAMILIES", "Family", "family_for_diffusers", "family_of", "get_family", "register_family"]
