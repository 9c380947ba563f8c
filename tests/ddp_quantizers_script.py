"""Run by tests/test_quantizers_ddp.py under `accelerate launch --multi_gpu --num_processes 2`.

Each rank trains a small encoder + quantizer on its own data under DDP, then every rank's
quantizer state is gathered and rank 0 saves it, with the inputs of one EMA step for the test
to replay in a single process, to the file named by argv[1].
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
from accelerate import Accelerator

from latentcode.modules.quantizers import (
    QuantizerLossWeights,
    ResidualVectorQuantizer,
    SimVectorQuantizer,
    VectorQuantizer,
)


class EncoderAndQuantizer(torch.nn.Module):
    def __init__(self, quantizer: torch.nn.Module):
        super().__init__()
        self.encoder = torch.nn.Conv2d(3, 4, kernel_size=2, stride=2)
        self.quantizer = quantizer

    def forward(self, images):
        return self.quantizer(self.encoder(images))


def rank_batch(rank: int, step: int) -> torch.Tensor:
    """Different data on every rank (and a different size, to exercise uneven gathers)."""
    generator = torch.Generator().manual_seed(1000 * rank + step)
    return torch.randn(3 + rank, 3, 8, 8, generator=generator) * (1 + rank)


def gathered_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every floating tensor of the module's state, stacked over ranks: `[world, ...]`."""
    state = {}
    for name, tensor in module.state_dict().items():
        tensor = tensor.detach().float().contiguous()
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor)
        state[name] = torch.stack(parts)
    return state


def main(output_path: str) -> None:
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    rank = accelerator.process_index
    results = {"world_size": accelerator.num_processes}

    # 1. The recipe: k-means init, EMA, dead-code restarts (window of 64 tokens per process),
    #    the same with EMA expiry (every step, uneven batches), a residual VQ with quantiser
    #    dropout and the rotation trick, SimVQ (its frozen basis is drawn differently on each
    #    rank before DDP broadcasts it), trained together with an encoder under DDP. (BSQ / LFQ
    #    hold no state: their entropy annealing is the objective's, a function of the step.)
    for name, quantizer in {
        "vq": VectorQuantizer(
            32, 4, codebook_ema=True, codebook_ema_decay=0.9, kmeans_init=True, dead_code_restart=True, usage_window=64
        ),
        "vq_ema_expiry": VectorQuantizer(
            32,
            4,
            codebook_ema=True,
            codebook_ema_decay=0.9,
            kmeans_init=True,
            dead_code_restart=True,
            dead_code_threshold=0.5,
        ),
        "residual": ResidualVectorQuantizer(
            3,
            16,
            4,
            quantizer_dropout=0.5,
            codebook_ema=True,
            codebook_ema_decay=0.9,
            kmeans_init=True,
            dead_code_restart=True,
            usage_window=64,
            gradient_estimator="rotation",
        ),
        "simvq": SimVectorQuantizer(32, 4, usage_window=64),
    }.items():
        torch.manual_seed(rank)  # replicas start from different random states on purpose
        model = EncoderAndQuantizer(quantizer)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        model, optimizer = accelerator.prepare(model, optimizer)
        model.train()
        initial = gathered_state(accelerator.unwrap_model(model).quantizer)
        for step in range(12):
            output = model(rank_batch(rank, step))
            loss, _ = QuantizerLossWeights()(output.terms)
            accelerator.backward(loss + output.quantized.square().mean())
            optimizer.step()
            optimizer.zero_grad()
        results[name] = {"initial": initial, "final": gathered_state(accelerator.unwrap_model(model).quantizer)}

    # 2. One EMA step on every rank's own latents; the test replays it in one process on all of them.
    torch.manual_seed(0)
    quantizer = VectorQuantizer(8, 4, codebook_ema=True, codebook_ema_decay=0.8).train()
    results["ema_initial"] = {name: tensor.clone() for name, tensor in quantizer.state_dict().items()}
    latents = [
        torch.randn(2 + r, 4, 3, 3, generator=torch.Generator().manual_seed(r))
        for r in range(accelerator.num_processes)
    ]
    quantizer(latents[rank])
    results["ema_latents"] = latents
    results["ema_step"] = gathered_state(quantizer)
    if accelerator.is_main_process:
        torch.save(results, output_path)
    accelerator.wait_for_everyone()
    # Tear the process group down before the interpreter does: left to exit, gloo's threads can be
    # destroyed while joinable ("terminate called without an active exception", seen once in CI).
    accelerator.end_training()


if __name__ == "__main__":
    main(sys.argv[1])
