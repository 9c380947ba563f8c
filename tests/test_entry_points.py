"""Every entry point as a new user meets it: a misspelt model argument is named at once by the one
resolver (`latentcode.hub.resolve_pretrained`), every option's --help says what it does and its
default, and what the README's commands write stays out of git."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import load_script, tiny_model

from latentcode.hub import resolve_pretrained

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = (
    "conversion/convert_diffusers_to_latentcode.py",
    "conversion/convert_latentcode_to_diffusers.py",
    "training/train_prior.py",
    "training/train_latent_diffusion.py",
)


def run_script(relative: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, str(REPO / relative), *args]
    environment = {**os.environ, "PYTHONPATH": str(REPO / "src"), **(env or {})}
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment)


def entry_points() -> dict[str, object]:
    """`main(argv)` of each entry point that takes `--pretrained_model_name_or_path`."""
    from latentcode.evaluation.cli import main as eval_main
    from latentcode.generation import main as generation_main

    def command_line(script: str):
        module = load_script(script)
        if script.startswith("training/"):  # main takes the parsed config
            return lambda argv: module.main(module.parse_args(argv))
        return module.main

    return {"latentcode-eval": eval_main, "generation": generation_main} | {
        script: command_line(script) for script in SCRIPTS
    }


# The entry points above, and those whose --help is not checked below (other flags).
MISSPELT_MODEL_ENTRY_POINTS = ["latentcode-eval", "generation", *SCRIPTS, "latentcode-tokenize", "latentcode-traverse"]
MISSPELT_MODEL_ENTRY_POINTS.append("training/train.py")


def misspelt_model_entry_point(name: str):
    """`main(argv)` of `name`, with the flags besides the model that it requires."""
    from latentcode.tokenize import main as tokenize_main
    from latentcode.traversal import main as traversal_main

    if name == "latentcode-tokenize":
        return tokenize_main
    if name == "latentcode-traverse":
        return lambda argv: traversal_main([*argv[:2], "--output_path", "grid.png"])
    if name == "training/train.py":
        module = load_script(name)
        return lambda argv: module.main(module.parse_args(argv))
    main = entry_points()[name]
    return (lambda argv: main([*argv, "--no_fid"])) if name == "latentcode-eval" else main


@pytest.mark.parametrize("entry_point", MISSPELT_MODEL_ENTRY_POINTS)
def test_a_misspelt_model_folder_is_named_at_once_by_every_entry_point(entry_point, tmp_path, monkeypatch, capsys):
    """Offline (as in the trial), the message names the folder and says the Hub was not searched:
    no 30 s of retries, no "Repo id must use alphanumeric chars", no "no file named config.json";
    and it is all the command prints: `PROG: error: MESSAGE` on stderr, exit status 2, as argparse
    reports a bad flag (issue 33 item 10), no traceback above it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("latentcode.hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("latentcode.hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    main = misspelt_model_entry_point(entry_point)
    start = time.perf_counter()
    with pytest.raises(SystemExit) as stopped:
        main(["--pretrained_model_name_or_path", "rgb-vqave", "--output_dir", "out"])
    assert time.perf_counter() - start < 5
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert ": error: no folder 'rgb-vqave' here (" in error and f"{tmp_path})" in error
    assert "no Hub access to look for a repo 'rgb-vqave' (HF_HUB_OFFLINE is set)" in error


def test_a_misspelt_model_in_a_fresh_command_prints_the_message_alone(tmp_path):
    """The same through a real process (the way a user meets it): one line on stderr, no
    traceback, exit status 2."""
    command = [sys.executable, "-m", "latentcode.tokenize", "--pretrained_model_name_or_path", "rgb-vqave"]
    command += ["--output_dir", str(tmp_path / "codes")]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path)}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1 and lines[0].startswith("tokenize: error: no folder 'rgb-vqave' here"), result.stderr
    assert not (tmp_path / "codes").exists()


def test_a_checkpoint_of_another_library_is_refused_by_name(tmp_path):
    """`load_pretrained_model` (every command's loader, and `load_codes(expected_model=PATH)`) names
    the class it found instead of failing later on a missing `encode`."""
    from transformers import GPT2Config, GPT2Model

    from latentcode.model_loading import load_pretrained_model

    GPT2Model(GPT2Config(n_layer=1, n_head=1, n_embd=8, vocab_size=16, n_positions=8)).save_pretrained(tmp_path / "gpt")
    with pytest.raises(ValueError, match=r"holds a GPT2Model, not a latentcode model; give a folder or Hub id of an"):
        load_pretrained_model(tmp_path / "gpt")
    model = tiny_model("vqvae")
    model.save_pretrained(tmp_path / "vqvae")
    loaded = load_pretrained_model(tmp_path / "vqvae")
    assert type(loaded) is type(model) and not loaded.training


def test_a_path_that_cannot_be_a_repo_id_says_so(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OSError, match=r"no folder './runs/rgb-vqave' here .*not a Hub repo id .*check the path"):
        resolve_pretrained("./runs/rgb-vqave")


