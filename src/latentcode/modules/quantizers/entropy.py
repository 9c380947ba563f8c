"""The entropy regulariser of the bit quantizers (LFQ, BSQ), with bounded memory.

A latent's soft assignment over the `2^D` sign codes factorises into independent bits, so the
per-token entropy is exact at `N x D` cost. The batch-average code distribution does not
factorise; computing its entropy exactly costs `N x 2^D` (16 GiB at D = 18 and 16,384 tokens).
Open-MAGVIT2 splits the D bits into groups and sums the exact entropies of the groups' average
distributions, `sum_g H(mean_n p_g(. | z_n))` at `N x sum_g 2^{D_g}` cost. For one group (D at
most `max_group_bits`) this is the exact codebook entropy; otherwise it is an upper bound on it
(subadditivity) that is maximal, like the exact one, when the codes are used uniformly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# One group of 12 bits costs N x 4096 floats per tensor (256 MiB at N = 16,384): the exact
# entropy up to K = 4096, two groups (9 + 9 bits) at K = 2^18.
DEFAULT_MAX_GROUP_BITS = 12


def bit_groups(num_bits: int, max_group_bits: int) -> list[int]:
    """Split `num_bits` into the fewest near-equal groups of at most `max_group_bits` bits."""
    if max_group_bits < 1:
        raise ValueError(f"the entropy group size must be >= 1 bit, got {max_group_bits}")
    count = -(-num_bits // max_group_bits)
    return [num_bits // count + (1 if i < num_bits % count else 0) for i in range(count)]


def _binary_entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    probability = torch.sigmoid(logits)
    return -(probability * F.logsigmoid(logits) + (1 - probability) * F.logsigmoid(-logits))


def _average_distribution_entropy(bit_logits: torch.Tensor) -> torch.Tensor:
    """Exact entropy of the average over tokens of the code distribution of bit logits `[N, g]`
    (bit j of code c is bit g-1-j of c's binary number; any fixed order gives the same entropy)."""
    bits = bit_logits.shape[1]
    codes = torch.arange(2**bits, device=bit_logits.device)
    code_bits = ((codes[None, :] >> torch.arange(bits - 1, -1, -1, device=codes.device)[:, None]) & 1).float()
    log_assignment = F.logsigmoid(bit_logits) @ code_bits + F.logsigmoid(-bit_logits) @ (1 - code_bits)  # [N, 2^g]
    average = log_assignment.exp().mean(dim=0)
    return -(average * average.clamp_min(1e-12).log()).sum()


def bit_entropy_terms(bit_logits: torch.Tensor, max_group_bits: int = DEFAULT_MAX_GROUP_BITS):
    """Per-token and codebook entropy of independent bits with log-odds `bit_logits` `[N, D]` (fp32).

    Returns:
        `(per_token_entropy, codebook_entropy)`: the mean over tokens of the entropy of each
        token's code distribution (exact), and the entropy of the batch-average distribution
        (exact when `D <= max_group_bits`, the grouped estimate otherwise).
    """
    per_token_entropy = _binary_entropy_from_logits(bit_logits).sum(dim=1).mean()
    groups = bit_logits.split(bit_groups(bit_logits.shape[1], max_group_bits), dim=1)
    codebook_entropy = sum(_average_distribution_entropy(group) for group in groups)
    return per_token_entropy, codebook_entropy
