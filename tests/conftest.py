"""Shared fixtures: the thread policy (1 thread, or 1 and 2 in MULTI_THREAD_MODULES), the family
parameter, real images (sklearn's 8x8 digits) and accelerate's reset state; and how the suite is
spread over pytest-xdist workers (`pyproject.toml` runs `-n auto --dist loadgroup`). Plain helpers
live in `helpers.py`."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from helpers import pytest_runtest_makereport, reset_accelerate_state  # noqa: F401 (a hook: CI=true policy)

from latentcode.families import FAMILIES

# Modules whose tests run with 1 and with 2 intra-op threads: users run inference multi-threaded,
# and the quantizer search splits its work over threads, so thread-dependent bugs show up here.
MULTI_THREAD_MODULES = {"test_models", "test_quantizers", "test_diffusers_pipelines"}


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "single_thread: run only with one thread (subprocesses, or slow tests whose threading the "
        "multi-thread variants of the others already cover)",
    )


# pytest-xdist workers for `-n auto`: one per core, as memory allows (a worker holds torch, its
# models and, in the multi-process tests, two or three more Python processes with torch), and no
# more than MAX_WORKERS: past that the longest test, not the worker count, bounds the run.
WORKER_MEMORY = 3 * 2**30
MAX_WORKERS = 8


def pytest_xdist_auto_num_workers(config):
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):  # the user's choice, as xdist's own hook
        return int(os.environ["PYTEST_XDIST_AUTO_NUM_WORKERS"])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores, psutil.virtual_memory().available // WORKER_MEMORY, MAX_WORKERS))


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items):
    """Under xdist (`--dist loadgroup`), tests that share a fixture wider than one test (a model
    trained once per module, the fault suite's reference runs) go to one worker as a group, so the
    fixture is built once, not once per worker. The group is the widest folder or module whose
    fixtures a module's tests share; this folder's own session fixtures (`digits`) are cheap and
    exempt. On a worker, the tests marked `slow` are handed out first: a long test started last
    would leave the other workers idle until it ends."""
    below_root = Path(__file__).parent.relative_to(config.rootpath).as_posix() + "/"
    groups = {}  # test -> the widest shared-fixture location among those it uses
    for item in items:
        locations = [
            definition.baseid
            for definitions in item._fixtureinfo.name2fixturedefs.values()  # (pytest has no public way)
            for definition in definitions
            if definition.scope != "function" and definition.baseid.startswith(below_root)
        ]
        if locations:
            groups[item] = min(locations, key=len)
    widest = {}  # module -> the widest group of its tests
    for item, group in groups.items():
        widest[item.module] = min(widest.get(item.module, group), group, key=len)
    for item in groups:
        item.add_marker(pytest.mark.xdist_group(widest[item.module]))
    if os.environ.get("PYTEST_XDIST_WORKER"):
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)


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


@pytest.fixture
def fresh_accelerate_state():
    """accelerate's singletons reset before and after the test (see `reset_accelerate_state`)."""
    reset_accelerate_state()
    yield
    reset_accelerate_state()
