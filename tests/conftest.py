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


@pytest.fixture(scope="session", autouse=True)
def single_thread():
    """Run the suite on one intra-op thread. Tiny models spend their time synchronising
    threads, not computing: one thread is several times faster, far more on a busy CPU, and
    every test sees the same float reduction order as the subprocesses started with
    OMP_NUM_THREADS=1."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
