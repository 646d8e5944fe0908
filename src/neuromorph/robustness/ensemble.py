"""Per-sample worst case over a list of attacks: the evaluation protocol of robust SNN conversion.

Oezdenizci & Legenstein (TMLR 2024), IGITUGraz/RobustSNNConversion ``attack/ensemble.py``: a sample
counts as robust only if it is classified correctly clean *and* after every attack of the list
(each attack = an algorithm x a gradient path: BPTT with several surrogates, BPTR, the ANN twin, plus
gradient-free Square). Single-surrogate attacks on SNNs overestimate robustness (gradient masking);
the ensemble accuracy is therefore at most the lowest single-attack accuracy by construction:

    robust_ens(n) = clean(n) AND  AND_k correct(model(attack_k(x_n)), y_n)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .attacks import Attack

__all__ = ["AttackSpec", "attack_outcomes", "worst_case", "attack_generator"]


@dataclass(frozen=True)
class AttackSpec:
    """One entry of an ensemble: a display ``name``, the ``attack`` and the module its gradients come
    from (``None``: the attacked model itself)."""

    name: str
    attack: Attack
    gradient: nn.Module | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty str, got {self.name!r}")
        if not isinstance(self.attack, Attack):
            raise ValueError(
                f"attack must be a neuromorph.robustness Attack, got {type(self.attack).__name__}"
            )
        if self.gradient is not None and not isinstance(self.gradient, nn.Module):
            raise ValueError(f"gradient must be an nn.Module or None, got {type(self.gradient).__name__}")


def attack_generator(seed: int, spec_index: int, first_sample: int) -> torch.Generator:
    """The generator of one attack on one batch, a function of (seed, attack, position in the data):
    results do not depend on the batch size split across processes as long as batches start at the
    same samples."""
    value = 0
    for s in (seed, spec_index, first_sample):
        value = (value * 1_000_003 + int(s)) % (2**63 - 1)
    return torch.Generator().manual_seed(value)


def attack_outcomes(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    specs: list[AttackSpec],
    *,
    seed: int = 0,
    first_sample: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(clean_correct [B], correct [len(specs), B])`` booleans: whether ``model`` classifies each
    sample correctly clean and after each attack (adversarial examples judged by ``model``)."""
    if not specs:
        raise ValueError("specs must name at least one attack, got an empty list")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"attack names must be unique, got {names}")
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    rows = []
    for k, spec in enumerate(specs):
        x_adv = spec.attack(
            model, x, y, gradient=spec.gradient, generator=attack_generator(seed, k, first_sample)
        )
        with torch.no_grad():
            rows.append(model(x_adv).argmax(1) == y)
    return clean, torch.stack(rows)


def worst_case(clean: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
    """Per-sample ensemble outcome: correct clean and under every attack."""
    if correct.dim() != 2 or correct.shape[1] != clean.shape[0]:
        raise ValueError(
            f"correct must be [attacks, B] with B = {clean.shape[0]}, got shape {tuple(correct.shape)}"
        )
    return clean & correct.all(0)
