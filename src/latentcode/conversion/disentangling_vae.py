"""Import the β-VAE family of YannDubs/disentangling-vae (VAE, β-VAE H / B, FactorVAE, β-TCVAE).

A checkpoint folder holds `model.pt` (the model's state_dict) and `specs.json` (the training
settings: `img_size` `[C, H, W]`, `latent_dim`, `model_type`, the objective's weights). The
"Burgess" model is latentcode's `"vector"` backbone (`latentcode.modules.backbones.vector`) with a
VAE bottleneck and no projections; the weights map one to one, except that the original's head
`mu_logvar_gen` interleaves mean and log-variance (`[latent_dim, 2]`) where latentcode's VAE
takes the means first: its rows are de-interleaved, a permutation that changes no value.
"""

from __future__ import annotations

import json
import os

import torch

from ..configuration import VAEConfig
from ..modules.backbones.vector import VECTOR_SAMPLE_SIZES, num_convolutions
from .checkpoints import CheckpointError, load_state_dict_exactly, read_checkpoint

SUPPORTED_MODEL_TYPES = ("Burgess",)
# The original's names of the encoder's convolutions, in the order they run.
ENCODER_CONVOLUTIONS = ("conv1", "conv2", "conv3", "conv_64")


def read_specs(checkpoint_dir: str | os.PathLike) -> dict:
    """`specs.json` of a disentangling-vae checkpoint folder, checked to describe a model latentcode
    has: the "Burgess" architecture on square images of 32 or 64 pixels."""
    path = os.path.join(checkpoint_dir, "specs.json")
    if not os.path.isfile(path):
        raise CheckpointError(
            f"{os.fspath(checkpoint_dir)!r} holds no specs.json: expected a disentangling-vae checkpoint folder "
            "with model.pt and specs.json (e.g. results/betaB_celeba)"
        )
    with open(path) as file:
        specs = json.load(file)
    model_type = specs.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise CheckpointError(
            f"{path} describes model_type={model_type!r}; latentcode converts {SUPPORTED_MODEL_TYPES} (the conv + "
            "fully connected encoder/decoder of Burgess et al. 2018)"
        )
    size = specs.get("img_size")
    if not (isinstance(size, list) and len(size) == 3 and size[1] == size[2] and size[1] in VECTOR_SAMPLE_SIZES):
        raise CheckpointError(
            f"{path} has img_size={size!r}; expected [channels, S, S] with S in {VECTOR_SAMPLE_SIZES}"
        )
    if not isinstance(specs.get("latent_dim"), int) or specs["latent_dim"] < 1:
        raise CheckpointError(f"{path} has latent_dim={specs.get('latent_dim')!r}; expected a positive int")
    return specs


def config_from_specs(specs: dict, state_dict: dict) -> VAEConfig:
    """The latentcode config of the model `specs` describes; the hidden widths come from the weights."""
    channels, size, _ = specs["img_size"]
    conv = state_dict.get("encoder.conv1.weight")
    linear = state_dict.get("encoder.lin1.weight")
    if conv is None or linear is None:
        raise CheckpointError(
            "model.pt lacks encoder.conv1.weight / encoder.lin1.weight: not the state_dict of a disentangling-vae "
            f"Burgess model (its keys start with: {', '.join(sorted(state_dict)[:6])})"
        )
    return VAEConfig(
        backbone="vector",
        in_channels=channels,
        sample_size=size,
        latent_channels=specs["latent_dim"],
        vector_hidden_channels=conv.shape[0],
        vector_hidden_size=linear.shape[0],
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def rename_weights(state_dict: dict, sample_size: int, latent_dim: int) -> dict:
    """The original's keys and layout -> latentcode's `VAEModel` with the vector backbone."""
    count = num_convolutions(sample_size)
    convolutions = ENCODER_CONVOLUTIONS[:count]
    # The decoder's extra 64x64 layer runs first: convT_64, convT1, convT2, convT3.
    transposed = (("convT_64",) if count == 4 else ()) + ("convT1", "convT2", "convT3")
    names = {f"encoder.{name}": f"encoder.convs.{i}" for i, name in enumerate(convolutions)}
    names |= {"encoder.lin1": "encoder.linears.0", "encoder.lin2": "encoder.linears.1"}
    names |= {f"decoder.lin{i + 1}": f"decoder.linears.{i}" for i in range(3)}
    names |= {f"decoder.{name}": f"decoder.deconvs.{i}" for i, name in enumerate(transposed)}
    renamed = {}
    for key, value in state_dict.items():
        module, _, kind = key.rpartition(".")
        if module == "encoder.mu_logvar_gen":
            if value.shape[0] != 2 * latent_dim:
                raise CheckpointError(
                    f"{key} has {value.shape[0]} rows; a model with latent_dim={latent_dim} (specs.json) has "
                    f"{2 * latent_dim}: the weights belong to another model"
                )
            # rows (d, 0) are means, (d, 1) log-variances: means first, then log-variances
            pairs = value.reshape(latent_dim, 2, *value.shape[1:])
            renamed[f"encoder.head.{kind}"] = torch.cat([pairs[:, 0], pairs[:, 1]])
        else:
            renamed[f"{names.get(module, module)}.{kind}"] = value
    return renamed


def from_disentangling_vae(checkpoint_dir: str | os.PathLike):
    """A latentcode `VAEModel` (vector backbone) computing exactly what the checkpoint in
    `checkpoint_dir` (`model.pt` + `specs.json`) computes, in latentcode's [-1, 1] pixels.

    Raises [`CheckpointError`] for a folder that is not such a checkpoint, a file that holds code
    or is not a state_dict, and weights that do not fit the architecture the specs describe."""
    from ..modeling import VAEModel

    specs = read_specs(checkpoint_dir)
    weights_path = os.path.join(checkpoint_dir, "model.pt")
    state_dict = read_checkpoint(weights_path)
    if not isinstance(state_dict, dict) or not all(torch.is_tensor(v) for v in state_dict.values()):
        raise CheckpointError(
            f"{weights_path} is not a state_dict (a dict of tensors), got {type(state_dict).__name__}; "
            "disentangling-vae saves model.state_dict() as model.pt"
        )
    config = config_from_specs(specs, state_dict)
    model = VAEModel(config)
    renamed = rename_weights(state_dict, config.sample_size, config.latent_channels)
    load_state_dict_exactly(model, renamed, weights_path)
    return model.eval()
