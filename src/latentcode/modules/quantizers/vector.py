"""Vector quantisation: a K x D codebook, nearest-neighbour assignment, straight-through gradient.

Every trick against codebook collapse is one constructor flag (all off by default, so that
`VectorQuantizer(K, D)` is the VQ-VAE paper's quantizer; `VQVAEConfig` turns the working recipe
on): EMA codebook updates, k-means initialisation, dead-code restart, l2-normalised codes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import CodebookUsageWindow, Quantizer, QuantizerOutput, flatten_latents, perplexity_of, unflatten_codes
from .gradients import GRADIENT_ESTIMATORS, snap_to_codes
from .maintenance import CodebookMaintenance
from .search import nearest_codebook_indices

# Codes are hit 16 times on average over a window of 16 * K tokens when all are used evenly,
# so a code with no hit in it is dead with near certainty (Poisson: e^-16).
DEFAULT_WINDOW_PER_CODE = 16


class VectorQuantizer(CodebookMaintenance, Quantizer):
    """K x D codebook, nearest-neighbour assignment, straight-through gradient.

    The search and the codebook lookup always run in fp32, also under autocast: in half
    precision nearby codes become indistinguishable and the argmin flips.

    Args:
        codebook_size: K, the number of codes.
        codebook_dim: D, the dimension of a code.
        codebook_ema: codes are not learned by the codebook loss but are exponential moving
            averages of the encoder outputs assigned to them (VQ-VAE paper, appendix; Razavi et
            al. 2019). Each training step, with `n_k` the all-reduced count and `s_k` the sum of
            vectors assigned to code k: `N_k <- decay N_k + (1 - decay) n_k`,
            `S_k <- decay S_k + (1 - decay) s_k`, `e_k <- S_k / N~_k` with the Laplace-smoothed
            sizes `N~_k = (N_k + eps) / (sum N + K eps) * sum N`.
        codebook_ema_decay: that decay (0.99 typical).
        codebook_ema_epsilon: eps of the Laplace smoothing.
        kmeans_init: initialise the codebook by k-means on the first training batch (gathered
            from all processes, computed on rank 0, broadcast).
        kmeans_iterations: Lloyd steps of that k-means.
        dead_code_restart: re-seed dead codes with encoder outputs of the current batch (drawn
            on rank 0, broadcast). With EMA updates and `dead_code_threshold > 0`, a code is dead
            when its EMA cluster size falls below `dead_code_threshold` times the mean one, tested
            every step; otherwise, every `usage_window` tokens, when it was not hit in the window.
        dead_code_threshold: the EMA expiry threshold, relative to the mean cluster size (the
            share of a code when all are used evenly), in [0, 1); 0 keeps the window test. A
            re-seeded code starts at the mean size, so it has about
            `log(1 / threshold) / (1 - codebook_ema_decay)` steps to be hit before it expires again.
        usage_window: tokens per process in the sliding window of the usage metrics and of
            dead-code detection; defaults to 16 * K.
        l2_normalize: cosine-similarity codes: latents and codes are l2-normalised before the
            search, so codes live on the unit sphere (ViT-VQGAN). With a small `codebook_dim`
            this is the factorised lookup of ViT-VQGAN / LlamaGen.
        max_block_elements: memory bound of the nearest-neighbour search (see
            [`nearest_codebook_indices`]).
        gradient_estimator: `"straight_through"` or `"rotation"` (the rotation trick), see
            `latentcode.modules.quantizers.gradients`.
    """

    loss_terms = ("codebook", "commitment")
    training_only_options = (
        "codebook_ema",
        "codebook_ema_decay",
        "codebook_ema_epsilon",
        "kmeans_init",
        "kmeans_iterations",
        "dead_code_restart",
        "dead_code_threshold",
        "usage_window",
        "max_block_elements",
        "gradient_estimator",
    )

    def __init__(
        self,
        codebook_size: int,
        codebook_dim: int,
        codebook_ema: bool = False,
        codebook_ema_decay: float = 0.99,
        codebook_ema_epsilon: float = 1e-5,
        kmeans_init: bool = False,
        kmeans_iterations: int = 10,
        dead_code_restart: bool = False,
        dead_code_threshold: float = 0.0,
        usage_window: int | None = None,
        l2_normalize: bool = False,
        max_block_elements: int | None = None,
        gradient_estimator: str = "straight_through",
    ):
        super().__init__()
        if gradient_estimator not in GRADIENT_ESTIMATORS:
            raise ValueError(f"gradient_estimator must be one of {GRADIENT_ESTIMATORS}, got {gradient_estimator!r}")
        if not 0.0 <= codebook_ema_decay < 1.0:
            raise ValueError(f"codebook_ema_decay must be in [0, 1), got {codebook_ema_decay}")
        if not 0.0 <= dead_code_threshold < 1.0:
            raise ValueError(f"dead_code_threshold must be in [0, 1), got {dead_code_threshold}")
        self.codebook_size = codebook_size
        self.codebook_dim = codebook_dim
        self.codebook_ema = codebook_ema
        self.codebook_ema_decay = codebook_ema_decay
        self.codebook_ema_epsilon = codebook_ema_epsilon
        self.kmeans_init = kmeans_init
        self.kmeans_iterations = kmeans_iterations
        self.dead_code_restart = dead_code_restart
        self.dead_code_threshold = dead_code_threshold
        self.l2_normalize = l2_normalize
        self.max_block_elements = max_block_elements
        self.gradient_estimator = gradient_estimator
        self.usage = CodebookUsageWindow(codebook_size, usage_window or DEFAULT_WINDOW_PER_CODE * codebook_size)
        # The same parameter name in every mode (diffusers' `quantize.embedding.weight` maps to
        # it); with EMA updates it takes no gradient.
        self.codebook = torch.nn.Parameter(torch.empty(codebook_size, codebook_dim), requires_grad=not codebook_ema)
        # Persistent buffers: save_pretrained writes them, so training resumes where it stopped.
        if self.codebook_ema:
            self.register_buffer("ema_cluster_size", torch.empty(codebook_size))
            self.register_buffer("ema_codebook_sum", torch.empty(codebook_size, codebook_dim))
        if kmeans_init:
            self.register_buffer("initialized", torch.tensor(False))
        self.reset_parameters()

    @property
    def expires_by_ema(self) -> bool:
        """Dead codes are found by their EMA cluster size every step (not by the usage window)."""
        return self.codebook_ema and self.dead_code_threshold > 0

    @torch.no_grad()
    def reset_parameters(self) -> None:
        # Uniform in [-1/K, 1/K], as in the VQ-VAE reference code and taming-transformers.
        torch.nn.init.uniform_(self.codebook, -1.0 / self.codebook_size, 1.0 / self.codebook_size)
        if self.l2_normalize:
            self.codebook.copy_(F.normalize(self.codebook, dim=1))
        self._derive_training_state(initialized=False)
        self.usage.reset()

    @torch.no_grad()
    def _derive_training_state(self, initialized: bool) -> None:
        """Set the EMA state to the one that reproduces the codebook (unit cluster sizes, sums equal
        to the codes) and the k-means flag to `initialized`."""
        if self.codebook_ema:
            self.ema_cluster_size.fill_(1.0)
            # accelerate's init_empty_weights() puts parameters on the meta device but not buffers:
            # there is no codebook to copy yet; loading the weights sets both.
            if not self.codebook.is_meta:
                self.ema_codebook_sum.copy_(self.codebook)
        if self.kmeans_init:
            self.initialized.fill_(initialized)

    @torch.no_grad()
    def initialize_unloaded_state(self) -> None:
        """Initialise what a checkpoint did not hold, after transformers' `from_pretrained`.

        transformers (>= 5) loads weights without `_load_from_state_dict`, marks every loaded
        tensor `_is_hf_initialized` and then asks the model to initialise the rest. The rule is
        the one of `_load_from_state_dict`: a loaded codebook without its training state is a
        trained codebook, so its EMA state is derived from it and it is marked initialised
        (k-means must not overwrite it, even when `kmeans_init=True` is asked for at load time).
        """

        def loaded(tensor: torch.Tensor) -> bool:
            return getattr(tensor, "_is_hf_initialized", False)

        if not loaded(self.codebook):
            self.reset_parameters()
            return
        if self.codebook_ema and not (loaded(self.ema_cluster_size) and loaded(self.ema_codebook_sum)):
            self.ema_cluster_size.fill_(1.0)
            self.ema_codebook_sum.copy_(self.codebook)
        if self.kmeans_init and not loaded(self.initialized):
            self.initialized.fill_(True)
        self.usage.reset()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A state dict with a codebook but without this module's training state (a converted
        # diffusers / taming checkpoint) holds a trained codebook: derive the EMA state that
        # reproduces it and mark it initialised, so training does not overwrite it by k-means.
        codebook = state_dict.get(prefix + "codebook")
        if codebook is not None:
            if self.codebook_ema and prefix + "ema_cluster_size" not in state_dict:
                state_dict[prefix + "ema_cluster_size"] = torch.ones(codebook.shape[0], dtype=codebook.dtype)
                state_dict[prefix + "ema_codebook_sum"] = codebook.clone()
            if self.kmeans_init and prefix + "initialized" not in state_dict:
                state_dict[prefix + "initialized"] = torch.tensor(True)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- lookup -----------------------------------------------------------------------------------

    def _prepare(self, rows: torch.Tensor) -> torch.Tensor:
        return F.normalize(rows, dim=1) if self.l2_normalize else rows

    def _codes(self) -> torch.Tensor:
        """`[K, D]` fp32 codes as looked up (l2-normalised in cosine mode; EMA codes already are)."""
        codebook = self.codebook.float()
        return F.normalize(codebook, dim=1) if self.l2_normalize and not self.codebook_ema else codebook

    def search(self, rows: torch.Tensor) -> torch.Tensor:
        """Nearest-code indices `[N]` of fp32 rows `[N, D]` (already normalised in cosine mode)."""
        return nearest_codebook_indices(rows.detach(), self._codes().detach(), self.max_block_elements)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """Codes of indices `[B, h, w]` -> `[B, D, h, w]` (fp32, channels_last strides)."""
        self._check_indices(indices, None, self.codebook_size)
        return F.embedding(indices.long(), self._codes()).permute(0, 3, 1, 2)

    # -- forward ----------------------------------------------------------------------------------

    def forward(self, latents: torch.Tensor, update_codebook: bool | None = None) -> QuantizerOutput:
        """Quantise latents `[B, D, h, w]`; see [`QuantizerOutput`].

        With `update_codebook` (default: in training mode) this also maintains the codebook
        (k-means init and dead-code restarts from this batch before the lookup, the EMA update
        after it) and the usage window; with `update_codebook=False` it is a pure function.
        """
        self._check_latents(latents)
        update_codebook = self.training if update_codebook is None else update_codebook
        with torch.autocast(device_type=latents.device.type, enabled=False):
            rows = self._prepare(flatten_latents(latents))
            if update_codebook:
                # Codebook surgery before the lookup, so no tensor autograd saved is changed.
                if self.kmeans_init and not bool(self.initialized):
                    self._kmeans_initialize(rows.detach())
                if self.dead_code_restart and (self.expires_by_ema or self.usage.window_elapsed()):
                    self._restart_dead_codes(rows.detach())
            indices = self.search(rows)
            codes = F.embedding(indices, self._codes())
            quantized, codebook_loss, commitment_loss = snap_to_codes(self.gradient_estimator, rows, codes)
            perplexity = perplexity_of(torch.bincount(indices, minlength=self.codebook_size))
            if update_codebook:
                if self.codebook_ema:
                    self._ema_update(rows.detach(), indices)
                self.usage.update(indices)
        # EMA codes are averages, not learned: no codebook term moves them.
        terms = (
            {"commitment": commitment_loss}
            if self.codebook_ema
            else {"codebook": codebook_loss, "commitment": commitment_loss}
        )
        return QuantizerOutput(
            quantized=unflatten_codes(quantized, latents),
            indices=indices.view(latents.shape[0], *latents.shape[2:]),
            perplexity=perplexity,
            terms=terms,
        )
