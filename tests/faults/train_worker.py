"""Runs `latentcode.training.train` (or a training script) in a subprocess for the fault tests,
optionally with a fault.

    python train_worker.py CONFIG_JSON
    accelerate launch ... train_worker.py CONFIG_JSON
    python train_worker.py training/train_prior.py --config ... (a script with its arguments)

Faults (environment):
    FAULT_KILL_IN_SAVE="checkpoint-4"  SIGKILL this process after `save_state` wrote that
        checkpoint's files into its temporary folder, before the rename (rank FAULT_RANK, default 0).
    FAULT_ENOSPC_IN_SAVE="checkpoint-4"  the checkpoint's writes fail with a full disk (ENOSPC), as
        torch's C++ writer reports it, on rank FAULT_RANK.
"""

import json
import os
import signal
import sys

import torch
from accelerate import Accelerator

kill_in, enospc_in = os.environ.get("FAULT_KILL_IN_SAVE"), os.environ.get("FAULT_ENOSPC_IN_SAVE")
fault_rank = int(os.environ.get("FAULT_RANK", "0"))
save_state = Accelerator.save_state


def save_state_with_fault(self, output_dir, **kwargs):
    mine = self.process_index == fault_rank
    if enospc_in and enospc_in in str(output_dir) and mine:
        raise RuntimeError(
            "[enforce fail at inline_container.cc:664] . unexpected pos; basic_ios::clear: iostream error"
        )
    result = save_state(self, output_dir, **kwargs)
    if kill_in and kill_in in str(output_dir) and mine:
        os.kill(os.getpid(), signal.SIGKILL)
    return result


Accelerator.save_state = save_state_with_fault
torch.set_num_threads(1)
if sys.argv[1].endswith(".py"):
    import runpy

    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
else:
    from latentcode.training import load_config, train

    train(load_config(**json.loads(sys.argv[1])))
