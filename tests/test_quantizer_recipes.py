"""The quantizers of today's best tokenizers: rotation trick, SimVQ, BSQ, bounded LFQ entropy.

Each is compared with vector-quantize-pytorch (`rotate_to`, `VectorQuantize`, `ResidualVQ`,
`SimVQ`, `LFQ` / `LFQ(spherical=True)`) on the same inputs and weights: indices, outputs,
losses and the gradients they send to the latents and the codebook. A quantizer returns its
terms unweighted; the loss is `QuantizerLossWeights` applied to them, as `model(x).loss` and the
training objective compute it.
"""

from __future__ import annotations

import pytest
import torch
from helpers import QUANTIZER_OVERRIDES, peak_memory_growth, tiny_config

import latentcode
from latentcode.modules.quantizers import (
    BinarySphericalQuantizer,
    LookupFreeQuantizer,
    QuantizerLossWeights,
    ResidualVectorQuantizer,
    SimVectorQuantizer,
    VectorQuantizer,
)
from latentcode.modules.quantizers.entropy import bit_entropy_terms, bit_groups
from latentcode.modules.quantizers.gradients import rotation_trick
from latentcode.modules.quantizers.loss_weights import annealed_weight
from latentcode.objectives import AutoencoderObjective

vqp = pytest.importorskip("vector_quantize_pytorch")


def channels_last(latents: torch.Tensor) -> torch.Tensor:
    """`[B, D, h, w]` -> `[B, h*w, D]`, the layout vector-quantize-pytorch's VQ classes take."""
    return latents.flatten(2).transpose(1, 2)


def weighted(weights: QuantizerLossWeights | None = None):
    """`read` of `run_with_gradients` for our quantizers: the code, the indices and the loss of
    the terms under `weights` (default: the standard weights of `model(x).loss`)."""
    weights = weights or QuantizerLossWeights()
    return lambda out: (out.quantized, out.indices, weights(out.terms)[0])


def run_with_gradients(module, latents, upstream, read):
    """Forward `latents` (a leaf copy), backprop `<output, upstream> + loss`; returns (output
    tensors via `read`, gradient at the latents)."""
    latents = latents.clone().requires_grad_(True)
    quantized, indices, loss = read(module(latents))
    ((quantized * upstream).sum() + loss.sum()).backward()
    return quantized.detach(), indices, loss.detach(), latents.grad


