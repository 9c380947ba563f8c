"""latentcode: AutoEncoder, VAE and VQ-VAE image tokenizers as Hugging Face models.

`import latentcode` is lazy, as `import transformers` and `import diffusers` are: it loads no
torch, transformers or diffusers code, so that every command line answers `--help` at once. A
public name (`from latentcode import VQVAEModel`, `latentcode.VAEConfig`) loads the models on
first use, and loading them (`latentcode.modeling`) registers every family with `AutoConfig`,
`AutoModel` and `AutoImageProcessor`. Submodules load on first use too (`latentcode.tokens`).
"""

import typing as _typing

from .lazy import lazy_attributes as _lazy_attributes

__version__ = "0.1.0"

# Public name -> the submodule that defines it.
_PUBLIC_NAMES = {
    "AutoencoderConfig": "configuration",
    "LatentCodeConfig": "configuration",
    "VAEConfig": "configuration",
    "VQVAEConfig": "configuration",
    "LatentCodeImageProcessor": "image_processing",
    "AutoencoderModel": "modeling",
    "DecoderOutput": "modeling",
    "LatentCodePreTrainedModel": "modeling",
    "VAEModel": "modeling",
    "VQVAEModel": "modeling",
    "DiagonalGaussianDistribution": "modules.distributions",
    "architecture_config": "architectures",
}

__all__ = [  # a literal list: what IDEs and type checkers read (a test keeps it equal to _PUBLIC_NAMES)
    "AutoencoderConfig",
    "AutoencoderModel",
    "DecoderOutput",
    "DiagonalGaussianDistribution",
    "LatentCodeConfig",
    "LatentCodeImageProcessor",
    "LatentCodePreTrainedModel",
    "VAEConfig",
    "VAEModel",
    "VQVAEConfig",
    "VQVAEModel",
    "architecture_config",
]

if _typing.TYPE_CHECKING:  # what type checkers and IDEs see; at run time `__getattr__` imports on demand
    from .architectures import architecture_config
    from .configuration import AutoencoderConfig, LatentCodeConfig, VAEConfig, VQVAEConfig
    from .image_processing import LatentCodeImageProcessor
    from .modeling import AutoencoderModel, DecoderOutput, LatentCodePreTrainedModel, VAEModel, VQVAEModel
    from .modules.distributions import DiagonalGaussianDistribution


# Any public name loads the models first: that registers the families with the Auto classes, so
# `from latentcode import VQVAEConfig` and then `AutoModel.from_pretrained(...)` work.
__getattr__, __dir__ = _lazy_attributes(__name__, _PUBLIC_NAMES, submodules=True, load_first="modeling")
