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


@pytest.mark.parametrize("entry_point", ["latentcode-eval", "generation", *SCRIPTS])
def test_a_misspelt_model_folder_is_named_at_once_by_every_entry_point(entry_point, tmp_path, monkeypatch):
    """Offline (as in the trial), the message names the folder and says the Hub was not searched:
    no 30 s of retries, no "Repo id must use alphanumeric chars", no "no file named config.json"."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("latentcode.hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("latentcode.hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    argv = ["--pretrained_model_name_or_path", "rgb-vqave", "--output_dir", "out"]
    start = time.perf_counter()
    with pytest.raises(OSError) as error:
        entry_points()[entry_point](argv + (["--no_fid"] if entry_point == "latentcode-eval" else []))
    assert time.perf_counter() - start < 5
    assert f"no folder 'rgb-vqave' here ({tmp_path})" in str(error.value)
    assert "no Hub access to look for a repo 'rgb-vqave' (HF_HUB_OFFLINE is set)" in str(error.value)


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


def test_a_cached_hub_id_resolves_to_its_snapshot_offline_and_converts(tmp_path, monkeypatch):
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
    with pytest.raises(OSError) as missing:
        entry_points()[SCRIPTS[0]]([*args[:1], "someorg/not-cached", *args[2:]])
    assert "no Hub access to look for a repo 'someorg/not-cached' (HF_HUB_OFFLINE is set); it is not in the " in (
        str(missing.value)
    )


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
