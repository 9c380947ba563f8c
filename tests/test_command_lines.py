"""Every command line speaks the same dialect: diffusers' flag names with underscores, one name for
the input model, each default stated once in `--help`."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import assert_preset_nests_by_group, load_script

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted(
    path
    for folder in ("src/latentcode", "training", "conversion", "benchmarks")
    for path in (REPO / folder).rglob("*.py")
)


def option_strings() -> list[tuple[str, str]]:
    """(file, option) for every `add_argument("--...")` in the sources."""
    found = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
                for argument in node.args:
                    if isinstance(argument, ast.Constant) and str(argument.value).startswith("--"):
                        found.append((str(path.relative_to(REPO)), argument.value))
    return found


def test_flags_use_underscores_and_one_name_for_the_input_model():
    options = option_strings()
    assert len(options) > 50  # the scan sees the scripts' flags
    dashed = [(path, option) for path, option in options if "-" in option[2:]]
    assert not dashed, f"flags with dashes: {dashed}"
    model_flags = {option for _, option in options if "model_name_or_path" in option}
    assert model_flags == {"--pretrained_model_name_or_path"}


def help_of_train():
    from latentcode.training.config import build_parser

    return build_parser().format_help()


def help_of_eval():
    from latentcode.evaluation.cli import build_parser

    return build_parser().format_help()


def help_of_tokenize():
    from latentcode.tokenize.cli import build_parser

    return build_parser().format_help()


SCRIPTS = [
    "training/train_prior.py",
    "training/train_latent_diffusion.py",
    "training/train_photo_tokenizer.py",
    "conversion/convert_diffusers_to_latentcode.py",
    "conversion/convert_latentcode_to_diffusers.py",
    "conversion/convert_compvis_to_latentcode.py",
    "conversion/convert_disentangling_vae_to_latentcode.py",
    "conversion/convert_taesd_to_latentcode.py",
]


@pytest.mark.parametrize("name", ["train", "eval", "tokenize", *SCRIPTS])
def test_help_states_each_default_once(name, capsys):
    if name in ("train", "eval", "tokenize"):
        text = {"train": help_of_train, "eval": help_of_eval, "tokenize": help_of_tokenize}[name]()
    else:
        with pytest.raises(SystemExit):
            load_script(name).parse_args(["--help"])
        text = capsys.readouterr().out
    assert "--no-" not in text  # boolean switches too: --no_center_crop
    # One option's help runs from its flag to the next flag line.
    entries = re.split(r"\n  (?=-)", text)
    doubled = [entry.split()[0] for entry in entries if entry.count("default") > 1]
    assert not doubled, f"options stating their default twice: {doubled}"
    assert "--help" in text
    if name == "tokenize":  # a required flag states no default
        assert "(default: None)" not in next(entry for entry in entries if entry.startswith("--pretrained_model_name"))


def test_tokenize_split_help_says_what_the_split_is_for():
    """The data flags' help comes from training/config.py; it reads right in both commands."""
    entries = {entry.split()[0]: " ".join(entry.split()) for entry in re.split(r"\n  (?=-)", help_of_tokenize())}
    assert "train on" not in entries["--split"] and "latentcode-tokenize encodes (default: train)" in entries["--split"]
    assert "the split training trains on" in " ".join(help_of_train().split())


def test_eval_data_flags_are_the_training_scripts_flags():
    from latentcode.evaluation.cli import build_parser as eval_parser
    from latentcode.training.config import DATA_SOURCE_FIELDS, DataOptions, RunConfig
    from latentcode.training.config import build_parser as train_parser

    def actions(parser):
        return {action.dest: action for action in parser._actions}

    # --split is the one exception: evaluation defaults to the source's held-out split.
    shared = [name for name in DATA_SOURCE_FIELDS if name != "split"]
    train, evaluation = actions(train_parser(RunConfig)), actions(eval_parser())
    for name in DATA_SOURCE_FIELDS:
        assert evaluation[name].option_strings == [f"--{name}"]
        assert train[f"data.{name}"].option_strings == [f"--data.{name}", f"--{name}"]
    assert all(evaluation[name].help == train[f"data.{name}"].help for name in shared)
    assert "held-out split" in evaluation["split"].help and evaluation["split"].default is None
    defaults = eval_parser().parse_args(["--pretrained_model_name_or_path", "m", "--cache_dir", "none"])
    assert {name: getattr(defaults, name) for name in shared} == {name: getattr(DataOptions(), name) for name in shared}


