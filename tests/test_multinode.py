"""Two "machines" on localhost (`accelerate launch --num_machines 2 --machine_rank R
--main_process_ip 127.0.0.1`, one process each), launched the way a cluster launches them:
the machines read disjoint parts of the data and end with the weights of one machine running
two processes."""

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

values, out = json.loads(sys.argv[1]), Path(sys.argv[2])
engine = trainer(load_config(**values))
rank, order = engine.accelerator.process_index, engine.batches.order
read = [list(order.locate(0, position)) for position in range(order.length)]  # this process's first epoch
result = engine.run()
state = {key: value.contiguous() for key, value in result.model.state_dict().items()}
save_file(state, out / f"{values['output_dir'].rsplit('/', 1)[-1]}-rank{rank}.safetensors")
(out / f"{values['output_dir'].rsplit('/', 1)[-1]}-rank{rank}.json").write_text(json.dumps(read))
"""


def _launch(script, values: dict, out, machines: int, machine_rank: int, port: int) -> subprocess.Popen:
    command = [
        *(sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"),
        *("--num_machines", str(machines), "--machine_rank", str(machine_rank)),
        *("--main_process_ip", "127.0.0.1", "--main_process_port", str(port)),
        *("--mixed_precision", "no", "--dynamo_backend", "no"),
        *(str(script), json.dumps(values), str(out)),
    ]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(process: subprocess.Popen) -> None:
    _, stderr = process.communicate(timeout=900)
    assert process.returncode == 0, stderr[-4000:]


@pytest.mark.slow
def test_two_machines_read_disjoint_data_and_match_one_machine_with_two_processes(tmp_path):
    script = tmp_path / "replica.py"
    script.write_text(REPLICA)
    steps = dict(max_train_steps=8, shuffle_buffer_size=100)

    port = free_port()  # 2 machines x 1 process; each machine its own output folder, as on a cluster
    machines = [
        _launch(script, tiny_run_values(tmp_path / f"machine{rank}", **steps), tmp_path, 2, rank, port)
        for rank in (0, 1)
    ]
    for process in machines:
        _finish(process)
    _finish(_launch(script, tiny_run_values(tmp_path / "single", **steps), tmp_path, 1, 0, free_port()))

    read = [json.loads((tmp_path / f"machine{rank}-rank{rank}.json").read_text()) for rank in (0, 1)]
    rows = [{tuple(example) for example in part} for part in read]
    assert len(rows[0]) == len(read[0]) and len(rows[1]) == len(read[1])
    assert not rows[0] & rows[1]  # disjoint: no image on both machines in an epoch
    assert len(rows[0] | rows[1]) == 1618 - 8  # together, the digits' train split minus the validation images
    assert read == [json.loads((tmp_path / f"single-rank{rank}.json").read_text()) for rank in (0, 1)]

    weights = {name: load_file(tmp_path / f"{name}.safetensors") for name in ("machine0-rank0", "machine1-rank1")}
    single = {rank: load_file(tmp_path / f"single-rank{rank}.safetensors") for rank in (0, 1)}
    for key, value in single[0].items():
        torch.testing.assert_close(weights["machine0-rank0"][key], value, rtol=0, atol=0, msg=key)
        torch.testing.assert_close(weights["machine1-rank1"][key], value, rtol=0, atol=0, msg=key)
        torch.testing.assert_close(single[1][key], value, rtol=0, atol=0, msg=key)
