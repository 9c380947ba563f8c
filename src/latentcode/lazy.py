"""Lazy package attributes (PEP 562), as `transformers` and `diffusers` import their names.

A package's `__init__.py` lists its public names and the submodule of each; a name's submodule
is imported when the name is first used, so importing the package costs nothing more. Type
checkers and IDEs read the package's literal `__all__` and its `if TYPE_CHECKING:` imports.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from collections.abc import Callable


class _LazyPackage(types.ModuleType):
    """A lazy package's module type: keeps a public name that is also the name of the submodule
    defining it (`latentcode.evaluation.evaluate`, the function, in `evaluation/evaluate.py`) bound
    to the public object. Loading a submodule binds the submodule to its package's attribute of the
    same name; here that binding takes the submodule's object of that name instead, as an eager
    `from .evaluate import evaluate` in `__init__.py` would have left it."""

    _lazy_names: dict[str, str] = {}

    def __setattr__(self, name: str, value) -> None:
        if (
            isinstance(value, types.ModuleType)
            and self._lazy_names.get(name) == name
            and value.__name__ == f"{self.__name__}.{name}"
            and hasattr(value, name)
        ):
            value = getattr(value, name)
        super().__setattr__(name, value)


def lazy_attributes(
    package: str, names: dict[str, str], *, submodules: bool = False, load_first: str | None = None
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """The `__getattr__` and `__dir__` of package `package` whose public name `NAME` is defined in
    its submodule `names[NAME]` (relative, e.g. `"modules.distributions"`). `submodules`: any other
    name that is a submodule is imported on first use too (`latentcode.tokens`); `load_first`: a
    submodule imported before any public name (e.g. the one that registers classes)."""
    module = sys.modules[package]
    module.__class__ = _LazyPackage
    module._lazy_names = names

    def __getattr__(name: str):
        if name in names:
            if load_first is not None:
                importlib.import_module(f".{load_first}", package)
            value = getattr(importlib.import_module(f".{names[name]}", package), name)
        elif submodules and not name.startswith("_") and importlib.util.find_spec(f"{package}.{name}") is not None:
            value = importlib.import_module(f".{name}", package)
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        setattr(module, name, value)  # the next use finds it without this function
        return value

    def __dir__() -> list[str]:
        """The public names and what has been loaded (no helpers, no underscore names)."""
        loaded = (name for name in vars(module) if not name.startswith("_"))
        return sorted({*names, *loaded, *(["__version__"] if hasattr(module, "__version__") else [])})

    return __getattr__, __dir__
