"""Attacks: agreement with torchattacks on an ANN, the eps ball and [0, 1] (property test), the guards
against fake robustness, losses by hand, SNN gradient paths, bad input."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from neuromorph.conversion import AnalogTwin, GradientPath, RateBackprop, convert
from neuromorph.robustness import APGD, FGSM, PGD, RFGSM, Square, dlr_loss, margin, project
from neuromorph.spikes import PiecewiseLinear, StraightThrough

HAS_TORCHATTACKS = importlib.util.find_spec("torchattacks") is not None


@pytest.fixture(scope="module")
def mnist_mlp():
    """A small MLP trained for a few seconds on the MNIST 5k subset (fixed seed), 400 test images."""
    from neuromorph.data.mnist import load_mnist

    xtr, ytr = load_mnist(None, "train")
    xte, yte = load_mnist(None, "test")
    xtr = torch.tensor(xtr, dtype=torch.float32).reshape(-1, 1, 28, 28) / 255
    ytr = torch.tensor(ytr)
    g = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.05 if p.dim() > 1 else 0.0))
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    for _ in range(3):
        perm = torch.randperm(4000, generator=g)
        for i in range(0, 4000, 64):
            idx = perm[i : i + 64]
            loss = F.cross_entropy(net(xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    x = torch.tensor(xte[:400], dtype=torch.float32).reshape(-1, 1, 28, 28) / 255
    return net.eval(), x, torch.tensor(yte[:400])


def _robust_acc(net, x, x_adv, y) -> float:
    with torch.no_grad():
        return float(((net(x).argmax(1) == y) & (net(x_adv).argmax(1) == y)).float().mean())


def _pairs(net, norm: str, eps: float, fast: bool):
    import torchattacks as ta

    alpha = 2.5 * eps / 20
    pairs = {
        "PGD": (PGD(eps, norm, steps=20, alpha=alpha),
                ta.PGD(net, eps, alpha, 20) if norm == "Linf" else ta.PGDL2(net, eps, alpha, 20)),
        "APGD-CE": (APGD(eps, norm, "ce", steps=25), ta.APGD(net, norm=norm, eps=eps, steps=25, loss="ce")),
        "APGD-DLR": (APGD(eps, norm, "dlr", steps=25),
                     ta.APGD(net, norm=norm, eps=eps, steps=25, loss="dlr")),
    }  # fmt: skip
    if norm == "Linf":
        pairs["FGSM"] = (FGSM(eps), ta.FGSM(net, eps))
        pairs["RFGSM"] = (RFGSM(eps, alpha=eps / 2), ta.RFGSM(net, eps, eps / 2, steps=1))
    if not fast:
        pairs["Square"] = (
            Square(eps, norm, queries=1000),
            ta.Square(net, norm=norm, eps=eps, n_queries=1000),
        )
    return pairs


@pytest.mark.skipif(
    not HAS_TORCHATTACKS, reason="torchattacks not installed (pip install --no-deps torchattacks)"
)
@pytest.mark.parametrize("norm, eps", [("Linf", 0.05), ("L2", 1.0)])
def test_gradient_attacks_agree_with_torchattacks_within_one_point(mnist_mlp, norm, eps):
    net, x, y = mnist_mlp
    torch.manual_seed(0)  # torchattacks draws from the global generator
    for name, (mine, theirs) in _pairs(net, norm, eps, fast=True).items():
        a = _robust_acc(net, x, mine(net, x, y), y)
        b = _robust_acc(net, x, theirs(x, y), y)
        assert 0.05 < b < 0.95, f"{name}: eps leaves nothing to compare ({b})"
        assert abs(a - b) <= 0.01, f"{name}-{norm}: neuromorph {a:.4f} vs torchattacks {b:.4f}"


@pytest.mark.slow
@pytest.mark.skipif(
    not HAS_TORCHATTACKS, reason="torchattacks not installed (pip install --no-deps torchattacks)"
)
@pytest.mark.parametrize("norm, eps", [("Linf", 0.05), ("L2", 1.0)])
def test_square_agrees_with_torchattacks_within_one_point(mnist_mlp, norm, eps):
    net, x, y = mnist_mlp
    mine, theirs = _pairs(net, norm, eps, fast=False)["Square"]
    a = _robust_acc(net, x, mine(net, x, y), y)
    b = _robust_acc(net, x, theirs(x, y), y)
    assert abs(a - b) <= 0.01, f"Square-{norm}: neuromorph {a:.4f} vs torchattacks {b:.4f}"


def test_attacks_lower_accuracy_and_large_eps_breaks_everything(mnist_mlp):
    net, x, y = mnist_mlp
    x, y = x[:100], y[:100]
    clean = _robust_acc(net, x, x, y)
    weak = _robust_acc(net, x, PGD(0.03, steps=10)(net, x, y), y)
    strong = _robust_acc(net, x, PGD(0.3, steps=10)(net, x, y), y)
    assert clean > 0.8 and strong <= weak < clean and strong < 0.05


# -- the ball and [0, 1] ------------------------------------------------------------------------------

_TINY = nn.Sequential(nn.Flatten(), nn.Linear(2 * 6 * 6, 8), nn.ReLU(), nn.Linear(8, 4))
torch.nn.init.normal_(_TINY[1].weight, std=0.5, generator=torch.Generator().manual_seed(1))
torch.nn.init.normal_(_TINY[3].weight, std=0.5, generator=torch.Generator().manual_seed(2))
_TINY.eval()


@settings(max_examples=60, deadline=None)
@given(
    kind=st.sampled_from(["fgsm", "rfgsm", "pgd", "apgd-ce", "apgd-dlr", "square"]),
    norm=st.sampled_from(["Linf", "L2"]),
    eps=st.floats(0.0, 3.0),
    seed=st.integers(0, 10_000),
    saturate=st.booleans(),
)
def test_attacks_never_leave_the_ball_or_the_valid_range(kind, norm, eps, seed, saturate):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(5, 2, 6, 6, generator=g)
    if saturate:  # pixels at the bounds, where clipping matters
        x = (x > 0.5).float()
    y = torch.randint(0, 4, (5,), generator=g)
    attack = {
        "fgsm": FGSM(eps, norm),
        "rfgsm": RFGSM(eps, norm),
        "pgd": PGD(eps, norm, steps=3, alpha=eps / 2 + 0.01),
        "apgd-ce": APGD(eps, norm, "ce", steps=6),
        "apgd-dlr": APGD(eps, norm, "dlr", steps=6),
        "square": Square(eps, norm, queries=8),
    }[kind]
    x_adv = attack(_TINY, x, y, generator=g)
    assert x_adv.shape == x.shape and torch.isfinite(x_adv).all()
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "Linf" else delta.norm(dim=1)
    assert float(size.max()) <= eps * (1 + 1e-6) + 1e-6


def test_project_by_hand():
    x = torch.tensor([[0.5, 0.9, 0.0]])
    torch.testing.assert_close(
        project(torch.tensor([[0.8, 1.5, -0.2]]), x, 0.1, "Linf"), torch.tensor([[0.6, 1.0, 0.0]])
    )
    # L2: delta (0.3, 0.4, 0) has norm 0.5 -> scaled to norm 0.25 -> (0.15, 0.2, 0), then clipped to [0, 1]
    out = project(torch.tensor([[0.8, 1.3, 0.0]]), x, 0.25, "L2")
    torch.testing.assert_close(out, torch.tensor([[0.65, 1.0, 0.0]]))


def test_margin_and_dlr_by_hand():
    z = torch.tensor([[3.0, 1.0, 2.0, 0.0], [0.0, 5.0, 1.0, 4.0]])
    y = torch.tensor([0, 3])
    torch.testing.assert_close(margin(z, y), torch.tensor([1.0, -1.0]))
    # DLR = -(z_y - max_other) / (z_pi1 - z_pi3): sample 0: -(3 - 2) / (3 - 1); sample 1: -(4 - 5) / (5 - 1)
    torch.testing.assert_close(dlr_loss(z, y), torch.tensor([-0.5, 0.25]))


# -- no fake robustness -------------------------------------------------------------------------------


def test_model_in_training_mode_is_refused():
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Dropout(0.5), nn.Linear(3, 2))
    x, y = torch.rand(2, 1, 2, 2), torch.tensor([0, 1])
    with pytest.raises(ValueError, match=r"training mode.*\.eval\(\)"):
        PGD(0.1)(net, x, y)
    net.eval()
    net[2].train()  # one submodule left in training mode is enough
    with pytest.raises(ValueError, match=r"training mode \(2\)"):
        FGSM(0.1)(net, x, y)
    with pytest.raises(ValueError, match="training mode"):
        Square(0.1, queries=2)(net, x, y)
    with pytest.raises(ValueError, match="gradient is in training mode"):
        FGSM(0.1)(net.eval(), x, y, gradient=nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))


def test_disabled_gradients_are_refused():
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2)).eval()
    x, y = torch.rand(2, 1, 2, 2), torch.tensor([0, 1])
    with torch.no_grad(), pytest.raises(RuntimeError, match="gradients are disabled"):
        PGD(0.1)(net, x, y)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="gradients are disabled"):
        APGD(0.1, steps=2)(net, x, y)

    class Detached(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x.detach())

    with pytest.raises(RuntimeError, match="does not reach its input"):
        FGSM(0.1)(Detached().eval(), x, y)
    frozen = Detached().eval().requires_grad_(False)
    with pytest.raises(RuntimeError, match="does not depend on its input"):
        PGD(0.1, steps=2)(frozen, x, y)
    # frozen parameters alone are fine: the input still carries gradients
    net.requires_grad_(False)
    out = PGD(0.1, steps=2)(net, x, y)
    assert (out - x).abs().max() > 0


def test_square_needs_no_gradients_and_refuses_a_gradient_model():
    net = nn.Sequential(nn.Flatten(), nn.Linear(2 * 4 * 4, 3)).eval()
    x, y = torch.rand(2, 2, 4, 4), torch.tensor([0, 1])
    with torch.no_grad():
        out = Square(0.1, queries=5)(net, x, y)
    assert out.shape == x.shape
    with pytest.raises(ValueError, match="gradient-free"):
        Square(0.1, queries=5)(net, x, y, gradient=net)


# -- SNN gradient paths ---------------------------------------------------------------------------------


def test_attacks_on_an_snn_through_every_gradient_path():
    g = torch.Generator().manual_seed(3)
    ann = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
                        nn.Linear(4 * 3 * 3, 16), nn.ReLU(), nn.Linear(16, 3)).eval()  # fmt: skip
    x = torch.rand(8, 1, 6, 6, generator=g)
    y = torch.randint(0, 3, (8,), generator=g)
    snn = convert(ann, [x], steps=4)
    for path in (PiecewiseLinear(0.5), StraightThrough(), RateBackprop(), AnalogTwin()):
        gm = GradientPath(snn, path).eval()
        for attack in (FGSM(0.2), PGD(0.2, steps=3), APGD(0.2, steps=4)):
            x_adv = attack(snn, x, y, gradient=gm, generator=torch.Generator().manual_seed(0))
            assert float((x_adv - x).abs().max()) <= 0.2 + 1e-6
            assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1


def test_apgd_judges_success_on_the_attacked_model_not_on_the_gradient_model():
    """With a gradient model that differs from the model (e.g. an ANN twin), a point counts as
    adversarial only if the *model* misclassifies it."""
    g = torch.Generator().manual_seed(4)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    other = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    x = torch.rand(20, 1, 4, 4, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    x_adv = APGD(0.02, steps=5)(model, x, y, gradient=other)
    with torch.no_grad():
        still = model(x_adv).argmax(1) == y
    # tiny eps: nothing is fooled, and APGD must not return points that only fooled `other`
    assert bool(still.all())


class _SameForwardUnsaid(nn.Module):
    """The wrapped module's forward, without ``forward_equals``: attacks must then run the model."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x):
        return self.module(x)


