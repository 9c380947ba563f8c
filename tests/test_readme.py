"""Every Python block of the reference pages (`docs/*.md`) runs alone, as a user pastes it: in a
fresh interpreter, in an empty folder, offline. Blocks that need downloads or files a user brings
are marked with an HTML comment `<!-- not run by tests/test_readme.py: why -->` on the line
before the fence. A block marked `<!-- tests/test_readme.py: needs PATH -->` reads PATH (relative
to the repository, e.g. `../shared/pretrained`): it runs beside a link to the checkout's
`../shared`, and is skipped, with the reason, where PATH is absent. The README's own blocks build
on each other (a model trained by one command is used by the next); `tests/test_readme_walk.py`
runs them in order. Here: the README's length, its fences and its links to the pages."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
PAGES = sorted((REPO / "docs").glob("*.md"))
NOT_RUN = "<!-- not run by tests/test_readme.py:"
NEEDS = re.compile(r"<!-- tests/test_readme.py: needs (\S+)")
# What the README's guide covers, each with its reference page.
REFERENCE_PAGES = (
    "quantizers",
    "reliability",
    "tokens",
    "diffusers",
    "conversion",
    "evaluation",
    "demo",
    "scale",
    "pretrained",
)


def python_blocks(page: Path) -> list[tuple[int, str, str | None]]:
    """`(line, code, needed path or None)` of each Python block of `page` meant to run."""
    text = page.read_text()
    blocks = []
    for match in re.finditer(r"^```python\n(.*?)^```", text, re.S | re.M):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        if not before.startswith(NOT_RUN):
            needs = NEEDS.match(before)
            blocks.append((text[: match.start()].count("\n") + 1, match.group(1), needs and needs.group(1)))
    return blocks


def test_readme_is_a_short_guide_that_links_every_reference_page():
    text = README.read_text()
    assert len(text.splitlines()) <= 450
    for name in REFERENCE_PAGES:
        assert f"](docs/{name}.md)" in text, f"README does not link docs/{name}.md"
    for link in re.findall(r"\]\(((?:docs|benchmarks)/[^)#]+)", text):
        assert (REPO / link).exists(), link
    for page in PAGES:
        for link in re.findall(r"\]\((?!https?:)([^)#]+)", page.read_text()):
            assert (page.parent / link).exists(), f"{page.name}: {link}"


@pytest.mark.parametrize("page", [README, *PAGES], ids=lambda page: page.name)
def test_every_block_is_marked_with_its_language(page):
    fences = re.findall(r"^```(\S*)\n", page.read_text(), re.M)[::2]  # opening fences
    assert all(language in ("python", "bash", "yaml", "text") for language in fences), fences


DOC_BLOCKS = [(page, line, code, needs) for page in PAGES for line, code, needs in python_blocks(page)]


def test_the_pages_hold_runnable_examples():
    assert len(DOC_BLOCKS) >= 5
    assert {page.stem for page, *_ in DOC_BLOCKS} >= {"quantizers", "tokens", "diffusers"}


@pytest.mark.parametrize(
    "page, line, code, needs", DOC_BLOCKS, ids=[f"{p.stem}-line{line}" for p, line, *_ in DOC_BLOCKS]
)
def test_docs_block_runs_alone_offline(page, line, code, needs, tmp_path):
    if needs:
        if not (REPO / needs).exists():
            pytest.skip(f"{page.name} line {line} reads {needs}, absent here")
        (tmp_path / "shared").symlink_to(REPO.parent / "shared")  # `../shared` from the block's folder
    folder = tmp_path / "work"
    folder.mkdir()
    # One thread: the blocks run small models, and CI runs tests side by side.
    environment = dict(
        os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "empty-hub-cache"), OMP_NUM_THREADS="1"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=folder, env=environment, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"{page.name} line {line}:\n{result.stderr[-3000:]}"
    written = re.findall(r"save_pretrained\(\"([^\"]+)\"\)", code) + re.findall(r"\"([\w./-]+\.png)\"", code)
    for name in written:
        assert (folder / name).exists(), f"{page.name} line {line} did not write {name}"


def _preset_rows(text: str) -> dict[str, list[str]]:
    """The README preset table: preset file stem -> its row's cells (a `{ae,vae}_x.yaml` cell
    names every stem it expands to)."""
    table = text.split("**Presets**", 1)[1].split("\n\n", 2)[1]
    rows = {}
    for line in table.splitlines()[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        for name in re.findall(r"`([^`]+)\.yaml`", cells[0]):
            group = re.fullmatch(r"\{([\w,]+)\}(\w+)", name)
            stems = [prefix + group.group(2) for prefix in group.group(1).split(",")] if group else [name]
            rows.update({stem: cells for stem in stems})
    return rows


def test_readme_gives_the_cpu_install_route_and_a_step_time_for_every_preset():
    """Issue 20, items 9 and 10: the CPU-only PyTorch wheel index, and for every preset in
    training/configs a row with its seconds per step on a CPU; the 256x256 preset's is measured
    (a number, not an estimate)."""
    text = README.read_text()
    assert "--index-url https://download.pytorch.org/whl/cpu" in text
    rows = _preset_rows(text)
    presets = sorted(path.stem for path in (REPO / "training" / "configs").glob("*.yaml"))
    assert [stem for stem in presets if stem not in rows] == []
    assert all(re.search(r"\d", rows[stem][4]) for stem in presets), {stem: rows[stem][4] for stem in presets}
    large = [
        stem for stem in presets if "resolution: 256" in (REPO / "training" / "configs" / f"{stem}.yaml").read_text()
    ]
    assert large and all(re.fullmatch(r"\**[\d.]+\** \(2 threads\)", rows[stem][4]) for stem in large)


PRESET_ROWS = REPO / "benchmarks" / "results" / "presets"
# "N (1 thread)" / "N (`stem`, 2 threads)" / "N (2 threads, ...)" in the table's seconds column
STEP_TIME = re.compile(r"\**([\d.]+)\**\s*\((?:`(\w+)`, )?(\d) threads?")


def _quoted_step_times(rows: dict[str, list[str]]) -> list[tuple[str, int, str]]:
    """`(preset stem, threads, quoted number)` of every step time in the preset table; a cell of
    a row for several presets names the one it measured."""
    quoted = set()
    for stem, cells in rows.items():
        stems_of_row = [other for other, other_cells in rows.items() if other_cells is cells]
        for number, named, threads in STEP_TIME.findall(cells[4]):
            assert named or len(stems_of_row) == 1, f"{cells[4]!r} must name the preset it measured"
            quoted.add((named or stem, int(threads), number))
    return sorted(quoted)


def test_the_preset_step_times_are_the_committed_rows():
    """Every step time of the README's preset table is a row of a committed `bench_presets.py` row
    file, rounded as shown: one thread quotes the process CPU seconds (a shared machine), two
    threads the wall seconds (an idle one), as the table's header says."""
    measured = {}
    for path in sorted(PRESET_ROWS.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            measured.setdefault((row["preset"], row["threads"]), []).append(row)
    quoted = _quoted_step_times(_preset_rows(README.read_text()))
    assert len(quoted) >= 10, quoted
    for stem, threads, number in quoted:
        column = "cpu_s" if threads == 1 else "wall_s"
        decimals = len(number.split(".")[1]) if "." in number else 0
        values = [round(row[column], decimals) for row in measured.get((stem, threads), [])]
        assert float(number) in values, f"README quotes {number} s for {stem} at {threads} threads; row files: {values}"
    presets = {path.stem for path in (REPO / "training" / "configs").glob("*.yaml")}
    assert {stem for stem, _, _ in quoted} <= presets
