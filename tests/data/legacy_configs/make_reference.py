"""Writes `configs.json` and `reference_outputs.json` of this folder with latentcode 0.1.0 as it
was before the nested quantizer config (commit 0cbeb8b); kept to show how they were made.

    PYTHONPATH=<a 0.1.0 checkout>/src python tests/data/legacy_configs/make_reference.py

`configs.json` holds, per case, the config.json `save_pretrained` wrote (`"diff"`) and the full
one (`"full"`, every field). `reference_outputs.json` holds what the model built from it
computes after `fill_weights` (a deterministic function of each weight's name): the state-dict
keys and shapes, the reconstruction, the loss and the indices of one 8x8 image, then the losses
of two training steps and the reconstruction after them.
"""

import json
import pathlib
import zlib

import torch

from latentcode import AutoencoderConfig, AutoencoderModel, VAEConfig, VAEModel, VQVAEConfig, VQVAEModel

SMALL = dict(block_out_channels=(32, 32), layers_per_block=1, norm_num_groups=8, sample_size=16)
CASES = {
    "autoencoder": (AutoencoderConfig, AutoencoderModel, dict()),
    "vae": (VAEConfig, VAEModel, dict(kl_weight=5e-4)),
    "vqvae_vq": (VQVAEConfig, VQVAEModel, dict(codebook_size=64)),
    "vqvae_vq_plain_rotation_l2": (
        VQVAEConfig,
        VQVAEModel,
        dict(
            codebook_size=64,
            codebook_dim=3,
            codebook_ema=False,
            kmeans_init=False,
            dead_code_restart=False,
            codebook_l2_norm=True,
            gradient_estimator="rotation",
            commitment_weight=0.5,
            codebook_weight=0.75,
            codebook_usage_window=512,
        ),
    ),
    "vqvae_simvq": (VQVAEConfig, VQVAEModel, dict(quantizer="simvq", codebook_size=64)),
    "vqvae_fsq": (VQVAEConfig, VQVAEModel, dict(quantizer="fsq", fsq_levels=(5, 4, 3))),
    "vqvae_lfq": (
        VQVAEConfig,
        VQVAEModel,
        dict(
            quantizer="lfq",
            codebook_size=2**6,
            lfq_entropy_weight=0.2,
            lfq_entropy_annealing_steps=10,
            lfq_entropy_annealing_start_factor=3.0,
        ),
    ),
    "vqvae_bsq": (VQVAEConfig, VQVAEModel, dict(quantizer="bsq", codebook_size=2**5, lfq_temperature=0.05)),
    "vqvae_residual_vq": (
        VQVAEConfig,
        VQVAEModel,
        dict(
            quantizer="residual_vq",
            codebook_size=32,
            num_quantizers=3,
            quantizer_dropout=0.5,
            dead_code_threshold=0.25,
            codebook_ema_decay=0.9,
        ),
    ),
}


def fill_weights(model: torch.nn.Module) -> None:
    """Every float tensor of the state dict <- 0.1 * N(0, 1) seeded by a CRC of its name."""
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                generator = torch.Generator().manual_seed(zlib.crc32(name.encode()))
                tensor.copy_(0.1 * torch.randn(tensor.shape, generator=generator))


def pixels() -> torch.Tensor:
    return torch.linspace(-1, 1, 3 * 8 * 8).reshape(1, 3, 8, 8)


def outputs(model: torch.nn.Module) -> dict:
    """What `model` computes in eval mode on `pixels()`, rounded for JSON."""
    fill_weights(model)
    model.eval()
    with torch.no_grad():
        output = model(pixels())
    result = {
        "state_dict": {name: list(tensor.shape) for name, tensor in model.state_dict().items()},
        "sample": [round(value, 6) for value in output.sample.flatten().tolist()],
        "loss": round(float(output.loss), 6),
    }
    if getattr(output, "indices", None) is not None:
        result["indices"] = output.indices.flatten().tolist()
    # Two training steps (the codebook's k-means initialisation, EMA update, dead-code restarts,
    # quantizer dropout, entropy annealing), then the eval output again.
    torch.manual_seed(0)
    model.train()
    result["training_losses"] = [round(float(model(pixels()).loss.detach()), 5) for _ in range(2)]
    model.eval()
    with torch.no_grad():
        result["sample_after_training"] = [round(value, 5) for value in model(pixels()).sample.flatten().tolist()]
    return result


def main() -> None:
    torch.set_num_threads(1)
    folder = pathlib.Path(__file__).parent
    configs, references = {}, {}
    for name, (config_class, model_class, fields) in CASES.items():
        config = config_class(**SMALL, **fields)
        configs[name] = {
            "diff": json.loads(config.to_json_string(use_diff=True)),
            "full": json.loads(config.to_json_string(use_diff=False)),
        }
        references[name] = outputs(model_class(config))
    (folder / "configs.json").write_text(json.dumps(configs, indent=1, sort_keys=True) + "\n")
    (folder / "reference_outputs.json").write_text(json.dumps(references, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
