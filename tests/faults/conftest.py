"""Fixtures of the fault-injection suite: the uninterrupted reference runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from faults.helpers import run, run_config, train_here


@pytest.fixture(scope="session")
def reference_1p(tmp_path_factory) -> Path:
    """The uninterrupted one-process run (in this process, on one thread like the workers)."""
    folder = tmp_path_factory.mktemp("reference-1p") / "run"
    train_here(run_config(folder))
    return folder


@pytest.fixture(scope="session")
def reference_2p(tmp_path_factory) -> Path:
    """The uninterrupted two-process run."""
    folder = tmp_path_factory.mktemp("reference-2p") / "run"
    done = run(run_config(folder), processes=2)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return folder
