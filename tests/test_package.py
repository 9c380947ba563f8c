"""The package's shape, as ARCHITECTURE.md states it: modules import only from their own layer and
the layers before it, no import cycles, a light `import latentcode`, short units (no function over
80 lines, no class over 250), and one module that runs the backward pass."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import latentcode

PACKAGE = Path(latentcode.__file__).parent
REPO = Path(__file__).resolve().parents[1]
# The library and the training scripts: where the unit-length and backward-pass rules hold.
CODE_ROOTS = (REPO / "src", REPO / "training")

# ARCHITECTURE.md's layers ("Modules, by layer"): a module imports from its own layer and the
# layers before it. A module belongs to the longest prefix listed; every module must have one.
LAYERS = {
    # 1. foundations (no model code)
    "latentcode.errors": 1,
    "latentcode.hub": 1,
    "latentcode.lazy": 1,
    "latentcode.threads": 1,
    "latentcode.tile_size": 1,
    "latentcode.families": 1,
    "latentcode.configuration": 1,
    "latentcode.modules": 1,
    "latentcode.tokens": 1,
    "latentcode.image_processing": 1,
    "latentcode.grids": 1,
    "latentcode.reporting": 1,
    "latentcode.losses": 1,
    "latentcode.disentanglement": 1,
    # 2. models
    "latentcode.modeling": 2,
    "latentcode.model_loading": 2,
    "latentcode.architectures": 2,
    # 3. what uses a model
    "latentcode.objectives": 3,
    "latentcode.prior": 3,
    "latentcode.generation": 3,
    "latentcode.latent_diffusion": 3,
    "latentcode.traversal": 3,
    "latentcode.data": 3,
    "latentcode.conversion": 3,
    # 4. pipelines
    "latentcode.training": 4,
    "latentcode.evaluation": 4,
    "latentcode.tokenize": 4,
    # 5. applications
    "latentcode.demo": 5,
}
# The edges ARCHITECTURE.md names as going against the layers, with why.
KNOWN_CROSS_LAYER_IMPORTS = {
    # export lives with the model classes' `to_diffusers` / `from_diffusers`
    ("latentcode.modeling.base", "latentcode.conversion"),
    ("latentcode.modeling.base", "latentcode.conversion.diffusers"),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """latentcode modules that `path` imports anywhere (also inside functions), with the
    subpackages whose `__init__` such an import runs (the root package's facade excepted)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets.add(base)
            targets |= {f"{base}.{alias.name}" for alias in node.names}
    found = set()
    for target in targets:
        parts = target.split(".")
        for depth in range(2, len(parts) + 1):  # the module and the subpackages above it
            if ".".join(parts[:depth]) in modules:
                found.add(".".join(parts[:depth]))
    return found - {name}


def import_graph() -> dict[str, set[str]]:
    """Every latentcode module -> the latentcode modules it imports (see `imported_modules`)."""
    paths = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {name: imported_modules(path, set(paths)) for name, path in paths.items()}


def layer(module: str) -> int | None:
    prefixes = [prefix for prefix in LAYERS if module == prefix or module.startswith(prefix + ".")]
    return LAYERS[max(prefixes, key=len)] if prefixes else None


def test_every_module_imports_only_from_its_layer_and_the_layers_before_it():
    graph = import_graph()
    unplaced = sorted(name for name in graph if name != "latentcode" and layer(name) is None)
    assert not unplaced, f"modules without a layer: {unplaced}; add each to ARCHITECTURE.md's layers and to LAYERS here"
    upward = sorted(
        f"{name} (layer {layer(name)}) imports {target} (layer {layer(target)})"
        for name, targets in graph.items()
        if name != "latentcode"  # the package facade re-exports from every layer
        for target in targets
        if target != "latentcode" and layer(target) > layer(name) and (name, target) not in KNOWN_CROSS_LAYER_IMPORTS
    )
    assert not upward, "imports from a later layer (ARCHITECTURE.md, 'Modules, by layer'):\n" + "\n".join(upward)


def test_no_import_cycles():
    graph = import_graph()
    # Subpackage __init__ files re-export their own modules: that edge is the package, not a cycle.
    graph = {name: {t for t in targets if not t.startswith(name + ".")} for name, targets in graph.items()}
    cycles = []

    def visit(node, stack, done):
        for target in sorted(graph[node]):
            if target in stack:
                cycles.append(stack[stack.index(target) :] + [target])
            elif target not in done:
                visit(target, stack + [target], done)
        done.add(node)

    done = set()
    for name in sorted(graph):
        if name not in done:
            visit(name, [name], done)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)


