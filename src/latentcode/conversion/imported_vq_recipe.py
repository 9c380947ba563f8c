"""The recipe the public VQ checkpoints were trained with (constants only), so that models
imported from diffusers or CompVis fine-tune the same way.

diffusers' `VectorQuantizer` (like taming-transformers' and latent-diffusion's, with
`legacy=True`) computes `||sg(e) - z||^2 + beta * ||e - sg(z)||^2`: beta sits on the *codebook*
term and the commitment term has weight 1, and `VQModel` fixes beta = 0.25. Imported models
keep that objective (`commitment_weight=1.0`, `codebook_weight=0.25`) and the plain
gradient-learned codebook (no EMA codes, k-means or dead-code restarts); pass e.g.
`commitment_weight=0.25, codebook_weight=1.0` for the VQ-VAE paper's weighting.
"""

from __future__ import annotations

# Beta of diffusers' VQModel quantiser.
DIFFUSERS_VQ_BETA = 0.25
# That recipe: the loss weights (VQVAEConfig fields) and the `quantizer_config` of a "vq"
# quantizer; override any of it to fine-tune differently.
IMPORTED_VQ_LOSS_WEIGHTS = {"commitment_weight": 1.0, "codebook_weight": DIFFUSERS_VQ_BETA}
IMPORTED_VQ_TRAINING = {"codebook_ema": False, "kmeans_init": False, "dead_code_restart": False}

__all__ = ["DIFFUSERS_VQ_BETA", "IMPORTED_VQ_LOSS_WEIGHTS", "IMPORTED_VQ_TRAINING"]
