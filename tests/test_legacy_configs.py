"""Every config.json latentcode 0.1.0 wrote still loads, into a model that computes the same.

`tests/data/legacy_configs/` holds one config of each family and each quantizer as 0.1.0 wrote it
(flat quantizer fields) and what 0.1.0's model computed from it (`make_reference.py`). Loading goes
through `nest_flat_quantizer_fields`, the one conversion of the flat fields.
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
    assert got["state_dict"] == expected["state_dict"]
    assert got.get("indices") == expected.get("indices")
    assert got["loss"] == pytest.approx(expected["loss"], abs=1e-5)
    assert got["sample"] == pytest.approx(expected["sample"], abs=1e-5)
    assert got["training_losses"] == pytest.approx(expected["training_losses"], abs=1e-4)
    assert got["sample_after_training"] == pytest.approx(expected["sample_after_training"], abs=1e-4)


def test_flat_fields_move_into_the_quantizer_config_under_the_quantizers_names(tmp_path):
    lfq = load(CONFIGS["vqvae_lfq"]["full"], tmp_path).config
    assert lfq.quantizer_config == {
        "commitment_weight": 0.25,
        "entropy_weight": 0.2,
        "diversity_weight": 1.0,
        "temperature": 0.01,
        "entropy_max_group_bits": 12,
        "entropy_annealing_steps": 10,
        "entropy_annealing_start_factor": 3.0,
    }
    resaved = lfq.to_dict()
    assert not any(key.startswith("lfq_") or key == "commitment_weight" for key in resaved)
    assert (
        VQVAEConfig(**{k: v for k, v in resaved.items() if k != "model_type"}).quantizer_config == lfq.quantizer_config
    )
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
    with pytest.raises(ValueError, match=r"given twice, as commitment_weight=0.5 and in quantizer_config as 1.0"):
        VQVAEConfig(commitment_weight=0.5, quantizer_config={"commitment_weight": 1.0})


def test_unknown_quantizer_options_are_refused_naming_the_valid_ones():
    with pytest.raises(
        ValueError, match=r"no option 'entropy_weigth' for quantizer='lfq'; did you mean 'entropy_weight'"
    ):
        VQVAEConfig(quantizer="lfq", quantizer_config={"entropy_weigth": 0.2})
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
