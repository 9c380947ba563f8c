"""disentanglement_lib's metric modules, imported in place for tests to compare against.

The reference (`../shared/reference/disentanglement_lib/metrics/*.py`, read in place, never copied)
imports `gin.tf`, `absl`, `six` and its own package path `disentanglement_lib.evaluation.metrics`.
[`load_reference`] imports it with stand-ins: a `gin` whose `configurable` fills the parameters
bound in `BINDINGS` (disentanglement_lib's metric configs) and is otherwise the function itself,
`six.moves.range` = `range` where six is not installed, and the package path pointing at the
folder. The stand-ins live in `sys.modules` only while the reference imports (whatever they
replaced is put back); the tests that use
it skip with a reason where the folder is absent.
"""

from __future__ import annotations

import functools
import importlib
import sys
import types
from pathlib import Path

import pytest

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "disentanglement_lib"
MODULES = ("utils", "mig", "dci", "sap_score", "beta_vae", "factor_vae")
# name -> {parameter: value}: what gin would bind from disentanglement_lib's metric configs; the
# discretizer's function is bound once the reference's utils module is imported.
BINDINGS: dict[str, dict] = {"discretizer": {"num_bins": 20}, "prune_dims": {"threshold": 0.05}}


def _gin_stand_in() -> types.ModuleType:
    gin = types.ModuleType("gin")
    gin.REQUIRED = object()

    def configurable(name, blacklist=None, **_):
        def decorate(function):
            @functools.wraps(function)
            def with_bindings(*args, **kwargs):
                return function(*args, **{**BINDINGS.get(name, {}), **kwargs})

            return with_bindings

        return decorate

    gin.configurable = configurable
    gin.tf = types.ModuleType("gin.tf")
    return gin


def _package(name: str, path: Path | None = None) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__path__ = [str(path)] if path is not None else []
    return module


@functools.cache
def _load() -> types.SimpleNamespace:
    gin = _gin_stand_in()
    stand_ins = {
        "gin": gin,
        "gin.tf": gin.tf,
        "disentanglement_lib": _package("disentanglement_lib"),
        "disentanglement_lib.evaluation": _package("disentanglement_lib.evaluation"),
        "disentanglement_lib.evaluation.metrics": _package(
            "disentanglement_lib.evaluation.metrics", REFERENCE / "metrics"
        ),
    }
    try:
        import six  # noqa: F401
    except ImportError:
        six = types.ModuleType("six")
        six.moves = types.ModuleType("six.moves")
        six.moves.range = range
        stand_ins |= {"six": six, "six.moves": six.moves}
    # Only the stand-ins and the reference's own modules leave sys.modules afterwards: what they
    # import (numpy, scikit-learn, absl) stays, as a module is loaded once per process.
    replaced = {name: sys.modules.get(name) for name in stand_ins}
    sys.modules.update(stand_ins)
    try:
        modules = {name: importlib.import_module(f"disentanglement_lib.evaluation.metrics.{name}") for name in MODULES}
    finally:
        for name in MODULES:
            sys.modules.pop(f"disentanglement_lib.evaluation.metrics.{name}", None)
        for name, original in replaced.items():
            if original is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = original
    BINDINGS["discretizer"]["discretizer_fn"] = modules["utils"]._histogram_discretize
    return types.SimpleNamespace(**modules)


def load_reference() -> types.SimpleNamespace:
    """The reference's metric modules (`utils`, `mig`, `dci`, `sap_score`, `beta_vae`,
    `factor_vae`), or a skip naming the missing folder."""
    if not (REFERENCE / "metrics" / "mig.py").is_file():
        pytest.skip(
            f"needs disentanglement_lib's metrics at {REFERENCE} (../shared/reference from the repository root)"
        )
    return _load()
