"""Resumable checkpoints, written atomically.

A checkpoint is the folder `output_dir/checkpoint-STEP` holding `accelerator.save_state`'s files
(models, optimisers, GradScaler, per-process RNG states, registered objects such as the
scheduler and the EMA), `trainer_state.json` (step and counters) and one
`process_state_RANK.pt` per process (its position in the data stream and the quantizers'
per-process usage windows).

Atomicity: everything is written into `.checkpoint-STEP.tmp`, flushed (`fsync`) and only then
renamed to `checkpoint-STEP` (a rename is atomic on POSIX file systems); the output folder is
fsync'd after the rename so that a power loss cannot undo it. A process killed while writing
leaves a `.tmp` folder that is never mistaken for a checkpoint and is removed by the next save;
`resume_from_checkpoint="latest"` finds the last complete one. A write that fails (a full disk)
removes its `.tmp` folder and raises [`CheckpointWriteError`] naming the file system and its
free space; the previous checkpoints are untouched.

One run per output folder: [`OutputDirLock`] takes an exclusive lock (`flock`, released by
the kernel when the process dies, also by kill -9) that a second run reports with the holder's
process id instead of deleting the first run's temporary folders.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path

import torch
from accelerate import Accelerator

logger = logging.getLogger(__name__)

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
TRAINER_STATE = "trainer_state.json"
LOCK_FILE = ".latentcode.lock"


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (disk full, permissions, I/O error); nothing was lost."""


class OutputDirError(RuntimeError):
    """The output folder cannot be used: not writable, or in use by another run."""


def describe_disk(path: str | os.PathLike) -> str:
    """`"the file system mounted at /data (12.5 MiB free of 2.0 GiB)"` for the folder `path`."""
    folder = Path(path).resolve()
    while not folder.exists():
        folder = folder.parent
    mount = folder
    while not os.path.ismount(mount):
        mount = mount.parent
    usage = shutil.disk_usage(folder)
    return f"the file system mounted at {mount} ({usage.free / 2**20:.1f} MiB free of {usage.total / 2**20:.1f} MiB)"


def check_output_dir(output_dir: str | os.PathLike) -> None:
    """Create `output_dir` and write (and flush) a probe file in it, so that an unwritable or
    full disk is found before training, not at the first save. Raises [`OutputDirError`]."""
    root = Path(output_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".write-probe-") as probe:
            probe.write(b"\0" * 4096)
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as error:
        raise OutputDirError(
            f"output_dir {str(root)!r} is not writable: {error.strerror or error}; {describe_disk(root)}"
        ) from error