def test_rotation_trick_matches_reference_values_and_gradients():
    from vector_quantize_pytorch.vector_quantize_pytorch import rotate_to

    generator = torch.Generator().manual_seed(0)
    latents, codes = torch.randn(64, 8, generator=generator), torch.randn(64, 8, generator=generator)
    upstream = torch.randn(64, 8, generator=generator)
    outputs = {}
    for name, function in {"ours": rotation_trick, "theirs": rotate_to}.items():
        leaf = latents.clone().requires_grad_(True)
        output = function(leaf, codes)
        (output * upstream).sum().backward()
        outputs[name] = (output.detach(), leaf.grad)
    torch.testing.assert_close(outputs["ours"][0], codes, atol=1e-5, rtol=1e-5)  # the value is the code
    torch.testing.assert_close(outputs["ours"][0], outputs["theirs"][0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(outputs["ours"][1], outputs["theirs"][1], atol=1e-6, rtol=1e-5)
    # Not the straight-through gradient, and a rotation: same norm up to the scale |e| / |z|.
    assert not torch.allclose(outputs["ours"][1], upstream, atol=1e-3)
    scale = codes.norm(dim=1) / latents.norm(dim=1)
    torch.testing.assert_close(outputs["ours"][1].norm(dim=1), upstream.norm(dim=1) * scale)


@pytest.mark.parametrize("residual", [False, True], ids=["vq", "residual_vq"])
def test_rotation_trick_vq_matches_vector_quantize_pytorch(residual):
    torch.manual_seed(0)
    options = dict(rotation_trick=True, learnable_codebook=True, ema_update=False, commitment_weight=0.25)
    if residual:
        theirs = vqp.ResidualVQ(dim=4, num_quantizers=3, codebook_size=32, **options).train()
        ours = ResidualVectorQuantizer(3, 32, 4, gradient_estimator="rotation").train()
        for depth, (level, layer) in enumerate(zip(ours.levels, theirs.layers)):
            level.codebook.data.copy_(layer._codebook.embed[0] / (depth + 1))  # finer codes deeper
            layer._codebook.embed.data.copy_(level.codebook.data[None])
        codebook_parameters = [
            (level.codebook, layer._codebook.embed) for level, layer in zip(ours.levels, theirs.layers)
        ]
    else:
        theirs = vqp.VectorQuantize(dim=4, codebook_size=32, **options).train()
        ours = VectorQuantizer(32, 4, gradient_estimator="rotation")
        ours.train()
        ours.codebook.data.copy_(theirs._codebook.embed[0])
        codebook_parameters = [(ours.codebook, theirs._codebook.embed)]
    # vector-quantize-pytorch's commitment loss ||z - e||^2 trains both sides with one weight:
    # ours with codebook and commitment weights equal is the same objective.
    latents = torch.randn(2, 4, 5, 6)
    upstream = torch.randn(2, 4, 5, 6)
    q_ours, i_ours, loss_ours, grad_ours = run_with_gradients(
        ours, latents, upstream, weighted(QuantizerLossWeights(commitment_weight=0.25, codebook_weight=0.25))
    )

    def read_theirs(output):
        quantized, indices, loss = output
        return quantized.transpose(1, 2).reshape(2, 4, 5, 6), indices.view(2, 5, 6, *indices.shape[2:]), loss

    q_theirs, i_theirs, loss_theirs, grad_theirs = run_with_gradients(
        lambda x: theirs(channels_last(x)), latents, upstream, read_theirs
    )
    assert torch.equal(i_ours, i_theirs)
    torch.testing.assert_close(q_ours, q_theirs, atol=1e-5, rtol=1e-5)
    # Their one term 0.25 ||z - e||^2 has the value of each of our two (codebook, commitment).
    torch.testing.assert_close(loss_ours, 2 * loss_theirs.sum(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(grad_ours, grad_theirs, atol=1e-6, rtol=1e-5)
    for ours_codebook, their_codebook in codebook_parameters:
        torch.testing.assert_close(ours_codebook.grad, their_codebook.grad[0], atol=1e-7, rtol=1e-5)


def test_simvq_matches_vector_quantize_pytorch():
    torch.manual_seed(0)
    theirs = vqp.SimVQ(dim=4, codebook_size=64, channel_first=True).train()
    ours = SimVectorQuantizer(64, 4).train()  # the rotation trick; standard weights: codebook 1, commitment 0.25
    ours.frozen_basis.copy_(theirs.frozen_codebook)
    ours.codebook_transform.weight.data.copy_(theirs.code_transform.weight)
    latents, upstream = torch.randn(2, 4, 5, 6), torch.randn(2, 4, 5, 6)
    q_ours, i_ours, loss_ours, grad_ours = run_with_gradients(ours, latents, upstream, weighted())
    q_theirs, i_theirs, loss_theirs, grad_theirs = run_with_gradients(theirs, latents, upstream, lambda out: out)
    assert torch.equal(i_ours, i_theirs)
    torch.testing.assert_close(q_ours, q_theirs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss_ours, loss_theirs, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(grad_ours, grad_theirs, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(
        ours.codebook_transform.weight.grad, theirs.code_transform.weight.grad, atol=1e-6, rtol=1e-5
    )
    # Every code moves with one step on W, not only the codes that were hit.
    hit = torch.zeros(64, dtype=torch.bool)
    hit[i_ours.flatten()] = True
    before = ours.codebook.detach().clone()
    torch.optim.SGD(ours.parameters(), lr=0.1).step()
    assert (ours.codebook.detach() - before)[~hit].abs().amax(dim=1).min() > 0


@pytest.mark.parametrize("spherical", [False, True], ids=["lfq", "bsq"])
def test_bit_quantizers_match_vector_quantize_pytorch_lfq(spherical):
    """Indices, codes, the entropy + commitment loss and its gradients, at a temperature that
    keeps probabilities above vector-quantize-pytorch's 1e-5 log clamp."""
    dim, temperature = 6, 2.0
    theirs = vqp.LFQ(
        dim=dim, entropy_loss_weight=0.1, commitment_loss_weight=0.25, diversity_gamma=1.0, spherical=spherical
    ).train()
    quantizer = BinarySphericalQuantizer if spherical else LookupFreeQuantizer
    ours = quantizer(dim, temperature=temperature).train()  # standard weights: commitment 0.25, entropy 0.1
    latents = torch.randn(2, dim, 5, 6, generator=torch.Generator().manual_seed(1)) * 0.5
    upstream = torch.randn(2, dim, 5, 6)
    q_ours, i_ours, loss_ours, grad_ours = run_with_gradients(ours, latents, upstream, weighted())
    q_theirs, i_theirs, loss_theirs, grad_theirs = run_with_gradients(
        lambda x: theirs(x, inv_temperature=1 / temperature), latents, upstream, lambda out: out
    )
    assert torch.equal(i_ours, i_theirs)
    torch.testing.assert_close(q_ours, q_theirs)
    torch.testing.assert_close(ours.indices_to_codes(i_ours), q_theirs)
    torch.testing.assert_close(loss_ours, loss_theirs, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(grad_ours, grad_theirs, atol=1e-6, rtol=1e-4)
    assert torch.equal(ours(ours.indices_to_codes(i_ours), update_codebook=False).indices, i_ours)


def exact_code_entropies(bit_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: the softmax over all 2^D sign codes, `[N, 2^D]`, built directly."""
    dim = bit_logits.shape[1]
    codes = torch.tensor([[1.0 if (c >> (dim - 1 - j)) & 1 else -1.0 for j in range(dim)] for c in range(2**dim)])
    probabilities = torch.softmax(bit_logits.double() @ codes.double().T / 2, dim=1)  # logit 4z/T = 2 * (2z/T)
    per_token = -(probabilities * probabilities.log()).sum(1).mean()
    average = probabilities.mean(0)
    return per_token, -(average * average.log()).sum()


def test_grouped_entropy_is_exact_for_small_d_and_an_upper_bound_beyond():
    bit_logits = torch.randn(500, 8, generator=torch.Generator().manual_seed(0)) * 2 + 0.7
    per_token_reference, codebook_reference = exact_code_entropies(bit_logits)
    per_token, codebook = bit_entropy_terms(bit_logits, max_group_bits=8)
    torch.testing.assert_close(per_token.double(), per_token_reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(codebook.double(), codebook_reference, atol=1e-5, rtol=1e-5)
    # Groups: the sum of the groups' exact entropies (subadditivity: never below the exact one).
    _, two_groups = bit_entropy_terms(bit_logits, max_group_bits=4)
    _, first = exact_code_entropies(bit_logits[:, :4])
    _, second = exact_code_entropies(bit_logits[:, 4:])
    torch.testing.assert_close(two_groups.double(), first + second, atol=1e-5, rtol=1e-5)
    assert two_groups > codebook + 1e-3
    # One bit per group: the entropies of the average bit probabilities.
    _, per_bit = bit_entropy_terms(bit_logits, max_group_bits=1)
    mean_bits = torch.sigmoid(bit_logits.double()).mean(0)
    expected = -(mean_bits * mean_bits.log() + (1 - mean_bits) * (1 - mean_bits).log()).sum()
    torch.testing.assert_close(per_bit.double(), expected, atol=1e-5, rtol=1e-5)
    assert bit_groups(18, 12) == [9, 9] and bit_groups(10, 12) == [10] and bit_groups(13, 4) == [4, 3, 3, 3]


def test_entropy_loss_at_two_to_the_18_codes_and_16k_tokens_fits_in_2_gib():
    """MAGVIT-v2's setting: the exact entropy would hold a 16384 x 262144 matrix (16 GiB). BSQ
    (LFQ plus the normalisation) with the default grouping; one fresh process (~20 s)."""
    setup = """
        from latentcode.modules.quantizers import BinarySphericalQuantizer
        quantizer = BinarySphericalQuantizer(18).train()
        latents = torch.randn(16, 18, 32, 32, requires_grad=True)
        quantizer(latents[:1, :, :2, :2]).terms["entropy_codebook"].backward()  # warm up libraries
    """
    growth = peak_memory_growth(setup, "sum(quantizer(latents).terms.values()).backward()")
    assert growth < 2 * 2**30, f"forward + backward grew memory by {growth / 2**30:.2f} GiB"


def lfq_entropy_terms(model, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """MAGVIT-v2's per-sample and codebook entropies of `model`'s latents for `pixels`, computed
    here from the bit logits (not read from the quantizer's terms)."""
    quantizer = model.quantizer
    rows = model._bottleneck_input(pixels).permute(0, 2, 3, 1).reshape(-1, quantizer.codebook_dim).float()
    rows = quantizer._prepare(rows)
    return bit_entropy_terms(4 * quantizer.code_scale * rows / quantizer.temperature)


@pytest.mark.parametrize("name", sorted(QUANTIZER_OVERRIDES))
def test_model_loss_is_the_formula_at_the_config_weights_and_the_objective_at_its_own(name):
    """`model(x).loss` weighs each quantizer's terms with the model config's weights (the
    standard ones unless set); `AutoencoderObjective.for_model(model, **overrides)` with its own."""
    model = latentcode.VQVAEModel(tiny_config("vqvae", **QUANTIZER_OVERRIDES[name])).eval()
    pixels = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        output = model(pixels)
    recipe = dict(commitment_weight=0.7, entropy_weight=0.3, diversity_weight=0.5, codebook_weight=2.0)
    overrides = {key: value for key, value in recipe.items() if getattr(model.config, key) is not None}
    objective = AutoencoderObjective.for_model(model, **overrides)
    loss, logs = objective(output, pixels, step=0)

    def formula(commitment=0.25, codebook=1.0, entropy=0.1, diversity=1.0):
        expected = output.reconstruction_loss.clone()
        if name in ("vq", "residual_vq", "lfq", "bsq", "simvq"):
            expected = expected + commitment * output.commitment_loss
        if name == "simvq":  # a learned codebook (vq / residual_vq: EMA codes, no codebook term)
            expected = expected + codebook * output.codebook_loss
        if name in ("lfq", "bsq"):
            per_sample, codebook_entropy = lfq_entropy_terms(model, pixels)
            expected = expected + entropy * (per_sample - diversity * codebook_entropy)
        return expected

    torch.testing.assert_close(output.loss, formula(), rtol=1e-6, atol=1e-7)
    weights = {key.removesuffix("_weight"): value for key, value in overrides.items()}
    torch.testing.assert_close(loss, formula(**weights), rtol=1e-6, atol=1e-7)
    if name in ("lfq", "bsq"):
        assert logs["entropy_weight"] == 0.3
        assert not torch.allclose(loss, output.loss)  # the overrides are not vacuous here
    if name == "fsq":
        assert overrides == {} and output.quantizer_terms == {}
        with pytest.raises(ValueError, match=r"commitment_weight=0.7 given, but quantizer='fsq' has no such term"):
            AutoencoderObjective.for_model(model, commitment_weight=0.7)


def test_the_entropy_weight_is_annealed_by_the_optimiser_step():
    assert annealed_weight(0.1, 0, 100, 3.0) == pytest.approx(0.3)
    assert annealed_weight(0.1, 50, 100, 3.0) == pytest.approx(0.2)
    assert annealed_weight(0.1, 100, 100, 3.0) == pytest.approx(0.1)
    assert annealed_weight(0.1, 5000, 100, 3.0) == pytest.approx(0.1)
    assert annealed_weight(0.1, 0, 0, 3.0) == pytest.approx(0.1)
    config = tiny_config(
        "vqvae",
        quantizer="bsq",
        codebook_size=16,
        entropy_annealing_steps=4,
        entropy_annealing_start_factor=3.0,
    )
    model = latentcode.VQVAEModel(config).train()
    assert "training_steps" not in dict(model.named_buffers())  # no schedule state in the model
    pixels = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    objective = AutoencoderObjective.for_model(model)
    output = model(pixels)
    per_sample, codebook_entropy = lfq_entropy_terms(model, pixels)
    for step, weight in {0: 0.3, 1: 0.25, 2: 0.2, 3: 0.15, 4: 0.1, 100: 0.1}.items():
        loss, logs = objective(output, pixels, step)
        assert logs["entropy_weight"] == pytest.approx(weight)
        expected = output.reconstruction_loss + 0.25 * output.commitment_loss
        expected = expected + weight * (per_sample - codebook_entropy)
        torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-7)
    # model(x).loss has no step: the weight after annealing, however many forwards ran.
    for _ in range(2):
        output = model(pixels)
        torch.testing.assert_close(output.loss, objective(output, pixels, 4)[0])
    # The recipe overrides the schedule: no annealing.
    unannealed = AutoencoderObjective.for_model(model, entropy_annealing_steps=0)
    assert unannealed(output, pixels, 0)[1]["entropy_weight"] == pytest.approx(0.1)


def test_config_rejects_rotation_without_a_codebook():
    with pytest.raises(ValueError, match="no option 'gradient_estimator' for quantizer='fsq'"):
        latentcode.VQVAEConfig(quantizer="fsq", quantizer_config={"gradient_estimator": "rotation"})
    config = latentcode.VQVAEConfig(block_out_channels=(32,), quantizer_config={"gradient_estimator": "gumbel"})
    with pytest.raises(ValueError, match="gradient_estimator must be one of"):
        latentcode.VQVAEModel(config)  # the quantizer checks its options as the model builds it
    with pytest.raises(ValueError, match="for a lookup-free quantizer codebook_size must be a power of 2"):
        latentcode.VQVAEConfig(quantizer="bsq", codebook_size=1000)


# -- the recipe's weights in train.py --------------------------------------------------------------


def lfq_run(output_dir, model: dict | None = None, **overrides):
    """A 6-step train.py run of a 16x16 grey LFQ model (K = 16) whose entropy weight is annealed
    over 4 steps, on the embedded digits (`tiny_run_values`), with checkpoints every 2 steps."""
    from test_training import tiny_run_values

    from latentcode.training import load_config

    model = model or dict(
        quantizer="lfq", codebook_size=16, entropy_annealing_steps=4, entropy_annealing_start_factor=3.0
    )
    architecture = dict(in_channels=1, block_out_channels=[16, 32], layers_per_block=1, latent_channels=4)
    values = tiny_run_values(output_dir, model=dict(architecture, norm_num_groups=8, **model), checkpointing_steps=2)
    return load_config(**{**values, **overrides})


def test_a_runs_quantizer_loss_weights_are_the_fields_of_quantizer_loss_weights(tmp_path):
    """`--quantizer_loss_weights.KEY VALUE` (or the YAML section) takes any field of
    `QuantizerLossWeights`, their one declaration; another key is refused, naming the fields."""
    from latentcode.training import parse_args

    argv = ["--output_dir", str(tmp_path / "run"), "--quantizer_loss_weights.entropy_weight", "0.2"]
    config = parse_args([*argv, "--quantizer_loss_weights.commitment_weight=0.5"])
    assert config.quantizer_loss_weights == {"entropy_weight": 0.2, "commitment_weight": 0.5}
    with pytest.raises(
        ValueError, match=r"unknown quantizer_loss_weights key 'entropy_weigth'; did you mean entropy_weight"
    ):
        parse_args([*argv, "--quantizer_loss_weights.entropy_weigth", "0.1"])
    with pytest.raises(ValueError, match=r"commitment_weight: "):  # each field with its help text
        lfq_run(tmp_path / "bad", quantizer_loss_weights={"beta": 0.25})


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_train_py_overrides_each_loss_weight_of_the_model_config(tmp_path):
    from latentcode.training import build_engine

    recipe = dict(
        commitment_weight=0.5,
        entropy_weight=0.3,
        diversity_weight=0.5,
        entropy_annealing_steps=10,
        entropy_annealing_start_factor=2.0,
    )
    engine = build_engine(lfq_run(tmp_path / "lfq", quantizer_loss_weights=recipe))
    assert engine.task.objective.quantizer_weights == QuantizerLossWeights(**recipe)
    model, pixels = engine.task.unwrapped, engine.batches.next_batch()
    with torch.no_grad():
        loss, logs = engine.task.compute_loss(engine, pixels)
        per_sample, codebook_entropy = lfq_entropy_terms(model, pixels)
    # At step 0 the entropy weight is 2.0 * 0.3.
    expected = logs["reconstruction_loss"] + 0.5 * logs["commitment_loss"] + 0.6 * (per_sample - 0.5 * codebook_entropy)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-7)
    # The steps log the annealed weight: 0.3 * (2 - step / 10).
    weights = []
    for step in range(3):
        engine.global_step = step  # as Engine.run advances it
        weights.append(engine.train_step()["entropy_weight"])
    assert weights == pytest.approx([0.6, 0.57, 0.54])

    plain = dict(quantizer="vq", codebook_size=32, quantizer_config=dict(codebook_ema=False, kmeans_init=False))
    weights = dict(commitment_weight=0.1, codebook_weight=2.0)
    engine = build_engine(lfq_run(tmp_path / "vq", model=plain, quantizer_loss_weights=weights))
    with torch.no_grad():
        loss, logs = engine.task.compute_loss(engine, engine.batches.next_batch())
    expected = logs["reconstruction_loss"] + 0.1 * logs["commitment_loss"] + 2.0 * logs["codebook_loss"]
    torch.testing.assert_close(loss, torch.as_tensor(expected), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match=r"entropy_weight=0.3 given, but quantizer='vq' has no such term"):
        build_engine(lfq_run(tmp_path / "refused", model=plain, quantizer_loss_weights=dict(entropy_weight=0.3)))


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_a_resumed_lfq_run_anneals_as_the_uninterrupted_one(tmp_path):
    """The schedule is a function of the optimiser step, which a checkpoint restores: resumed at
    step 2 of 4 annealing steps, the run ends with the uninterrupted run's weights, bit for bit."""
    from helpers import reset_accelerate_state
    from safetensors.torch import load_file

    from latentcode.training import train

    train(lfq_run(tmp_path / "uninterrupted"))
    reset_accelerate_state()
    train(lfq_run(tmp_path / "resumed", resume_from_checkpoint=str(tmp_path / "uninterrupted" / "checkpoint-2")))
    reset_accelerate_state()
    unannealed = dict(entropy_annealing_steps=0)
    train(lfq_run(tmp_path / "unannealed", quantizer_loss_weights=unannealed, max_train_steps=6))
    final = {
        name: load_file(tmp_path / name / "model.safetensors") for name in ("uninterrupted", "resumed", "unannealed")
    }
    assert final["uninterrupted"].keys() == final["resumed"].keys()
    for key, value in final["uninterrupted"].items():
        torch.testing.assert_close(final["resumed"][key], value, rtol=0, atol=0, msg=key)
    # The annealing shapes this run: without it the weights differ.
    assert any(not torch.equal(final["unannealed"][key], value) for key, value in final["uninterrupted"].items())
