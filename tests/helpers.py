"""Plain helpers shared by the test modules (fixtures live in `conftest.py`).

Import them as `from helpers import ...`: pyproject's `[tool.pytest.ini_options] pythonpath`
puts `tests/` on the path.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from latentcode.families import FAMILIES


def tiny_config(family: str, **overrides):
    """A two-level model with attention everywhere, small enough to run in milliseconds."""
    fields = dict(
        block_out_channels=(16, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        attention_levels=(1,),
        sample_size=16,
    )
    fields.update(overrides)
    return FAMILIES[family].config_class(**fields)


def tiny_model(family: str, seed: int = 0, **overrides):
    """`tiny_config(family, **overrides)` built with the seeded initialisation, in eval mode."""
    torch.manual_seed(seed)
    return FAMILIES[family].model_class(tiny_config(family, **overrides)).eval()


def tiny_vector_model(family: str = "vae", seed: int = 0, **overrides):
    """A small seeded model of the vector backbone (Burgess et al.'s) for 64x64 grey images, the
    generated dSprites' (4 latent dimensions, 4 hidden channels, hidden size 16, no 1x1
    projections), in eval mode; `overrides` change any config field."""
    fields = dict(
        backbone="vector", in_channels=1, sample_size=64, latent_channels=4, vector_hidden_channels=4,
        vector_hidden_size=16, use_quant_conv=False, use_post_quant_conv=False,
    )  # fmt: skip
    fields.update(overrides)
    torch.manual_seed(seed)
    return FAMILIES[family].model_class(FAMILIES[family].config_class(**fields)).eval()


def peak_memory_growth(setup: str, operation: str) -> int:
    """Largest growth (bytes) of a fresh process's resident memory while `operation` runs, over
    the baseline after `setup` (both Python source, run at top level of the script)."""
    return peak_memory_growths(setup, [operation])[0]


def peak_memory_growths(setup: str, operations: list[str]) -> list[int]:
    """Largest growth (bytes) of a fresh process's resident memory while each of `operations`
    runs, one after the other, each over the baseline just before it (the first one's: after
    `setup`). One process for several measures: its start (importing torch and the package)
    costs more than most operations.

    A thread samples the current resident size (/proc/self/statm) every half millisecond; the
    process's high-water mark (ru_maxrss) would hide the operation behind any earlier peak, such
    as the one of importing torch."""
    script = textwrap.dedent(
        """
        import os, threading, time, torch
        {setup}
        page = os.sysconf("SC_PAGE_SIZE")
        resident = lambda: int(open("/proc/self/statm").read().split()[1]) * page
        def growth(operation):
            baseline, peak, done = resident(), [0], threading.Event()
            def sample():
                while not done.is_set():
                    peak[0] = max(peak[0], resident())
                    time.sleep(0.0005)
            sampler = threading.Thread(target=sample)
            sampler.start()
            exec(operation, globals())
            done.set()
            sampler.join()
            return max(peak[0], resident()) - baseline
        for operation in {operations!r}:
            print(growth(operation))
        """
    ).format(setup=textwrap.dedent(setup).strip(), operations=list(operations))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True)
    return [int(line) for line in result.stdout.split()[-len(operations) :]]


# Real data for tests that need them: the repository's sibling `shared/` (datasets: CIFAR-10
# parquet shards, Kodak PNGs; pretrained: published checkpoints). Where it is absent such tests
# skip with a reason naming `../shared`; under `CI=true`, where it is always present, its absence
# is a failure instead (here, and for any skip whose reason names ../shared: conftest.py).
SHARED = Path(__file__).resolve().parents[2] / "shared"
SHARED_DATASETS = SHARED / "datasets"
SHARED_MARK = "../shared"  # in the reason of every skip for missing shared data


def in_ci() -> bool:
    """`CI=true` (GitHub Actions, GitLab and `.ci/run` set it): ../shared must be present."""
    return os.environ.get("CI", "").lower() == "true"


def require_shared(path: Path, what: str = "") -> Path:
    """`path` (under ../shared) if it exists; else skip the test, or fail it under `CI=true`."""
    if not path.exists():
        reason = f"needs {what + ' ' if what else ''}{path} ({SHARED_MARK}/{path.relative_to(SHARED)} from the repository root)"
        if in_ci():
            pytest.fail(f"CI=true: {reason}, absent; CI must provide {SHARED_MARK}", pytrace=False)
        pytest.skip(reason)
    return path


def require_shared_dataset(name: str) -> Path:
    return require_shared(SHARED_DATASETS / name, "the real-image data set")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """(A pytest hook: conftest.py imports it.) Under `CI=true` a test skipped for missing shared data (its reason names ../shared, as every
    such skip's does: `helpers.require_shared`, `skipif` markers, `pytest.skip` calls) fails: CI
    always has ../shared, so there the skip would hide a test that did not run."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and in_ci() and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if SHARED_MARK in reason:
            report.outcome = "failed"
            report.longrepr = f"CI=true: {reason} -- CI must provide {SHARED_MARK}; a skip here would hide it"


def reset_accelerate_state() -> None:
    """accelerate keeps process-wide singletons; an in-process training run starts from scratch."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


# One tiny VQ-VAE per quantizer recipe the tests cover: keyword overrides of
# `tiny_config("vqvae", ...)`, keyed by an id that names the recipe. The entry named after a
# quantizer (see QUANTIZER_OVERRIDES) is its plain form; the others change one training option.
VQVAE_RECIPES = {
    "vq": dict(codebook_size=64),
    "vq-no-ema-no-kmeans": dict(
        codebook_size=64, quantizer_config=dict(codebook_ema=False, kmeans_init=False, dead_code_restart=False)
    ),
    "vq-factorised-cosine": dict(
        codebook_size=64, latent_channels=8, codebook_dim=2, quantizer_config=dict(l2_normalize=True)
    ),
    "vq-rotation": dict(codebook_size=64, quantizer_config=dict(gradient_estimator="rotation")),
    "fsq": dict(quantizer="fsq", quantizer_config={"levels": [5, 4, 3]}),
    "lfq": dict(quantizer="lfq", codebook_size=16),
    "lfq-grouped-entropy": dict(quantizer="lfq", codebook_size=2**14, quantizer_config=dict(entropy_max_group_bits=7)),
    "residual_vq": dict(quantizer="residual_vq", codebook_size=64, num_quantizers=2),
    "residual_vq-dropout": dict(
        quantizer="residual_vq", codebook_size=64, num_quantizers=3, quantizer_config=dict(quantizer_dropout=0.5)
    ),
    "residual_vq-rotation": dict(
        quantizer="residual_vq",
        codebook_size=64,
        num_quantizers=2,
        quantizer_config=dict(gradient_estimator="rotation"),
    ),
    "bsq": dict(quantizer="bsq", codebook_size=16),
    "simvq": dict(quantizer="simvq", codebook_size=64),
}

# The plain recipe of each quantizer in `latentcode.modules.quantizers.QUANTIZERS`.
QUANTIZER_OVERRIDES = {name: VQVAE_RECIPES[name] for name in ("vq", "fsq", "lfq", "residual_vq", "bsq", "simvq")}


REPO = Path(__file__).resolve().parents[1]


def load_script(relative: str):
    """A script of the repository (`training/train_prior.py`) imported as a module."""
    spec = importlib.util.spec_from_file_location(Path(relative).stem, REPO / relative)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    """A TCP port free on this machine now (the rendezvous port of a multi-process launch)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def assert_preset_nests_by_group(preset: Path, config_class) -> dict:
    """Every top-level key of the YAML preset is a group of `config_class` holding only that group's
    options, or a run-wide option; returns the preset's values (`yaml.safe_load`)."""
    import yaml

    from latentcode.training.config import group_classes, option_groups

    values = yaml.safe_load(preset.read_text())
    groups, owners = group_classes(config_class), option_groups(config_class)
    for key, value in values.items():
        assert key in groups or owners.get(key, "") is None, f"{preset.name}: {key} belongs under {owners.get(key)}:"
        if key in groups:
            assert {owners[name] for name in value} == {key}, f"{preset.name}: {key}: {value}"
    return values
