"""The README, walked top to bottom as a new user would after cloning: every fenced command and
Python block, in the order written, in a copy of the repository, offline. Later steps load the
models earlier steps trained, so a broken link in the chain fails here. Step counts are multiplied
by `LATENTCODE_README_SCALE` (default 0.01), which the README mentions.

Blocks marked `<!-- not run by the README walk: why -->` on the line before the fence are not
run (installs, the test suite itself, a web server); the reason is required. Every other block is
a step, and a step the walk cannot run fails it: `<!-- README walk: needs PATH ... -->` names what
a block reads (PATH relative to the repository, e.g. `../shared/pretrained`), and where PATH is
absent the walk fails at that step and says so, instead of passing without it. The Quickstart's
venv and pip steps are dropped: the walk runs in the installed environment."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
SCALE = float(os.environ.get("LATENTCODE_README_SCALE", "0.01"))
NOT_RUN = "<!-- not run by the README walk:"
NEEDS = re.compile(r"<!-- README walk: needs (\S+)")
# Steps of a Quickstart command line that set up the environment the walk already runs in.
SETUP_STEPS = ("python3 -m venv", ". .venv/bin/activate", "pip install")


@dataclass
class Step:
    line: int
    language: str
    code: str
    needs: str | None


def readme_steps(text: str) -> list[Step]:
    """The README's runnable blocks, in order: one step per Python block and per bash command.
    A block marked as not run without a reason is an error."""
    steps = []
    for match in re.finditer(r"^```(bash|python)\n(.*?)^```", text, re.S | re.M):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        if before.startswith(NOT_RUN):
            reason = before[len(NOT_RUN) :].removesuffix("-->").strip()
            if not reason:
                line = text[: match.start()].count("\n") + 1
                raise ValueError(f"README.md line {line}: '{NOT_RUN} -->' needs a reason after the colon")
            continue
        line = text[: match.start()].count("\n") + 1
        needs = NEEDS.match(before)
        language, code = match.groups()
        if language == "python":
            steps.append(Step(line, language, code, needs and needs.group(1)))
            continue
        for command in code.replace("\\\n", " ").splitlines():
            kept = [part for part in command.split(" && ") if not part.strip().startswith(SETUP_STEPS)]
            if kept and not command.lstrip().startswith("#"):
                steps.append(Step(line, language, " && ".join(kept), needs and needs.group(1)))
    return steps


def scaled(command: str, root: Path) -> str:
    """`command` with its step count times SCALE (at least 2); a training command that takes the
    count from its `--config` gets `--max_train_steps` added."""

    def scale(steps: int) -> int:
        return max(2, round(steps * SCALE))

    words = shlex.split(command)
    if "--max_train_steps" in words:
        index = words.index("--max_train_steps") + 1
        words[index] = str(scale(int(words[index])))
    elif "--config" in words and "launch" in words:
        config = yaml.safe_load((root / words[words.index("--config") + 1]).read_text())
        words += ["--max_train_steps", str(scale(config["optimization"]["max_train_steps"]))]
    return shlex.join(words)


def repository_copy(destination: Path) -> Path:
    """The files git knows (tracked, or new and not ignored) copied under `destination/repo`,
    with `destination/shared` pointing at the real `../shared`, as beside a checkout."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    root = destination / "repo"
    for name in filter(None, listed):
        if (REPO / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)
    if (REPO.parent / "shared").is_dir():
        (destination / "shared").symlink_to(REPO.parent / "shared")
    return root


def cannot_run(step: Step, root: Path) -> str | None:
    """Why the walk cannot run `step` in the copy at `root` (None: it can): a path it needs is absent."""
    if step.needs and not (root / step.needs).exists():
        return (
            f"README.md line {step.line} needs {step.needs}, absent from {(root / step.needs).resolve()}; "
            f"provide it, or mark the block '{NOT_RUN} <why> -->' in the README"
        )
    return None


def test_a_step_the_walk_cannot_run_is_a_failure_unless_marked_not_run(tmp_path):
    """The walk's rules on a README of three blocks: a marked block is no step, a block whose
    `needs` path is absent is a step the walk reports as unrunnable, a marker without a reason
    is refused."""
    (tmp_path / "present").mkdir()
    text = (
        "<!-- not run by the README walk: serves a web page -->\n```bash\nlatentcode-demo x\n```\n\n"
        "<!-- README walk: needs ../absent/data -->\n```bash\npython a.py --data ../absent/data\n```\n\n"
        "<!-- README walk: needs present -->\n```python\nprint(1)\n```\n"
    )
    steps = readme_steps(text)
    assert [(step.line, step.needs) for step in steps] == [(7, "../absent/data"), (12, "present")]
    problem = cannot_run(steps[0], tmp_path / "repo")
    assert problem.startswith("README.md line 7 needs ../absent/data, absent") and NOT_RUN in problem
    assert cannot_run(steps[1], tmp_path) is None
    with pytest.raises(ValueError, match="line 2: .* needs a reason"):
        readme_steps("<!-- not run by the README walk: -->\n```bash\nls\n```\n")


