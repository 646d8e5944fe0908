"""Robust finetuning of a converted SNN: thresholds and weights trained together by BPTT.

Oezdenizci & Legenstein (TMLR 2024), IGITUGraz/RobustSNNConversion ``main_train.py`` (sample script:
T = 8, SGD lr 1e-3, momentum 0.9, weight decay 1e-3, cosine, 60 epochs, TRADES beta 2). Per batch:

1. adversarial example by RFGSM-KL through BPTT with the SNN's surrogate (``method="rfgsm-kl"``):
   ``x0 = x + alpha sign(N(0, 1))``, ``x' = clip(x0 + (eps - alpha) sign(grad KL(p(x) || p(x0))))``
   (paper: eps 2/255, alpha 1/255); ``method="trades"`` runs ``steps`` KL steps of size
   ``2.5 eps / steps`` from ``x + 0.001 N(0, 1)`` instead;
2. loss ``CE(f(x), y) + beta KL(p(x) || p(x'))`` (TRADES form), backpropagated through time into the
   weights, biases and the per-layer thresholds;
3. after the optimizer step the thresholds are clamped back to ``>= min_threshold`` (paper 0.03).

Weight decay applies to weights only (not to thresholds or biases): decaying a threshold towards the
floor would change the network's operating point rather than regularise it.
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
from .spiking import ConvertedSNN, IFNeurons

__all__ = ["RobustFinetuning", "FinetuneLoss", "parameter_groups", "FINETUNE_METHODS"]

FINETUNE_METHODS = ("rfgsm-kl", "trades")


class FinetuneLoss(NamedTuple):
    loss: torch.Tensor
    clean_logits: torch.Tensor  # detached
    adv_logits: torch.Tensor  # detached


@dataclass(frozen=True)
class RobustFinetuning:
    """Settings of robust SNN finetuning (module docstring); ``alpha`` is the RFGSM random step."""

    method: str = "rfgsm-kl"
    eps: float = 2 / 255
    alpha: float = 1 / 255
    beta: float = 2.0
    steps: int = 1

    def __post_init__(self) -> None:
        if self.method not in FINETUNE_METHODS:
            raise ValueError(f"method must be one of {FINETUNE_METHODS}, got {self.method!r}")
        if (
            isinstance(self.eps, bool)
            or not isinstance(self.eps, int | float)
            or not math.isfinite(self.eps)
            or self.eps < 0
        ):
            raise ValueError(f"eps must be a finite number >= 0, got {self.eps!r}")
        if not 0 <= self.alpha <= self.eps:
            raise ValueError(f"alpha must be in [0, eps={self.eps}], got {self.alpha!r}")
        _validate.positive("beta", self.beta, allow_zero=True)
        _validate.positive_int("steps", self.steps)

    def loss(
        self,
        snn: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        generator: torch.Generator,
        attack_model: nn.Module | None = None,
    ) -> FinetuneLoss:
        """``snn`` may be a DDP wrapper of a :class:`ConvertedSNN`; examples are built on
        ``attack_model`` (default ``snn``) with its default surrogate."""
        attack_model = snn if attack_model is None else attack_model
        if self.method == "rfgsm-kl":
            x_adv = perturb(
                attack_model, x, y, eps=self.eps, alpha=self.eps - self.alpha, steps=1, loss="kl",
                start="sign", start_size=self.alpha, generator=generator,
            )  # fmt: skip
        else:
            x_adv = perturb(
                attack_model, x, y, eps=self.eps, alpha=2.5 * self.eps / self.steps, steps=self.steps,
                loss="kl", start="normal", start_size=0.001, generator=generator,
            )  # fmt: skip
        clean = snn(x)
        adv = snn(x_adv)
        loss = F.cross_entropy(clean, y) + self.beta * kl_to_clean(adv, clean)
        return FinetuneLoss(loss, clean.detach(), adv.detach())


def parameter_groups(snn: ConvertedSNN, weight_decay: float) -> list[dict]:
    """Optimizer groups: conv/linear weights with ``weight_decay``; biases and thresholds without."""
    _validate.positive("weight_decay", weight_decay, allow_zero=True)
    thresholds = {id(m.threshold) for m in snn.modules() if isinstance(m, IFNeurons)}
    decay, rest = [], []
    for name, p in snn.named_parameters():
        (decay if (id(p) not in thresholds and name.endswith("weight")) else rest).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
