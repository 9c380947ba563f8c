"""Every config.json latentcode 0.1.0 wrote still loads, into a model that computes the same.

`tests/data/legacy_configs/` holds one config of each family and each quantizer as 0.1.0 wrote it
(flat quantizer fields) and what 0.1.0's model computed from it (`make_reference.py`). Loading goes
through `nest_flat_quantizer_fields`, the one conversion of the flat fields.

One state-dict key is retired on purpose: `quantizer.training_steps`, where an LFQ / BSQ model with
entropy annealing counted its training forwards. The annealing is the training objective's now, a
function of the optimiser step (`latentcode.objectives`); a saved state dict holding the key loads.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModel

import latentcode
from latentcode import VQVAEConfig, VQVAEModel

DATA = Path(__file__).parent / "data" / "legacy_configs"
sys.path.insert(0, str(DATA))
from make_reference import outputs  # noqa: E402  (the reference's own weight filling and inputs)

CONFIGS = json.loads((DATA / "configs.json").read_text())
REFERENCES = json.loads((DATA / "reference_outputs.json").read_text())
RETIRED_KEYS = {"quantizer.training_steps"}


def load(saved: dict, tmp_path: Path):
    """The model `from_pretrained` builds from a folder holding `saved` as its config.json."""
    (tmp_path / "config.json").write_text(json.dumps(saved))
    return AutoModel.from_config(AutoConfig.from_pretrained(tmp_path))


@pytest.mark.parametrize("form", ["diff", "full"])
@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_a_0_1_config_builds_the_same_model(case, form, tmp_path):
    torch.set_num_threads(1)
    model = load(CONFIGS[case][form], tmp_path)
    got, expected = outputs(model), REFERENCES[case]
    assert got["state_dict"] == {k: v for k, v in expected["state_dict"].items() if k not in RETIRED_KEYS}
    assert got.get("indices") == expected.get("indices")
    assert got["loss"] == pytest.approx(expected["loss"], abs=1e-5)
    assert got["sample"] == pytest.approx(expected["sample"], abs=1e-5)
    assert got["training_losses"] == pytest.approx(expected["training_losses"], abs=1e-4)
    assert got["sample_after_training"] == pytest.approx(expected["sample_after_training"], abs=1e-4)


def test_flat_fields_move_into_the_quantizer_config_under_the_quantizers_names(tmp_path):
    lfq = load(CONFIGS["vqvae_lfq"]["full"], tmp_path).config
    assert lfq.quantizer_config == {"temperature": 0.01, "entropy_max_group_bits": 12}
    # The loss weights are the config's own fields (the family's default objective).
    weights = dict(
        commitment_weight=0.25,
        codebook_weight=None,  # LFQ has no codebook term
        entropy_weight=0.2,
        diversity_weight=1.0,
        entropy_annealing_steps=10,
        entropy_annealing_start_factor=3.0,
    )
    assert {name: getattr(lfq, name) for name in weights} == weights
    resaved = lfq.to_dict()
    assert not any(key.startswith("lfq_") for key in resaved)
    again = VQVAEConfig(**{k: v for k, v in resaved.items() if k != "model_type"})
    assert again.quantizer_config == lfq.quantizer_config and again.loss_weights() == lfq.loss_weights()
    fsq = VQVAEConfig(**CONFIGS["vqvae_fsq"]["diff"])
    assert fsq.quantizer_config == {"levels": [5, 4, 3]} and fsq.codebook_size == 60
    cosine = VQVAEConfig(**CONFIGS["vqvae_vq_plain_rotation_l2"]["diff"])
    assert cosine.quantizer_config["l2_normalize"] and cosine.quantizer_config["usage_window"] == 512


def test_the_names_before_0_1_of_the_codebook_ema_load(tmp_path):
    """`use_ema` / `ema_decay` / `ema_epsilon` named the codebook EMA before it had names of its own
    (`use_ema` is also the training option for an EMA of the weights)."""
    saved = dict(CONFIGS["vqvae_vq"]["diff"])
    for name in ("codebook_ema", "codebook_ema_decay", "codebook_ema_epsilon"):
        del saved[name]
    saved.update(use_ema=False, ema_decay=0.5, ema_epsilon=0.1)
    model = load(saved, tmp_path)
    options = model.config.quantizer_config
    assert (options["codebook_ema"], options["codebook_ema_decay"], options["codebook_ema_epsilon"]) == (
        False,
        0.5,
        0.1,
    )
    assert not model.quantizer.codebook_ema and model.quantizer.codebook.requires_grad
    assert model.quantizer.codebook_ema_decay == 0.5
    assert {"use_ema", "ema_decay", "codebook_ema"}.isdisjoint(model.config.to_dict())


def test_flat_fields_of_another_quantizer_are_dropped_with_a_warning_when_set(caplog):
    with caplog.at_level(logging.WARNING, logger="latentcode.configuration"):
        config = VQVAEConfig(quantizer="fsq", lfq_entropy_weight=0.1, commitment_weight=0.5, codebook_ema=True)
    assert config.quantizer_config == {}
    assert "commitment_weight=0.5 does not apply to quantizer='fsq'" in caplog.text
    assert "lfq_entropy_weight" not in caplog.text  # at its default: 0.1.0 wrote it for every quantizer


def test_an_option_given_flat_and_nested_with_two_values_is_refused():
    with pytest.raises(ValueError, match=r"given twice, as kmeans_iterations=5 and in quantizer_config as 3"):
        VQVAEConfig(kmeans_iterations=5, quantizer_config={"kmeans_iterations": 3})
    with pytest.raises(
        ValueError, match=r"'commitment_weight' is given twice, as quantizer_config\['commitment_weight'\]=1.0"
    ):
        VQVAEConfig(commitment_weight=0.5, quantizer_config={"commitment_weight": 1.0})


def test_unknown_quantizer_options_are_refused_naming_the_valid_ones():
    with pytest.raises(ValueError, match=r"no option 'temperatur' for quantizer='lfq'; did you mean 'temperature'"):
        VQVAEConfig(quantizer="lfq", quantizer_config={"temperatur": 0.2})
    with pytest.raises(
        ValueError, match=r"no option 'gradient_estimator' for quantizer='fsq'.*its options are: levels, usage_window"
    ):
        VQVAEConfig(quantizer="fsq", quantizer_config={"gradient_estimator": "rotation"})
    with pytest.raises(ValueError, match="codebook_ema_decay must be in"):
        VQVAEConfig(quantizer_config={"codebook_ema_decay": 1.5})
    with pytest.raises(ValueError, match="quantizer must be one of"):
        VQVAEConfig(quantizer="pq")


def test_a_new_config_builds_the_quantizer_from_its_own_argument_names():
    config = VQVAEConfig(
        block_out_channels=(8,),
        norm_num_groups=4,
        codebook_size=32,
        quantizer_config={"gradient_estimator": "rotation"},
    )
    quantizer = VQVAEModel(config).quantizer
    assert quantizer.gradient_estimator == "rotation" and quantizer.codebook_ema and quantizer.kmeans_init
    assert config.commitment_weight == 0.25 and VQVAEConfig(quantizer="fsq").commitment_weight is None
    assert config.entropy_weight is None and VQVAEConfig(quantizer="lfq").entropy_weight == 0.1
    assert latentcode.modules.quantizers.QUANTIZERS["vq"] is type(quantizer)


def _another_value(name: str, default):
    """A valid value other than `default` for a quantizer option."""
    if isinstance(default, bool):
        return not default
    if isinstance(default, float):
        return 0.5 if "decay" in name or "threshold" in name else 2 * default + 0.1
    if isinstance(default, int):
        return default + 1
    if isinstance(default, str):
        return "rotation" if default == "straight_through" else "straight_through"
    return 64  # None: a usage window, a search block


@pytest.mark.parametrize("name", sorted(latentcode.modules.quantizers.QUANTIZERS))
def test_training_only_options_leave_the_pure_path_unchanged(name):
    """What a quantizer declares in `training_only_arguments` must not change what it computes
    without a codebook update: export and conversion overrides rely on it."""
    from latentcode.modules.quantizers import registry

    defaults = registry.option_defaults(name)
    assert registry.training_only_options(name) <= set(defaults)
    sizes = {"codebook_size": 16, "codebook_dim": 4, "num_quantizers": 2}
    if name in ("fsq",):
        sizes = {}
    elif name in ("lfq", "bsq"):
        sizes = {"codebook_dim": 4}
    torch.manual_seed(0)
    reference = registry.build_quantizer(name, sizes, {})
    latents = torch.randn(2, reference.codebook_dim, 4, 4)
    expected = reference(latents, update_codebook=False)
    for option in sorted(registry.training_only_options(name)):
        other = registry.build_quantizer(name, sizes, {option: _another_value(option, defaults[option])})
        other.load_state_dict(reference.state_dict(), strict=False)
        got = other(latents, update_codebook=False)
        assert torch.equal(got.indices, expected.indices), option
        torch.testing.assert_close(got.quantized, expected.quantized, msg=option)


def test_the_loss_weights_a_quantizer_config_held_move_to_the_top_level(tmp_path):
    """Configs written between the nested quantizer config and the objective's weights held the
    weights in `quantizer_config`; they load as the config's own fields."""
    saved = {
        "model_type": "latentcode_vqvae",
        "quantizer": "lfq",
        "codebook_size": 16,
        "quantizer_config": {"commitment_weight": 0.5, "entropy_weight": 0.3, "entropy_annealing_steps": 7},
    }
    config = load(saved, tmp_path).config
    assert config.quantizer_config == {}
    assert (config.commitment_weight, config.entropy_weight, config.entropy_annealing_steps) == (0.5, 0.3, 7)
    override = VQVAEConfig.from_pretrained(tmp_path, lfq_entropy_weight=0.4, diversity_weight=2.0)
    assert (override.entropy_weight, override.diversity_weight, override.commitment_weight) == (0.4, 2.0, 0.5)
    with pytest.raises(ValueError, match=r"loss weight 'entropy_weight' is given twice"):
        VQVAEConfig(quantizer="lfq", entropy_weight=0.2, quantizer_config={"entropy_weight": 0.3})


