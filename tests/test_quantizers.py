"""Quantizers: exact search, codebook maintenance, FSQ / LFQ / residual VQ, model integration.

References: brute-force distances, hand-computed EMA updates, diffusers' `VectorQuantizer`,
vector-quantize-pytorch's `VectorQuantize` / `FSQ` / `LFQ`, scikit-learn's `KMeans`, and a
short training run on patches of skimage.data photos.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import VQVAE_RECIPES, peak_memory_growths, tiny_config, tiny_model

import latentcode
from latentcode.modules.quantizers import (
    CodebookUsageWindow,
    FiniteScalarQuantizer,
    LookupFreeQuantizer,
    QuantizerLossWeights,
    ResidualVectorQuantizer,
    VectorQuantizer,
    kmeans,
    nearest_codebook_indices,
)


def brute_force_indices(rows: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    return torch.cdist(rows.double(), codebook.double()).argmin(dim=1)


def assert_nearest(rows: torch.Tensor, codebook: torch.Tensor, indices: torch.Tensor) -> None:
    """Indices equal the float64 brute force, except on ties closer than fp32 can resolve."""
    expected = brute_force_indices(rows, codebook)
    distances = torch.cdist(rows.double(), codebook.double())
    chosen = distances.gather(1, indices[:, None]).squeeze(1)
    best = distances.gather(1, expected[:, None]).squeeze(1)
    differ = indices != expected
    assert differ.float().mean() < 1e-3
    torch.testing.assert_close(chosen[differ], best[differ], rtol=1e-5, atol=1e-5)


# -- exact chunked search ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "num_vectors, num_codes, dim, max_block_elements, dtype",
    [
        (1000, 64, 8, None, torch.float32),  # one code block
        (777, 1000, 8, 256, torch.float32),  # codes split into blocks, a partial last row and code block
        (300, 4096, 64, 2**12, torch.float32),
        (5, 3, 1, 1, torch.float32),  # one distance per block
        (500, 300, 16, 37, torch.float64),  # a block size that divides nothing
        (500, 300, 16, 1000, torch.float64),
        (500, 300, 16, 2**20, torch.float64),  # everything in one block
    ],
)
def test_search_matches_brute_force(num_vectors, num_codes, dim, max_block_elements, dtype):
    generator = torch.Generator().manual_seed(num_codes)
    rows = torch.randn(num_vectors, dim, generator=generator, dtype=dtype)
    codebook = torch.randn(num_codes, dim, generator=generator, dtype=dtype)
    indices = nearest_codebook_indices(rows, codebook, max_block_elements)
    assert indices.dtype == torch.long and indices.shape == (num_vectors,)
    if dtype == torch.float64:  # no ties to resolve at this precision: exactly the brute force
        assert torch.equal(indices, brute_force_indices(rows, codebook))
    else:
        assert_nearest(rows, codebook, indices)


def test_search_breaks_ties_towards_the_lowest_index_across_blocks():
    codebook = torch.tensor([[1.0], [5.0], [1.0], [1.0]])  # codes 0, 2, 3 are the same point
    rows = torch.tensor([[0.9], [1.2], [4.0]])
    for block in (1, 2, 4):
        assert nearest_codebook_indices(rows, codebook, block).tolist() == [0, 0, 1]


@pytest.mark.single_thread
def test_search_peak_memory_is_bounded_by_the_block_not_n_times_k():
    """N = 4096 vectors against K = 2^18 codes (D = 8): the distance matrix would be 4 GiB. The
    same measure, in the same process, sees a materialised 4096 x 16384 block (256 MiB), so it is
    able to fail."""
    setup = (
        "from latentcode.modules.quantizers import nearest_codebook_indices\n"
        "torch.manual_seed(0)\n"
        "rows, codebook = torch.randn(4096, 8), torch.randn(2**18, 8)\n"
        "nearest_codebook_indices(rows[:16], codebook[:16])  # warm up libraries"
    )
    search_growth, matrix_growth = peak_memory_growths(
        setup, ["nearest_codebook_indices(rows, codebook)", "(rows @ codebook[:16384].T).min()"]
    )
    assert search_growth < 64 * 2**20, f"search grew peak memory by {search_growth / 2**20:.0f} MiB"
    assert matrix_growth > 200 * 2**20, f"a 256 MiB matrix grew peak memory by {matrix_growth / 2**20:.0f} MiB"


def test_plain_vq_matches_diffusers_vector_quantizer():
    from diffusers.models.autoencoders.vae import VectorQuantizer as DiffusersVectorQuantizer

    torch.manual_seed(0)
    theirs = DiffusersVectorQuantizer(64, 4, beta=0.25, legacy=False, sane_index_shape=True)
    ours = VectorQuantizer(64, 4)
    ours.load_state_dict({"codebook": theirs.embedding.weight.detach().clone()})
    latents = torch.randn(2, 4, 6, 5) * 0.1
    their_quantized, their_loss, (_, _, their_indices) = theirs(latents)
    output = ours(latents)
    assert torch.equal(output.indices, their_indices)
    torch.testing.assert_close(output.quantized, their_quantized)
    loss, _ = QuantizerLossWeights(commitment_weight=0.25, codebook_weight=1.0)(output.terms)
    torch.testing.assert_close(loss, their_loss)


# -- VQ training behaviour ----------------------------------------------------------------------

QUANTIZERS = {
    "vq": lambda: VectorQuantizer(16, 4),
    "vq_ema_kmeans_restart": lambda: VectorQuantizer(
        16, 4, codebook_ema=True, codebook_ema_decay=0.9, kmeans_init=True, dead_code_restart=True
    ),
    "vq_cosine": lambda: VectorQuantizer(16, 4, l2_normalize=True),
    "fsq": lambda: FiniteScalarQuantizer([5, 4, 3, 3]),
    "lfq": lambda: LookupFreeQuantizer(4),
    "residual_vq": lambda: ResidualVectorQuantizer(
        3, 16, 4, quantizer_dropout=0.5, codebook_ema=True, codebook_ema_decay=0.9, kmeans_init=True
    ),
}


# Recipes whose straight-through estimator copies the decoder's gradient unchanged (d quantized /
# d latents = I); the others reshape it (the rotation trick, FSQ's bound, a sphere projection).
IDENTITY_STRAIGHT_THROUGH = {
    "vq",
    "vq-no-ema-no-kmeans",
    "lfq",
    "lfq-grouped-entropy",
    "residual_vq",
    "residual_vq-dropout",
}


@pytest.mark.parametrize("recipe", sorted(VQVAE_RECIPES))
def test_straight_through_gradient_reaches_the_encoder(recipe):
    model = tiny_model("vqvae", **VQVAE_RECIPES[recipe]).train()
    pixels = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    latents = model._bottleneck_input(pixels)
    latents.retain_grad()
    quantized = model.quantizer(latents).quantized
    quantized.retain_grad()
    F.mse_loss(model._decode_code(quantized), pixels).backward()
    # The reconstruction loss alone reaches the encoder's first layer ...
    assert model.encoder.conv_in.weight.grad.abs().sum() > 0
    if recipe in IDENTITY_STRAIGHT_THROUGH:
        torch.testing.assert_close(latents.grad, quantized.grad)
    else:
        assert not torch.allclose(latents.grad, quantized.grad)
    # ... and never the quantizer: the codebook learns only from its own loss terms.
    assert all(parameter.grad is None for parameter in model.quantizer.parameters())


@pytest.mark.parametrize("name", sorted(QUANTIZERS))
def test_update_codebook_false_is_pure_in_training_mode(name):
    """The pure path changes no parameter, buffer or usage statistic and leaves the module in
    training mode; it quantises as the codebook stands (what eval mode does)."""
    torch.manual_seed(0)
    quantizer = QUANTIZERS[name]().train()
    quantizer(torch.randn(2, 4, 6, 6))  # a training step: k-means init, EMA, usage window
    state = {key: value.clone() for key, value in quantizer.state_dict().items()}
    usage = [module.usage.counts.clone() for module in quantizer.modules() if hasattr(module, "usage")]
    latents = torch.randn(2, 4, 6, 6) * 2
    pure = [quantizer(latents, update_codebook=False) for _ in range(3)]
    assert quantizer.training
    assert all(torch.equal(value, state[key]) for key, value in quantizer.state_dict().items())
    assert all(
        torch.equal(module.usage.counts, counts)
        for module, counts in zip([m for m in quantizer.modules() if hasattr(m, "usage")], usage)
    )
    expected = quantizer.eval()(latents)
    for output in pure:
        assert torch.equal(output.indices, expected.indices)
        assert torch.equal(output.quantized, expected.quantized)


def test_ema_update_equals_hand_computation():
    quantizer = VectorQuantizer(3, 2, codebook_ema=True, codebook_ema_decay=0.5, codebook_ema_epsilon=0.1).train()
    with torch.no_grad():
        quantizer.codebook.copy_(torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]]))
        quantizer.ema_codebook_sum.copy_(quantizer.codebook)  # sizes are 1: the codes are their sums
    rows = torch.tensor([[1.0, 0.0], [0.0, 1.0], [9.0, 1.0], [8.0, 2.0]])  # codes 0, 0, 1, 1
    output = quantizer(rows[:, :, None, None])
    assert output.indices.flatten().tolist() == [0, 0, 1, 1]
    # N <- 0.5 * 1 + 0.5 * n = [1.5, 1.5, 0.5], total 3.5
    # S <- 0.5 * e + 0.5 * s = [[0.5, 0.5], [13.5, 1.5], [0, 5]]
    # Laplace: N~ = (N + 0.1) / (3.5 + 3 * 0.1) * 3.5
    sizes = torch.tensor([1.5, 1.5, 0.5])
    sums = torch.tensor([[0.5, 0.5], [13.5, 1.5], [0.0, 5.0]])
    smoothed = (sizes + 0.1) / 3.8 * 3.5
    torch.testing.assert_close(quantizer.ema_cluster_size, sizes)
    torch.testing.assert_close(quantizer.ema_codebook_sum, sums)
    torch.testing.assert_close(quantizer.codebook.data, sums / smoothed[:, None])
    # The codebook takes no gradient and the loss is the commitment term alone.
    assert not quantizer.codebook.requires_grad
    assert set(output.terms) == {"commitment"}
    torch.testing.assert_close(QuantizerLossWeights()(output.terms)[0], 0.25 * output.terms["commitment"])


def test_ema_update_matches_vector_quantize_pytorch():
    from vector_quantize_pytorch import VectorQuantize

    torch.manual_seed(0)
    ours = VectorQuantizer(8, 4, codebook_ema=True, codebook_ema_decay=0.8, codebook_ema_epsilon=1e-5).train()
    theirs = VectorQuantize(dim=4, codebook_size=8, decay=0.8, eps=1e-5).train()
    with torch.no_grad():
        theirs._codebook.embed.copy_(ours.codebook[None])
        theirs._codebook.embed_avg.copy_(ours.ema_codebook_sum[None])
        theirs._codebook.cluster_size.copy_(ours.ema_cluster_size[None])
    for step in range(3):
        latents = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(step)) * 0.3
        output = ours(latents)
        _, their_indices, _ = theirs(latents.permute(0, 2, 3, 1).reshape(2, 9, 4))
        assert torch.equal(output.indices.reshape(2, 9), their_indices)
        torch.testing.assert_close(ours.codebook.data, theirs._codebook.embed[0])


def test_dead_codes_are_reseeded_from_the_current_batch_once_per_window():
    torch.manual_seed(0)
    quantizer = VectorQuantizer(4, 2, dead_code_restart=True, usage_window=8).train()
    far_codes = torch.tensor([[100.0, 100.0], [-100.0, 100.0]])
    with torch.no_grad():
        quantizer.codebook.copy_(torch.cat([torch.tensor([[0.0, 0.0], [1.0, 1.0]]), far_codes]))
    rows = torch.rand(8, 2)[:, :, None, None]  # near codes 0 and 1 only
    quantizer(rows)  # fills the window: codes 2 and 3 unused
    assert quantizer.usage.unused_codes().tolist() == [False, False, True, True]
    assert torch.equal(quantizer.codebook.data[2:], far_codes)  # restarts wait for the next batch
    batch = torch.rand(5, 2)[:, :, None, None] + 3
    quantizer(batch)
    reseeded = quantizer.codebook.data[2:]
    batch_rows = batch.flatten(1)
    assert all((batch_rows == code).all(dim=1).any() for code in reseeded)
    # Used codes are left alone (no EMA, no optimiser step here).
    torch.testing.assert_close(quantizer.codebook.data[:2], torch.tensor([[0.0, 0.0], [1.0, 1.0]]))


def test_ema_expiry_reseeds_codes_below_the_threshold_every_step_from_distinct_rows():
    torch.manual_seed(0)
    quantizer = VectorQuantizer(
        6, 2, codebook_ema=True, codebook_ema_decay=0.5, dead_code_restart=True, dead_code_threshold=0.5
    ).train()
    codes = torch.tensor([[0.0, 0.0], [1.0, 1.0], [9.0, 9.0], [-9.0, 9.0], [9.0, -9.0], [-9.0, -9.0]])
    sizes = torch.tensor([6.0, 5.0, 0.2, 0.1, 0.3, 0.4])  # mean 2: threshold 0.5 expires codes 2-5
    with torch.no_grad():
        quantizer.codebook.copy_(codes)
        quantizer.ema_cluster_size.copy_(sizes)
        quantizer.ema_codebook_sum.copy_(codes * sizes[:, None])
    batch = torch.rand(3, 2)[:, :, None, None] * 0.1 + 3  # 3 rows for 4 dead codes
    quantizer(batch)
    rows = batch.flatten(1)
    moved = [k for k in range(6) if not torch.allclose(quantizer.codebook.data[k], codes[k], atol=1e-3)]
    assert len(moved) == 3 and set(moved) <= {2, 3, 4, 5}
    # Each re-seeded code is a distinct batch row (then one EMA step that keeps it there: each
    # row is its own code's only input), and starts at the mean cluster size (2).
    reseeded = quantizer.codebook.data[moved]
    assert len({tuple(code.tolist()) for code in reseeded}) == 3
    for code in reseeded:
        assert (rows - code).norm(dim=1).min() < 1e-3  # (up to the Laplace smoothing)
    expected_sizes = torch.full((3,), 0.5 * 2.0 + 0.5 * 1)  # one EMA step with one hit each
    torch.testing.assert_close(quantizer.ema_cluster_size[moved], expected_sizes)
    still_dead = ({2, 3, 4, 5} - set(moved)).pop()
    assert quantizer.ema_cluster_size[still_dead] < 0.5 * quantizer.ema_cluster_size.mean()


@pytest.mark.parametrize("threshold, least_usage", [(0.5, 0.99), (0.0, None)])
def test_ema_expiry_keeps_a_large_codebook_in_use_within_a_fraction_of_the_window(threshold, least_usage):
    """4,096 codes, 40 batches of 1,024 tokens (fewer than the 65,536-token usage window): k-means
    on the first batch leaves 3,072 codes empty; EMA expiry revives them at once, the window
    test (threshold 0) only after a whole window."""
    torch.manual_seed(0)
    quantizer = VectorQuantizer(
        4096,
        4,
        codebook_ema=True,
        codebook_ema_decay=0.99,
        kmeans_init=True,
        dead_code_restart=True,
        dead_code_threshold=threshold,
    ).train()
    generator = torch.Generator().manual_seed(0)
    for _ in range(40):
        quantizer(torch.randn(16, 4, 8, 8, generator=generator))
    held_out = quantizer(torch.randn(64, 4, 32, 32, generator=generator), update_codebook=False).indices
    usage = torch.unique(held_out).numel() / 4096
    if least_usage is None:
        assert usage < 0.8, usage
    else:
        assert usage >= least_usage, usage


def test_dead_code_threshold_is_validated_and_old_configs_get_the_default(tmp_path):
    config = tiny_config("vqvae", quantizer_config={"dead_code_threshold": 1.5})  # a config holds values
    with pytest.raises(ValueError, match=r"dead_code_threshold must be in \[0, 1\), got 1.5"):
        latentcode.VQVAEModel(config)  # the quantizer's constructor checks them
    with pytest.raises(ValueError, match=r"dead_code_threshold must be in \[0, 1\), got -0.1"):
        VectorQuantizer(8, 2, codebook_ema=True, codebook_ema_decay=0.9, dead_code_threshold=-0.1)
    model = latentcode.VQVAEModel(tiny_config("vqvae", codebook_size=16))
    assert model.quantizer.expires_by_ema and model.quantizer.dead_code_threshold == 0.5
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    saved["quantizer_config"] = dict(codebook_ema=True, kmeans_init=True)  # as written before the threshold existed
    (tmp_path / "config.json").write_text(json.dumps(saved))
    loaded = latentcode.VQVAEModel.from_pretrained(tmp_path)
    assert loaded.config.quantizer_config["dead_code_threshold"] == 0.5 and loaded.quantizer.expires_by_ema


def test_kmeans_init_runs_once_and_matches_sklearn_lloyd():
    from sklearn.cluster import KMeans

    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(16, 3, generator=generator) * 5
    rows = centres.repeat(64, 1) + 0.5 * torch.randn(1024, 3, generator=generator)
    torch.manual_seed(0)
    start = rows[torch.randperm(1024)[:16]]  # the initial centroids kmeans draws with this seed
    torch.manual_seed(0)
    centroids, sizes = kmeans(rows, 16, iterations=5)
    reference = KMeans(16, init=start.double().numpy(), n_init=1, max_iter=5, tol=0, algorithm="lloyd")
    reference.fit(rows.double().numpy())
    torch.testing.assert_close(centroids.double(), torch.from_numpy(reference.cluster_centers_), atol=1e-4, rtol=1e-4)
    assert sizes.sum() == 1024
    sklearn = reference.inertia_

    quantizer = VectorQuantizer(16, 3, codebook_ema=True, codebook_ema_decay=0.99, kmeans_init=True).train()
    quantizer(rows[:, :, None, None])
    assert bool(quantizer.initialized)
    inertia = torch.cdist(rows, quantizer.codebook.data).min(dim=1).values.pow(2).sum()
    assert inertia <= 2 * sklearn
    # EMA state consistent with the new codes: sums / sizes reproduce them.
    torch.testing.assert_close(
        quantizer.ema_codebook_sum / quantizer.ema_cluster_size[:, None], quantizer.codebook.data
    )
    codebook = quantizer.codebook.data.clone()
    quantizer.codebook_ema_decay = 0.0  # make any later change visible
    quantizer(rows[:, :, None, None] + 100)
    assert not torch.allclose(quantizer.codebook.data, codebook)
    quantizer.load_state_dict({**quantizer.state_dict(), "codebook": codebook})
    quantizer.eval()(rows[:, :, None, None] + 100)
    assert torch.equal(quantizer.codebook.data, codebook)  # eval mode and no second k-means


def test_cosine_codes_are_unit_vectors_and_indices_maximise_cosine_similarity():
    torch.manual_seed(0)
    quantizer = VectorQuantizer(32, 4, l2_normalize=True, codebook_ema=True, codebook_ema_decay=0.9).train()
    latents = torch.randn(2, 4, 5, 5) * 3
    output = quantizer(latents)
    torch.testing.assert_close(output.quantized.norm(dim=1), torch.ones(2, 5, 5))
    rows = latents.permute(0, 2, 3, 1).reshape(-1, 4)
    codes = quantizer.indices_to_codes(torch.arange(32).view(1, 1, 32)).view(4, 32).T
    torch.testing.assert_close(codes.norm(dim=1), torch.ones(32))
    expected = (F.normalize(rows, dim=1) @ codes.T).argmax(dim=1)
    assert torch.equal(quantizer(latents, update_codebook=False).indices.flatten(), expected)


def test_quantisation_runs_in_fp32_under_autocast():
    torch.manual_seed(0)
    quantizer = VectorQuantizer(256, 8).eval()
    latents = torch.randn(2, 8, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = quantizer(latents.bfloat16())
    assert output.quantized.dtype == torch.float32
    assert torch.equal(output.indices, quantizer(latents.bfloat16().float(), update_codebook=False).indices)


def test_usage_window_equals_brute_force_over_the_last_tokens():
    usage = CodebookUsageWindow(codebook_size=10, window=50)
    generator = torch.Generator().manual_seed(0)
    history = []
    for size in (7, 30, 13, 1, 49, 64, 3):
        indices = torch.randint(0, 10, (size,), generator=generator) // torch.randint(1, 4, (1,), generator=generator)
        usage.update(indices)
        history.extend(indices.tolist())
        counts = torch.bincount(torch.tensor(history[-50:]), minlength=10)
        assert torch.equal(usage.counts, counts)
        torch.testing.assert_close(usage.fraction_used(), (counts > 0).float().mean())
        probabilities = counts[counts > 0] / counts.sum()
        torch.testing.assert_close(usage.perplexity(), torch.exp(-(probabilities * probabilities.log()).sum()))


# -- FSQ, LFQ, residual VQ ----------------------------------------------------------------------


def test_fsq_round_trip_brute_force_and_vector_quantize_pytorch():
    from vector_quantize_pytorch import FSQ

    quantizer = FiniteScalarQuantizer([8, 5, 5, 5])
    assert quantizer.codebook_size == 1000
    all_indices = torch.arange(1000).view(1, 1, 1000)
    codes = quantizer.indices_to_codes(all_indices)  # [1, 4, 1, 1000]: the implicit codebook
    assert torch.equal(quantizer.grid_codes_to_indices(codes), all_indices)
    implicit = codes.reshape(4, 1000).T
    assert implicit.unique(dim=0).shape[0] == 1000 and implicit.abs().max() == 1

    latents = torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(0)) * 2
    output = quantizer(latents)
    assert torch.equal(quantizer.indices_to_codes(output.indices), output.quantized)
    assert torch.equal(quantizer(latents, update_codebook=False).indices, output.indices)
    bounded = quantizer._bound(latents.permute(0, 2, 3, 1).reshape(-1, 4)) / torch.tensor([4.0, 2, 2, 2])
    assert_nearest(bounded, implicit, output.indices.flatten())

    theirs = FSQ([8, 5, 5, 5])
    their_codes, their_indices = theirs(latents.permute(0, 2, 3, 1).reshape(2, 36, 4))
    assert torch.equal(output.indices.reshape(2, 36), their_indices)
    torch.testing.assert_close(output.quantized.permute(0, 2, 3, 1).reshape(2, 36, 4), their_codes)


def test_lfq_round_trip_indices_and_entropy_loss_match_vector_quantize_pytorch():
    from vector_quantize_pytorch import LFQ

    quantizer = LookupFreeQuantizer(5).train()
    all_indices = torch.arange(32).view(1, 1, 32)
    codes = quantizer.indices_to_codes(all_indices)
    assert set(codes.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(quantizer(codes, update_codebook=False).indices, all_indices)
    latents = torch.randn(2, 5, 4, 4, generator=torch.Generator().manual_seed(0)) * 0.05
    output = quantizer(latents)
    rows = latents.permute(0, 2, 3, 1).reshape(-1, 5)
    assert_nearest(rows, codes.reshape(5, 32).T, output.indices.flatten())

    theirs = LFQ(dim=5, codebook_size=32, entropy_loss_weight=1.0, commitment_loss_weight=0.0).train()
    their_codes, their_indices, their_loss = theirs(latents.permute(0, 2, 3, 1).reshape(2, 16, 5))
    assert torch.equal(output.indices.reshape(2, 16), their_indices)
    torch.testing.assert_close(output.quantized.permute(0, 2, 3, 1).reshape(2, 16, 5), their_codes)
    entropy, _ = QuantizerLossWeights(entropy_weight=1.0, commitment_weight=0.0)(output.terms)
    torch.testing.assert_close(entropy, their_loss, rtol=1e-3, atol=1e-3)


def test_residual_vq_levels_quantise_residuals_greedily_and_round_trip():
    torch.manual_seed(0)
    quantizer = ResidualVectorQuantizer(3, 32, 4).eval()
    latents = torch.randn(2, 4, 5, 5)
    output = quantizer(latents)
    assert output.indices.shape == (2, 5, 5, 3)
    residual = latents.permute(0, 2, 3, 1).reshape(-1, 4)
    for depth, level in enumerate(quantizer.levels):
        expected = brute_force_indices(residual, level.codebook.data)
        assert torch.equal(output.indices[..., depth].flatten(), expected)
        residual = residual - level.codebook.data[expected]
    codes = quantizer.indices_to_codes(output.indices)
    torch.testing.assert_close(codes, output.quantized)
    # Each level reduces the error.
    errors = [
        (latents - quantizer.indices_to_codes(output.indices.masked_fill(torch.arange(3) >= depth, -1))).pow(2).mean()
        for depth in range(4)
    ]
    assert errors == sorted(errors, reverse=True)
    for depth, level in enumerate(quantizer.levels):  # every level's own round trip is exact
        level_indices = output.indices[..., depth]
        assert torch.equal(level(level.indices_to_codes(level_indices), update_codebook=False).indices, level_indices)
    # The summed code re-encodes to the same tuple when later levels are finer than the gaps
    # between earlier codes, as training makes them (each level fits a smaller residual).
    with torch.no_grad():
        for depth, level in enumerate(quantizer.levels):
            level.codebook.mul_(0.02**depth)
    tokens = torch.randint(0, 32, (2, 5, 5, 3))
    assert torch.equal(quantizer(quantizer.indices_to_codes(tokens), update_codebook=False).indices, tokens)


def test_residual_vq_dropout_uses_a_prefix_of_the_levels():
    torch.manual_seed(0)
    quantizer = ResidualVectorQuantizer(4, 8, 2, quantizer_dropout=1.0).train()
    depths = set()
    for _ in range(20):
        indices = quantizer(torch.randn(1, 2, 3, 3)).indices
        used = (indices >= 0).all(dim=(0, 1, 2))
        depth = int(used.sum())
        assert used.tolist() == [True] * depth + [False] * (4 - depth)
        depths.add(depth)
    assert depths == {1, 2, 3, 4}


# -- model integration --------------------------------------------------------------------------


def test_default_config_uses_the_recipe_that_keeps_codes_alive():
    config = latentcode.VQVAEConfig()
    assert (config.quantizer, config.codebook_size, config.codebook_dim) == ("vq", 1024, 4)
    assert config.quantizer_config == {
        "codebook_ema": True,
        "kmeans_init": True,
        "dead_code_restart": True,
        "dead_code_threshold": 0.5,
    }
    quantizer = latentcode.VQVAEModel(tiny_config("vqvae", codebook_size=64)).quantizer
    assert quantizer.codebook_ema and quantizer.kmeans_init and quantizer.dead_code_restart


def test_config_derives_sizes_of_fsq_lfq_and_residual_vq_and_rejects_contradictions():
    fsq = tiny_config("vqvae", quantizer="fsq", quantizer_config={"levels": [8, 6, 5]})
    assert (fsq.codebook_size, fsq.codebook_dim) == (240, 3)
    lfq = tiny_config("vqvae", quantizer="lfq", codebook_size=2**12)
    assert lfq.codebook_dim == 12
    assert tiny_config("vqvae", quantizer="residual_vq").num_quantizers == 4
    with pytest.raises(ValueError, match="prod\\(levels\\)=240"):
        tiny_config("vqvae", quantizer="fsq", quantizer_config={"levels": [8, 6, 5]}, codebook_size=256)
    with pytest.raises(ValueError, match="power of 2"):
        tiny_config("vqvae", quantizer="lfq", codebook_size=1000)
    with pytest.raises(ValueError, match=r"num_quantizers is for quantizer in \['residual_vq'\], got quantizer='vq'"):
        tiny_config("vqvae", num_quantizers=2)
    with pytest.raises(ValueError, match="quantizer must be one of"):
        tiny_config("vqvae", quantizer="gumbel")


def _train_three_steps(model: latentcode.VQVAEModel, pixels: torch.Tensor) -> None:
    """Three Adam steps on the model's own loss; every gradient stays finite."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(3):
        model.train()(pixels).loss.backward()
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


