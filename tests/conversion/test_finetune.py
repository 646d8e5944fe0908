"""Robust finetuning of converted SNNs (RFGSM-KL / TRADES through BPTT, thresholds + weights) and the
robust ANN trainers (PGD-AT, TRADES, MART): losses by hand at eps = 0, examples inside the ball,
training modes restored, thresholds learned and clamped, bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from neuromorph.conversion import AdversarialTraining, RobustFinetuning, convert, parameter_groups
from neuromorph.conversion._adversarial import perturb


def _ann(seed: int = 0) -> nn.Sequential:
    g = torch.Generator().manual_seed(seed)
    ann = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 3 * 3, 12), nn.ReLU(), nn.Linear(12, 3),
    )  # fmt: skip
    with torch.no_grad():
        for p in ann.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return ann


def _data(seed: int = 0, n: int = 16):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 6, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


@pytest.mark.parametrize("start", ["uniform", "normal", "sign"])
@pytest.mark.parametrize("loss", ["ce", "kl"])
def test_training_examples_stay_in_the_ball_and_restore_the_mode(start, loss):
    ann = _ann().train()
    x, y = _data()
    x_adv = perturb(ann, x, y, eps=0.1, alpha=0.05, steps=3, loss=loss, start=start, start_size=0.05,
                    generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert ann.training and all(m.training for m in ann.modules())
    assert (
        float((x_adv - x).abs().max()) <= 0.1 + 1e-6 and 0 <= float(x_adv.min()) and float(x_adv.max()) <= 1
    )
    assert not x_adv.requires_grad


def test_robust_ann_losses_by_hand_at_eps_zero():
    """At eps = 0 the adversarial example is x itself: PGD-AT = CE, TRADES = CE (KL = 0), MART = CE +
    the margin term -log(1 - max_{k != y} p_k), its KL term vanishing."""
    ann = _ann(1).eval()  # eval: the BN uses fixed statistics, so repeated forwards agree
    x, y = _data(1)
    g = torch.Generator().manual_seed(0)
    logits = ann(x)
    ce = F.cross_entropy(logits, y)
    torch.testing.assert_close(AdversarialTraining("pgd", eps=0.0).loss(ann, x, y, generator=g).loss, ce)
    torch.testing.assert_close(AdversarialTraining("trades", eps=0.0).loss(ann, x, y, generator=g).loss, ce)
    p = F.softmax(logits, 1)
    p_other = p.scatter(1, y[:, None], -1.0).max(1).values
    mart = ce - torch.log(1.0001 - p_other + 1e-12).mean()
    torch.testing.assert_close(AdversarialTraining("mart", eps=0.0).loss(ann, x, y, generator=g).loss, mart)


@pytest.mark.parametrize("method", ["pgd", "trades", "mart"])
def test_adversarial_training_step_reduces_the_robust_loss(method):
    ann = _ann(2).train()
    x, y = _data(2, 32)
    at = AdversarialTraining(method, eps=0.05, steps=3)
    opt = torch.optim.SGD(ann.parameters(), lr=0.05)
    losses = []
    for i in range(15):
        out = at.loss(ann, x, y, generator=torch.Generator().manual_seed(i))
        assert out.adv_logits.shape == (32, 3) and not out.adv_logits.requires_grad
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(float(out.loss.detach()))
    assert ann.training
    assert sum(losses[-3:]) < sum(losses[:3])


def _snn(seed: int = 0):
    ann = _ann(seed).eval()
    x, _ = _data(seed)
    return convert(ann, [x], steps=4, scale=0.5)


def test_finetuning_learns_thresholds_and_weights_and_clamps_thresholds():
    snn = _snn(3)
    x, y = _data(3, 32)
    before = {n: p.detach().clone() for n, p in snn.named_parameters()}
    ft = RobustFinetuning(eps=0.05, alpha=0.02, beta=2.0)
    opt = torch.optim.SGD(parameter_groups(snn, 1e-3), lr=0.05, momentum=0.9)
    snn.train()
    losses = []
    for i in range(12):
        out = ft.loss(snn, x, y, generator=torch.Generator().manual_seed(i))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        snn.clamp_thresholds_()
        losses.append(float(out.loss.detach()))
    assert snn.training  # the example was built in eval mode, the mode is restored
    changed = {n for n, p in snn.named_parameters() if not torch.equal(p, before[n])}
    assert any(n.endswith("threshold") for n in changed) and any(n.endswith("weight") for n in changed)
    assert sum(losses[-3:]) < sum(losses[:3])
    with torch.no_grad():  # a threshold pushed below the floor is clamped back after the step
        snn.neurons()[0][1].threshold.fill_(-5.0)
    snn.clamp_thresholds_()
    assert float(snn.neurons()[0][1].threshold.detach()) == pytest.approx(snn.neurons()[0][1].min_threshold)


def test_finetune_loss_by_hand_at_eps_zero_and_trades_variant_runs():
    snn = _snn(4).eval()
    x, y = _data(4)
    g = torch.Generator().manual_seed(0)
    out = RobustFinetuning(eps=0.0, alpha=0.0, beta=2.0).loss(snn, x, y, generator=g)
    torch.testing.assert_close(out.loss, F.cross_entropy(snn(x), y))  # KL(p || p) = 0
    tr = RobustFinetuning(method="trades", eps=0.05, alpha=0.0, steps=2).loss(snn, x, y, generator=g)
    assert torch.isfinite(tr.loss) and tr.loss >= F.cross_entropy(snn(x), y) - 1e-6


def test_parameter_groups_decay_weights_only():
    snn = _snn(5)
    decay, rest = parameter_groups(snn, 1e-3)
    names = {id(p): n for n, p in snn.named_parameters()}
    assert decay["weight_decay"] == 1e-3 and rest["weight_decay"] == 0.0
    assert all(names[id(p)].endswith("weight") for p in decay["params"])
    assert {names[id(p)] for p in rest["params"] if names[id(p)].endswith("threshold")} == {
        f"{n}.threshold" for n, _ in snn.neurons()
    }
    assert len(decay["params"]) + len(rest["params"]) == len(list(snn.parameters()))


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="method"):
        AdversarialTraining("fgsm")
    with pytest.raises(ValueError, match="eps"):
        AdversarialTraining("pgd", eps=-0.1)
    with pytest.raises(ValueError, match="steps"):
        AdversarialTraining("pgd", steps=0)
    with pytest.raises(ValueError, match="method"):
        RobustFinetuning(method="pgd")
    with pytest.raises(ValueError, match="eps"):
        RobustFinetuning(eps=-1.0)
    with pytest.raises(ValueError, match="alpha"):
        RobustFinetuning(eps=0.1, alpha=0.2)
    with pytest.raises(ValueError, match="weight_decay"):
        parameter_groups(_snn(6), -1.0)