class OutputDirLock:
    """The exclusive lock of `output_dir` for this process (`flock`: it lasts until released or
    the process ends). Taking it raises [`OutputDirError`] naming the process that holds it."""

    def __init__(self, output_dir: str | os.PathLike):
        self.path = path = Path(output_dir) / LOCK_FILE
        handle = open(path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "an unknown process"
            handle.close()
            raise OutputDirError(
                f"output_dir {str(output_dir)!r} is in use by another training run ({holder}, lock {path}); "
                "two runs in one folder would delete each other's checkpoints. Wait for it to end, stop it, "
                "or choose another output_dir."
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} on {socket.gethostname()}")
        handle.flush()
        self.handle = handle

    def release(self, remove: bool = False) -> None:
        """Let another run use the folder; `remove`: delete the lock file too (a clean finish)."""
        if self.handle is not None:
            if remove:
                self.path.unlink(missing_ok=True)  # while still held: no other run has it
            self.handle.close()
            self.handle = None


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
    """Flush the files (and the folders' entries) to disk before the rename publishes them."""
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    for path in [*(p for p in folder.rglob("*") if p.is_dir()), folder]:
        fsync_directory(path)


def fsync_directory(folder: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename into it, a new file) to disk."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


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
    failure = None
    try:
        if accelerator.is_main_process:
            for stale in root.glob(".checkpoint-*.tmp"):  # left by a killed run (the lock makes them ours)
                shutil.rmtree(stale)
            temporary.mkdir(parents=True)
    except OSError as error:
        failure = error
    _agree_or_raise(accelerator, failure, root, final, temporary)

    try:
        accelerator.save_state(str(temporary))
        torch.save(process_state, temporary / f"process_state_{accelerator.process_index}.pt")
        if accelerator.is_main_process:
            (temporary / TRAINER_STATE).write_text(
                json.dumps({**trainer_state, "num_processes": accelerator.num_processes})
            )
    # A full disk surfaces as OSError from Python writes and as RuntimeError ("iostream error",
    # "PytorchStreamWriter failed") from torch's C++ writer.
    except (OSError, RuntimeError) as error:
        failure = error
    _agree_or_raise(accelerator, failure, root, final, temporary)
    try:
        if accelerator.is_main_process:
            _fsync_tree(temporary)
    except OSError as error:
        failure = error
    _agree_or_raise(accelerator, failure, root, final, temporary)

    if accelerator.is_main_process:
        retired = root / f".checkpoint-{step}.old.tmp"
        if final.exists():  # re-saving a step after resuming from an earlier checkpoint
            os.replace(final, retired)
        os.replace(temporary, final)
        fsync_directory(root)
        shutil.rmtree(retired, ignore_errors=True)
        if total_limit is not None:
            for old in list_checkpoints(root)[:-total_limit]:
                shutil.rmtree(old)
        logger.info("saved checkpoint %s", final)
    accelerator.wait_for_everyone()
    return final


def _agree_or_raise(
    accelerator: Accelerator, failure: BaseException | None, root: Path, final: Path, temporary: Path
) -> None:
    """Collective: if writing failed on any process, every process removes nothing but the
    temporary folder and raises [`CheckpointWriteError`] (so none waits forever for the others)."""
    failed = torch.tensor([float(failure is not None)], device=accelerator.device)
    if accelerator.num_processes > 1:
        failed = accelerator.gather(failed)
    if not bool(failed.max() > 0):
        return
    if accelerator.is_main_process:
        shutil.rmtree(temporary, ignore_errors=True)
    previous = list_checkpoints(root)
    reason = f"{type(failure).__name__}: {failure}" if failure is not None else "another process could not write"
    raise CheckpointWriteError(
        f"could not write checkpoint {final} ({reason}); {describe_disk(root)}. The half-written "
        f"{temporary.name} was removed; the previous checkpoint {previous[-1] if previous else '(none)'} is intact. "
        "Free space and resume with --resume_from_checkpoint latest."
    ) from failure


def _refuse_code_in_pickles(path: Path) -> None:
    """accelerate unpickles registered objects (`custom_checkpoint_*.pkl`: our scheduler and EMA)
    with `weights_only=False`, which runs any code a tampered file names. Load each with the
    weights-only unpickler first: the same bytes then hold only tensors and plain containers."""
    for pickled in sorted(path.glob("custom_checkpoint_*.pkl")):
        try:
            torch.load(pickled, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - UnpicklingError and whatever a damaged file raises
            raise ValueError(
                f"refused to resume from {path}: {pickled.name} is not a plain state (it references Python code "
                f"or is damaged: {type(error).__name__}: {str(error).splitlines()[0][:200]})"
            ) from None


def load_checkpoint(accelerator: Accelerator, path: str | os.PathLike, check=None) -> tuple[dict, dict]:
    """Restore what `accelerator` tracks from `path`; return `(trainer_state, process_state)` for
    this process. `check(trainer_state)`, if given, runs first and may refuse the checkpoint."""
    path = Path(path)
    trainer_state = json.loads((path / TRAINER_STATE).read_text())
    if check is not None:
        check(trainer_state)
    _refuse_code_in_pickles(path)
    if trainer_state["num_processes"] != accelerator.num_processes:
        raise ValueError(
            f"{path} was written by {trainer_state['num_processes']} processes, this run has "
            f"{accelerator.num_processes}; exact resume needs the same number (each holds its own data position)"
        )
    accelerator.load_state(str(path))
    process_state = torch.load(path / f"process_state_{accelerator.process_index}.pt", weights_only=True)
    return trainer_state, process_state