@pytest.mark.single_thread
@pytest.mark.parametrize("recipe", sorted(VQVAE_RECIPES))
def test_every_quantizer_trains_saves_loads_and_round_trips_indices(tmp_path, recipe):
    from safetensors.torch import load_file

    torch.manual_seed(0)
    model = latentcode.VQVAEModel(tiny_config("vqvae", **VQVAE_RECIPES[recipe]))
    pixels = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    _train_three_steps(model, pixels)
    encoded = model.encode(pixels)
    levels = (model.config.num_quantizers,) if model.config.quantizer == "residual_vq" else ()
    assert encoded.indices.shape == (2, 8, 8, *levels) and encoded.indices.dtype == torch.long
    # Indices -> codes -> indices: the codes are the quantised latents, and they quantise to themselves.
    codes = model.quantizer.indices_to_codes(encoded.indices)
    torch.testing.assert_close(codes, encoded.quantized, atol=1e-5, rtol=1e-5)
    # Not for residual sums (they re-encode exactly only once trained) nor FSQ (its tanh bound
    # moves a code that is already on the grid).
    if model.config.quantizer not in ("residual_vq", "fsq"):
        assert torch.equal(model.quantizer(codes, update_codebook=False).indices, encoded.indices)

    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    loaded = latentcode.VQVAEModel.from_pretrained(tmp_path).eval()
    for name, tensor in model.state_dict().items():  # EMA buffers and `initialized` included
        assert name in saved and torch.equal(loaded.state_dict()[name], tensor), name
    saved_fields = {key: value for key, value in model.config.to_dict().items() if key != "_name_or_path"}
    assert saved_fields.items() <= loaded.config.to_dict().items()
    assert torch.equal(loaded.encode(pixels).indices, encoded.indices)
    from_indices = loaded.decode_indices(encoded.indices).sample
    assert torch.equal(from_indices, model.decode_indices(encoded.indices).sample)
    torch.testing.assert_close(from_indices, loaded.decode(encoded.latents).sample)
    if model.config.quantizer == "vq" and model.config.quantizer_config["codebook_ema"]:
        assert {"quantizer.ema_cluster_size", "quantizer.ema_codebook_sum", "quantizer.initialized"} <= set(saved)
        assert bool(loaded.quantizer.initialized)


