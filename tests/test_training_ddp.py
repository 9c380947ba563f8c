"""Two-process DDP training on CPU (gloo), launched the way users launch it: `accelerate launch`,
on one machine with two processes, and as two "machines" on localhost (`--num_machines 2
--machine_rank R --main_process_ip 127.0.0.1`, one process each) the way a cluster launches
them. The one-machine run is made once (a module fixture): the replicas stay identical and the
loss falls, and the two machines read disjoint parts of the data and end with its weights."""

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

# Run in each process; writes NAME-rankR.safetensors (autoencoder and discriminator) and
# NAME-rankR.json (losses, the modules each forward call went through, the first batch, and the
# (shard, row) of each image this process reads in its first epoch) into the folder argv[2].
REPLICA = """
import json, sys
from pathlib import Path
from safetensors.torch import save_file
from latentcode.training import load_config, build_engine

values, out = json.loads(sys.argv[1]), Path(sys.argv[2])
name = values["output_dir"].rsplit("/", 1)[-1]
engine = build_engine(load_config(**values))
rank, order = engine.accelerator.process_index, engine.batches.order
read = [list(order.locate(0, position)) for position in range(order.length)]
forward_calls = []
engine.task.model.register_forward_pre_hook(lambda module, args: forward_calls.append(type(module).__name__))
start = engine.batches.state_dict()
first_batch = engine.batches.next_batch()
engine.batches.load_state_dict(start)

result = engine.run()
discriminator = engine.unwrap(engine.parts[1].module)
tensors = {f"model.{k}": v for k, v in result.model.state_dict().items()}
tensors.update({f"discriminator.{k}": v for k, v in discriminator.state_dict().items()})
save_file({k: v.contiguous() for k, v in tensors.items()}, out / f"{name}-rank{rank}.safetensors")
(out / f"{name}-rank{rank}.json").write_text(json.dumps({
    "losses": result.losses,
    "forward_calls": forward_calls,
    "first_batch": first_batch.flatten().tolist(),
    "read": read,
}))
"""
STEPS, DISC_START = 24, 16


def _values(output_dir) -> dict:
    """The run's settings: a discriminator that joins at DISC_START, a small shuffle buffer."""
    return tiny_run_values(
        output_dir,
        max_train_steps=STEPS,
        learning_rate=2e-3,
        lr_warmup_steps=2,
        disc_weight=0.5,
        disc_start=DISC_START,
        disc_num_layers=2,
        disc_channels=8,
        shuffle_buffer_size=100,
    )


