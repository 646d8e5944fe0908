"""Recipes: one module per experiment, each with ``NAME``, ``PAPER``, ``SUMMARY``, a ``Config``
dataclass (the paper-scale defaults), ``quick(cfg)`` (the CPU-minutes version), ``check(cfg)`` (raises
before anything is written) and ``run(cfg, ctx)``."""

from __future__ import annotations

from types import ModuleType

from . import smnist, store_recall

RECIPES: dict[str, ModuleType] = {m.NAME: m for m in (store_recall, smnist)}


def get_recipe(name: str) -> ModuleType:
    """The recipe module called ``name``; ``ValueError`` listing the known ones otherwise."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known recipes: {', '.join(sorted(RECIPES))}")
    return RECIPES[name]


__all__ = ["RECIPES", "get_recipe"]
