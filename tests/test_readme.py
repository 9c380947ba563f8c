"""Every Python block of the README runs alone, as a user pastes it: in a fresh interpreter, in
an empty folder, offline. Blocks that need downloads or files a user brings are marked with an
HTML comment `<!-- not run by tests/test_readme.py: why -->` on the line before the fence."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
NOT_RUN = "<!-- not run by tests/test_readme.py:"


def python_blocks() -> list[tuple[int, str]]:
    """`(line, code)` of each Python block meant to run."""
    text = README.read_text()
    blocks = []
    for match in re.finditer(r"^```python\n(.*?)^```", text, re.S | re.M):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        if not before.startswith(NOT_RUN):
            blocks.append((text[: match.start()].count("\n") + 1, match.group(1)))
    return blocks


def test_readme_marks_every_block_with_its_language():
    fences = re.findall(r"^```(\S*)\n", README.read_text(), re.M)[::2]  # opening fences
    assert fences and all(language in ("python", "bash", "yaml", "text") for language in fences), fences
    assert len(python_blocks()) >= 6


@pytest.mark.parametrize(
    "line, code", python_blocks(), ids=lambda value: f"line{value}" if isinstance(value, int) else ""
)
def test_readme_block_runs_alone_offline(line, code, tmp_path):
    # One thread: the blocks run small models, and CI runs tests side by side.
    environment = dict(
        os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "empty-hub-cache"), OMP_NUM_THREADS="1"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"README.md line {line}:\n{result.stderr[-3000:]}"
    written = re.findall(r"save_pretrained\(\"([^\"]+)\"\)", code) + re.findall(r"\"([\w./-]+\.png)\"", code)
    for name in written:
        assert (tmp_path / name).exists(), f"README.md line {line} did not write {name}"
