"""Quantizer type name -> class, and the arguments a model config may pass to each.

`VQVAEConfig` holds a quantizer as its type name (`config.quantizer`), the sizes diffusers also
names at the top level (`codebook_size`, `codebook_dim`, and `num_quantizers`), and every other
constructor argument in `config.quantizer_config` under the constructor's own names. The model
builds it as `QuantizerClass(**sizes, **quantizer_config)`. What a config may set, and which of
it only changes training, is read from the classes themselves (their signatures and
`training_only_options`), so a new quantizer is one class and one entry in `QUANTIZERS`.
"""

from __future__ import annotations

import difflib
import inspect

from .base import Quantizer
from .binary_spherical import BinarySphericalQuantizer
from .finite_scalar import FiniteScalarQuantizer
from .lookup_free import LookupFreeQuantizer
from .loss_weights import QuantizerLossWeights
from .residual import ResidualVectorQuantizer
from .sim_vq import SimVectorQuantizer
from .vector import VectorQuantizer

QUANTIZERS: dict[str, type[Quantizer]] = {
    "vq": VectorQuantizer,
    "simvq": SimVectorQuantizer,
    "fsq": FiniteScalarQuantizer,
    "lfq": LookupFreeQuantizer,
    "bsq": BinarySphericalQuantizer,
    "residual_vq": ResidualVectorQuantizer,
}
# Constructor arguments a model config states at its top level (diffusers' parity fields).
SIZE_ARGUMENTS = ("codebook_size", "codebook_dim", "num_quantizers")


def quantizer_class(name: str) -> type[Quantizer]:
    """The class registered as `name`; a ValueError names the registered ones."""
    if name not in QUANTIZERS:
        raise ValueError(f"quantizer must be one of {tuple(QUANTIZERS)}, got {name!r}")
    return QUANTIZERS[name]


def constructor_arguments(cls: type[Quantizer]) -> dict[str, inspect.Parameter]:
    """The keyword arguments `cls(...)` takes, following `**options` to `cls.options_passed_to`."""
    parameters = dict(inspect.signature(cls.__init__).parameters)
    parameters.pop("self")
    forwards = [name for name, p in parameters.items() if p.kind == p.VAR_KEYWORD]
    for name in forwards:
        parameters.pop(name)
        inner = constructor_arguments(cls.options_passed_to)
        parameters.update({key: value for key, value in inner.items() if key not in parameters})
    return parameters


def option_defaults(name: str) -> dict:
    """The quantizer's constructor arguments other than the sizes, with their defaults."""
    arguments = constructor_arguments(quantizer_class(name))
    return {key: p.default for key, p in arguments.items() if key not in SIZE_ARGUMENTS}


def training_only_options(name: str) -> frozenset[str]:
    """The options of quantizer `name` that change only how it trains (`training_only_options`)."""
    return frozenset(quantizer_class(name).training_only_options)


def loss_weight_names(name: str) -> tuple[str, ...]:
    """The loss weights (`QuantizerLossWeights.names()`) that act on the terms of quantizer `name`."""
    return QuantizerLossWeights.applicable(quantizer_class(name).loss_terms)


def check_options(name: str, options: dict) -> None:
    """Refuse keys of `options` that quantizer `name` does not take, naming the valid ones."""
    valid = sorted(option_defaults(name))
    for key in options:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(
                f"quantizer_config has no option {key!r} for quantizer={name!r}; {hint}its options are: "
                f"{', '.join(valid)}"
            )


def resolve_sizes(name: str, sizes: dict, options: dict, latent_channels: int) -> dict[str, int]:
    """The top-level sizes of quantizer `name` (see `Quantizer.resolve_sizes`) from the given ones
    (`sizes`: `SIZE_ARGUMENTS` -> int or None)."""
    cls = quantizer_class(name)
    if sizes.get("num_quantizers") is not None and "num_quantizers" not in constructor_arguments(cls):
        leveled = [key for key, other in QUANTIZERS.items() if "num_quantizers" in constructor_arguments(other)]
        raise ValueError(f"num_quantizers is for quantizer in {leveled}, got quantizer={name!r}")
    given = {key: sizes.get(key) for key in SIZE_ARGUMENTS}
    return cls.resolve_sizes(options=options, latent_channels=latent_channels, **given)


def build_quantizer(name: str, sizes: dict, options: dict) -> Quantizer:
    """`QuantizerClass(**sizes, **options)` for the registered `name`, passing only the sizes its
    constructor takes (FSQ's follow from its levels)."""
    cls = quantizer_class(name)
    check_options(name, options)
    takes = constructor_arguments(cls)
    return cls(**{key: value for key, value in sizes.items() if key in takes}, **options)
