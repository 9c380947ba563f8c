"""What every quantizer shares: its output, its usage statistics and its collective operations.

Distributed training: replicas must hold identical codebooks, so every statistic that changes
a codebook is summed over all processes (`all_reduce_sum`) and every random choice is made on
rank 0 and sent to the others (`broadcast_from_rank0`). Both use `torch.distributed` directly
when a process group is initialised (as `accelerate launch` does) and are no-ops otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class QuantizerOutput:
    """What a quantizer returns for latents `[B, D, h, w]`.

    Attributes:
        quantized: `[B, D, h, w]` codes with the straight-through gradient: the forward value
            is the code, the backward pass copies the gradient to the latents.
        indices: `[B, h, w]` int64 code indices, `[B, h, w, depth]` for residual quantisation.
        perplexity: exp of the entropy of the code histogram in this batch.
        terms: the unweighted scalar loss terms that train this quantizer, by name (the one place
            its losses are carried; names in `loss_weights.TERMS`, e.g. `codebook` ||sg(z) - e||^2
            and `commitment` ||z - sg(e)||^2, means over elements); summed over the levels of a
            residual quantizer. An EMA codebook has no `codebook` term (no loss moves its codes),
            FSQ none at all. [`QuantizerLossWeights`] weighs them into a loss.
    """

    quantized: torch.Tensor
    indices: torch.Tensor
    perplexity: torch.Tensor
    terms: dict[str, torch.Tensor]


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_rank0() -> bool:
    return not is_distributed() or dist.get_rank() == 0


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over all processes, in place; returns it."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_from_rank0(tensor: torch.Tensor) -> torch.Tensor:
    """Overwrite `tensor` with rank 0's values, in place; returns it."""
    if is_distributed():
        dist.broadcast(tensor, src=0)
    return tensor


def gather_rows(rows: torch.Tensor) -> torch.Tensor:
    """Rows `[n_r, D]` of every process r -> `[sum_r n_r, D]`, in rank order, on every process."""
    if not is_distributed():
        return rows
    counts = [torch.zeros(1, dtype=torch.long, device=rows.device) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, torch.tensor([rows.shape[0]], device=rows.device))
    most = int(max(counts).item())
    # all_gather needs equal shapes: pad to the largest, then trim.
    padded = rows.new_zeros(most, rows.shape[1])
    padded[: rows.shape[0]] = rows
    gathered = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(gathered, padded)
    return torch.cat([chunk[: int(count.item())] for chunk, count in zip(gathered, counts)])


def perplexity_of(counts: torch.Tensor) -> torch.Tensor:
    """exp(entropy) of histograms `counts` `[..., K]` -> `[...]` float32 (summed in float64): K for
    uniform use, 1 for a single code (the effective number of codes)."""
    probabilities = counts.double() / counts.sum(dim=-1, keepdim=True).clamp_min(1)
    entropy = -torch.sum(probabilities * torch.log(probabilities.clamp_min(1e-300)), dim=-1)
    return torch.exp(entropy).float()


class CodebookUsageWindow:
    """How often each code was hit among the last `window` tokens (of all processes).

    A ring buffer keeps this process's last `window` indices; the hit counts `[K]` are updated
    with the all-reduced difference of the histograms of the tokens entering and leaving it, so
    they are identical on every replica. It is training telemetry: not saved, not a module
    buffer (DDP would broadcast rank 0's ring buffer over the others').

    Args:
        codebook_size: K.
        window: tokens per process in the sliding window.
    """

    def __init__(self, codebook_size: int, window: int):
        if window < 1:
            raise ValueError(f"the usage window must be >= 1 token, got {window}")
        self.codebook_size = codebook_size
        self.window = window
        self.reset()

    def reset(self) -> None:
        self.recent: torch.Tensor | None = None  # [window] int64 ring buffer, allocated lazily
        self.counts: torch.Tensor | None = None  # [K] int64 hits in the window, all processes
        self.position = 0
        self.tokens_seen = 0  # this process's tokens since the last reset
        self.tokens_since_check = 0  # tokens of all processes since `window_elapsed` last said True

    @torch.no_grad()
    def update(self, indices: torch.Tensor) -> None:
        """Add this step's indices (any shape) to the window."""
        indices = indices.detach().reshape(-1).long()
        if self.recent is None or self.recent.device != indices.device:
            self.recent = torch.zeros(self.window, dtype=torch.long, device=indices.device)
            self.counts = torch.zeros(self.codebook_size, dtype=torch.long, device=indices.device)
            self.position = self.tokens_seen = 0
        indices = indices[-self.window :]
        n = indices.numel()
        slots = (self.position + torch.arange(n, device=indices.device)) % self.window
        # Histogram change, and in the last entry the token count, summed over processes in one call.
        delta = torch.bincount(indices, minlength=self.codebook_size + 1)
        delta[-1] = n
        # Slots that were written before hold tokens leaving the window.
        filled = min(self.tokens_seen, self.window)
        leaving = slots[(slots < filled) if filled < self.window else slice(None)]
        delta[:-1] -= torch.bincount(self.recent[leaving], minlength=self.codebook_size)
        self.recent[slots] = indices
        all_reduce_sum(delta)
        self.counts += delta[:-1]
        self.position = (self.position + n) % self.window
        self.tokens_seen += n
        self.tokens_since_check += int(delta[-1])

    def window_elapsed(self) -> bool:
        """True once every `window` tokens per process: time to act on a window of fresh
        statistics. Counted over all processes, so that all replicas decide alike."""
        if self.tokens_since_check >= self.window * (dist.get_world_size() if is_distributed() else 1):
            self.tokens_since_check = 0
            return True
        return False

    def unused_codes(self) -> torch.Tensor:
        """`[K]` bool, True for codes not hit in the window (all False before any update)."""
        if self.counts is None:
            return torch.zeros(self.codebook_size, dtype=torch.bool)
        return self.counts == 0

    def fraction_used(self) -> torch.Tensor:
        """Fraction of the K codes hit at least once in the window."""
        if self.counts is None:
            return torch.tensor(0.0)
        return (self.counts > 0).float().mean()

    def perplexity(self) -> torch.Tensor:
        """exp(entropy) of the code histogram over the window."""
        if self.counts is None:
            return torch.tensor(0.0)
        return perplexity_of(self.counts)