def code_trees() -> dict[Path, ast.Module]:
    """Every Python file of `src/` and `training/` -> its syntax tree."""
    return {path: ast.parse(path.read_text()) for root in CODE_ROOTS for path in sorted(root.rglob("*.py"))}


def test_no_function_over_80_lines_and_no_class_over_250():
    """Decorators excluded, docstrings and comments included; methods and nested functions count
    as functions of their own (their lines count towards the enclosing unit too)."""
    too_long = []
    for path, tree in code_trees().items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                limit = 250 if isinstance(node, ast.ClassDef) else 80
                length = node.end_lineno - node.lineno + 1
                if length > limit:
                    kind = "class" if isinstance(node, ast.ClassDef) else "function"
                    where = f"{path.relative_to(REPO)}:{node.lineno}"
                    too_long.append(f"{where} {kind} {node.name}: {length} lines > {limit}")
    assert not too_long, "split these units (issue 19):\n" + "\n".join(too_long)


def test_one_module_runs_the_backward_pass():
    """Calls of `.backward(...)` (`loss.backward()`, `accelerator.backward(loss)`) stand in one
    module: the engine every training script shares. An autograd Function's `def backward` is a
    definition, not a call, and is not counted."""
    callers = {
        str(path.relative_to(REPO))
        for path, tree in code_trees().items()
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "backward"
    }
    assert callers == {"src/latentcode/training/engine.py"}, (
        f"the backward pass is called in {sorted(callers)}; expected only src/latentcode/training/engine.py: "
        "give the engine a TrainingTask whose `loss` returns the loss instead of calling backward"
    )


def _fresh_interpreter(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=env, cwd=REPO)


# What makes a command slow to start (issue 33: 30 s to `--help`): transformers' image utilities
# pull in torchvision, which pulls in torch._dynamo; diffusers pulls in torch._dynamo too.
HEAVY_MODULES = ("torchvision", "transformers.image_utils", "torch._dynamo", "diffusers", "datasets", "gradio")


def test_import_latentcode_is_lazy_and_its_names_load_on_first_use():
    """`import latentcode` loads no torch or transformers code (issue 33); a public name loads the
    models, registers them with the Auto classes, and still no training or evaluation dependency."""
    script = """
import json, sys
import latentcode
after_import = sorted(sys.modules)
names = dir(latentcode)
from latentcode import *  # every public name
from transformers import AutoConfig
from latentcode.families import FAMILIES
registered = [AutoConfig.for_model(f.config_class.model_type).__class__.__name__ for f in FAMILIES.values()]
print(json.dumps([after_import, names, sorted(sys.modules), registered, sorted(FAMILIES)]))
"""
    result = _fresh_interpreter(script)
    assert result.returncode == 0, result.stderr[-3000:]
    after_import, names, after_names, registered, families = json.loads(result.stdout.strip().splitlines()[-1])
    assert not {"torch", "transformers", *HEAVY_MODULES} & set(after_import)
    assert names == sorted({*latentcode.__all__, "__version__", "lazy"})  # the public names, no helpers
    assert set(latentcode.__all__) == set(latentcode._PUBLIC_NAMES)
    assert "latentcode.modeling" in after_names  # the check sees what the names load
    assert registered == ["AutoencoderConfig", "VAEConfig", "VQVAEConfig"] and families == [
        "autoencoder",
        "vae",
        "vqvae",
    ]
    heavy = {"datasets", "lpips", "pytorch_fid", "sklearn"}
    assert not {module.split(".")[0] for module in after_names} & heavy
    ours = {"latentcode.training", "latentcode.evaluation", "latentcode.data", "latentcode.generation"}
    assert not {module for module in after_names if module.rsplit(".", 1)[0] in ours or module in ours}


