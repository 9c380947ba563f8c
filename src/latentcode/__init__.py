"""latentcode: AutoEncoder, VAE and VQ-VAE image tokenizers as Hugging Face models."""

from transformers import AutoConfig, AutoImageProcessor, AutoModel

from .configuration import AutoencoderConfig, LatentCodeConfig, VAEConfig, VQVAEConfig
from .families import FAMILIES
from .image_processing import LatentCodeImageProcessor
from .modeling import (
    AutoencoderModel,
    DecoderOutput,
    LatentCodePreTrainedModel,
    VAEModel,
    VQVAEModel,
)
from .modules.distributions import DiagonalGaussianDistribution
from .presets import preset_config

__version__ = "0.1.0"

for _family in FAMILIES.values():
    AutoConfig.register(_family.config_class.model_type, _family.config_class, exist_ok=True)
    AutoModel.register(_family.config_class, _family.model_class, exist_ok=True)
    # One torch implementation serves both of transformers' backends ("pil" and "torchvision" in
    # transformers 5, "slow" and "fast" in 4.x), so neither choice warns; these keywords exist in both.
    AutoImageProcessor.register(
        _family.config_class,
        slow_image_processor_class=LatentCodeImageProcessor,
        fast_image_processor_class=LatentCodeImageProcessor,
        exist_ok=True,
    )

__all__ = [
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
    "preset_config",
]
