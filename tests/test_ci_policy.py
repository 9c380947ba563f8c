"""The CI policy for tests that need `../shared` (`conftest.pytest_runtest_makereport`,
`helpers.require_shared`): a skip where it is absent, a failure under `CI=true`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

SAMPLE = """
import pytest
from helpers import SHARED, require_shared

def test_skip_call():
    pytest.skip("needs x (../shared/x from the repository root)")

@pytest.mark.skipif(True, reason="the local copy (../shared/datasets/none)")
def test_skip_marker():
    pass

def test_helper():
    require_shared(SHARED / "no-such-folder", "a folder")

def test_unrelated_skip():
    pytest.skip("no GPU here")
"""


def run_sample(tmp_path: Path, ci: str | None) -> str:
    """pytest on SAMPLE with `helpers` (which holds the hook) as a plugin; its summary lines."""
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    environment = {key: value for key, value in os.environ.items() if key != "CI"}
    if ci is not None:
        environment["CI"] = ci
    environment["PYTHONPATH"] = os.pathsep.join([str(TESTS), environment.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rA", "-n", "0", "-p", "no:cacheprovider", "-p", "helpers",
         "--rootdir", str(tmp_path), "-c", os.devnull, str(tmp_path / "test_sample.py")],
        capture_output=True, text=True, env=environment, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    return result.stdout


@pytest.mark.single_thread
def test_missing_shared_data_skips_locally_and_fails_under_ci(tmp_path):
    local = run_sample(tmp_path, None)
    assert "4 skipped" in local, local
    ci = run_sample(tmp_path, "true")
    for name in ("test_skip_call", "test_helper"):
        assert f"FAILED test_sample.py::{name}" in ci, ci
    assert "ERROR test_sample.py::test_skip_marker" in ci, ci  # a skipif marker fails at setup
    assert "SKIPPED [1] test_sample.py" in ci and "no GPU here" in ci  # other skips stay skips
    assert "CI must provide ../shared" in ci
