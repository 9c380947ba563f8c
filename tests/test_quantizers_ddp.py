"""Two processes (DDP over gloo on CPU) hold identical codebooks: EMA statistics are
all-reduced, k-means initialisation, dead-code restarts and quantiser dropout are decided on
rank 0 and broadcast. The worker is tests/ddp_quantizers_script.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import free_port

from latentcode.modules.quantizers import VectorQuantizer

SCRIPT = Path(__file__).with_name("ddp_quantizers_script.py")


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    output = tmp_path_factory.mktemp("ddp") / "results.pt"
    accelerate = Path(sys.executable).with_name("accelerate")
    command = [
        str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
        str(SCRIPT), str(output),
    ]  # fmt: skip
    environment = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=environment)
    assert result.returncode == 0, result.stderr[-4000:]
    return torch.load(output)


# The state each quantizer trains (a name suffix), and the state that never changes.
TRAINED_STATE = {
    "vq": "codebook",
    "vq_ema_expiry": "codebook",
    "residual": "codebook",
    "simvq": "codebook_transform.weight",
}
FROZEN_STATE = ("frozen_basis",)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TRAINED_STATE))
def test_replicas_hold_identical_codebooks_after_training(ddp_results, name):
    assert ddp_results["world_size"] == 2
    initial, final = ddp_results[name]["initial"], ddp_results[name]["final"]
    assert any(key.endswith(TRAINED_STATE[name]) for key in final)
    for key, per_rank in final.items():
        assert torch.equal(per_rank[0], per_rank[1]), f"{key} differs between ranks"
        if key.endswith(FROZEN_STATE):
            assert torch.equal(per_rank, initial[key]), f"{key} changed"
        else:
            assert not torch.equal(per_rank, initial[key]), f"{key} never changed"


@pytest.mark.slow
def test_two_process_ema_step_equals_one_process_on_both_batches(ddp_results):
    reference = VectorQuantizer(8, 4, codebook_ema=True, codebook_ema_decay=0.8).train()
    reference.load_state_dict(ddp_results["ema_initial"])
    # One process that sees both ranks' vectors (different counts per rank) as one batch.
    rows = torch.cat([latents.permute(0, 2, 3, 1).reshape(-1, 4) for latents in ddp_results["ema_latents"]])
    reference(rows[:, :, None, None])
    for key, per_rank in ddp_results["ema_step"].items():
        assert torch.equal(per_rank[0], per_rank[1]), f"{key} differs between ranks"
        torch.testing.assert_close(per_rank[0], reference.state_dict()[key].float(), msg=key)
    assert not torch.equal(ddp_results["ema_step"]["codebook"][0], ddp_results["ema_initial"]["codebook"])
