"""Resumable checkpoints, written atomically.

A checkpoint is the folder `output_dir/checkpoint-STEP` holding `accelerator.save_state`'s files
(models, optimisers, GradScaler, per-process RNG states, registered objects such as the
scheduler and the EMA), `trainer_state.json` (step and counters) and one
`process_state_RANK.pt` per process (its position in the data stream and the quantizers'
per-process usage windows).

Atomicity: everything is written into `.checkpoint-STEP.tmp` and only then renamed to
`checkpoint-STEP` (a rename is atomic on POSIX file systems). A process killed while writing
leaves a `.tmp` folder that is never mistaken for a checkpoint and is removed by the next save;
`resume_from_checkpoint="latest"` finds the last complete one.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

import torch
from accelerate import Accelerator

logger = logging.getLogger(__name__)

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
TRAINER_STATE = "trainer_state.json"


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints in `output_dir`, oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))]
    return [path for _, path in sorted(found)]


def resolve_checkpoint(output_dir: str | os.PathLike, spec: str | None) -> Path | None:
    """The checkpoint folder to resume from: `None` for none, `"latest"` for the newest complete
    one in `output_dir` (`None` when there is none yet: a fresh run), or an explicit folder."""
    if spec is None:
        return None
    if spec == "latest":
        checkpoints = list_checkpoints(output_dir)
        if not checkpoints:
            logger.info("resume_from_checkpoint=latest: no checkpoint in %s yet, starting a new run", output_dir)
            return None
        return checkpoints[-1]
    path = Path(spec)
    if not (path / TRAINER_STATE).is_file():
        raise ValueError(
            f"resume_from_checkpoint={spec!r} is not a complete checkpoint folder (no {TRAINER_STATE}); "
            "use 'latest' or a checkpoint-STEP folder"
        )
    return path


def _fsync_tree(folder: Path) -> None:
    """Flush the files to disk before the rename publishes them."""
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


def save_checkpoint(
    accelerator: Accelerator,
    output_dir: str | os.PathLike,
    step: int,
    trainer_state: dict,
    process_state: dict,
    total_limit: int | None = None,
) -> Path:
    """Write `checkpoint-{step}` atomically; keep only the newest `total_limit` checkpoints.

    Collective: every process must call it (each writes its RNG and data states).
    """
    root = Path(output_dir)
    final = root / f"checkpoint-{step}"
    temporary = root / f".checkpoint-{step}.tmp"
    if accelerator.is_main_process:
        for stale in root.glob(".checkpoint-*.tmp"):
            shutil.rmtree(stale)
        temporary.mkdir(parents=True)
    accelerator.wait_for_everyone()

    accelerator.save_state(str(temporary))
    torch.save(process_state, temporary / f"process_state_{accelerator.process_index}.pt")
    if accelerator.is_main_process:
        (temporary / TRAINER_STATE).write_text(
            json.dumps({**trainer_state, "num_processes": accelerator.num_processes})
        )
    accelerator.wait_for_everyone()

    if accelerator.is_main_process:
        _fsync_tree(temporary)
        retired = root / f".checkpoint-{step}.old.tmp"
        if final.exists():  # re-saving a step after resuming from an earlier checkpoint
            os.replace(final, retired)
        os.replace(temporary, final)
        shutil.rmtree(retired, ignore_errors=True)
        if total_limit is not None:
            for old in list_checkpoints(root)[:-total_limit]:
                shutil.rmtree(old)
        logger.info("saved checkpoint %s", final)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Accelerator, path: str | os.PathLike) -> tuple[dict, dict]:
    """Restore what `accelerator` tracks from `path`; return `(trainer_state, process_state)` for
    this process."""
    path = Path(path)
    trainer_state = json.loads((path / TRAINER_STATE).read_text())
    if trainer_state["num_processes"] != accelerator.num_processes:
        raise ValueError(
            f"{path} was written by {trainer_state['num_processes']} processes, this run has "
            f"{accelerator.num_processes}; exact resume needs the same number (each holds its own data position)"
        )
    accelerator.load_state(str(path))
    process_state = torch.load(path / f"process_state_{accelerator.process_index}.pt", weights_only=True)
    return trainer_state, process_state