TRAINING_SCRIPTS = [
    "training/train.py",
    "training/train_prior.py",
    "training/train_latent_diffusion.py",
    "training/train_photo_tokenizer.py",
]


@pytest.mark.parametrize("script", TRAINING_SCRIPTS)
def test_every_training_option_has_help_with_its_default(script, capsys):
    with pytest.raises(SystemExit):
        if script == "training/train.py":
            from latentcode.training import parse_args

            parse_args(["--help"])
        else:
            load_script(script).parse_args(["--help"])
    entries = re.split(r"\n  (?=-)", capsys.readouterr().out)[1:]
    # The --no_NAME switches turn off an option whose default its own entry states.
    silent = [e.split()[0] for e in entries if "default" not in e and not re.match(r"-h|--(\w+\.)?no_", e)]
    assert not silent, f"options without their default: {silent}"
    assert all(len(e.split(None, 2)) > 2 or e.startswith("-h") for e in entries)  # a help text, not just a flag
    assert any(e.startswith("--optimization.max_train_time MAX_TRAIN_TIME, --max_train_time") for e in entries)


def test_accelerate_launch_warns_without_the_shipped_config(tmp_path):
    """What training/accelerate_config.yaml removes: without it, `accelerate launch` warns of the
    values it was not given. (test_training's quickstart launches with the shipped file and checks
    that neither the launcher nor the training run warns; this keeps that check from passing
    vacuously should accelerate reword the warning.) The launched script does nothing: the
    launcher warns before it starts it."""
    import os
    import subprocess

    script = tmp_path / "nothing.py"
    script.write_text("")
    env = {**os.environ, "HF_HOME": str(tmp_path)}  # no user-level accelerate config
    plain = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", str(script)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert "were not passed to `accelerate launch`" in plain.stderr


# Each command with its required options, given a model that does not exist: it must have set the
# threads before it fails to load the model (or, for the demo, to find Gradio).
COMMANDS_WITH_THREADS = {
    "latentcode.evaluation.cli": ["--pretrained_model_name_or_path", "no-such-model"],
    "latentcode.tokenize": ["--pretrained_model_name_or_path", "no-such-model", "--output_dir", "out"],
    "latentcode.traversal": ["--pretrained_model_name_or_path", "no-such-model", "--output_path", "grid.png"],
    "latentcode.generation": ["--pretrained_model_name_or_path", "no-such-model", "--output_dir", "out"],
    "latentcode.demo.command": ["no-such-model"],
}


@pytest.mark.parametrize("module", sorted(COMMANDS_WITH_THREADS))
def test_every_command_computes_with_the_threads_it_is_given(module, tmp_path):
    """`--threads 3` (issue 33) reaches torch in each command's process, as in the training scripts
    (tests/test_training.py checks a run's metrics.json)."""
    script = f"""
import importlib, sys, torch
assert torch.get_num_threads() != 3
try:
    importlib.import_module({module!r}).main({COMMANDS_WITH_THREADS[module] + ["--threads", "3"]!r})
except (Exception, SystemExit):
    pass  # the model does not exist: what matters is what was set before
print(torch.get_num_threads())
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "3", result.stderr[-3000:]


# -- training options in groups: presets nest by group, flat flags alias --group.option ------------

PRESETS = sorted((REPO / "training" / "configs").glob("*.yaml"))


def training_config_classes() -> dict:
    """Each training script's config class, with the flags a valid run of it needs."""
    from latentcode.training.config import TrainingConfig

    needs = ["--reporting.hub_model_id", "org/base"]  # push_to_hub needs one
    second_stage = ["--pretrained_model_name_or_path", "models/autoencoder", *needs]
    return {
        "training/train.py": (TrainingConfig, ["--model_family", "vae", *needs]),
        "training/train_prior.py": (load_script("training/train_prior.py").PriorConfig, second_stage),
        "training/train_latent_diffusion.py": (
            load_script("training/train_latent_diffusion.py").LatentDiffusionConfig,
            second_stage,
        ),
        "training/train_photo_tokenizer.py": (
            load_script("training/train_photo_tokenizer.py").PhotoTokenizerConfig,
            second_stage,
        ),
    }


