"""Helpers of the fault-injection suite: tiny training runs in subprocesses (one process,
or two launched with `accelerate launch` on CPU / gloo), uninterrupted references, comparisons."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from test_training import TINY_MODEL as TINY_TRAINING_MODEL
from test_training import tiny_run_values

WORKER = Path(__file__).with_name("train_worker.py")
TINY_MODEL = dict(TINY_TRAINING_MODEL, codebook_size=32)
# Tiny models gain nothing from intra-op threads; one thread also fixes the float reduction order.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "ACCELERATE_USE_CPU": "1"}


def run_config(output_dir: Path, **overrides) -> dict:
    """An 8-step VQ-VAE run on the embedded digits with a checkpoint every 2 steps."""
    settings = dict(max_train_steps=8, checkpointing_steps=2, random_flip=True, center_crop=False)
    return tiny_run_values(output_dir, **{**settings, **overrides})


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def command(config: dict, processes: int = 1) -> list[str]:
    if processes == 1:
        return [sys.executable, str(WORKER), json.dumps(config)]
    return [
        *(sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes)),
        *("--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"),
        *("--main_process_port", str(_free_port()), str(WORKER), json.dumps(config)),
    ]


def start(config: dict, log: Path, processes: int = 1, **env) -> subprocess.Popen:
    """The run in its own process group (so a test can kill all of it), output into `log`."""
    with open(log, "w") as output:
        return subprocess.Popen(
            command(config, processes),
            env={**ENV, **env},
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def run(config: dict, processes: int = 1, timeout: float = 300, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        command(config, processes), env={**ENV, **env}, capture_output=True, text=True, timeout=timeout
    )


def kill_group(process: subprocess.Popen, *ranks) -> None:
    """SIGKILL the whole run: the launcher's process group and the `ranks` (psutil processes),
    also stopped ones. torch's elastic agent starts each rank in a session of its own, so the
    launcher's group does not hold them, and a rank that was stopped (SIGSTOP) when the agent
    shut down would be left behind, holding its memory, with the agent's SIGTERM pending."""
    try:
        os.killpg(process.pid, 9)
    except ProcessLookupError:
        pass
    import psutil

    for rank in ranks:
        try:
            rank.kill()
        except psutil.NoSuchProcess:
            pass
    process.wait(timeout=60)


def training_started(output_dir: Path, pid: int) -> bool:
    """Whether process `pid` holds the output folder's lock (it does from the start of training)."""
    lock = output_dir / ".latentcode.lock"
    return lock.is_file() and f"process {pid} " in lock.read_text()


def workers(process: subprocess.Popen, count: int, timeout: float = 120) -> list:
    """The `count` Python worker processes under an `accelerate launch`, by rank (from their
    environment), once they exist."""
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = {}
        for child in psutil.Process(process.pid).children(recursive=True):
            try:
                rank = child.environ().get("RANK")
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            if rank is not None and "train_worker.py" in " ".join(child.cmdline()):
                found[int(rank)] = child
        if len(found) == count:
            return [found[rank] for rank in range(count)]
        time.sleep(0.2)
    raise TimeoutError(f"the {count} workers did not start within {timeout} s")


def wait_for(predicate, timeout: float, poll: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll)
    return False


def weights(folder: Path, name: str = "model.safetensors") -> dict[str, torch.Tensor]:
    return load_file(folder / name)


def assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def train_here(config: dict):
    """Train in this process (no interpreter start-up), with accelerate's singletons reset."""
    from accelerate.state import AcceleratorState, GradientState

    from latentcode.training import load_config, train

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    try:
        return train(load_config(**config))
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