def _launch(folder, name: str, machines: int = 1, machine_rank: int = 0, port: int | None = None):
    """`accelerate launch` of REPLICA, 2 processes in all; returns the running launcher."""
    script = folder / "replica.py"
    script.write_text(REPLICA)
    command = [
        *(sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"),
        *("--num_machines", str(machines), "--machine_rank", str(machine_rank)),
        *("--main_process_ip", "127.0.0.1", "--main_process_port", str(port or free_port())),
        *("--mixed_precision", "no", "--dynamo_backend", "no"),
        *(str(script), json.dumps(_values(folder / name)), str(folder)),
    ]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(process: subprocess.Popen) -> None:
    _, stderr = process.communicate(timeout=900)
    assert process.returncode == 0, stderr[-4000:]


def _results(folder, name: str, rank: int) -> tuple[dict[str, torch.Tensor], dict]:
    """(weights, report) of process `rank` of the run `name`."""
    return load_file(folder / f"{name}-rank{rank}.safetensors"), json.loads(
        (folder / f"{name}-rank{rank}.json").read_text()
    )


@pytest.fixture(scope="module")
def one_machine(tmp_path_factory):
    """The folder of the one-machine, two-process run ("single-rank0.*", "single-rank1.*")."""
    folder = tmp_path_factory.mktemp("one-machine")
    _finish(_launch(folder, "single"))
    return folder


@pytest.mark.slow
def test_two_process_ddp_replicas_stay_identical_and_loss_falls(one_machine):
    (weights0, report0), (weights1, report1) = (_results(one_machine, "single", rank) for rank in (0, 1))
    # Each process reads its own images ...
    assert report0["first_batch"] != report1["first_batch"]
    # ... and every generator forward goes through DDP (the unwrapped model would skip gradient sync) ...
    for report in (report0, report1):
        assert report["forward_calls"] == ["DistributedDataParallel"] * STEPS
    # ... so both replicas end with the same weights, autoencoder and discriminator alike.
    assert weights0.keys() == weights1.keys()
    assert any(key.startswith("discriminator.") for key in weights0)
    for key in weights0:
        torch.testing.assert_close(weights0[key], weights1[key], rtol=0, atol=0, msg=key)
    # The loss falls on real images (compared before the adversarial term joins at disc_start).
    losses = report0["losses"]
    assert sum(losses[DISC_START - 4 : DISC_START]) < 0.6 * sum(losses[:4]), losses


@pytest.mark.slow
def test_two_machines_read_disjoint_data_and_match_one_machine_with_two_processes(one_machine, tmp_path):
    port = free_port()  # 2 machines x 1 process; each machine its own output folder, as on a cluster
    machines = [_launch(tmp_path, f"machine{rank}", 2, rank, port) for rank in (0, 1)]
    for process in machines:
        _finish(process)

    machine = [_results(tmp_path, f"machine{rank}", rank) for rank in (0, 1)]
    single = [_results(one_machine, "single", rank) for rank in (0, 1)]
    read = [report["read"] for _, report in machine]
    rows = [{tuple(example) for example in part} for part in read]
    assert len(rows[0]) == len(read[0]) and len(rows[1]) == len(read[1])
    assert not rows[0] & rows[1]  # disjoint: no image on both machines in an epoch
    assert len(rows[0] | rows[1]) == 1618 - 8  # together, the digits' train split minus the validation images
    assert read == [report["read"] for _, report in single]
    for key, value in single[0][0].items():
        for weights in (machine[0][0], machine[1][0], single[1][0]):
            torch.testing.assert_close(weights[key], value, rtol=0, atol=0, msg=key)


# Each process's clock runs at its own rate, as two machines' clocks would differ by start-up and
# load. Simulated, so that the step count does not depend on this machine's speed: the main
# process's clock reads 0.125 s per step done and the second one's 1.5 times that (binary
# fractions: the sums are exact). Writes rank<R>.json with the steps and losses.
SKEWED_CLOCKS = """
import json, sys
from pathlib import Path
from latentcode.training import load_config, build_engine

values, out = json.loads(sys.argv[1]), Path(sys.argv[2])
engine = build_engine(load_config(**values))
rank = engine.accelerator.process_index
engine.clock = lambda: 0.125 * (1.0 + 0.5 * rank) * engine.global_step
result = engine.run()
(out / f"rank{rank}.json").write_text(json.dumps({"steps": engine.global_step, "losses": result.losses}))
"""


@pytest.mark.slow
def test_processes_with_a_time_budget_fit_the_same_step_count_from_the_main_process_clock(tmp_path):
    # Were each process to fit its own count from its own clock, the faster clock's process would
    # stop first and leave the other waiting in a gradient reduction (a ProcessLostError after
    # ddp_timeout). All fit from the main process's clock, so both stop at the same step: the
    # 4 s budget at the main process's 0.125 s per step.
    script = tmp_path / "skewed.py"
    script.write_text(SKEWED_CLOCKS)
    values = tiny_run_values(tmp_path / "run", max_train_steps=None, max_train_time=4, ddp_timeout=60)
    command = [
        *(sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"),
        *("--num_machines", "1", "--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port())),
        *("--mixed_precision", "no", "--dynamo_backend", "no", str(script), json.dumps(values), str(tmp_path)),
    ]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    _finish(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    reports = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert reports[0]["steps"] == reports[1]["steps"] == len(reports[0]["losses"]) == 32
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["details"]["global_step"] == reports[0]["steps"] and metrics["details"]["max_train_time"] == 4
