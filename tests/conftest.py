"""Shared fixtures: tiny configs of each family and real images (sklearn's 8x8 digits)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
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


# Modules whose tests run with 1 and with 2 intra-op threads: users run inference multi-threaded,
# and the quantizer search splits its work over threads, so thread-dependent bugs show up here.
MULTI_THREAD_MODULES = {"test_models", "test_quantizers", "test_diffusers_pipelines"}


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "single_thread: run only with one thread (subprocesses, or slow tests whose threading the "
        "multi-thread variants of the others already cover)",
    )


def pytest_generate_tests(metafunc):
    already = any(
        marker.name == "parametrize" and "threads" in marker.args[0] for marker in metafunc.definition.iter_markers()
    )
    if (
        metafunc.module.__name__ in MULTI_THREAD_MODULES
        and "threads" in metafunc.fixturenames
        and not already
        and metafunc.definition.get_closest_marker("single_thread") is None
    ):
        metafunc.parametrize("threads", [1, 2], indirect=True, ids=["threads1", "threads2"])


@pytest.fixture(scope="session", autouse=True)
def single_thread():
    """One intra-op thread unless a test asks for more (session- and module-scoped fixtures
    included). Tiny models spend their time synchronising threads, not computing: one thread is
    several times faster, and every test sees the same float reduction order as the
    subprocesses started with OMP_NUM_THREADS=1."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def threads(request, single_thread):
    """Intra-op threads of the test: 1 unless parametrised (see MULTI_THREAD_MODULES)."""
    count = getattr(request, "param", 1)
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    yield count
    torch.set_num_threads(previous)


def tiny_model(family: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return FAMILIES[family].model_class(tiny_config(family, **overrides)).eval()


@pytest.fixture(params=sorted(FAMILIES))
def family(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def digits() -> torch.Tensor:
    """The 1797 real 8x8 handwritten digits of sklearn, upsampled to 16x16 grey-scale in [-1, 1].

    Returns `[1797, 1, 16, 16]` float32.
    """
    from sklearn.datasets import load_digits

    images = load_digits().images.astype(np.float32) / 16.0  # [N, 8, 8] in [0, 1]
    pixels = torch.from_numpy(images).unsqueeze(1) * 2 - 1
    return torch.nn.functional.interpolate(pixels, scale_factor=2, mode="bilinear", align_corners=False)


def peak_memory_growth(setup: str, operation: str) -> int:
    """Largest growth (bytes) of a fresh process's resident memory while `operation` runs, over
    the baseline after `setup` (both Python source, run at top level of the script).

    A thread samples the current resident size (/proc/self/statm) every half millisecond; the
    process's high-water mark (ru_maxrss) would hide the operation behind any earlier peak, such
    as the one of importing torch."""
    script = textwrap.dedent(
        """
        import os, threading, time, torch
        {setup}
        page = os.sysconf("SC_PAGE_SIZE")
        resident = lambda: int(open("/proc/self/statm").read().split()[1]) * page
        baseline, peak, done = resident(), [0], threading.Event()
        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], resident())
                time.sleep(0.0005)
        sampler = threading.Thread(target=sample)
        sampler.start()
        {operation}
        done.set()
        sampler.join()
        print(max(peak[0], resident()) - baseline)
        """
    ).format(setup=textwrap.dedent(setup).strip(), operation=operation)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True)
    return int(result.stdout.split()[-1])


# Real images for tests that need them: the repository's sibling `shared/datasets` (CIFAR-10
# parquet shards, Kodak PNGs); such tests skip with this reason where it is absent.
SHARED_DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def require_shared_dataset(name: str) -> Path:
    path = SHARED_DATASETS / name
    if not path.exists():
        pytest.skip(f"needs the real-image data set {path} (../shared/datasets/{name} from the repository root)")
    return path


def reset_accelerate_state() -> None:
    """accelerate keeps process-wide singletons; an in-process training run starts from scratch."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture
def fresh_accelerate_state():
    """accelerate's singletons reset before and after the test (see `reset_accelerate_state`)."""
    reset_accelerate_state()
    yield
    reset_accelerate_state()
