"""Per-sample worst case: by hand, ensemble <= every single attack (and <= clean) on real models,
counts summable across shards, bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from neuromorph.conversion import AnalogTwin, GradientPath, RateBackprop, convert
from neuromorph.robustness import (
    FGSM,
    PGD,
    AttackSpec,
    Square,
    accuracies,
    attack_outcomes,
    outcome_counts,
    robust_accuracy,
    worst_case,
    zero_gradient_fraction,
)
from neuromorph.spikes import PiecewiseLinear, Rectangular


def test_worst_case_by_hand():
    clean = torch.tensor([True, True, True, False])
    correct = torch.tensor([[True, False, True, True], [True, True, False, True]])
    assert worst_case(clean, correct).tolist() == [True, False, False, False]
    with pytest.raises(ValueError, match="correct must be"):
        worst_case(clean, correct[:, :3])


def _model_and_data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(2 * 5 * 5, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.4)
    x = torch.rand(40, 2, 5, 5, generator=g)
    with torch.no_grad():  # labels = the model's own prediction on most samples: clean accuracy ~0.9
        y = model(x).argmax(1)
    y[::10] = (y[::10] + 1) % 4
    return model, x, y


def test_ensemble_is_at_most_every_single_attack_and_clean_on_an_ann():
    model, x, y = _model_and_data()
    specs = [
        AttackSpec("FGSM", FGSM(0.05)),
        AttackSpec("PGD", PGD(0.05, steps=5)),
        AttackSpec("Square", Square(0.05, queries=20)),
    ]
    report = robust_accuracy(model, x, y, specs, batch_size=16, seed=3)
    assert report["n"] == 40 and report["clean"] == pytest.approx(0.9)
    assert set(report["attacks"]) == {"FGSM", "PGD", "Square"}
    assert report["ensemble"] <= min(report["attacks"].values()) <= report["clean"]
    # the per-sample worst case is more than the minimum here: different attacks fool different samples
    clean, correct = attack_outcomes(model, x, y, specs, seed=3)
    assert int(worst_case(clean, correct).sum()) == round(report["ensemble"] * 40)


def test_ensemble_is_at_most_every_single_attack_on_an_snn():
    g = torch.Generator().manual_seed(1)
    ann = nn.Sequential(nn.Flatten(), nn.Linear(2 * 5 * 5, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    x = torch.rand(24, 2, 5, 5, generator=g)
    snn = convert(ann, [x], steps=4)
    with torch.no_grad():
        y = snn(x).argmax(1)
    specs = [
        AttackSpec(f"PGD[{name}]", PGD(0.1, steps=4), GradientPath(snn, path).eval())
        for name, path in [
            ("pcw", PiecewiseLinear(1.0)),
            ("rect", Rectangular(0.25)),
            ("bptr", RateBackprop()),
            ("twin", AnalogTwin()),
        ]  # fmt: skip
    ] + [AttackSpec("Square", Square(0.1, queries=10))]
    report = robust_accuracy(snn, x, y, specs, batch_size=10)
    assert report["clean"] == 1.0
    assert report["ensemble"] <= min(report["attacks"].values())
    assert set(report["zero_gradient"]) == {s.name for s in specs[:-1]}  # gradient attacks only
    assert all(0.0 <= v <= 1.0 for v in report["zero_gradient"].values())


def test_counts_of_shards_add_up_to_the_whole():
    model, x, y = _model_and_data(2)
    specs = [AttackSpec("PGD", PGD(0.05, steps=3)), AttackSpec("FGSM", FGSM(0.05))]
    whole = outcome_counts(model, x, y, specs, batch_size=10, seed=1)
    a = outcome_counts(model, x[:20], y[:20], specs, batch_size=10, seed=1, first_sample=0)
    b = outcome_counts(model, x[20:], y[20:], specs, batch_size=10, seed=1, first_sample=20)
    assert whole["n"] == a["n"] + b["n"] and whole["clean"] == a["clean"] + b["clean"]
    assert whole["ensemble"] == a["ensemble"] + b["ensemble"]
    assert whole["attacks"] == {k: a["attacks"][k] + b["attacks"][k] for k in whole["attacks"]}
    assert accuracies(whole)["ensemble"] == whole["ensemble"] / 40


def test_zero_gradient_fraction_flags_a_masked_surrogate():
    """A hard-reset SNN seen through a very narrow rectangular surrogate has (almost) no input
    gradient: the diagnostic shows it, while the ANN twin has a gradient everywhere."""
    g = torch.Generator().manual_seed(3)
    ann = nn.Sequential(nn.Flatten(), nn.Linear(2 * 5 * 5, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    x = torch.rand(16, 2, 5, 5, generator=g)
    snn = convert(ann, [x], steps=4)
    y = torch.zeros(16, dtype=torch.long)
    narrow = zero_gradient_fraction(GradientPath(snn, Rectangular(1e-6)).eval(), x, y)
    twin = zero_gradient_fraction(GradientPath(snn, AnalogTwin()).eval(), x, y)
    assert narrow > 0.9 and twin == 0.0


def test_bad_specs_are_refused():
    model, x, y = _model_and_data()
    with pytest.raises(ValueError, match="at least one attack"):
        attack_outcomes(model, x, y, [])
    with pytest.raises(ValueError, match="unique"):
        attack_outcomes(model, x, y, [AttackSpec("a", FGSM(0.1)), AttackSpec("a", PGD(0.1))])
    with pytest.raises(ValueError, match="attack must be"):
        AttackSpec("x", "pgd")
    with pytest.raises(ValueError, match="name"):
        AttackSpec("", FGSM(0.1))
    with pytest.raises(ValueError, match="batch_size"):
        robust_accuracy(model, x, y, [AttackSpec("a", FGSM(0.1))], batch_size=0)
