"""The models: [`AutoencoderModel`], [`VAEModel`] and [`VQVAEModel`], one file per family.

Each family's file reads top to bottom: its outputs, `encode` / `decode` / `forward`, its
family answers (`latentcode.families.FamilyBehaviour`) and, for the VQ-VAE, its token API.
What all three share is [`LatentCodePreTrainedModel`] (`base.py`). Importing this package
registers the families (`@register_family`) and their config, model and image processor with
transformers' Auto classes.
"""

from __future__ import annotations

# diffusers' pipeline loader finds how to load a component by looking its loading base classes
# (`ModelMixin`, ...) up by name in the module that model_index.json records for it: pipelines
# saved when the models lived in `latentcode.modeling` itself record this package.
from diffusers import ModelMixin  # noqa: F401

from ..families import FAMILIES
from .autoencoder import AutoencoderEncoderOutput, AutoencoderModel, AutoencoderOutput
from .base import DIFFUSERS_ONLY_LOADING_OPTIONS, DecoderOutput, LatentCodePreTrainedModel
from .vae import VAEEncoderOutput, VAEModel, VAEOutput
from .vqvae import VQVAEEncoderOutput, VQVAEModel, VQVAEOutput


def _register_with_auto_classes() -> None:
    """Every family's config, model and image processor with transformers' Auto classes, so that
    `AutoConfig` / `AutoModel` / `AutoImageProcessor.from_pretrained` load saved latentcode models.
    Done here, when the models are defined: `import latentcode` alone is lazy and loads no model."""
    from transformers import AutoConfig, AutoImageProcessor, AutoModel

    from ..image_processing import LatentCodeImageProcessor

    for family in FAMILIES.values():
        AutoConfig.register(family.config_class.model_type, family.config_class, exist_ok=True)
        AutoModel.register(family.config_class, family.model_class, exist_ok=True)
        # One torch implementation serves both of transformers' backends ("pil" and "torchvision" in
        # transformers 5, "slow" and "fast" in 4.x), so neither choice warns; these keywords exist in both.
        AutoImageProcessor.register(
            family.config_class,
            slow_image_processor_class=LatentCodeImageProcessor,
            fast_image_processor_class=LatentCodeImageProcessor,
            exist_ok=True,
        )


_register_with_auto_classes()

__all__ = [
    "DIFFUSERS_ONLY_LOADING_OPTIONS",
    "AutoencoderEncoderOutput",
    "AutoencoderModel",
    "AutoencoderOutput",
    "DecoderOutput",
    "LatentCodePreTrainedModel",
    "VAEEncoderOutput",
    "VAEModel",
    "VAEOutput",
    "VQVAEEncoderOutput",
    "VQVAEModel",
    "VQVAEOutput",
]
