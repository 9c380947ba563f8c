"""Model families: what every family answers, and the registry name -> config -> model -> diffusers.

[`FamilyBehaviour`] is what code using a model may ask of any family (its reconstruction, its
continuous code, what its code costs in bits, the loggable terms of its forward output, whether
it has tokens or a prior to sample), so that evaluation, the demo, generation, latent diffusion
and training never ask *which* family a model is. Each model class (`latentcode.modeling`, one
file per family) implements its hooks and enters the registry with the [`register_family`]
decorator, which checks that it does; the registry is filled once `latentcode.modeling` is imported, which its first read does
(`import latentcode` is lazy and loads no model code). A new family is one class plus its `@register_family` line.

Everything that picks a family by name (presets, the training CLI, conversion, Auto-class
registration, tests) reads the registry here. This module imports no model code, so any module
may use it without an import cycle.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch


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


@dataclass(frozen=True)
class CodeSize:
    """What the code of each image in a batch is and costs.

    Attributes:
        shape: the code of one image: `(h, w)` / `(h, w, depth)` tokens, or `(D, h, w)` floats.
        bits: `[B]` float64, the bits of each image's code (see `meaning`).
        meaning: how `bits` are counted, in words (shown next to the number).
    """

    shape: tuple[int, ...]
    bits: torch.Tensor
    meaning: str

    def bits_per_pixel(self, height: int, width: int) -> torch.Tensor:
        """`[B]` float64: `bits` per pixel of images of `height` x `width` (pixels, not values:
        the rate image codecs report; for a VQ-VAE tokens x log2 K / pixels)."""
        return self.bits / (height * width)


class FamilyBehaviour:
    """What every family answers; model classes inherit it next to `LatentCodePreTrainedModel`.

    A family sets the four class attributes and implements the six hooks (`reconstruct_encoded`,
    `continuous_code_encoded`, `code_size`, `stored_code`, `regularizer_description`,
    `objective_weights`); `reconstruct`,
    `continuous_code` and `loss_summary` are shared. `encoded` is always what the model's own
    `encode(pixels, return_dict=True)` returned.

    Attributes:
        display_name: the family's name for people (`"VQ-VAE"`).
        has_tokens: the code is discrete tokens: `encode(...).indices`, `decode_indices`,
            `codebook_size` and `latent_shape()` exist (what priors and token editing use).
        can_sample_prior: `sample(num_samples, generator=)` decodes draws from the prior N(0, I);
            the model then defines an ELBO whose rate term is `code_size(...).bits` (evaluation
            reports it) and its latents are Gaussian (interpolation follows a sphere by default).
        stored_columns: the columns of one image's code in a tokenised dataset
            (`latentcode.tokenize`): name -> `"index"` (integer token ids) or `"latent"` (floats),
            each a flat row-major vector of `prod(stored_code_shape(size))` entries.
    """

    display_name: str
    has_tokens: bool = False
    can_sample_prior: bool = False
    stored_columns: dict[str, str]

    # -- family hooks -------------------------------------------------------------------------

    def reconstruct_encoded(self, encoded) -> torch.Tensor:
        """The deterministic reconstruction `[B, C, H, W]` of an encoding: what a user of the family
        gets back (the VQ-VAE decodes its tokens, the VAE its posterior mean, the AE its code)."""
        raise NotImplementedError

    def continuous_code_encoded(
        self, encoded, sample_posterior: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The continuous code `[B, D, h, w]` that `decode` takes back (what latent diffusion and
        interpolation move through): a posterior sample only with `sample_posterior`."""
        raise NotImplementedError

    def code_size(self, encoded) -> CodeSize:
        """The shape of one image's code and its cost in bits per image."""
        raise NotImplementedError

    def stored_code(self, encoded) -> dict[str, torch.Tensor]:
        """The `stored_columns` of an encoding, each `[B, prod(stored_code_shape())]`."""
        raise NotImplementedError

    def stored_code_shape(self, image_size: int | tuple[int, int] | None = None) -> tuple[int, ...]:
        """Shape of one image's stored code (`stored_code`; a tokenised dataset's `latent_shape`
        column): the family's choice of the two shapes a model has, the continuous code's
        (`latent_code_shape`, by default) or, for a family with tokens, the token grid's (`latent_shape`)."""
        return tuple(self.latent_code_shape(image_size))

    def regularizer_description(self, objective=None) -> str | None:
        """The family's own term in words (model cards), `None` when it has none: at the weights of
        `objective` (an [`AutoencoderObjective`]: its `kl_weight` / `quantizer_weights`), or of
        `model(x).loss` without one."""
        raise NotImplementedError

    def objective_weights(self, kl_weight: float | None = None, quantizer_weights: dict | None = None) -> dict:
        """The weights of the family's own term for an [`AutoencoderObjective`]: `{"kl_weight": ...}`
        (VAE), `{"quantizer_weights": ...}` (VQ-VAE) or `{}`, each the given value or, for None,
        the model's own; a `ValueError` for a weight of a term the family does not have."""
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------------

    def reconstruct(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Pixels `[B, C, H, W]` -> their deterministic reconstruction (see `reconstruct_encoded`)."""
        return self.reconstruct_encoded(self.encode(pixel_values, return_dict=True))

    def continuous_code(
        self, pixel_values: torch.Tensor, sample_posterior: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Pixels `[B, C, H, W]` -> the continuous code `[B, D, h, w]` (see `continuous_code_encoded`)."""
        encoded = self.encode(pixel_values, return_dict=True)
        return self.continuous_code_encoded(encoded, sample_posterior=sample_posterior, generator=generator)

    def loss_summary(self, output) -> dict[str, float]:
        """The loggable terms of a forward output (`model(x, return_dict=True)`): every scalar it
        holds (`loss`, `reconstruction_loss` and the family's own: `kl`, `codebook_loss`,
        `commitment_loss`, `perplexity`, ...), as floats."""
        if isinstance(output, tuple):
            raise ValueError("loss_summary needs the output of model(x, return_dict=True), got a tuple")
        return {
            name: float(value.detach())
            for name, value in output.items()
            if isinstance(value, torch.Tensor) and value.dim() == 0
        }


# The hooks a family class must implement (checked when it registers).
FAMILY_HOOKS = (
    "reconstruct_encoded",
    "continuous_code_encoded",
    "code_size",
    "stored_code",
    "regularizer_description",
    "objective_weights",
)


def refuse_kl_weight(model, kl_weight: float | None) -> None:
    """For a family without a KL: a `ValueError` if a KL weight was given."""
    if kl_weight is not None:
        raise ValueError(f"kl_weight={kl_weight} weighs a KL, but {type(model).__name__} has none; drop it")


def refuse_quantizer_weights(model, quantizer_weights: dict | None) -> None:
    """For a family without a quantizer: a `ValueError` if any quantizer weight was given."""
    given = {name: value for name, value in (quantizer_weights or {}).items() if value is not None}
    if given:
        raise ValueError(f"{given} weigh a quantizer's terms, but {type(model).__name__} has no quantizer; drop them")


class FamilyRegistry(Mapping):
    """Family name -> [`Family`], read-only. The model classes enter it as `latentcode.modeling` is
    imported; a lazy `import latentcode` does not import that, so the first read does (else a
    `for family in FAMILIES` would silently see none). While `latentcode.modeling` is being
    imported, reads see the families registered so far."""

    def __init__(self):
        self._families: dict[str, Family] = {}

    def _loaded(self) -> dict[str, Family]:
        if "latentcode.modeling" not in sys.modules:
            importlib.import_module("latentcode.modeling")
        return self._families

    def __getitem__(self, name: str) -> Family:
        return self._loaded()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._loaded())

    def __len__(self) -> int:
        return len(self._loaded())

    def __repr__(self) -> str:
        return f"FamilyRegistry({sorted(self)})"

    def add(self, family: Family) -> None:
        self._families[family.name] = family


FAMILIES = FamilyRegistry()


def register_family(name: str, diffusers_class_name: str | None = None):
    """Class decorator entering a model class (and its `config_class`) as family `name`; the
    class must be a [`FamilyBehaviour`] with every hook implemented and a `display_name`."""

    def register(model_class: type) -> type:
        missing = [hook for hook in FAMILY_HOOKS if getattr(model_class, hook, None) is getattr(FamilyBehaviour, hook)]
        if not issubclass(model_class, FamilyBehaviour) or missing or not hasattr(model_class, "display_name"):
            raise TypeError(
                f"family {name!r}: {model_class.__name__} must subclass FamilyBehaviour, set display_name and "
                f"implement {list(FAMILY_HOOKS)}; missing: {missing or ['display_name / FamilyBehaviour base']}"
            )
        FAMILIES.add(Family(name, model_class.config_class, model_class, diffusers_class_name))
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


__all__ = [
    "FAMILIES",
    "CodeSize",
    "Family",
    "FamilyBehaviour",
    "family_for_diffusers",
    "family_of",
    "get_family",
    "FamilyRegistry",
    "register_family",
]
