"""Training-time maintenance of a learned codebook: k-means initialisation, EMA updates and
dead-code restarts ([`CodebookMaintenance`], mixed into [`VectorQuantizer`]).

Distributed training: every statistic that changes the codebook is all-reduced and every random
choice is made on rank 0 and broadcast (see `base`), so replicas keep identical codebooks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import all_reduce_sum, broadcast_from_rank0, gather_rows, is_rank0
from .search import nearest_codebook_indices


@torch.no_grad()
def kmeans(vectors: torch.Tensor, num_clusters: int, iterations: int, l2_normalize: bool = False):
    """Lloyd's k-means with the exact chunked search.

    Args:
        vectors: `[N, D]` fp32.
        num_clusters: K. With N < K, the initial centroids repeat samples; the duplicates stay
            empty and keep their position (dead-code restart re-seeds them later).
        iterations: Lloyd steps.
        l2_normalize: keep centroids on the unit sphere (spherical k-means).

    Returns:
        centroids `[K, D]` and cluster sizes `[K]` (float) of the last assignment.
    """
    num_vectors = vectors.shape[0]
    if num_vectors >= num_clusters:
        start = torch.randperm(num_vectors, device=vectors.device)[:num_clusters]
    else:
        start = torch.randint(num_vectors, (num_clusters,), device=vectors.device)
    centroids = vectors[start].clone()
    sizes = torch.zeros(num_clusters, device=vectors.device)
    for _ in range(iterations):
        assignment = nearest_codebook_indices(vectors, centroids)
        sizes = torch.bincount(assignment, minlength=num_clusters).float()
        sums = torch.zeros_like(centroids).index_add_(0, assignment, vectors)
        centroids = torch.where(sizes[:, None] > 0, sums / sizes.clamp_min(1)[:, None], centroids)
        if l2_normalize:
            centroids = F.normalize(centroids, dim=1)
    return centroids, sizes


class CodebookMaintenance:
    """The training path's codebook surgery of a [`VectorQuantizer`] (its attributes and buffers:
    `codebook`, `ema_cluster_size`, `ema_codebook_sum`, `initialized`, `usage`, the options)."""

    @torch.no_grad()
    def _kmeans_initialize(self, rows: torch.Tensor) -> None:
        samples = gather_rows(rows)
        # Beyond a few dozen samples per code k-means gains little and costs N x K per step.
        cap = max(2**16, 4 * self.codebook_size)
        if samples.shape[0] > cap:
            samples = samples[torch.randperm(samples.shape[0], device=samples.device)[:cap]]
        centroids = torch.empty_like(self.codebook, dtype=torch.float32)
        sizes = torch.empty(self.codebook_size, device=rows.device)
        if is_rank0():
            centroids, sizes = kmeans(samples, self.codebook_size, self.kmeans_iterations, self.l2_normalize)
        broadcast_from_rank0(centroids)
        broadcast_from_rank0(sizes)
        self.codebook.copy_(centroids)
        if self.codebook_ema:
            # Without EMA expiry an empty cluster (N < K samples) is kept as a cluster of one
            # until the window test restarts it; with it, it starts empty and expires next step.
            sizes = sizes if self.expires_by_ema else sizes.clamp_min(1.0)
            self.ema_cluster_size.copy_(sizes)
            self.ema_codebook_sum.copy_(centroids * sizes[:, None])
        self.initialized.fill_(True)

    @torch.no_grad()
    def _ema_update(self, rows: torch.Tensor, indices: torch.Tensor) -> None:
        # One all-reduce for counts and sums together.
        statistics = torch.zeros(self.codebook_size, self.codebook_dim + 1, device=rows.device)
        statistics[:, 0] = torch.bincount(indices, minlength=self.codebook_size)
        statistics[:, 1:].index_add_(0, indices, rows)
        all_reduce_sum(statistics)
        decay = self.codebook_ema_decay
        self.ema_cluster_size.mul_(decay).add_(statistics[:, 0].to(self.ema_cluster_size.dtype), alpha=1 - decay)
        self.ema_codebook_sum.mul_(decay).add_(statistics[:, 1:].to(self.ema_codebook_sum.dtype), alpha=1 - decay)
        total = self.ema_cluster_size.sum()
        smoothed = (
            (self.ema_cluster_size + self.codebook_ema_epsilon)
            / (total + self.codebook_size * self.codebook_ema_epsilon)
            * total
        )
        codebook = self.ema_codebook_sum / smoothed[:, None]
        self.codebook.copy_(F.normalize(codebook, dim=1) if self.l2_normalize else codebook)

    @torch.no_grad()
    def _dead_codes(self) -> torch.Tensor:
        """Indices `[n]` of the dead codes, identical on every process (all-reduced statistics)."""
        if self.expires_by_ema:
            mean_size = self.ema_cluster_size.sum() / self.codebook_size
            return (self.ema_cluster_size < self.dead_code_threshold * mean_size).nonzero().squeeze(1)
        return self.usage.unused_codes().nonzero().squeeze(1)

    @torch.no_grad()
    def _restart_dead_codes(self, rows: torch.Tensor) -> None:
        dead = self._dead_codes().to(rows.device)
        # At most one code per batch row, each from a distinct row (no duplicate codes); the dead
        # codes left over are still dead at the next step.
        if dead.numel() == 0:
            return
        # Rank 0's batch size decides (the last batches of processes may differ).
        count = int(broadcast_from_rank0(torch.tensor([min(dead.numel(), rows.shape[0])], device=rows.device)))
        chosen = dead.new_empty(count)
        replacements = rows.new_empty(count, self.codebook_dim)
        if is_rank0():
            chosen = dead[torch.randperm(dead.numel(), device=dead.device)[:count]]
            replacements = rows[torch.randperm(rows.shape[0], device=rows.device)[:count]]
        broadcast_from_rank0(chosen)
        broadcast_from_rank0(replacements)
        self.codebook[chosen] = replacements.to(self.codebook.dtype)
        if self.codebook_ema:
            # A fresh code starts as a cluster of the mean size (of one before EMA expiry, as
            # the window test gives it a whole window), its sum scaled alike.
            size = self.ema_cluster_size.sum() / self.codebook_size if self.expires_by_ema else 1.0
            self.ema_cluster_size[chosen] = size
            self.ema_codebook_sum[chosen] = replacements.to(self.ema_codebook_sum.dtype) * size