def fake_hub_cache(root: Path, repo_id: str, model, subfolder: str | None = None) -> Path:
    """`model` saved in the Hugging Face cache layout of `repo_id` at branch main; the snapshot."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = root / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    model.save_pretrained(snapshot if subfolder is None else snapshot / subfolder)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def test_a_cached_hub_id_resolves_to_its_snapshot_offline_and_converts(tmp_path, monkeypatch, capsys):
    """`HF_HUB_OFFLINE=1` conversion from a cached Hub id (a VAE at the repo root, as
    stabilityai/sd-vae-ft-mse) works; online the id itself is returned for the loaders."""
    reference = tiny_model("vae").to_diffusers()
    snapshot = fake_hub_cache(tmp_path / "hub", "someorg/tiny-vae", reference)
    monkeypatch.setattr("latentcode.hub.constants.HF_HUB_OFFLINE", True)
    assert resolve_pretrained("someorg/tiny-vae", cache_dir=tmp_path / "hub") == str(snapshot)
    monkeypatch.setattr("latentcode.hub.constants.HF_HUB_OFFLINE", False)
    assert resolve_pretrained("someorg/tiny-vae", cache_dir=tmp_path / "hub") == "someorg/tiny-vae"
    env = {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    args = ["--pretrained_model_name_or_path", "someorg/tiny-vae", "--output_dir", str(tmp_path / "out")]
    result = run_script(SCRIPTS[0], *args, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "out" / "model.safetensors").exists()
    # Offline, an id that is not in the cache is named at once (in this process: the fresh
    # interpreter's reading of HF_HUB_OFFLINE is what the run above checked).
    monkeypatch.setattr("latentcode.hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("latentcode.hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(SystemExit):
        entry_points()[SCRIPTS[0]]([*args[:1], "someorg/not-cached", *args[2:]])
    assert "no Hub access to look for a repo 'someorg/not-cached' (HF_HUB_OFFLINE is set); it is not in the " in (
        capsys.readouterr().err
    )


def test_command_line_reports_input_errors_only_and_keeps_the_traceback_on_request(monkeypatch, capsys):
    """`latentcode.errors.command_line`: an InputError becomes its message and exit status 2; any
    other exception (a bug) passes with its traceback; LATENTCODE_TRACEBACK=1 keeps it for input
    errors too. Library callers of `resolve_pretrained` still catch an OSError."""
    from latentcode.errors import InputError, PretrainedNotFoundError, command_line

    assert issubclass(PretrainedNotFoundError, OSError) and issubclass(PretrainedNotFoundError, InputError)

    @command_line
    def main(error: Exception):
        raise error

    monkeypatch.setattr(sys, "argv", ["latentcode-x"])
    with pytest.raises(SystemExit) as stopped:
        main(PretrainedNotFoundError("no folder 'x' here"))
    assert stopped.value.code == 2 and capsys.readouterr().err == "latentcode-x: error: no folder 'x' here\n"
    with pytest.raises(KeyError):
        main(KeyError("a bug"))
    monkeypatch.setenv("LATENTCODE_TRACEBACK", "1")
    with pytest.raises(PretrainedNotFoundError):
        main(PretrainedNotFoundError("no folder 'x' here"))


def help_texts(capsys) -> dict[str, str]:
    texts = {}
    for name, main in entry_points().items():
        with pytest.raises(SystemExit):
            main(["--help"])
        texts[name] = capsys.readouterr().out
    return texts


def test_every_option_of_eval_generation_and_conversion_has_help_and_a_default(capsys):
    """Issue 20 item 8: --revision, --batch_size, --device, generation's --num_steps / --seed."""
    import re

    texts = help_texts(capsys)
    for name, text in texts.items():
        entries = re.split(r"\n  (?=--)", text.split("options:", 1)[1])[1:]
        bare = [entry.split()[0] for entry in entries if len(entry.split()) < 3]
        assert not bare, f"{name}: options without help text: {bare}"
    assert "Hub branch, tag or commit (default: main)" in texts[SCRIPTS[0]]
    assert "cuda when available, else cpu" in texts["latentcode-eval"]
    for flag, default in (("--num_steps", "(default: 8)"), ("--seed", "(default: 0)")):
        entry = texts["generation"].split("options:", 1)[1].split(f"\n  {flag}", 1)[1].split("\n  --", 1)[0]
        assert default in " ".join(entry.split()), entry


def test_output_folders_of_the_readme_and_presets_are_git_ignored():
    made = ["quickstart-vqvae/model.safetensors", "my-vae/config.json", "vqvae-cifar10/metrics.json", "eval/x.png"]
    made += ["latentcode-eval/metrics.json", "vae-samples.png", "my-ldm/model_index.json"]
    kept = ["src/latentcode/hub.py", "docs/demo-codes.jpg", "training/configs/quickstart.yaml"]
    result = subprocess.run(["git", "check-ignore", *made, *kept], cwd=REPO, capture_output=True, text=True)
    assert sorted(result.stdout.split()) == sorted(made)
