"""Exact, memory-bounded nearest-neighbour search over a codebook.

`argmin_k ||x - e_k||^2 = argmin_k (||e_k||^2 - 2 x.e_k)`: the `||x||^2` term does not change
the argmin, so one `addmm` per block gives the distances up to a per-row constant. The N x K
distance matrix is never materialised: rows and codes are cut into blocks of at most
`max_block_elements` distances, each block is reduced to its row minima while it is still in
cache, and the running minimum is kept per row. Peak extra memory is one block plus O(N).
"""

from __future__ import annotations

import torch

# 2**16 fp32 distances = 256 KiB: a block that stays in a core's L2 cache between the addmm
# that writes it and the min that reads it (measured fastest on CPU for D <= 64; see
# benchmarks/bench_quantizers.py). Large D is compute-bound and prefers bigger blocks, which
# `_block_shape` grants since the block's inputs then dominate its cost.
DEFAULT_MAX_BLOCK_ELEMENTS = 2**16
# On GPUs a block is worth launching only if it fills the device: 2**26 distances = 256 MiB.
DEFAULT_MAX_BLOCK_ELEMENTS_CUDA = 2**26


def _block_shape(num_vectors: int, num_codes: int, dim: int, max_block_elements: int) -> tuple[int, int]:
    """(rows, codes) per block: all codes in one block when they fit, so that no running minimum
    is needed; rows scaled up with the dimension so that the matmul, not the reduction, dominates."""
    elements = max_block_elements * max(1, dim // 32)
    codes = min(num_codes, elements)
    rows = max(1, min(num_vectors, elements // codes))
    return rows, codes


@torch.no_grad()
def nearest_codebook_indices(
    vectors: torch.Tensor, codebook: torch.Tensor, max_block_elements: int | None = None
) -> torch.Tensor:
    """Index of the nearest codebook vector (Euclidean) for every row of `vectors`.

    Args:
        vectors: `[N, D]` float.
        codebook: `[K, D]` float, same dtype and device.
        max_block_elements: distances held at once (times `max(1, D // 32)`); defaults to
            2**16 on CPU and 2**26 on GPU.

    Returns:
        `[N]` int64 indices in `[0, K)`. Ties go to the lowest index, as `argmin` does.
    """
    if vectors.dim() != 2 or codebook.dim() != 2 or vectors.shape[1] != codebook.shape[1]:
        raise ValueError(
            f"expected vectors [N, D] and codebook [K, D] with the same D, got {tuple(vectors.shape)} "
            f"and {tuple(codebook.shape)}"
        )
    if max_block_elements is None:
        on_cuda = vectors.device.type == "cuda"
        max_block_elements = DEFAULT_MAX_BLOCK_ELEMENTS_CUDA if on_cuda else DEFAULT_MAX_BLOCK_ELEMENTS
    num_vectors, dim = vectors.shape
    num_codes = codebook.shape[0]
    indices = torch.empty(num_vectors, dtype=torch.long, device=vectors.device)
    if num_vectors == 0:
        return indices
    rows, codes = _block_shape(num_vectors, num_codes, dim, max_block_elements)
    codebook_sq_norms = codebook.pow(2).sum(dim=1)
    codebook_t = codebook.T
    # Reused output buffers: the allocator would otherwise hand out fresh pages per block.
    distances = vectors.new_empty(rows, codes)
    block_min = vectors.new_empty(rows)
    block_argmin = torch.empty(rows, dtype=torch.long, device=vectors.device)
    best_min = vectors.new_empty(rows)
    for row_start in range(0, num_vectors, rows):
        row_end = min(row_start + rows, num_vectors)
        n = row_end - row_start
        x = vectors[row_start:row_end]
        best_index = indices[row_start:row_end]
        for code_start in range(0, num_codes, codes):
            code_end = min(code_start + codes, num_codes)
            k = code_end - code_start
            block = distances[:n, :k]
            torch.addmm(
                codebook_sq_norms[code_start:code_end], x, codebook_t[:, code_start:code_end], alpha=-2.0, out=block
            )
            if code_start == 0 and code_end == num_codes:
                torch.argmin(block, dim=1, out=best_index)
            elif code_start == 0:
                torch.min(block, dim=1, out=(best_min[:n], best_index))
            else:
                torch.min(block, dim=1, out=(block_min[:n], block_argmin[:n]))
                # Strictly smaller only: on ties the earlier (lower) index wins, as in argmin.
                closer = block_min[:n] < best_min[:n]
                best_min[:n] = torch.where(closer, block_min[:n], best_min[:n])
                best_index.copy_(torch.where(closer, block_argmin[:n] + code_start, best_index))
    return indices