@pytest.mark.parametrize("preset", PRESETS, ids=[path.stem for path in PRESETS])
def test_every_preset_nests_its_options_by_group_and_loads(preset):
    from latentcode.training.config import TrainingConfig, group_classes, load_config

    values = assert_preset_nests_by_group(preset, TrainingConfig)
    groups = group_classes(TrainingConfig)
    config = load_config(preset)
    assert load_config(**config.to_dict()) == config  # to_dict() is the YAML's nested form
    by_name = {
        name: value
        for key, item in values.items()
        for name, value in (item.items() if key in groups else [(key, item)])
    }
    assert load_config(**by_name) == config  # each option reached its field


def a_value_other_than(name: str, default, hint) -> str | None:
    """A command-line value of option `name` that differs from its `default` (None: a switch)."""
    strings = {
        "lr_scheduler": "constant",
        "mixed_precision": "bf16",
        "report_to": "none",
        "vae_objective": "beta",
        "reconstruction_distribution": "gaussian",
        "perceptual_net": "alex",
        "architecture": "llama",
        "max_train_time": "15m",
        "block_out_channels": "[8, 16]",
    }
    if isinstance(default, bool):
        return None
    if name in strings:
        return strings[name]
    if isinstance(default, int) or "int" in str(hint):
        return str((default or 1) + 2)
    if isinstance(default, float) or "float" in str(hint):
        return "0.5" if default != 0.5 else "0.25"
    return f"given-{name}"


@pytest.mark.parametrize("script", TRAINING_SCRIPTS)
def test_each_flat_flag_sets_the_same_option_as_its_group_flag(script):
    """`--learning_rate` is `--optimization.learning_rate`: both spellings set the one field, and
    differently from the default (so the check can fail)."""
    import dataclasses
    import typing

    from latentcode.training.config import FLAT_FLAGS, group_classes, parse_args

    config_class, needed = training_config_classes()[script]
    default = parse_args(needed, config_class).option_values()
    checked = []
    for group, options_class in group_classes(config_class).items():
        hints = typing.get_type_hints(options_class)
        for name in (spec.name for spec in dataclasses.fields(options_class) if spec.name in FLAT_FLAGS):
            value = a_value_other_than(name, default[name], hints[name])
            switch = [] if value is not None else ["--no_" if default[name] else "--"]
            flat = [f"--no_{name}" if default[name] else f"--{name}"] if switch else [f"--{name}", value]
            grouped = [f"--{group}.{'no_' if switch and default[name] else ''}{name}", *([value] if value else [])]
            by_flat = getattr(parse_args([*needed, *flat], config_class), group)
            by_group = getattr(parse_args([*needed, *grouped], config_class), group)
            assert getattr(by_flat, name) == getattr(by_group, name) != default[name], (name, flat, grouped)
            checked.append(name)
    assert {"learning_rate", "train_batch_size", "resolution", "use_ema", "checkpointing_steps"} <= set(checked)


def test_flat_flags_that_the_documents_and_tests_use_are_kept():
    """Every flat training flag the README, the docs, the benchmarks and the tests pass still parses."""
    from latentcode.training.config import FLAT_FLAGS, TrainingConfig, option_groups

    grouped = {
        name
        for _, (config_class, _) in training_config_classes().items()
        for name, group in option_groups(config_class).items()
        if group
    }
    assert grouped >= FLAT_FLAGS
    texts = [REPO / "README.md", *(REPO / "docs").glob("*.md"), *(REPO / "benchmarks").glob("*.py")]
    texts += [path for path in (REPO / "tests").rglob("*.py") if path.name != "test_command_lines.py"]
    # Other commands' own flags of the same name (latentcode-eval's --split, the generation CLI's
    # --num_samples, ...) count too: keeping them flat costs nothing.
    used = {name for path in texts for name in re.findall(r"--(?:no_)?(\w+)\b(?!\.)", path.read_text())}
    assert not (used & grouped) - FLAT_FLAGS, sorted((used & grouped) - FLAT_FLAGS)
    assert option_groups(TrainingConfig)["learning_rate"] == "optimization"


def test_an_option_at_the_top_of_a_yaml_file_names_its_group(tmp_path):
    from latentcode.training.config import load_config

    path = tmp_path / "flat.yaml"
    path.write_text("learning_rate: 0.1\n")
    with pytest.raises(ValueError, match=r"learning_rate is an option of the optimization group; nest it"):
        load_config(path)
    path.write_text("optimization: {learning_rat: 0.1}\n")
    with pytest.raises(ValueError, match=r"unknown optimization option key 'learning_rat'; did you mean learning_rate"):
        load_config(path)
    assert load_config(learning_rate=0.1) == load_config(optimization={"learning_rate": 0.1})