def test_codebook_and_commitment_losses_move_the_right_parameters():
    quantizer = tiny_model("vqvae", quantizer_config={"codebook_ema": False}).quantizer
    latents = torch.randn(2, 4, 3, 3, requires_grad=True)
    output = quantizer(latents)
    output.terms["codebook"].backward(retain_graph=True)
    assert latents.grad is None and quantizer.codebook.grad.abs().sum() > 0
    quantizer.codebook.grad = None
    output.terms["commitment"].backward()
    assert quantizer.codebook.grad is None and latents.grad.abs().sum() > 0
    codes = quantizer.codebook[output.indices].permute(0, 3, 1, 2)
    torch.testing.assert_close(output.terms["commitment"], ((latents - codes) ** 2).mean())
    loss, _ = QuantizerLossWeights()(output.terms)
    torch.testing.assert_close(loss, output.terms["codebook"] + 0.25 * output.terms["commitment"])


def test_encode_indices_are_the_nearest_codes_and_decode_from_indices():
    model = tiny_model("vqvae", codebook_size=64, codebook_dim=6)
    with torch.no_grad():
        model.quantizer.codebook.normal_()
    pixels = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        encoded = model.encode(pixels)
        flat = encoded.latents.permute(0, 2, 3, 1).reshape(-1, 6)
        expected = torch.cdist(flat.double(), model.quantizer.codebook.double()).argmin(dim=1)
        assert torch.equal(encoded.indices.flatten(), expected)
        assert len(encoded.indices.unique()) > 1
        from_indices = model.decode_indices(encoded.indices).sample
        from_latents = model.decode(encoded.latents).sample
        # decode() quantises with the straight-through form latents + (codes - latents), which
        # equals the codes up to float rounding.
        torch.testing.assert_close(from_indices, from_latents, atol=1e-5, rtol=1e-5)
        assert model.codebook_size == 64