@pytest.mark.parametrize("loss", ["ce", "dlr"])
def test_apgd_reuses_the_logits_of_a_same_forward_path_without_changing_its_result(loss):
    """Through a surrogate the SNN's forward is the model's: APGD takes its predictions from the logits
    of each gradient step instead of running the model again; the adversarial points are the same bits,
    and the model runs fewer times."""
    g = torch.Generator().manual_seed(8)
    ann = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
                        nn.Linear(4 * 3 * 3, 16), nn.ReLU(), nn.Linear(16, 3)).eval()  # fmt: skip
    with torch.no_grad():
        for p in ann.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    x = torch.rand(24, 1, 6, 6, generator=g)
    snn = convert(ann, [x], steps=4)
    with torch.no_grad():
        y = snn(x).argmax(1)
    path = GradientPath(snn, PiecewiseLinear(1.0)).eval()
    calls = []
    hook = snn.register_forward_hook(lambda *args: calls.append(1))
    try:
        results = []
        for gm in (path, _SameForwardUnsaid(path).eval()):
            calls.clear()
            attack = APGD(0.2, loss=loss, steps=8)
            results.append((attack(snn, x, y, gradient=gm, generator=torch.Generator().manual_seed(1)),
                            len(calls)))  # fmt: skip
    finally:
        hook.remove()
    (reused, n_reused), (plain, n_plain) = results
    assert torch.equal(reused, plain)
    assert n_reused < n_plain
    with torch.no_grad():
        assert len(set(y.tolist())) >= 2  # not a constant network
        assert bool((snn(reused).argmax(1) != y).any())  # the attack did something to compare