def test_the_readme_marks_every_block_it_does_not_run_with_a_reason():
    text = README.read_text()
    readme_steps(text)  # raises on a marker without a reason
    assert text.count(NOT_RUN) >= 3


def test_readme_walk_finds_the_chain():
    """The walk itself: the commands it runs (setup steps dropped, counts scaled), and each model a
    step loads was written by a step before it (`--output_dir`, or a `--config`'s `output_dir`)."""
    steps = readme_steps(README.read_text())
    commands = [step.code for step in steps if step.language == "bash"]
    assert commands[0] == (
        "accelerate launch --config_file training/accelerate_config.yaml training/train.py "
        "--config training/configs/quickstart.yaml"
    )
    assert not any("pip install" in command or "pytest" in command for command in commands)
    assert "LATENTCODE_README_SCALE" in README.read_text()
    produced: set[str] = set()
    for step in steps:
        if step.language == "python":
            loaded = re.findall(r"from_pretrained\(\"([^\"]+)\"\)", step.code)
            saved = re.findall(r"save_pretrained\(\"([^\"]+)\"\)", step.code)
        else:
            words = shlex.split(step.code)
            option = {words[i]: words[i + 1] for i in range(len(words) - 1) if words[i].startswith("--")}
            loaded = [option["--pretrained_model_name_or_path"]] if "--pretrained_model_name_or_path" in option else []
            config = yaml.safe_load((REPO / option["--config"]).read_text()) if "--config" in option else {}
            saved = [option.get("--output_dir", config.get("output_dir"))]
        missing = [name for name in loaded if name not in produced | set(saved if step.language == "python" else [])]
        assert not missing, f"README.md line {step.line} uses {missing} before a step made it"
        produced.update(name for name in saved if name)
    assert {"quickstart-vqvae", "my-vae", "my-prior", "my-ldm"} <= produced
    assert scaled(commands[0], REPO).endswith(f"--max_train_steps {max(2, round(500 * SCALE))}")


def project_scripts(root: Path, folder: Path) -> Path:
    """The copy's `[project.scripts]` commands (`latentcode-eval`, `latentcode-tokenize`, ...) as
    `pip install -e .` makes them, written into `folder`: the walk then runs the commands of the
    code under test, even in an environment installed before a command was added."""
    folder.mkdir()
    section = (root / "pyproject.toml").read_text().split("[project.scripts]\n", 1)[1].split("\n[", 1)[0]
    for name, module, function in re.findall(r'^([\w-]+) = "([\w.]+):(\w+)"', section, re.M):
        script = folder / name
        script.write_text(f"#!{sys.executable}\nimport sys\nfrom {module} import {function}\nsys.exit({function}())\n")
        script.chmod(0o755)
    return folder


@pytest.mark.slow
def test_readme_runs_top_to_bottom_offline(tmp_path):
    root = repository_copy(tmp_path)
    scripts = project_scripts(root, tmp_path / "bin")
    environment = dict(
        os.environ,
        PATH=os.pathsep.join([str(scripts), str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        PYTHONPATH=str(root / "src"),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_HUB_CACHE=str(tmp_path / "empty-hub-cache"),
        OMP_NUM_THREADS="1",
        TQDM_MININTERVAL="5",
    )
    times = []
    for step in readme_steps(README.read_text()):
        problem = cannot_run(step, root)
        assert problem is None, problem  # not skipped: a walk that skips a step proves less than it says
        start = time.perf_counter()
        if step.language == "python":
            command = [sys.executable, "-c", step.code]
        else:
            command = ["bash", "-c", scaled(step.code, root)]
        result = subprocess.run(command, cwd=root, env=environment, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, f"README.md line {step.line}: {command[-1]}\n{result.stderr[-4000:]}"
        times.append(f"README.md line {step.line}: {time.perf_counter() - start:.0f} s  {command[-1][:100]}")
    print("\n".join(times))
    for made in ("quickstart-vqvae/model.safetensors", "my-vae/model.safetensors", "my-prior/samples.png"):
        assert (root / made).exists(), made
    assert (root / "my-ldm" / "model_index.json").exists() and (root / "samples" / "samples.png").exists()
    assert (root / "eval" / "metrics.json").exists() and (root / "my-vqvae-diffusers" / "config.json").exists()
