"""The package's shape: no import cycles, a light `import latentcode`."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import latentcode

PACKAGE = Path(latentcode.__file__).parent


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


def test_no_import_cycles():
    paths = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {name: imported_modules(path, set(paths)) for name, path in paths.items()}
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


def test_import_latentcode_loads_no_training_or_evaluation_dependency():
    script = """
import sys
from transformers import PreTrainedModel, PretrainedConfig  # what latentcode builds on
from transformers.image_processing_utils import BaseImageProcessor
before = set(sys.modules)
import latentcode
new = set(sys.modules) - before
print(sorted(new))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    new = set(ast.literal_eval(result.stdout.strip().splitlines()[-1]))
    assert "latentcode.modeling" in new  # the check sees what the import loads
    # The models are diffusers ModelMixins as well (so that diffusers takes them as pipeline
    # components): `import latentcode` loads diffusers' model base and what it imports
    # (accelerate, torchvision, tqdm, yaml), but no training or evaluation dependency.
    heavy = {"datasets", "lpips", "pytorch_fid", "sklearn"}
    assert not {module.split(".")[0] for module in new} & heavy
    ours = {"latentcode.training", "latentcode.evaluation", "latentcode.data", "latentcode.generation"}
    assert not {module for module in new if module.rsplit(".", 1)[0] in ours or module in ours}


def test_a_wheel_install_writes_the_model_card_outside_the_repository(tmp_path):
    """A non-editable install (a wheel, run from outside the repository) ships the model-card
    templates: a one-step training run writes its card."""
    try:
        from setuptools.command.bdist_wheel import bdist_wheel  # noqa: F401  (setuptools >= 70.1)
    except ImportError:
        pytest.importorskip("wheel", reason="building a wheel offline needs setuptools >= 70.1 or `wheel`")
    repo = Path(__file__).resolve().parents[1]
    source = tmp_path / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(repo / "src", source / "src", symlinks=True, ignore=ignore)
    shutil.copytree(repo / "model_cards", source / "model_cards")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(repo / name, source / name)
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
