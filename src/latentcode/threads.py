"""`--threads N`: how many CPU cores a command or a training run computes on, one flag everywhere.

torch's default is one intra-op thread per physical core; on a shared machine, or to reproduce
the README's "one core" figures, `--threads 1` pins a run to one. The flag sets torch's intra-op
threads, which sets the OpenMP and MKL thread counts of this process too (`torch.set_num_threads`
does both), and `OMP_NUM_THREADS` / `MKL_NUM_THREADS` for the processes it starts afterwards.

This module imports torch only when the threads are set, so that `--help` stays instant.
"""

from __future__ import annotations

import argparse
import os

THREADS_HELP = (
    "CPU threads torch computes with (intra-op; sets OpenMP / MKL too, as torch.set_num_threads does): "
    "1 for the README's one-core figures (default: torch's own count, one per physical core)"
)


def add_threads_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """Add `--threads N` (default `None`: leave torch's thread count as it is)."""
    parser.add_argument("--threads", type=int, default=None, metavar="N", help=THREADS_HELP)


def check_threads(threads: int | None) -> None:
    """Raise a ValueError unless `threads` is None or a positive number."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be a whole number >= 1 (or unset for torch's default), got {threads!r}")


def set_num_threads(threads: int | None) -> int:
    """Compute with `threads` intra-op threads (`None`: keep torch's count); returns the count in
    effect, `torch.get_num_threads()`."""
    check_threads(threads)
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
        # This process's OpenMP / MKL pools follow set_num_threads; processes started from now on
        # (DataLoader workers, subprocesses) read the environment.
        for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[variable] = str(threads)
    return torch.get_num_threads()
