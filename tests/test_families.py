"""Family behaviour (`latentcode.families.FamilyBehaviour`): each method of each family against
the value computed directly from `encode` / `decode` / `forward`, the registry's check that a
family implements every hook, and no family dispatch anywhere else in the code."""

from __future__ import annotations

import ast
import math
import re
from pathlib import Path

import pytest
import torch
from helpers import tiny_model

import latentcode
from latentcode.families import FAMILIES, FAMILY_HOOKS, CodeSize, FamilyBehaviour, register_family

REPOSITORY = Path(latentcode.__file__).resolve().parents[2]


def pixels(batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.rand(batch, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_every_family_implements_every_hook_and_says_what_it_can(family):
    model_class = FAMILIES[family].model_class
    assert issubclass(model_class, FamilyBehaviour)
    for hook in FAMILY_HOOKS:
        assert getattr(model_class, hook) is not getattr(FamilyBehaviour, hook), (family, hook)
    assert model_class.can_sample_prior == hasattr(model_class, "sample")
    assert model_class.has_tokens == hasattr(model_class, "decode_indices")
    assert {FAMILIES[name].model_class.display_name for name in FAMILIES} == {"AutoEncoder", "VAE", "VQ-VAE"}


def test_reconstruct_is_the_deterministic_decode_of_the_code(family):
    model, x = tiny_model(family), pixels()
    encoded = model.encode(x)
    if family == "vae":
        expected = model.decode(encoded.latent_dist.mode()).sample
    elif family == "vqvae":
        expected = model.decode_indices(encoded.indices).sample
        torch.testing.assert_close(expected, model.decode(encoded.latents).sample)  # the same code
    else:
        expected = model.decode(encoded.latents).sample
    torch.testing.assert_close(model.reconstruct(x), expected, rtol=0, atol=0)
    torch.testing.assert_close(model.reconstruct_encoded(encoded), expected, rtol=0, atol=0)
    if family != "vae":  # eval mode: forward decodes the same code (the VQ's straight-through sum rounds)
        torch.testing.assert_close(model(x).sample, expected)


def test_continuous_code_is_what_decode_takes_back(family):
    model, x = tiny_model(family), pixels()
    encoded = model.encode(x)
    expected = encoded.latent_dist.mean if family == "vae" else encoded.latents
    assert torch.equal(model.continuous_code(x), expected)
    torch.testing.assert_close(model.decode(model.continuous_code(x)).sample, model.reconstruct(x))
    drawn = model.continuous_code(x, sample_posterior=True, generator=torch.Generator().manual_seed(3))
    if family == "vae":
        noise = torch.randn(expected.shape, generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(drawn, expected + encoded.latent_dist.std * noise)
    else:  # a deterministic code has no posterior to sample
        assert torch.equal(drawn, expected)


def test_code_size_of_a_vq_vae_is_log2_codebook_size_per_token():
    model = tiny_model("vqvae", codebook_size=32)
    size = model.code_size(model.encode(pixels(3)))
    assert isinstance(size, CodeSize) and size.shape == (8, 8)
    assert size.bits.tolist() == [64 * 5.0] * 3
    assert size.meaning == "64 tokens x log2(32)"


def test_code_size_of_a_residual_vq_vae_counts_every_level():
    model = tiny_model("vqvae", quantizer="residual_vq", num_quantizers=3, codebook_size=16)
    size = model.code_size(model.encode(pixels(1)))
    assert size.shape == (8, 8, 3)
    assert size.bits.tolist() == [8 * 8 * 3 * 4.0]


def test_code_size_of_a_vae_is_its_kl_to_the_prior_in_bits():
    model = tiny_model("vae")
    encoded = model.encode(pixels(2))
    posterior = encoded.latent_dist
    reference = torch.distributions.kl_divergence(
        torch.distributions.Normal(posterior.mean.double(), posterior.std.double()),
        torch.distributions.Normal(0.0, 1.0),
    )
    size = model.code_size(encoded)
    assert size.shape == (4, 8, 8) and size.bits.dtype == torch.float64
    torch.testing.assert_close(size.bits, reference.flatten(1).sum(1) / math.log(2), rtol=1e-5, atol=1e-6)


def test_code_size_of_an_autoencoder_is_its_float32_values():
    model = tiny_model("autoencoder")
    size = model.code_size(model.encode(pixels(2)))
    assert size.shape == (4, 8, 8)
    assert size.bits.tolist() == [4 * 8 * 8 * 32.0] * 2


def test_loss_summary_holds_every_scalar_of_the_forward_output(family):
    model = tiny_model(family).train()
    output = model(pixels(), return_dict=True)
    summary = model.loss_summary(output)
    family_terms = {
        "autoencoder": set(),
        "vae": {"kl"},
        "vqvae": {"commitment_loss", "perplexity"},  # an EMA codebook: no codebook loss
    }[family]
    assert {"loss", "reconstruction_loss"} | family_terms <= set(summary)
    scalars = {name for name, value in output.items() if isinstance(value, torch.Tensor) and value.dim() == 0}
    assert set(summary) == scalars  # and nothing else: no images, codes or hidden states
    for name, value in summary.items():
        assert isinstance(value, float) and value == getattr(output, name).item(), name
    with pytest.raises(ValueError, match="return_dict=True"):
        model.loss_summary(model(pixels(), return_dict=False))


def test_regularizer_description_names_the_familys_own_term():
    assert tiny_model("autoencoder").regularizer_description() is None
    assert tiny_model("vae", kl_weight=0.25).regularizer_description() == "KL to N(0, I) (weight 0.25)"
    assert (
        "'fsq'" in tiny_model("vqvae", quantizer="fsq", quantizer_config={"levels": [4, 4]}).regularizer_description()
    )


def test_the_model_card_describes_the_weights_the_recipe_trained_with_not_the_models_defaults():
    from latentcode.objectives import AutoencoderObjective

    vae = tiny_model("vae", kl_weight=0.25)
    assert "KL to N(0, I) (weight 0.5)" in AutoencoderObjective.for_model(vae, kl_weight=0.5).describe(vae)
    vq = tiny_model("vqvae")
    described = AutoencoderObjective.for_model(vq, commitment_weight=0.125).describe(vq)
    assert "0.125" in described and "0.125" not in AutoencoderObjective.for_model(vq).describe(vq)


def test_register_family_refuses_a_class_without_every_hook():
    class HalfFamily(latentcode.AutoencoderModel):
        pass

    HalfFamily.reconstruct_encoded = FamilyBehaviour.reconstruct_encoded
    with pytest.raises(TypeError, match=r"HalfFamily must .* missing: \['reconstruct_encoded'\]"):
        register_family("half")(HalfFamily)
    assert "half" not in FAMILIES


DISPATCH = re.compile(
    r"isinstance\(.*\b(AutoencoderModel|VAEModel|VQVAEModel)\b"  # a check for one family's class
    r"|family\s*[!=]=\s*['\"]"  # a compare with one family's name
)


def family_specific_names() -> set[str]:
    """Attribute names some families' models, configs or outputs have and others lack (`kl_weight`,
    `loss_weights`, `quantizer_terms`, `indices`, `latent_dist`, ...): probing one of them with
    `hasattr` / `getattr` asks which family a model is, by duck typing."""
    names_per_family = []
    for name in FAMILIES:
        model = tiny_model(name).train()
        x = pixels()
        names = set(dir(model)) | set(dir(model.config)) | set(model.config.to_dict())
        names |= set(type(model(x, return_dict=True)).__dataclass_fields__)
        names |= set(type(model.encode(x, return_dict=True)).__dataclass_fields__)
        names_per_family.append(names)
    return set.union(*names_per_family) - set.intersection(*names_per_family)


def probed_names(tree) -> list[tuple[int, str]]:
    """`(line, name)` of each `hasattr(x, "name")` / `getattr(x, "name", ...)` with a literal name."""
    return sorted(
        (node.lineno, node.args[1].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in ("hasattr", "getattr")
        and len(node.args) >= 2
        and isinstance(node.args[1], ast.Constant)
        and isinstance(node.args[1].value, str)
    )


def test_the_duck_typing_probe_finds_what_it_should():
    names = family_specific_names()
    assert {"kl_weight", "loss_weights", "kl", "quantizer_terms", "indices", "latent_dist", "codebook_size"} <= names
    assert not {"config", "encode", "decode", "reconstruction_loss", "sample_size"} & names
    tree = ast.parse('if hasattr(config, "loss_weights"): x = getattr(output, "kl", None)\ny = getattr(a, "b")')
    assert probed_names(tree) == [(1, "kl"), (1, "loss_weights"), (2, "b")]


# Where a family-specific name is probed for another reason than the family (the line's text).
PROBES_ALLOWED = {
    "src/latentcode/conversion/": "converters map one family's fields to another library's",
}


def test_no_family_dispatch_outside_the_family_classes_and_the_registry():
    """Neither `isinstance(model, VQVAEModel)` / `family == "vae"` nor duck typing (`hasattr(config,
    "kl_weight")`, `getattr(output, "quantizer_terms", None)`): code outside the family classes
    asks the model (a `FamilyBehaviour` method or attribute)."""
    allowed = {"src/latentcode/families.py", "src/latentcode/configuration.py"} | {
        f"src/latentcode/modeling/{name}.py" for name in ("__init__", "base", "autoencoder", "vae", "vqvae")
    }
    specific = family_specific_names()
    found = []
    for folder in ("src", "training"):
        for path in sorted((REPOSITORY / folder).rglob("*.py")):
            relative = path.relative_to(REPOSITORY).as_posix()
            if relative in allowed:
                continue
            text = path.read_text()
            for number, line in enumerate(text.splitlines(), 1):
                if DISPATCH.search(line):
                    found.append(f"{relative}:{number}: {line.strip()}")
            if any(relative.startswith(prefix) for prefix in PROBES_ALLOWED):
                continue
            for number, name in probed_names(ast.parse(text)):
                if name in specific:
                    found.append(f"{relative}:{number}: probes {name!r} (duck-typed family dispatch)")
    assert not found, "family dispatch outside the family classes (use a FamilyBehaviour method):\n" + "\n".join(found)
