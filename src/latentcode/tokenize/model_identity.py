"""What identifies the model that wrote a code dataset: the hashes the writer records in the
dataset's info file, and the check [`load_codes`] makes against the model a reader expects."""

from __future__ import annotations

import hashlib
import json


def config_hash(model) -> str:
    """SHA-256 of the model's config (family, backbone, bottleneck), without the fields that
    name where it was loaded from or the library versions."""
    from ..configuration import TRANSFORMERS_CONFIG_KEYS  # transformers' model code: not for --help

    config = {k: v for k, v in model.config.to_dict().items() if k not in TRANSFORMERS_CONFIG_KEYS or k == "model_type"}
    config = {k: v for k, v in config.items() if not k.endswith("_version")}
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def weights_hash(model) -> str:
    """SHA-256 of the model's weights (names, shapes, float32 values), so that two trainings of
    one config are told apart."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def family_name(model) -> str:
    """The registry name of the model's family (`"vqvae"`, `"vae"`, `"autoencoder"`)."""
    from ..families import family_of

    return family_of(model).name


def check_same_model(info: dict, model, path: str) -> None:
    """Raise a ValueError when the code dataset at `path` (its info file: `info`) was written by
    another model than `model`: another config hash, or the same config with other weights."""
    made_by = f"{info['family']} {info['model']!r}"
    if info["config_hash"] != config_hash(model):
        raise ValueError(
            f"{path!r} holds codes of another model: {made_by}, config hash {info['config_hash'][:12]}, but the "
            f"expected model's config hash is {config_hash(model)[:12]}; tokenise the data with this model "
            "(latentcode-tokenize --pretrained_model_name_or_path ...)"
        )
    if info["weights_hash"] != weights_hash(model):
        raise ValueError(
            f"{path!r} holds codes of {made_by}: same config as the expected model, other weights (weights hash "
            f"{info['weights_hash'][:12]} vs {weights_hash(model)[:12]}); tokenise the data with this model"
        )
