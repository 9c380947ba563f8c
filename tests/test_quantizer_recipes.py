"""The quantizers of today's best tokenizers: rotation trick, SimVQ, BSQ, bounded LFQ entropy.

Each is compared with vector-quantize-pytorch (`rotate_to`, `VectorQuantize`, `ResidualVQ`,
`SimVQ`, `LFQ` / `LFQ(spherical=True)`) on the same inputs and weights: indices, outputs,
losses and the gradients they send to the latents and the codebook.
"""

from __future__ import annotations

import pytest
import torch
from helpers import peak_memory_growth, tiny_config

import latentcode
from latentcode.modules.quantizers import (
    BinarySphericalQuantizer,
    LookupFreeQuantizer,
    ResidualVectorQuantizer,
    SimVectorQuantizer,
    VectorQuantizer,
)
from latentcode.modules.quantizers.entropy import annealed_weight, bit_entropy_terms, bit_groups
from latentcode.modules.quantizers.gradients import rotation_trick

vqp = pytest.importorskip("vector_quantize_pytorch")


def channels_last(latents: torch.Tensor) -> torch.Tensor:
    """`[B, D, h, w]` -> `[B, h*w, D]`, the layout vector-quantize-pytorch's VQ classes take."""
    return latents.flatten(2).transpose(1, 2)


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
        ours = ResidualVectorQuantizer(
            3, 32, 4, commitment_weight=0.25, codebook_weight=0.25, gradient_estimator="rotation"
        ).train()
        for depth, (level, layer) in enumerate(zip(ours.levels, theirs.layers)):
            level.codebook.data.copy_(layer._codebook.embed[0] / (depth + 1))  # finer codes deeper
            layer._codebook.embed.data.copy_(level.codebook.data[None])
        codebook_parameters = [
            (level.codebook, layer._codebook.embed) for level, layer in zip(ours.levels, theirs.layers)
        ]
    else:
        theirs = vqp.VectorQuantize(dim=4, codebook_size=32, **options).train()
        ours = VectorQuantizer(32, 4, commitment_weight=0.25, codebook_weight=0.25, gradient_estimator="rotation")
        ours.train()
        ours.codebook.data.copy_(theirs._codebook.embed[0])
        codebook_parameters = [(ours.codebook, theirs._codebook.embed)]
    # vector-quantize-pytorch's commitment loss ||z - e||^2 trains both sides with one weight:
    # ours with codebook and commitment weights equal is the same objective.
    latents = torch.randn(2, 4, 5, 6)
    upstream = torch.randn(2, 4, 5, 6)
    q_ours, i_ours, loss_ours, grad_ours = run_with_gradients(
        ours, latents, upstream, lambda out: (out.quantized, out.indices, out.loss)
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
    ours = SimVectorQuantizer(64, 4).train()  # defaults: codebook 1, commitment 0.25, rotation trick
    ours.frozen_basis.copy_(theirs.frozen_codebook)
    ours.codebook_transform.weight.data.copy_(theirs.code_transform.weight)
    latents, upstream = torch.randn(2, 4, 5, 6), torch.randn(2, 4, 5, 6)
    q_ours, i_ours, loss_ours, grad_ours = run_with_gradients(
        ours, latents, upstream, lambda out: (out.quantized, out.indices, out.loss)
    )
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
    ours = quantizer(dim, commitment_weight=0.25, entropy_weight=0.1, temperature=temperature).train()
    latents = torch.randn(2, dim, 5, 6, generator=torch.Generator().manual_seed(1)) * 0.5
    upstream = torch.randn(2, dim, 5, 6)
    q_ours, i_ours, loss_ours, grad_ours = run_with_gradients(
        ours, latents, upstream, lambda out: (out.quantized, out.indices, out.loss)
    )
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
        quantizer(latents[:1, :, :2, :2]).loss.backward()  # warm up libraries
    """
    growth = peak_memory_growth(setup, "quantizer(latents).loss.backward()")
    assert growth < 2 * 2**30, f"forward + backward grew memory by {growth / 2**30:.2f} GiB"


def test_entropy_weight_annealing_schedule_and_its_saved_step(tmp_path):
    assert annealed_weight(0.1, 0, 100, 3.0) == pytest.approx(0.3)
    assert annealed_weight(0.1, 50, 100, 3.0) == pytest.approx(0.2)
    assert annealed_weight(0.1, 100, 100, 3.0) == pytest.approx(0.1)
    assert annealed_weight(0.1, 5000, 100, 3.0) == pytest.approx(0.1)
    assert annealed_weight(0.1, 0, 0, 3.0) == pytest.approx(0.1)
    config = tiny_config(
        "vqvae",
        quantizer="bsq",
        codebook_size=16,
        lfq_entropy_annealing_steps=4,
        lfq_entropy_annealing_start_factor=3.0,
    )
    model = latentcode.VQVAEModel(config).train()
    pixels = torch.rand(2, 3, 16, 16) * 2 - 1
    weights = []
    for _ in range(3):
        weights.append(model.quantizer.current_entropy_weight)
        output = model.quantizer(model._bottleneck_input(pixels))
        assert output.loss.item() == pytest.approx(
            0.25 * output.commitment_loss.item() + weights[-1] * output.entropy_loss.item(), rel=1e-5
        )
    assert weights == pytest.approx([0.3, 0.25, 0.2])
    model.encode(pixels)  # a pure call: does not advance the schedule
    assert int(model.quantizer.training_steps) == 3
    model.save_pretrained(tmp_path)
    loaded = latentcode.VQVAEModel.from_pretrained(tmp_path)
    assert int(loaded.quantizer.training_steps) == 3
    assert loaded.quantizer.current_entropy_weight == pytest.approx(0.15)


def test_config_rejects_rotation_without_a_codebook():
    with pytest.raises(ValueError, match="no option 'gradient_estimator' for quantizer='fsq'"):
        latentcode.VQVAEConfig(quantizer="fsq", quantizer_config={"gradient_estimator": "rotation"})
    with pytest.raises(ValueError, match="gradient_estimator must be one of"):
        latentcode.VQVAEConfig(quantizer_config={"gradient_estimator": "gumbel"})
    with pytest.raises(ValueError, match="for a lookup-free quantizer codebook_size must be a power of 2"):
        latentcode.VQVAEConfig(quantizer="bsq", codebook_size=1000)
