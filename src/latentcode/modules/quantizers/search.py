"""Exact, memory-bounded nearest-neighbour search over a codebook.

`argmin_k ||x - e_k||^2 = argmin_k (||e_k||^2 - 2 x.e_k)`: the `||x||^2` term does not change
the argmin, so one `addmm` per block gives the distances up to a per-row constant. The N x K
distance matrix is never materialised: rows and codes are cut into blocks of a bounded number
of distances, each block is reduced to its row minima while it is still in cache, and the
running minimum is kept per row. Peak extra memory is one block per thread plus O(N + K).
"""

from __future__ import annotations

import torch

from ..workers import run_in_workers

# Rows and codes of one block of distances on CPU: 256 x 4096 fp32 = 4 MiB, written by the
# addmm and read back by the reductions while it is still in cache (`benchmarks/bench_quantizers.py
# --tune` compares block shapes). On GPUs a block is worth
# launching only if it fills the device, so blocks hold up to 2**26 distances there.
DEFAULT_BLOCK_ROWS, DEFAULT_BLOCK_CODES = 256, 4096
CUDA_BLOCK_ELEMENTS = 2**26
# The minimum of a block is found in two steps: `amin` over groups of GROUP contiguous codes
# (a vectorised reduction, much faster on CPU than `min` with indices), then the index inside
# the winning group. Both take the first minimum, so ties still go to the lowest index.
GROUP = 64

# On CPU the rows are split over `torch.get_num_threads()` worker threads that each run
# single-threaded ops, instead of running every small block op multi-threaded: a block op is
# short, and with intra-op threads each one ends in a barrier that, on a loaded machine, waits
# for a descheduled thread (`benchmarks/bench_quantizers.py` measures both).


def _block_shape(num_vectors: int, num_codes: int, max_block_elements: int | None, on_cuda: bool):
    """(rows, codes) per block; codes is a multiple of GROUP."""
    if max_block_elements is None and not on_cuda:
        rows = min(num_vectors, DEFAULT_BLOCK_ROWS)
        codes = min(num_codes, DEFAULT_BLOCK_ROWS * DEFAULT_BLOCK_CODES // rows)
    else:
        elements = max_block_elements or CUDA_BLOCK_ELEMENTS
        codes = min(num_codes, max(GROUP, elements))
        rows = max(1, min(num_vectors, elements // codes))
    return rows, -(-codes // GROUP) * GROUP


@torch.no_grad()
def _search_rows(
    vectors: torch.Tensor,
    codebook_t: torch.Tensor,
    codebook_sq_norms: torch.Tensor,
    rows: int,
    codes: int,
    out: torch.Tensor,
) -> None:
    """Write the nearest-code indices of `vectors` `[n, D]` into `out` `[n]`, block by block.

    `codebook_t` `[D, K']` and `codebook_sq_norms` `[K']` are padded to a multiple of `codes`
    columns; the padding codes have infinite norm and never win.
    """
    padded = codebook_t.shape[1]
    groups = codes // GROUP
    # Buffers reused by every block: fresh allocations per block would cost page faults.
    distances = vectors.new_empty(rows, codes)
    group_min = vectors.new_empty(rows, groups)
    block_min = vectors.new_empty(rows)
    best_min = vectors.new_empty(rows)
    block_group = torch.empty(rows, dtype=torch.long, device=vectors.device)
    # Row r's groups start at row r * groups of the block seen as [rows * groups, GROUP]:
    # picking the winning group's row with index_select is ~2x faster on CPU than a gather.
    group_rows = torch.arange(0, rows * groups, groups, device=vectors.device)
    winner_rows = torch.empty(rows, dtype=torch.long, device=vectors.device)
    for row_start in range(0, vectors.shape[0], rows):
        n = min(rows, vectors.shape[0] - row_start)
        x = vectors[row_start : row_start + n]
        best_index = out[row_start : row_start + n]
        for code_start in range(0, padded, codes):
            block = distances[:n]
            code_slice = slice(code_start, code_start + codes)
            torch.addmm(codebook_sq_norms[code_slice], x, codebook_t[:, code_slice], alpha=-2.0, out=block)
            grouped = block.view(n, groups, GROUP)
            torch.amin(grouped, dim=2, out=group_min[:n])
            torch.min(group_min[:n], dim=1, out=(block_min[:n], block_group[:n]))
            torch.add(group_rows[:n], block_group[:n], out=winner_rows[:n])
            winners = grouped.view(n * groups, GROUP).index_select(0, winner_rows[:n])
            block_index = block_group[:n] * GROUP + winners.argmin(dim=1) + code_start
            if code_start == 0:
                best_min[:n] = block_min[:n]
                best_index.copy_(block_index)
            else:
                # Strictly smaller only: on ties the earlier (lower) index wins, as in argmin.
                closer = block_min[:n] < best_min[:n]
                best_min[:n] = torch.where(closer, block_min[:n], best_min[:n])
                best_index.copy_(torch.where(closer, block_index, best_index))


@torch.no_grad()
def nearest_codebook_indices(
    vectors: torch.Tensor, codebook: torch.Tensor, max_block_elements: int | None = None
) -> torch.Tensor:
    """Index of the nearest codebook vector (Euclidean) for every row of `vectors`.

    Args:
        vectors: `[N, D]` float.
        codebook: `[K, D]` float, same dtype and device.
        max_block_elements: distances held at once per thread (rounded up to whole groups of
            64 codes); defaults to 256 x 4096 on CPU and 2**26 on GPU.

    Returns:
        `[N]` int64 indices in `[0, K)`. Ties go to the lowest index, as `argmin` does.
    """
    if vectors.dim() != 2 or codebook.dim() != 2 or vectors.shape[1] != codebook.shape[1]:
        raise ValueError(
            f"expected vectors [N, D] and codebook [K, D] with the same D, got {tuple(vectors.shape)} "
            f"and {tuple(codebook.shape)}"
        )
    num_vectors, num_codes = vectors.shape[0], codebook.shape[0]
    indices = torch.empty(num_vectors, dtype=torch.long, device=vectors.device)
    if num_vectors == 0:
        return indices
    on_cpu = vectors.device.type == "cpu"
    rows, codes = _block_shape(num_vectors, num_codes, max_block_elements, not on_cpu)
    # Pad the codebook to whole blocks with codes at infinite distance.
    padded = -(-num_codes // codes) * codes
    codebook_t = vectors.new_zeros(codebook.shape[1], padded)
    codebook_t[:, :num_codes] = codebook.T
    codebook_sq_norms = vectors.new_full((padded,), float("inf"))
    codebook_sq_norms[:num_codes] = codebook.pow(2).sum(dim=1)
    row_blocks = -(-num_vectors // rows)
    workers = min(torch.get_num_threads(), row_blocks) if on_cpu else 1
    if workers <= 1:
        _search_rows(vectors, codebook_t, codebook_sq_norms, rows, codes, indices)
        return indices
    # Contiguous shares of whole row blocks, one per worker thread.
    share = -(-row_blocks // workers) * rows

    def search_share(start: int) -> None:
        _search_rows(
            vectors[start : start + share], codebook_t, codebook_sq_norms, rows, codes,
            indices[start : start + share],
        )  # fmt: skip

    run_in_workers(search_share, range(0, num_vectors, share), workers)
    return indices