# -- bad input ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [lambda: FGSM(-0.1), lambda: PGD(-1e-3), lambda: APGD(-1.0),
                                  lambda: Square(-0.5),
                                  lambda: RFGSM(float("nan")), lambda: PGD(True)])  # fmt: skip
def test_negative_or_invalid_eps_is_refused(make):
    with pytest.raises(ValueError, match="eps"):
        make()


def test_other_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="norm"):
        PGD(0.1, "L1")
    with pytest.raises(ValueError, match="steps"):
        PGD(0.1, steps=0)
    with pytest.raises(ValueError, match="loss"):
        APGD(0.1, loss="kl")
    with pytest.raises(ValueError, match="alpha"):
        RFGSM(0.1, alpha=0.2)
    with pytest.raises(ValueError, match="queries"):
        Square(0.1, queries=0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).eval()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        FGSM(0.1)(net, torch.rand(2, 1, 2, 2) * 2, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="labels"):
        FGSM(0.1)(net, torch.rand(2, 1, 2, 2), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="3 classes"):
        APGD(0.1, loss="dlr")(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)).eval(), torch.rand(2, 1, 2, 2),
                              torch.tensor([0, 1]))  # fmt: skip


def test_eps_zero_returns_the_input_and_seeds_fix_the_result():
    net = nn.Sequential(nn.Flatten(), nn.Linear(2 * 4 * 4, 3)).eval()
    x, y = torch.rand(4, 2, 4, 4), torch.tensor([0, 1, 2, 0])
    assert torch.equal(PGD(0.0)(net, x, y), x)
    a = PGD(0.1, steps=1, alpha=0.01)(net, x, y, generator=torch.Generator().manual_seed(5))
    b = PGD(0.1, steps=1, alpha=0.01)(net, x, y, generator=torch.Generator().manual_seed(5))
    c = PGD(0.1, steps=1, alpha=0.01)(net, x, y, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_large_eps_breaks_a_converted_snn_through_surrogate_bptr_and_twin(mnist_mlp):
    """Sanity check against gradient masking: with a budget that can erase the digit, a surrogate
    path, BPTR and the ANN twin each drive the converted SNN's accuracy to (near) zero."""
    net, x, y = mnist_mlp
    x, y = x[:100], y[:100]
    snn = convert(net, [x], steps=8, scale=0.5, reset="soft", calibration_steps=8)
    clean = _robust_acc(snn, x, x, y)
    assert clean > 0.8
    for path in (PiecewiseLinear(1.0), RateBackprop(), AnalogTwin()):
        gm = GradientPath(snn, path).eval()
        x_adv = PGD(0.3, steps=10)(snn, x, y, gradient=gm)
        assert _robust_acc(snn, x, x_adv, y) < 0.1, path
