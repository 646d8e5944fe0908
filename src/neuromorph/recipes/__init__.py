"""Recipes: one module per experiment, each with ``NAME``, ``PAPER``, ``SUMMARY``, a ``Config``
dataclass (the paper-scale defaults), ``quick(cfg)`` (the CPU-minutes version), ``check(cfg)`` (raises
before anything is written) and ``run(cfg, ctx)``.

Every public module of this package (name not starting with ``_``) is a recipe and is registered under
its ``NAME``: adding an experiment means adding one file, never editing a shared list.

Registration reads ``NAME = "..."`` from each module's source without importing it; a recipe module is
imported when it is first asked for. So ``neuromorph run X`` imports only X (and its dependencies: the
diffusion recipe's are heavy), and one recipe that fails to import cannot break the others."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType


def _literal_name(path: Path) -> str | None:
    """The string assigned to ``NAME`` at the top level of a module's source (None if not a literal)."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return None
    for node in tree.body:
        target = None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
        elif isinstance(node, ast.AnnAssign):
            target = node.target
        if isinstance(target, ast.Name) and target.id == "NAME":
            value = node.value
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                return value.value
    return None


def _discover() -> dict[str, str]:
    """Recipe NAME -> module name, for every public module of this package."""
    found: dict[str, str] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = f"{__name__}.{info.name}"
        name = _literal_name(Path(__path__[0]) / f"{info.name}.py")
        if name is None:  # NAME computed, or a package: import it to learn its name
            name = importlib.import_module(module).NAME
        if name in found:
            raise RuntimeError(f"two recipes are called {name!r}: {found[name]} and {module}")
        found[name] = module
    return found


class _Registry(Mapping):
    """Recipe NAME -> module, imported on first access."""

    def __init__(self, modules: dict[str, str]) -> None:
        self._modules = modules

    def __getitem__(self, name: str) -> ModuleType:
        module = importlib.import_module(self._modules[name])
        if module.NAME != name:
            raise RuntimeError(
                f"{module.__name__} was registered as {name!r} but its NAME is {module.NAME!r}"
            )
        return module

    def __iter__(self) -> Iterator[str]:
        return iter(self._modules)

    def __len__(self) -> int:
        return len(self._modules)


RECIPES: Mapping[str, ModuleType] = _Registry(_discover())


def get_recipe(name: str) -> ModuleType:
    """The recipe module called ``name``; ``ValueError`` listing the known ones otherwise."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known recipes: {', '.join(sorted(RECIPES))}")
    return RECIPES[name]


__all__ = ["RECIPES", "get_recipe"]