def test_encode_and_decode_never_update_the_codebook_only_forward_does():
    model = tiny_model("vqvae").train()  # the default recipe: k-means init, EMA, dead-code restart
    pixels = torch.randn(2, 3, 16, 16)
    before = {name: value.clone() for name, value in model.quantizer.state_dict().items()}
    with torch.no_grad():
        first = model.encode(pixels)
        model.decode(first.latents)
        second = model.encode(pixels)
    assert model.quantizer.training
    for name, value in model.quantizer.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert torch.equal(first.indices, second.indices)
    model(pixels)  # the training step initialises and updates the codebook
    assert not torch.equal(model.quantizer.codebook, before["codebook"])


# -- the codebook's initialised flag through from_pretrained -------------------------------------


def test_codebook_only_state_dict_loads_as_a_trained_codebook():
    """A converted diffusers / taming checkpoint has `quantizer.codebook` only: loading it into
    the default (EMA, k-means) quantizer must not let training overwrite it by k-means."""
    quantizer = VectorQuantizer(8, 4, codebook_ema=True, codebook_ema_decay=0.99, kmeans_init=True)
    codebook = torch.randn(8, 4)
    quantizer.load_state_dict({"codebook": codebook})
    assert bool(quantizer.initialized)
    torch.testing.assert_close(quantizer.ema_codebook_sum, codebook)
    quantizer.train()(codebook.T[None, :, :, None] + 1e-3)
    assert torch.allclose(quantizer.codebook.data, codebook, atol=0.1)


