"""The output folder under faults: a disk that fills during a checkpoint write, an unwritable
folder, two runs on one folder, and the rename's durability (fsync of the folder)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from faults.helpers import assert_identical, run_config, train_here, weights
from latentcode.training.checkpointing import CheckpointWriteError, OutputDirError, list_checkpoints

pytestmark = pytest.mark.slow


def _mount_tmpfs(folder: Path, size_bytes: int, read_only: bool = False) -> bool:
    """Mount a small tmpfs at `folder` (root only); False where that is not possible."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    options = f"size={size_bytes}" + (",ro" if read_only else "")
    return (
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True).returncode
        == 0
    )


def _unmount(folder: Path) -> None:
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def _folder_size(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def test_full_disk_during_a_checkpoint_write_keeps_the_previous_one_and_names_the_disk(
    reference_1p, tmp_path, monkeypatch
):
    disk = tmp_path / "disk"
    checkpoint_size = _folder_size(reference_1p / "checkpoint-2")
    # Room for the first checkpoint and half of the second: the disk fills while writing it.
    real_disk = _mount_tmpfs(disk, checkpoint_size * 3 // 2 + 64 * 1024)
    if not real_disk:  # not root: inject the full disk where torch's writer would meet it
        from accelerate import Accelerator

        save_state = Accelerator.save_state

        def full_at_checkpoint_4(self, output_dir, **kwargs):
            if "checkpoint-4" in str(output_dir):
                raise OSError(28, "No space left on device")
            return save_state(self, output_dir, **kwargs)

        monkeypatch.setattr(Accelerator, "save_state", full_at_checkpoint_4)
    try:
        folder = disk / "run"
        with pytest.raises(CheckpointWriteError) as failure:
            train_here(run_config(folder))
        message = str(failure.value)
        mount = disk if real_disk else None
        assert "could not write checkpoint" in message and "checkpoint-4" in message
        assert "the file system mounted at" in message and "MiB free" in message
        if mount is not None:
            assert f"mounted at {mount} " in message
        assert "the previous checkpoint" in message and "checkpoint-2 is intact" in message
        assert not list(folder.glob(".checkpoint-*.tmp"))  # the half-written folder is cleaned up
        assert [p.name for p in list_checkpoints(folder)] == ["checkpoint-2"]
        # The previous checkpoint is whole: resuming from it ends exactly where an uninterrupted run does.
        resumed = tmp_path / "resumed"
        shutil.copytree(folder / "checkpoint-2", resumed / "checkpoint-2")
    finally:
        if real_disk:
            _unmount(disk)
    monkeypatch.undo()
    train_here(run_config(resumed, resume_from_checkpoint="latest"))
    assert_identical(weights(reference_1p), weights(resumed))


def test_full_disk_at_the_final_save_names_the_disk_and_the_checkpoint_to_resume(tmp_path, monkeypatch):
    from latentcode.modeling import LatentCodePreTrainedModel

    def disk_full(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(LatentCodePreTrainedModel, "save_pretrained", disk_full)
    with pytest.raises(CheckpointWriteError, match=r"final model .*No space left.*MiB free.*checkpoint-2 is intact"):
        train_here(run_config(tmp_path / "run", max_train_steps=2))


def test_unwritable_output_folder_fails_at_start(tmp_path):
    from latentcode.training import build_engine, load_config

    readonly = tmp_path / "readonly"
    mounted = _mount_tmpfs(readonly, 1 << 20, read_only=True)
    if not mounted:
        readonly.mkdir(exist_ok=True)
        readonly.chmod(0o500)
    try:
        with pytest.raises(OutputDirError, match=r"output_dir '.*readonly/run' is not writable: .*mounted at"):
            build_engine(load_config(**run_config(readonly / "run", checkpointing_steps=0)))
    finally:
        if mounted:
            _unmount(readonly)
        else:
            readonly.chmod(0o700)


def test_a_second_run_on_the_same_folder_is_refused_naming_the_first(tmp_path):
    from accelerate.state import AcceleratorState, GradientState

    from latentcode.training import build_engine, load_config

    config = load_config(**run_config(tmp_path / "run"))
    first = build_engine(config)
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    with pytest.raises(OutputDirError, match=rf"in use by another training run \(process {os.getpid()} on "):
        build_engine(config)
    first.release_output_dir()
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    build_engine(config).release_output_dir()  # free again


def test_checkpoint_folder_is_fsynced_after_the_rename(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def recording_fsync(descriptor):
        synced.append(os.readlink(f"/proc/self/fd/{descriptor}"))
        return real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    folder = tmp_path / "run"
    train_here(run_config(folder, max_train_steps=2))
    checkpoint = str(folder / "checkpoint-2")
    files = [path for path in synced if path.startswith(str(folder / ".checkpoint-2.tmp") + "/")]
    assert files, synced  # the files, before the rename ...
    assert str(folder) in synced[synced.index(files[-1]) :]  # ... and the folder holding the rename, after it
    assert (Path(checkpoint) / "trainer_state.json").is_file()
