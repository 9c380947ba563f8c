"""Resuming with changed settings: what would break the run's trajectory is refused, naming
what changed; what is safe to change (the learning rate) is applied; the counters stay right."""

from __future__ import annotations

import json
import shutil

import pytest

from faults.helpers import TINY_MODEL, run_config, train_here
from latentcode.training import build_engine, load_config
from latentcode.training.engine import Engine
from latentcode.training.state import ResumeMismatchError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def four_steps(tmp_path_factory):
    folder = tmp_path_factory.mktemp("four-steps") / "run"
    train_here(run_config(folder, max_train_steps=4))
    return folder


def _resumed(folder, **changes) -> Engine:
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    return build_engine(load_config(**run_config(folder, resume_from_checkpoint="latest", **changes)))


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        (dict(train_batch_size=16), "train_batch_size: 8 -> 16"),
        (dict(seed=1), "seed: 0 -> 1"),
        (dict(resolution=32), "resolution: 16 -> 32"),
        (dict(gradient_accumulation_steps=2), "gradient_accumulation_steps: 1 -> 2"),
        (dict(model={**TINY_MODEL, "codebook_size": 64}), "'codebook_size': 32"),
        (dict(dataset_name="builtin:photos", model={**TINY_MODEL, "in_channels": 3}), "dataset_name: 'builtin:digits'"),
    ],
)
def test_a_change_that_breaks_the_trajectory_is_refused(four_steps, tmp_path, changes, named):
    folder = tmp_path / "run"
    shutil.copytree(four_steps, folder)
    with pytest.raises(ResumeMismatchError, match=rf"cannot resume from .*checkpoint-4: .*{named}"):
        _resumed(folder, **changes)


def test_a_different_number_of_processes_is_refused(four_steps, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(four_steps, folder)
    state_file = folder / "checkpoint-4" / "trainer_state.json"
    state_file.write_text(json.dumps({**json.loads(state_file.read_text()), "num_processes": 2}))  # as 2 would
    with pytest.raises(ValueError, match="written by 2 processes, this run has 1; exact resume needs the same"):
        _resumed(folder)


def test_a_new_learning_rate_is_applied_and_counters_stay_right(four_steps, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(four_steps, folder)
    engine = _resumed(folder, learning_rate=5e-4, max_train_steps=8)
    expected = 5e-4 * engine.schedule.factor(4)  # step 4 of the 8-step cosine schedule
    assert engine.schedule.step_count == 4 and engine.schedule.total_steps == 8
    assert engine.parts[0].optimizer.param_groups[0]["lr"] == expected != 1e-3 * engine.schedule.factor(4)
    result = engine.run()
    assert result.metrics["details"]["global_step"] == 8 and result.metrics["details"]["images_seen"] == 8 * 8