class Quantizer(nn.Module):
    """Base of the quantizers: the shared interface and the usage metrics for training logs.

    Subclasses set `codebook_size` (K, per level), `codebook_dim` (D) and `self.usage` (a
    [`CodebookUsageWindow`]), and implement `forward(latents, update_codebook=None)` and
    `indices_to_codes`. `update_codebook` defaults to `self.training`: the training path
    maintains the codebook and usage statistics; `update_codebook=False` is a pure function of
    the latents, whatever the module's mode.
    """

    codebook_size: int
    codebook_dim: int
    usage: CodebookUsageWindow
    # The unweighted terms `forward` returns in `QuantizerOutput.terms` (names in
    # `loss_weights.TERMS`); the recipe weighs them (`QuantizerLossWeights`).
    loss_terms: tuple[str, ...] = ()
    # Constructor arguments that change only the training path (its terms, codebook
    # maintenance, gradient estimator, usage metrics), never what the pure path
    # (`update_codebook=False`) computes. Each class lists its own; export to diffusers and
    # conversion overrides derive the model config's training-only options from them.
    training_only_options: tuple[str, ...] = ()

    @classmethod
    def resolve_sizes(
        cls,
        codebook_size: int | None,
        codebook_dim: int | None,
        options: dict,
        latent_channels: int,
        num_quantizers: int | None = None,
    ) -> dict[str, int]:
        """The sizes a model config states at its top level (`codebook_size`, `codebook_dim`, and
        `num_quantizers` for the quantizers that take it), given the ones it was passed (None: not
        given) and the quantizer's other constructor arguments `options`. By default K = 1024 codes of
        dimension D = `latent_channels`; quantizers whose sizes follow from their options
        (FSQ's levels, LFQ's bits) override this and refuse sizes that contradict them."""
        return {
            "codebook_size": 1024 if codebook_size is None else codebook_size,
            "codebook_dim": latent_channels if codebook_dim is None else codebook_dim,
        }

    @property
    def codebook_usage(self) -> torch.Tensor:
        """Fraction of codes hit over the sliding window of recent training tokens."""
        return self.usage.fraction_used()

    @property
    def usage_perplexity(self) -> torch.Tensor:
        """exp(entropy) of the code histogram over the sliding window (K when all codes are
        used equally often)."""
        return self.usage.perplexity()

    def _check_latents(self, latents: torch.Tensor) -> None:
        if not isinstance(latents, torch.Tensor) or latents.dim() != 4 or latents.shape[1] != self.codebook_dim:
            shape = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
            raise ValueError(
                f"expected latents [B, {self.codebook_dim}, h, w] (codebook_dim={self.codebook_dim}), got {shape}"
            )

    def _check_indices(self, indices: torch.Tensor, trailing: int | None, high: int, low: int = 0) -> None:
        """Integer indices of shape `[B, h, w]` (`trailing` None) or `[B, h, w, trailing]`,
        with values in `[low, high)`."""
        if indices.dtype == torch.bool or indices.is_floating_point() or indices.is_complex():
            raise ValueError(f"indices must be an integer tensor, got dtype {indices.dtype}")
        expected = "[B, h, w]" if trailing is None else f"[B, h, w, {trailing}]"
        if indices.dim() != (3 if trailing is None else 4) or (trailing is not None and indices.shape[-1] != trailing):
            raise ValueError(f"expected indices of shape {expected}, got shape {tuple(indices.shape)}")
        if indices.numel() > 0:
            bottom, top = int(indices.min()), int(indices.max())
            if bottom < low or top >= high:
                raise ValueError(
                    f"indices must be in [{low}, {high - 1}] (codebook_size={high}), got values in [{bottom}, {top}]"
                )


def flatten_latents(latents: torch.Tensor) -> torch.Tensor:
    """`[B, D, h, w]` -> `[B*h*w, D]` fp32 rows."""
    return latents.float().permute(0, 2, 3, 1).reshape(-1, latents.shape[1])


def unflatten_codes(rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`[B*h*w, D]` rows -> `[B, D, h, w]` shaped as `like` (without the channel count check).

    A view with channels_last strides, no copy: the backbone runs channels_last anyway."""
    batch, _, height, width = like.shape
    return rows.view(batch, height, width, -1).permute(0, 3, 1, 2)
