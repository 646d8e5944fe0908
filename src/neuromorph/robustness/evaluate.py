"""Robust-accuracy reports: clean accuracy, accuracy under each attack and under the per-sample worst
case of all of them (:mod:`.ensemble`), plus a gradient-masking diagnostic.

Protocol of Oezdenizci & Legenstein (TMLR 2024); "robust accuracy" of attack ``k`` counts samples that
are classified correctly clean and after attack ``k`` (as AutoAttack), so every robust accuracy is at
most the clean accuracy and the ensemble is at most the minimum over attacks.

Diagnostic (a researcher's first check for gradient masking): ``zero_gradient`` gives, per gradient
path, the fraction of samples whose input gradient of the cross-entropy is exactly zero at the clean
input: a surrogate that sees no gradient cannot attack, and its high "robust accuracy" means nothing.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .. import _validate
from .attacks import check_attackable
from .ensemble import AttackSpec, attack_outcomes, worst_case

__all__ = ["outcome_counts", "accuracies", "robust_accuracy", "zero_gradient_fraction"]


def zero_gradient_fraction(gradient: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of samples whose cross-entropy input gradient through ``gradient`` is exactly zero."""
    check_attackable(gradient, "gradient")
    xg = x.detach().clone().requires_grad_(True)
    loss = F.cross_entropy(gradient(xg), y, reduction="sum")
    (g,) = torch.autograd.grad(loss, xg)
    return float((g.flatten(1).abs().amax(1) == 0).float().mean())


def outcome_counts(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    specs: list[AttackSpec],
    *,
    batch_size: int = 256,
    seed: int = 0,
    first_sample: int = 0,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Counts over ``x`` (summable across processes): ``n``, ``clean``, ``attacks`` (name -> count),
    ``ensemble``, and ``zero_gradient`` (spec name -> count of zero-gradient samples, gradient attacks
    only). ``first_sample`` is the index of ``x[0]`` in the whole test set (seeds the attacks)."""
    _validate.positive_int("batch_size", batch_size)
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
    counts = {
        "n": 0,
        "clean": 0,
        "attacks": {s.name: 0 for s in specs},
        "ensemble": 0,
        "zero_gradient": {s.name: 0 for s in specs if s.attack.uses_gradient},
    }
    for start in range(0, len(y), batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        clean, correct = attack_outcomes(model, xb, yb, specs, seed=seed, first_sample=first_sample + start)
        counts["n"] += len(yb)
        counts["clean"] += int(clean.sum())
        for spec, row in zip(specs, correct, strict=True):
            counts["attacks"][spec.name] += int((clean & row).sum())
        counts["ensemble"] += int(worst_case(clean, correct).sum())
        seen: dict[int, float] = {}
        for spec in specs:
            if spec.attack.uses_gradient:
                g = spec.gradient if spec.gradient is not None else model
                if id(g) not in seen:
                    seen[id(g)] = zero_gradient_fraction(g, xb, yb)
                counts["zero_gradient"][spec.name] += round(seen[id(g)] * len(yb))
        if progress is not None:
            progress(len(yb))
    return counts


def accuracies(counts: dict) -> dict:
    """Fractions from :func:`outcome_counts` (possibly summed over processes)."""
    n = max(counts["n"], 1)
    return {
        "n": counts["n"],
        "clean": counts["clean"] / n,
        "attacks": {k: v / n for k, v in counts["attacks"].items()},
        "ensemble": counts["ensemble"] / n,
        "zero_gradient": {k: v / n for k, v in counts["zero_gradient"].items()},
    }


def robust_accuracy(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    specs: list[AttackSpec],
    *,
    batch_size: int = 256,
    seed: int = 0,
) -> dict:
    """Report ``{n, clean, attacks: {name: acc}, ensemble, zero_gradient: {name: fraction}}``."""
    return accuracies(outcome_counts(model, x, y, specs, batch_size=batch_size, seed=seed))
