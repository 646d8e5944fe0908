"""Adversarial training of the ANN before conversion: PGD-AT, TRADES and MART.

Oezdenizci & Legenstein (TMLR 2024) pretrain the ANN robustly (IGITUGraz/RobustSNNConversion
``main_train.py``: training eps 2/255, 10 steps of size 2.5 eps / steps) with one of:

- PGD-AT (Madry et al., ICLR 2018): ``min E[ CE(f(x'), y) ]``, ``x'`` = PGD on CE from a uniform start.
- TRADES (Zhang et al., ICML 2019), beta 6:
  ``CE(f(x), y) + beta KL(p(x) || p(x'))``, ``x'`` = PGD on the KL from ``x + 0.001 N(0, 1)``.
- MART (Wang et al., ICLR 2020), beta 4, ``x'`` = PGD on CE:
  ``CE(f(x'), y) - log(1 - max_{k != y} p_k(x')) + beta KL(p(x) || p(x')) (1 - p_y(x))``.

``AdversarialTraining(...).loss(model, x, y, generator=g)`` returns the loss to backpropagate; the
adversarial example is built on ``attack_model`` (default ``model``; pass the bare module when
``model`` is a DDP wrapper) in eval mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .. import _validate
from ._adversarial import kl_to_clean, perturb

__all__ = ["AdversarialTraining", "TrainingLoss", "METHODS"]

METHODS = ("pgd", "trades", "mart")
_DEFAULT_BETA = {"pgd": 0.0, "trades": 6.0, "mart": 4.0}


class TrainingLoss(NamedTuple):
    loss: torch.Tensor
    adv_logits: torch.Tensor  # logits on the adversarial examples (detached), for train-robust accuracy


@dataclass(frozen=True)
class AdversarialTraining:
    """Settings of one robust training method; ``alpha`` defaults to ``2.5 eps / steps``, ``beta`` to
    6 (TRADES) or 4 (MART)."""

    method: str = "trades"
    eps: float = 2 / 255
    steps: int = 10
    alpha: float | None = None
    beta: float | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if (
            isinstance(self.eps, bool)
            or not isinstance(self.eps, int | float)
            or not math.isfinite(self.eps)
            or self.eps < 0
        ):
            raise ValueError(f"eps must be a finite number >= 0, got {self.eps!r}")
        _validate.positive_int("steps", self.steps)
        if self.alpha is not None:
            _validate.positive("alpha", self.alpha)
        if self.beta is not None:
            _validate.positive("beta", self.beta, allow_zero=True)

    def loss(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        generator: torch.Generator,
        attack_model: nn.Module | None = None,
    ) -> TrainingLoss:
        attack_model = model if attack_model is None else attack_model
        alpha = 2.5 * self.eps / self.steps if self.alpha is None else self.alpha
        beta = _DEFAULT_BETA[self.method] if self.beta is None else self.beta
        kind, start = ("kl", "normal") if self.method == "trades" else ("ce", "uniform")
        x_adv = perturb(
            attack_model, x, y, eps=self.eps, alpha=alpha, steps=self.steps, loss=kind, start=start,
            start_size=0.001, generator=generator,
        )  # fmt: skip
        if self.method == "pgd":
            adv = model(x_adv)
            return TrainingLoss(F.cross_entropy(adv, y), adv.detach())
        clean = model(x)
        adv = model(x_adv)
        if self.method == "trades":
            loss = F.cross_entropy(clean, y) + beta * kl_to_clean(adv, clean)
            return TrainingLoss(loss, adv.detach())
        # MART
        p_adv = F.softmax(adv, 1)
        top2 = p_adv.argsort(1)[:, -2:]
        other = torch.where(top2[:, -1] == y, top2[:, -2], top2[:, -1])
        loss_adv = F.cross_entropy(adv, y) + F.nll_loss(torch.log(1.0001 - p_adv + 1e-12), other)
        p_clean = F.softmax(clean, 1)
        p_true = p_clean.gather(1, y[:, None])[:, 0]
        kl = kl_to_clean(adv, clean, "none").sum(1)
        loss = loss_adv + beta * (kl * (1.0000001 - p_true)).mean()
        return TrainingLoss(loss, adv.detach())
