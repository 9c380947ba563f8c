"""How a quantizer's unweighted terms become its loss: the weights and the entropy annealing.

A quantizer returns its terms unweighted (`QuantizerOutput.terms`, names in `TERMS`); the
[`QuantizerLossWeights`] of a recipe weigh them. It lives beside the quantizers (not in
`latentcode.objectives`) because `model(pixels).loss` applies it too, at the model config's
weights; `latentcode.objectives.AutoencoderObjective` applies it at the recipe's, with the
entropy weight annealed as a function of the optimiser step.

    loss = commitment_weight * commitment + codebook_weight * codebook
         + entropy_weight(step) * (entropy_per_sample - diversity_weight * entropy_codebook)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from ...losses import linear_ramp

# The terms a quantizer may return (each quantizer class lists its own in `loss_terms`):
# `codebook` ||sg(z) - e||^2 moves the codes, `commitment` ||z - sg(e)||^2 the encoder,
# `entropy_per_sample` / `entropy_codebook` are LFQ's mean per-token entropy and the entropy of
# the batch-average code distribution (MAGVIT-v2).
ENTROPY_TERMS = ("entropy_per_sample", "entropy_codebook")
TERMS = ("codebook", "commitment", *ENTROPY_TERMS)


def annealed_weight(weight: float, step: int, annealing_steps: int, start_factor: float) -> float:
    """Entropy weight at optimiser step `step`: `start_factor * weight` at step 0, linearly to
    `weight` at `annealing_steps` and after (constant `weight` when `annealing_steps` is 0)."""
    return weight * linear_ramp(start_factor, 1.0, step, annealing_steps)


@dataclass(frozen=True)
class QuantizerLossWeights:
    """The weights of a quantizer's terms and the entropy weight's annealing schedule: the one
    declaration of their names, defaults and meaning (each field's `metadata["help"]`).

    The defaults are the standard recipe of every quantizer that has the term (the VQ-VAE
    paper's beta = 0.25, MAGVIT-v2's entropy weight 0.1). `VQVAEConfig` takes these names as its
    fields (the model's own weights, what `model(x).loss` uses) and the training options take them
    too (a recipe's overrides): both read them from here, `dataclasses.fields(QuantizerLossWeights)`.
    """

    commitment_weight: float = field(
        default=0.25, metadata={"help": "VQ-VAE: weight (beta) of the quantizer's commitment term ||z - sg(e)||^2"}
    )
    codebook_weight: float = field(
        default=1.0,
        metadata={
            "help": "VQ-VAE: weight of the codebook term ||sg(z) - e||^2 of a learned codebook (EMA codes have none)"
        },
    )
    entropy_weight: float = field(
        default=0.1,
        metadata={
            "help": "LFQ / BSQ: weight of the entropy loss entropy_per_sample - diversity_weight * entropy_codebook, "
            "after annealing"
        },
    )
    diversity_weight: float = field(
        default=1.0, metadata={"help": "LFQ / BSQ: gamma on the codebook-entropy term of the entropy loss"}
    )
    entropy_annealing_steps: int = field(
        default=0,
        metadata={
            "help": "LFQ / BSQ: the entropy weight goes linearly from entropy_annealing_start_factor * entropy_weight "
            "at optimiser step 0 to entropy_weight at this step (0: no annealing)"
        },
    )
    entropy_annealing_start_factor: float = field(
        default=1.0,
        metadata={"help": "LFQ / BSQ: the entropy weight at step 0, as a multiple of entropy_weight"},
    )

    def __post_init__(self):
        for weight in dataclasses.fields(self):
            value = getattr(self, weight.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{weight.name} must be a number >= 0, got {value!r}")
        if not isinstance(self.entropy_annealing_steps, int):
            raise ValueError(f"entropy_annealing_steps must be an int >= 0, got {self.entropy_annealing_steps!r}")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The weights' names, as the model config and the training config call them too."""
        return tuple(weight.name for weight in dataclasses.fields(cls))

    @classmethod
    def applicable(cls, loss_terms: tuple[str, ...]) -> tuple[str, ...]:
        """The weights that act on a quantizer returning `loss_terms`."""
        terms = set(loss_terms)
        return tuple(name for name in cls.names() if terms & set(WEIGHTED_TERMS[name]))

    @classmethod
    def from_config(cls, config, loss_terms: tuple[str, ...], **overrides) -> QuantizerLossWeights:
        """The weights a `VQVAEConfig` holds (`config.commitment_weight`, ...) for a quantizer
        returning `loss_terms`, with `overrides` (a training recipe's; None: the config's). Read
        from the config at each call, so a weight changed on the config is honoured. An override of a
        weight whose term the quantizer does not have is refused."""
        applicable = cls.applicable(loss_terms)
        given = {name: value for name, value in overrides.items() if value is not None}
        unknown = sorted(set(given) - set(cls.names()))
        if unknown:
            raise ValueError(f"unknown loss weights {unknown}; expected names in {cls.names()}")
        inapplicable = sorted(set(given) - set(applicable))
        if inapplicable:
            raise ValueError(
                f"{', '.join(f'{name}={given[name]!r}' for name in inapplicable)} given, but quantizer="
                f"{config.quantizer!r} has no such term (its weights: {', '.join(applicable) or 'none'}); drop it"
            )
        values = {name: getattr(config, name) for name in applicable}
        return cls(**{**values, **given})

    def entropy_weight_at(self, step: int | None) -> float:
        """The annealed entropy weight at optimiser step `step`; `None` (no step: `model(x).loss`)
        gives the weight after annealing."""
        if step is None:
            return self.entropy_weight
        return annealed_weight(
            self.entropy_weight, step, self.entropy_annealing_steps, self.entropy_annealing_start_factor
        )

    def __call__(self, terms: dict[str, torch.Tensor], step: int | None = None) -> tuple[torch.Tensor, dict]:
        """`(loss, logs)` of a quantizer's unweighted `terms` (scalars) at optimiser `step`; `logs`
        holds the entropy terms and the annealed entropy weight when there are entropy terms."""
        unknown = sorted(set(terms) - set(TERMS))
        if unknown:
            raise ValueError(f"unknown quantizer terms {unknown}; expected names in {TERMS}")
        parts, logs = [], {}
        if "commitment" in terms:
            parts.append(self.commitment_weight * terms["commitment"])
        if "codebook" in terms:
            parts.append(self.codebook_weight * terms["codebook"])
        if set(ENTROPY_TERMS) & set(terms):
            weight = self.entropy_weight_at(step)
            entropy = terms["entropy_per_sample"] - self.diversity_weight * terms["entropy_codebook"]
            parts.append(weight * entropy)
            logs = {**{name: terms[name] for name in ENTROPY_TERMS}, "entropy_weight": weight}
        if not parts:
            return torch.zeros(()), logs
        loss = parts[0]
        for part in parts[1:]:
            loss = loss + part
        return loss, logs

    def describe(self, loss_terms: tuple[str, ...]) -> str:
        """The weighted terms in words, for a model card: `"commitment (weight 0.25), ..."`."""
        words = []
        if "commitment" in loss_terms:
            words.append(f"commitment (weight {self.commitment_weight})")
        if "codebook" in loss_terms:
            words.append(f"codebook (weight {self.codebook_weight})")
        if set(ENTROPY_TERMS) & set(loss_terms):
            annealing = (
                f", from {self.entropy_annealing_start_factor}x annealed over {self.entropy_annealing_steps} steps"
                if self.entropy_annealing_steps
                else ""
            )
            words.append(f"entropy (weight {self.entropy_weight}, diversity {self.diversity_weight}{annealing})")
        return ", ".join(words) if words else "no quantizer terms"


# Weight name -> the terms it acts on.
WEIGHTED_TERMS = {
    "commitment_weight": ("commitment",),
    "codebook_weight": ("codebook",),
    "entropy_weight": ENTROPY_TERMS,
    "diversity_weight": ENTROPY_TERMS,
    "entropy_annealing_steps": ENTROPY_TERMS,
    "entropy_annealing_start_factor": ENTROPY_TERMS,
}
