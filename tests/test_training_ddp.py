"""Two-process DDP training on CPU (gloo), launched the way users launch it: `accelerate launch`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import free_port
from safetensors.torch import load_file
from test_training import tiny_run_values

REPLICA = """
import json, sys
from pathlib import Path
from safetensors.torch import save_file
from latentcode.training import load_config, trainer

engine = trainer(load_config(**json.loads(sys.argv[1])))
rank, out = engine.accelerator.process_index, Path(sys.argv[2])
forward_calls = []
engine.task.model.register_forward_pre_hook(lambda module, args: forward_calls.append(type(module).__name__))
start = engine.batches.state_dict()
first_batch = engine.batches.next_batch()
engine.batches.load_state_dict(start)

result = engine.run()
discriminator = engine.unwrap(engine.parts[1].module)
tensors = {f"model.{k}": v for k, v in result.model.state_dict().items()}
tensors.update({f"discriminator.{k}": v for k, v in discriminator.state_dict().items()})
save_file({k: v.contiguous() for k, v in tensors.items()}, out / f"rank{rank}.safetensors")
(out / f"rank{rank}.json").write_text(json.dumps({
    "losses": result.losses,
    "forward_calls": forward_calls,
    "first_batch": first_batch.flatten().tolist(),
}))
"""


@pytest.mark.slow
def test_two_process_ddp_replicas_stay_identical_and_loss_falls(tmp_path):
    steps, disc_start = 24, 16
    config = tiny_run_values(
        tmp_path / "run",
        max_train_steps=steps,
        learning_rate=2e-3,
        lr_warmup_steps=2,
        disc_weight=0.5,
        disc_start=disc_start,
        disc_num_layers=2,
        disc_channels=8,
    )
    launch = [
        *(sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"),
        *("--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"),
        *("--main_process_port", str(free_port())),
    ]
    script = tmp_path / "replica.py"
    script.write_text(REPLICA)
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [*launch, str(script), json.dumps(config), str(tmp_path)], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr[-4000:]

    replicas = [load_file(tmp_path / f"rank{rank}.safetensors") for rank in (0, 1)]
    reports = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    # Each process reads its own images ...
    assert reports[0]["first_batch"] != reports[1]["first_batch"]
    # ... and every generator forward goes through DDP (the unwrapped model would skip gradient sync) ...
    for report in reports:
        assert report["forward_calls"] == ["DistributedDataParallel"] * steps
    # ... so both replicas end with the same weights, autoencoder and discriminator alike.
    assert replicas[0].keys() == replicas[1].keys()
    assert any(key.startswith("discriminator.") for key in replicas[0])
    for key in replicas[0]:
        torch.testing.assert_close(replicas[0][key], replicas[1][key], rtol=0, atol=0, msg=key)
    # The loss falls on real images (compared before the adversarial term joins at disc_start).
    losses = reports[0]["losses"]
    assert sum(losses[disc_start - 4 : disc_start]) < 0.6 * sum(losses[:4]), losses