@pytest.mark.parametrize("quantizer", ["lfq", "bsq"])
def test_a_saved_annealing_step_count_loads_without_a_warning(quantizer, tmp_path, caplog):
    """0.1.0 LFQ / BSQ models with entropy annealing saved `quantizer.training_steps`: the key is
    dropped by `load_state_dict` (strict) and by `from_pretrained` (no unexpected-key report)."""
    from safetensors.torch import load_file, save_file

    config = VQVAEConfig(
        block_out_channels=(8,),
        norm_num_groups=4,
        quantizer=quantizer,
        codebook_size=16,
        lfq_entropy_annealing_steps=10,
        lfq_entropy_annealing_start_factor=3.0,
    )
    model = VQVAEModel(config).eval()
    saved = {**model.state_dict(), "quantizer.training_steps": torch.tensor(7)}
    fresh = VQVAEModel(config).eval()
    fresh.load_state_dict(saved)  # strict
    pixels = torch.rand(1, 3, 8, 8) * 2 - 1
    assert torch.equal(fresh(pixels).sample, model(pixels).sample)
    model.save_pretrained(tmp_path)
    save_file({k: v.contiguous() for k, v in saved.items()}, tmp_path / "model.safetensors", metadata={"format": "pt"})
    caplog.clear()
    with caplog.at_level(logging.INFO):
        loaded, info = VQVAEModel.from_pretrained(tmp_path, output_loading_info=True)
    assert "quantizer.training_steps" in load_file(tmp_path / "model.safetensors")  # the test is not vacuous
    assert not info["unexpected_keys"] and not info["missing_keys"]
    assert "training_steps" not in caplog.text
    assert "training_steps" not in dict(loaded.named_buffers())
    assert torch.equal(loaded(pixels).sample, model(pixels).sample)