def trained_codebook_checkpoint(tmp_path, **options):
    """A VQ-VAE saved without k-means state (kmeans_init=False), with a codebook far from the
    uniform initialisation, as a converted or trained model would have; `options`: quantizer options."""
    model = tiny_model("vqvae", codebook_size=64, quantizer_config={"kmeans_init": False, **options})
    with torch.no_grad():
        model.quantizer.codebook.normal_(generator=torch.Generator().manual_seed(1))
        if model.quantizer.codebook_ema:
            model.quantizer.ema_codebook_sum.copy_(model.quantizer.codebook)
    model.save_pretrained(tmp_path)
    return model.quantizer.codebook.detach().clone()


@pytest.mark.single_thread
def test_from_pretrained_with_kmeans_init_keeps_a_trained_codebook(tmp_path):
    """`from_pretrained(path, quantizer_config={"kmeans_init": True})` on a checkpoint without the k-means flag: the
    codebook is marked initialised, so the first training step does not run k-means over it."""
    codebook = trained_codebook_checkpoint(tmp_path, codebook_ema=False)
    model = latentcode.VQVAEModel.from_pretrained(tmp_path, quantizer_config={"kmeans_init": True})
    assert model.quantizer.kmeans_init and bool(model.quantizer.initialized)
    model.train()
    model(
        torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    )  # no optimiser step: without EMA only k-means could change the codebook
    assert torch.equal(model.quantizer.codebook, codebook)


