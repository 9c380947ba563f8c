"""Autoregressive prior over VQ-VAE codes: the second stage that makes the tokenizer generative.

A transformers causal LM (`GPT2LMHeadModel` or a small `LlamaForCausalLM`) learns p(codes) of
images encoded by a trained VQ-VAE; `generate()` samples new code sequences and the VQ-VAE
decodes them, as in the VQ-VAE / VQGAN papers.

The prior's vocabulary is the `codebook_size` codes plus one begin-of-image token (id
`codebook_size`) that starts every sequence, so `generate()` needs no prompt. The prior's config
records its `image_token_mapping` and `latent_shape`, so a saved prior samples images on its own:

```python
prior = AutoModelForCausalLM.from_pretrained("prior")          # saved by training/train_prior.py
vqvae = VQVAEModel.from_pretrained(prior.config.vqvae_name_or_path)
images = sample_images(prior, vqvae, num_samples=16, seed=0)   # [16, C, H, W] in [-1, 1]
```
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, PretrainedConfig, PreTrainedModel

from .tokens import ImageTokenMapping, sequence_to_indices

PRIOR_ARCHITECTURES = ("gpt2", "llama")


def prior_config(
    codebook_size: int,
    latent_shape: Sequence[int],
    architecture: str = "gpt2",
    hidden_size: int = 256,
    num_layers: int = 4,
    num_heads: int = 4,
    dropout: float = 0.0,
    vqvae_name_or_path: str | None = None,
) -> PretrainedConfig:
    """Config of a causal LM over the codes of images with code grid `latent_shape`.

    Args:
        codebook_size: K of the VQ-VAE.
        latent_shape: `(h, w)` or `(h, w, depth)`, as `VQVAEModel.latent_shape` returns; the
            sequence length is their product, plus the begin-of-image token.
        architecture: `"gpt2"` (learned positions, GELU MLP) or `"llama"` (rotary positions,
            SwiGLU MLP, RMSNorm).
        hidden_size / num_layers / num_heads: transformer width, depth and attention heads.
        dropout: on attention and residual paths (GPT-2 only; Llama has attention dropout only).
        vqvae_name_or_path: where the VQ-VAE lives, recorded for `sample_images` users.
    """
    if architecture not in PRIOR_ARCHITECTURES:
        raise ValueError(f"architecture must be one of {PRIOR_ARCHITECTURES}, got {architecture!r}")
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size must be divisible by num_heads, got {hidden_size} and {num_heads}")
    mapping = ImageTokenMapping(codebook_size, offset=0, begin_of_image_id=codebook_size)
    positions = math.prod(latent_shape) + 1
    # No end or padding token: every image is exactly `positions - 1` codes.
    special = dict(bos_token_id=mapping.begin_of_image_id, eos_token_id=None, pad_token_id=None)
    recorded = dict(
        image_token_mapping=mapping.to_dict(), latent_shape=list(latent_shape), vqvae_name_or_path=vqvae_name_or_path
    )
    if architecture == "gpt2":
        return GPT2Config(
            vocab_size=mapping.vocab_size,
            n_positions=positions,
            n_embd=hidden_size,
            n_layer=num_layers,
            n_head=num_heads,
            resid_pdrop=dropout,
            embd_pdrop=dropout,
            attn_pdrop=dropout,
            **special,
            **recorded,
        )
    return LlamaConfig(
        vocab_size=mapping.vocab_size,
        max_position_embeddings=positions,
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        attention_dropout=dropout,
        **special,
        **recorded,
    )


def build_prior(codebook_size: int, latent_shape: Sequence[int], **config_kwargs) -> PreTrainedModel:
    """A freshly initialised causal LM from `prior_config(codebook_size, latent_shape, ...)`."""
    return AutoModelForCausalLM.from_config(prior_config(codebook_size, latent_shape, **config_kwargs))


def token_mapping(config: PretrainedConfig) -> ImageTokenMapping:
    """The image-token mapping recorded in a prior's config."""
    recorded = getattr(config, "image_token_mapping", None)
    if recorded is None:
        raise ValueError("this model's config has no image_token_mapping; build priors with latentcode.prior")
    return ImageTokenMapping(**recorded)


def encode_to_sequences(vqvae, batches: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
    """Lazily encode pixel batches `[B, C, H, W]` in [-1, 1] to code sequences `[B, L]`.

    Works on a finite list (`torch.cat(list(encode_to_sequences(vqvae, batches)))` encodes a
    whole dataset) and on an endless stream alike.
    """
    for pixels in batches:
        yield vqvae.encode_to_sequence(pixels.to(vqvae.device, vqvae.dtype))


def prior_loss(prior, sequences: torch.Tensor, mapping: ImageTokenMapping) -> torch.Tensor:
    """Mean next-code cross-entropy (nats per code) of code sequences `[B, L]` on `prior`'s device.

    `prior` may be wrapped (DDP, accelerate), hence the explicit `mapping`
    (`token_mapping(unwrapped.config)`).
    """
    tokens = mapping.codes_to_tokens(sequences)
    logits = prior(input_ids=tokens, attention_mask=torch.ones_like(tokens)).logits
    # transformers' causal-LM loss, computed here: passing `labels` makes GPT-2 (whose class name
    # maps to no loss type) warn "loss_type=None ... unrecognized" on every process.
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), tokens[:, 1:].flatten())


@torch.no_grad()
def sample_sequences(
    prior: PreTrainedModel,
    num_samples: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int | None = None,
) -> torch.Tensor:
    """Sample `num_samples` code sequences `[num_samples, L]` with `prior.generate()`.

    Args:
        temperature: softmax temperature (1.0 samples the learned distribution).
        top_k: keep only the k most likely codes at each step; `None` keeps all.
        seed: seeds the sampling without touching the caller's global random state.
    """
    mapping = token_mapping(prior.config)
    length = math.prod(prior.config.latent_shape)
    start = torch.full((num_samples, 1), mapping.begin_of_image_id, dtype=torch.long, device=prior.device)
    devices = [prior.device] if prior.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        tokens = prior.generate(
            start,
            attention_mask=torch.ones_like(start),
            do_sample=True,
            temperature=temperature,
            top_k=top_k or 0,
            top_p=1.0,
            max_new_tokens=length,
            # Only image codes may follow: a second begin-of-image token would not decode.
            suppress_tokens=mapping.boundary_ids,
        )
    return mapping.tokens_to_codes(tokens)


@torch.no_grad()
def sample_images(prior: PreTrainedModel, vqvae, num_samples: int, **sampling) -> torch.Tensor:
    """Sample codes with `sample_sequences(prior, num_samples, **sampling)` and decode them with
    `vqvae`. Returns pixels `[num_samples, C, H, W]` in [-1, 1]."""
    sequences = sample_sequences(prior, num_samples, **sampling)
    indices = sequence_to_indices(sequences, prior.config.latent_shape)
    return vqvae.decode_indices(indices, return_dict=True).sample
