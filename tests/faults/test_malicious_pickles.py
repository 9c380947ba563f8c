"""A malicious pickle in every loader we expose never executes: conversion checkpoints, a
`pytorch_model.bin` beside a config, and each pickle of a training checkpoint on resume."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from faults.helpers import TINY_MODEL, run_config, train_here

pytestmark = pytest.mark.slow


class RunsCode:
    """Unpickled by plain pickle, this runs a shell command that creates `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_conversion_and_from_pretrained_never_execute_a_pickle(tmp_path):
    from transformers import AutoModel

    from latentcode import VQVAEConfig, VQVAEModel
    from latentcode.conversion import CheckpointError, from_compvis

    marker = tmp_path / "executed"
    torch.save({"state_dict": {"encoder.conv_in.weight": RunsCode(marker)}}, tmp_path / "model.ckpt")
    with pytest.raises(CheckpointError, match="refused to load .*model.ckpt.*references Python code"):
        from_compvis(tmp_path / "model.ckpt")

    folder = tmp_path / "pretrained"
    VQVAEConfig(**TINY_MODEL).save_pretrained(folder)
    torch.save({"encoder.conv_in.weight": RunsCode(marker)}, folder / "pytorch_model.bin")
    for loader in (VQVAEModel, AutoModel):
        with pytest.raises(Exception) as refused:  # transformers' own error type for a refused pickle
            loader.from_pretrained(folder)
        assert "weights_only" in str(refused.value) or "Unpickl" in str(refused.value), refused.value
    assert not marker.exists()


@pytest.mark.parametrize("pickled", ["custom_checkpoint_0.pkl", "process_state_0.pt", "optimizer.bin"])
def test_a_tampered_training_checkpoint_never_executes_on_resume(tmp_path, pickled):
    folder = tmp_path / "run"
    train_here(run_config(folder, max_train_steps=2))
    marker = tmp_path / "executed"
    torch.save({"state": RunsCode(marker)}, folder / "checkpoint-2" / pickled)
    with pytest.raises(Exception) as refused:
        train_here(run_config(folder, max_train_steps=4, resume_from_checkpoint="latest"))
    assert not marker.exists(), f"{pickled} ran code"
    assert pickled in str(refused.value) or "weights_only" in str(refused.value) or "Unpickl" in str(refused.value)