def test_the_family_registry_loads_the_models_when_read():
    """`from latentcode.families import FAMILIES` without the models loaded: reading it loads them
    (a lazy `import latentcode` does not), so a loop over it never silently sees no family."""
    result = _fresh_interpreter("from latentcode.families import FAMILIES, get_family; print(sorted(FAMILIES))")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "['autoencoder', 'vae', 'vqvae']"


# Each command's --help in a fresh interpreter, and the modules it must not load.
HELP_COMMANDS = {
    "training/train.py": ("torch", "transformers", *HEAVY_MODULES),
    "training/train_prior.py": ("torch", "transformers", *HEAVY_MODULES),
    "training/train_latent_diffusion.py": ("torch", "transformers", *HEAVY_MODULES),
    "training/train_photo_tokenizer.py": ("torch", "transformers", *HEAVY_MODULES),
    "latentcode.demo.command": ("torch", "transformers", *HEAVY_MODULES),
    "latentcode.evaluation.cli": ("torch", "transformers", *HEAVY_MODULES),
    "latentcode.generation": ("transformers", *HEAVY_MODULES),
    "latentcode.traversal": ("transformers", *HEAVY_MODULES),
    "latentcode.tokenize": ("torch", "transformers", *HEAVY_MODULES),
}


@pytest.mark.parametrize("command", sorted(HELP_COMMANDS))
def test_help_answers_without_loading_the_heavy_libraries(command):
    """`--help` prints the options, `--threads` among them, before any heavy import (issue 33)."""
    # As they are run: the training scripts as scripts, the console scripts' main().
    if command.endswith(".py"):
        call = "sys.argv = [target, '--help']; runpy.run_path(target, run_name='__main__')"
    else:
        call = "importlib.import_module(target).main(['--help'])"
    script = f"""
import importlib, json, runpy, sys
target = sys.argv[1]
try:
    {call}
except SystemExit as exit:
    assert exit.code in (0, None), exit.code
print(json.dumps(sorted(sys.modules)))
"""
    result = _fresh_interpreter(script, command)
    assert result.returncode == 0, result.stderr[-3000:]
    *help_text, modules = result.stdout.strip().splitlines()
    assert "--threads" in "\n".join(help_text)
    loaded = set(json.loads(modules)) & set(HELP_COMMANDS[command])
    assert not loaded, f"{command} --help imports {sorted(loaded)}"


def test_a_wheel_install_writes_the_model_card_outside_the_repository(tmp_path):
    """A non-editable install (a wheel, run from outside the repository) ships the model-card
    templates: a one-step training run writes its card."""
    try:
        from setuptools.command.bdist_wheel import bdist_wheel  # noqa: F401  (setuptools >= 70.1)
    except ImportError:
        pytest.importorskip("wheel", reason="building a wheel offline needs setuptools >= 70.1 or `wheel`")
    source = tmp_path / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(REPO / "src", source / "src", symlinks=True, ignore=ignore)
    shutil.copytree(REPO / "model_cards", source / "model_cards")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", tmp_path / "wheel", source], check=True)
    (wheel,) = (tmp_path / "wheel").glob("latentcode-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", tmp_path / "site", wheel], check=True)

    script = f"""
import latentcode
from latentcode.training import load_config, train
assert latentcode.__file__.startswith({str(tmp_path / "site")!r}), latentcode.__file__
model = dict(in_channels=1, block_out_channels=[8, 16], layers_per_block=1, latent_channels=4, norm_num_groups=8,
             mid_block_add_attention=False, codebook_size=16)
train(load_config(output_dir="run", model=model, dataset_name="builtin:digits", resolution=16, train_batch_size=4,
                  max_train_steps=1, num_validation_images=4, checkpointing_steps=0, validation_steps=0,
                  report_to="none"))
"""
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    card = (tmp_path / "run" / "README.md").read_text()
    assert "VQVAEModel" in card and "$" not in card.replace("$$", "")