@pytest.mark.single_thread
def test_from_pretrained_derives_the_ema_state_of_a_codebook_only_checkpoint(tmp_path):
    """A checkpoint with a codebook but no EMA state or flag (a codebook-only checkpoint) loads as
    `load_state_dict` does: EMA sums equal to the codes, unit cluster sizes, marked initialised."""
    from safetensors.torch import load_file, save_file

    codebook = trained_codebook_checkpoint(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["quantizer.ema_cluster_size"], weights["quantizer.ema_codebook_sum"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    model = latentcode.VQVAEModel.from_pretrained(tmp_path, quantizer_config={"kmeans_init": True})
    quantizer = model.quantizer
    assert torch.equal(quantizer.codebook, codebook) and bool(quantizer.initialized)
    assert torch.equal(quantizer.ema_codebook_sum, codebook)
    assert torch.equal(quantizer.ema_cluster_size, torch.ones(64))
    reference = tiny_model("vqvae", codebook_size=64, quantizer_config={"kmeans_init": True})
    reference.load_state_dict(weights, strict=False)
    assert torch.equal(reference.quantizer.ema_codebook_sum, quantizer.ema_codebook_sum)
    assert bool(reference.quantizer.initialized)


@pytest.mark.single_thread
def test_fresh_models_still_run_kmeans_on_their_first_batch():
    model = tiny_model("vqvae", codebook_size=16)
    assert not bool(model.quantizer.initialized)
    before = model.quantizer.codebook.detach().clone()
    model.train()
    model(torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    assert bool(model.quantizer.initialized)
    assert not torch.allclose(model.quantizer.codebook, before)


# -- real images: the recipe keeps a 512-code codebook alive, plain VQ does not --------------------


@pytest.fixture(scope="module")
def photo_crops():
    """Random 32x32 crops of six skimage.data photos, `[-1, 1]` floats."""
    from skimage import data

    images = []
    for name in ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry"):
        image = getattr(data, name)()
        images.append(torch.from_numpy(np.ascontiguousarray(image[..., :3])).permute(2, 0, 1).float() / 127.5 - 1)

    def sample(generator: torch.Generator, count: int) -> torch.Tensor:
        crops = []
        for _ in range(count):
            image = images[int(torch.randint(len(images), (1,), generator=generator))]
            top = int(torch.randint(image.shape[1] - 32, (1,), generator=generator))
            left = int(torch.randint(image.shape[2] - 32, (1,), generator=generator))
            crops.append(image[:, top : top + 32, left : left + 32])
        return torch.stack(crops)

    return sample


def train_patch_vqvae(quantizer, photo_crops, steps: int = 250):
    """A one-layer VQ-VAE on 4x4 patches (16-dim codes) trained for `steps` Adam steps of 32
    crops (2048 tokens); returns the codebook usage and the reconstruction MSE, both on 256
    held-out crops (16,384 tokens, drawn from another seed), in eval mode. Held out, because in
    training dead-code restart copies batch rows into dead codes before the search, so every
    re-seeded code counts as used in that very step (the quantizer's window usage)."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    encoder = torch.nn.Conv2d(3, 16, kernel_size=4, stride=4)
    decoder = torch.nn.ConvTranspose2d(16, 3, kernel_size=4, stride=4)
    parameters = [*encoder.parameters(), *decoder.parameters(), *(p for p in quantizer.parameters() if p.requires_grad)]
    optimizer = torch.optim.Adam(parameters, lr=2e-3)
    quantizer.train()
    for _ in range(steps):
        crops = photo_crops(generator, 32)
        output = quantizer(encoder(crops))
        loss = F.mse_loss(decoder(output.quantized), crops) + QuantizerLossWeights()(output.terms)[0]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        crops = photo_crops(torch.Generator().manual_seed(1), 256)
        output = quantizer.eval()(encoder(crops))
        mse = F.mse_loss(decoder(output.quantized), crops)
    held_out_usage = torch.unique(output.indices).numel() / quantizer.codebook_size
    return held_out_usage, float(mse)


@pytest.mark.single_thread
def test_recipe_uses_most_of_512_codes_on_photo_patches_where_plain_vq_collapses(photo_crops):
    config = tiny_config("vqvae", codebook_size=512, latent_channels=16)  # only sizes set: the defaults
    recipe = latentcode.VQVAEModel(config).quantizer
    plain = VectorQuantizer(512, 16)
    recipe_usage, recipe_mse = train_patch_vqvae(recipe, photo_crops)
    plain_usage, plain_mse = train_patch_vqvae(plain, photo_crops)
    # Measured here on the held-out crops: recipe 0.98, plain 0.05 (the training window's usage
    # was 0.99 and 0.04); the reconstruction error follows.
    assert recipe_usage >= 0.95, recipe_usage
    assert plain_usage <= 0.2, plain_usage
    assert recipe_mse < plain_mse
    assert float(recipe.usage_perplexity) > 0.5 * 512 > float(plain.usage_perplexity)
    assert math.isclose(float(recipe.codebook_usage), float(recipe.usage.fraction_used()))


def test_the_loss_weights_are_declared_once_and_the_config_takes_them():
    """`QuantizerLossWeights` declares the weights' names, defaults and help; `VQVAEConfig` takes
    exactly those as fields, with those defaults where the quantizer has the term."""
    import dataclasses

    declared = dataclasses.fields(QuantizerLossWeights)
    assert all(weight.metadata["help"] for weight in declared)
    assert set(QuantizerLossWeights.names()) <= set(latentcode.VQVAEConfig.field_names())
    config = tiny_config("vqvae", commitment_weight=0.5)
    assert (config.commitment_weight, config.codebook_weight) == (0.5, QuantizerLossWeights().codebook_weight)
    assert config.entropy_weight is None  # a VQ codebook has no entropy term
    model = latentcode.VQVAEModel(config)
    assert model.loss_weights() == QuantizerLossWeights(commitment_weight=0.5)
    assert model.loss_weights(codebook_weight=2.0) == QuantizerLossWeights(commitment_weight=0.5, codebook_weight=2.0)
    with pytest.raises(ValueError, match=r"entropy_weight=0.3 given, but quantizer='vq' has no such term"):
        model.loss_weights(entropy_weight=0.3)


def test_the_model_loss_follows_a_loss_weight_changed_on_its_config():
    """`model(x).loss` weighs the quantizer's terms with the config's weights as they are at the call."""
    model = tiny_model("vqvae", quantizer_config={"codebook_ema": False}).train()
    pixels = torch.rand(2, 3, 16, 16) * 2 - 1
    before = model(pixels)
    torch.testing.assert_close(
        before.loss, before.reconstruction_loss + before.codebook_loss + 0.25 * before.commitment_loss
    )
    model.config.commitment_weight = 2.0
    after = model(pixels)
    torch.testing.assert_close(
        after.loss, after.reconstruction_loss + after.codebook_loss + 2.0 * after.commitment_loss
    )


def test_a_quantizer_option_given_as_a_config_field_names_quantizer_config():
    with pytest.raises(ValueError, match=r"kmeans_init is an option of quantizer='vq', set in quantizer_config"):
        tiny_config("vqvae", kmeans_init=False)
    with pytest.raises(ValueError, match="has no field 'fsq_levels'"):
        tiny_config("vqvae", quantizer="fsq", fsq_levels=(5, 5, 5))
