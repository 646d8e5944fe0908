"""Recipes: one module per experiment, each with ``NAME``, ``PAPER``, ``SUMMARY``, a ``Config``
dataclass (the paper-scale defaults), ``quick(cfg)`` (the CPU-minutes version), ``check(cfg)`` (raises
before anything is written) and ``run(cfg, ctx)``.

Every public module of this package (name not starting with ``_``) is a recipe and is registered under
its ``NAME``: adding an experiment means adding one file, never editing a shared list."""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType


def _discover() -> dict[str, ModuleType]:
    found: dict[str, ModuleType] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{__name__}.{info.name}")
        if mod.NAME in found:
            raise RuntimeError(
                f"two recipes are called {mod.NAME!r}: {found[mod.NAME].__name__} and {mod.__name__}"
            )
        found[mod.NAME] = mod
    return found


RECIPES: dict[str, ModuleType] = _discover()


def get_recipe(name: str) -> ModuleType:
    """The recipe module called ``name``; ``ValueError`` listing the known ones otherwise."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known recipes: {', '.join(sorted(RECIPES))}")
    return RECIPES[name]


__all__ = ["RECIPES", "get_recipe"]
