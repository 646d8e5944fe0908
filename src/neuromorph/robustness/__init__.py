"""Attacks on (spiking) classifiers and robust-accuracy evaluation (Oezdenizci & Legenstein, TMLR 2024).

- ``attacks``: FGSM, RFGSM, PGD, APGD-CE/DLR, Square under Linf and L2; gradients from any module
  (an SNN's surrogate / BPTR / ANN-twin path), success judged on the attacked model.
- ``ensemble``: per-sample worst case over a list of attacks.
- ``evaluate``: clean / per-attack / ensemble robust accuracy and a zero-gradient diagnostic.
"""

from .attacks import (
    APGD,
    FGSM,
    NORMS,
    PGD,
    RFGSM,
    Attack,
    Square,
    check_attackable,
    dlr_loss,
    margin,
    project,
)
from .ensemble import AttackSpec, attack_generator, attack_outcomes, worst_case
from .evaluate import accuracies, outcome_counts, robust_accuracy, zero_gradient_fraction

__all__ = [
    "APGD",
    "FGSM",
    "NORMS",
    "PGD",
    "RFGSM",
    "Attack",
    "Square",
    "check_attackable",
    "dlr_loss",
    "margin",
    "project",
    "AttackSpec",
    "attack_generator",
    "attack_outcomes",
    "worst_case",
    "accuracies",
    "outcome_counts",
    "robust_accuracy",
    "zero_gradient_fraction",
]
