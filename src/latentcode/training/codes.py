"""Second stages trained from a tokenised dataset (`latentcode-tokenize` output) instead of
encoding images on the fly: the batches the engine reads, and the held-out rows.

The rows of a tokenised dataset are the source's readable images in the split's own order. The
first `num_validation_images` images (both orientations when the dataset has flipped copies) are
held out, as `latentcode.data.build_image_data` holds out the first readable images, and the
training rows are shuffled by the same `EpochOrder` as images (seed, `shuffle_buffer_size`,
processes). For a one-shard source without unreadable files (a parquet file, `builtin:digits`)
and without random flips, a run from codes therefore reads the very images the on-the-fly run
reads, batch for batch; otherwise the order is another shuffle of the same rows.
"""

from __future__ import annotations

from collections.abc import Callable

import datasets
import torch

from ..data.batches import EpochOrder
from ..data.images import CorruptImages
from ..tokenize import load_codes


class CodeBatches:
    """An endless, resumable stream of batches of tokenised rows for one process, with the
    interface of `latentcode.data.ImageBatches` that the engine uses (`next_batch`,
    `state_dict` / `load_state_dict`: constant-time resume, corrupt-image counters: always 0,
    the tokenisation skipped unreadable files).

    `to_batch` turns the rows of one batch (a dict of torch columns) into the tensor the task's
    loss takes.
    """

    def __init__(
        self,
        codes: datasets.Dataset,
        to_batch: Callable[[dict], torch.Tensor],
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle_buffer_size: int = 1000,
    ):
        self.codes, self.to_batch, self.batch_size = codes, to_batch, batch_size
        self.order = EpochOrder([len(codes)], 0, seed, shuffle_buffer_size, rank, world_size)
        self.epoch = self.position = 0
        self.corrupt = CorruptImages(f"training image on rank {rank}")
        self.held_out_corrupt = CorruptImages("validation image", log=False)
        if self.order.length == 0:
            raise ValueError(
                f"the tokenised dataset leaves no training rows for process {rank} of {world_size} "
                f"({len(codes)} rows after the held-out ones); tokenise more images, or use fewer processes"
            )

    @property
    def corrupt_images(self) -> int:
        return 0

    def next_batch(self) -> torch.Tensor:
        """The next `batch_size` rows (an epoch ends mid-batch: the next one's first rows follow)."""
        rows = []
        while len(rows) < self.batch_size:
            if self.position == self.order.length:
                self.epoch, self.position = self.epoch + 1, 0
            rows.append(self.order.locate(self.epoch, self.position)[1])
            self.position += 1
        return self.to_batch(self.codes[rows])

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "corrupt_images": self.corrupt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = state["epoch"], state["position"]


def code_data(
    path: str,
    model,
    config,
    to_batch: Callable[[dict], torch.Tensor],
    code_shape: list[int],
    rank: int = 0,
    world_size: int = 1,
) -> tuple[CodeBatches, torch.Tensor]:
    """Training batches from the tokenised dataset `path` (folder or Hub dataset id) of `model`
    for process `rank` of `world_size`, and the held-out rows as one batch (`to_batch` of them).

    `config`: the script's `RunConfig` (batch size, seed, `num_validation_images`,
    `shuffle_buffer_size`). Refuses codes of another model (config or weights) and codes of
    another shape than `code_shape` (another resolution), naming the fix.
    """
    codes = load_codes(path, expected_model=model)
    if len(codes) == 0:
        raise ValueError(f"the tokenised dataset {path!r} has no rows")
    shape = codes[0]["latent_shape"].tolist()
    if shape != list(code_shape):
        raise ValueError(
            f"{path!r} holds codes of shape {shape}, this run needs {list(code_shape)} (its --resolution); "
            "tokenise at this resolution or set --resolution to the tokenised one"
        )
    rows = codes.select_columns(["key", "flipped"])[:]  # every row's key and flipped flag
    held_out = (~rows["flipped"].bool()).nonzero().flatten()[: max(config.data.num_validation_images, 0)].tolist()
    held_out_keys = {rows["key"][index] for index in held_out}
    train = [index for index, key in enumerate(rows["key"]) if key not in held_out_keys]
    batches = CodeBatches(
        codes.select(train),
        to_batch,
        config.optimization.train_batch_size,
        config.seed,
        rank,
        world_size,
        config.data.shuffle_buffer_size,
    )
    validation = to_batch(codes[held_out]) if held_out else None
    return batches, validation
