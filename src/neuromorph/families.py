"""Parameter families: every module names the family of each of its tensors, so that one transform
(noise, quantisation, drift, mismatch, rewiring) can target "all weights" or "all time constants"
of any network (the Rockpool pattern) without knowing its layers.

A module declares ``families = {"w_in": WEIGHTS, "tau_mem": TAUS, ...}`` as a class attribute; the
names may be parameters or buffers. Nothing is stored on the tensors themselves, so the tags survive
``copy.deepcopy``, ``state_dict`` round trips and DDP wrapping.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

__all__ = [
    "WEIGHTS",
    "BIASES",
    "THRESHOLDS",
    "TAUS",
    "ADAPTATION",
    "FAMILIES",
    "tensors_of_family",
    "family_of",
]

WEIGHTS = "weights"
BIASES = "biases"
THRESHOLDS = "thresholds"
TAUS = "taus"
ADAPTATION = "adaptation"
FAMILIES = (WEIGHTS, BIASES, THRESHOLDS, TAUS, ADAPTATION)


def tensors_of_family(module: nn.Module, family: str) -> Iterator[tuple[str, torch.Tensor]]:
    """Iterate ``(qualified_name, tensor)`` over every parameter or buffer of ``family`` in ``module``.

    An unknown ``family`` raises at the call, not at the first ``next()``."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    return _iter_family(module, family)


def _iter_family(module: nn.Module, family: str) -> Iterator[tuple[str, torch.Tensor]]:
    for prefix, sub in module.named_modules():
        for name, fam in getattr(type(sub), "families", {}).items():
            if fam != family:
                continue
            tensor = getattr(sub, name, None)
            if isinstance(tensor, torch.Tensor):
                yield (f"{prefix}.{name}" if prefix else name), tensor


def family_of(module: nn.Module, qualified_name: str) -> str | None:
    """The family of ``module``'s tensor ``qualified_name`` (as in ``named_parameters``), or None."""
    owner_name, _, leaf = qualified_name.rpartition(".")
    owner = module.get_submodule(owner_name) if owner_name else module
    return getattr(type(owner), "families", {}).get(leaf)
