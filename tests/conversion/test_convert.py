"""ANN-to-SNN conversion: BN folding, IF populations by hand, layer-by-layer percentile thresholds,
the ANN twin, residual blocks, the T=128 accuracy claim, and bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from neuromorph.conversion import (
    AnalogTwin,
    ConvertedSNN,
    GradientPath,
    IFNeurons,
    RateBackprop,
    ResidualBlock,
    convert,
    fold_batchnorm,
    paper_gradients,
    resnet_cnn,
    vgg_cnn,
)
from neuromorph.spikes import PiecewiseLinear, StraightThrough

F64 = torch.float64


def _bn_with_stats(n: int, gen: torch.Generator, kind=nn.BatchNorm2d) -> nn.Module:
    bn = kind(n).double()
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(n, generator=gen, dtype=F64))
        bn.running_var.copy_(torch.rand(n, generator=gen, dtype=F64) + 0.5)
        bn.weight.copy_(torch.randn(n, generator=gen, dtype=F64))
        bn.bias.copy_(torch.randn(n, generator=gen, dtype=F64))
    return bn.eval()


def test_fold_batchnorm_equals_bn_of_conv_and_linear():
    g = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=True).double()
    bn = _bn_with_stats(4, g)
    x = torch.rand(2, 3, 5, 5, generator=g, dtype=F64)
    torch.testing.assert_close(fold_batchnorm(conv, bn)(x), bn(conv(x)), rtol=1e-12, atol=1e-12)
    lin = nn.Linear(6, 5, bias=False).double()
    bn1 = _bn_with_stats(5, g, nn.BatchNorm1d)
    x1 = torch.rand(3, 6, generator=g, dtype=F64)
    torch.testing.assert_close(fold_batchnorm(lin, bn1)(x1), bn1(lin(x1)), rtol=1e-12, atol=1e-12)


def test_if_population_by_hand_hard_and_soft():
    # constant input 3/8 (exact in binary), threshold 1: u = 3/8, 6/8, 9/8 -> spike at t=3
    x = torch.full((5, 1, 1), 0.375, dtype=F64)
    hard = IFNeurons(1.0, reset="hard").double()
    out, state = hard(x)
    # hard: after the spike v = 0 -> 3/8, 6/8
    assert out[:, 0, 0].tolist() == [0.0, 0.0, 1.0, 0.0, 0.0]
    assert state.v.item() == 0.75
    soft = IFNeurons(1.0, reset="soft").double()
    out, state = soft(x)
    # soft: after the spike v = 1/8 -> 4/8, 7/8
    assert out[:, 0, 0].tolist() == [0.0, 0.0, 1.0, 0.0, 0.0]
    assert state.v.item() == 0.875
    # threshold 1/2: u = 3/8; 6/8 spike (v 2/8); 5/8 spike (v 1/8); 4/8 (not > 1/2); 7/8 spike.
    # The output is v_th * z: the ANN's activation scale
    half = IFNeurons(0.5, reset="soft").double()
    assert half(x)[0][:, 0, 0].tolist() == [0.0, 0.5, 0.5, 0.0, 0.5]


@settings(max_examples=40, deadline=None)
@given(
    current=st.floats(0.0, 3.0),
    v_th=st.floats(0.1, 2.0),
    steps=st.integers(1, 64),
)
def test_soft_reset_conserves_charge(current, v_th, steps):
    """Soft reset: sum_t I(t) = v(T) + v_th * (number of spikes); the rate is a quantised clip(I / v_th)."""
    x = torch.full((steps, 1, 1), current, dtype=F64)
    neurons = IFNeurons(v_th, reset="soft").double()
    out, state = neurons(x)
    v_th = float(neurons.v_th().detach())  # the stored (float32-rounded) threshold
    n_spikes = float((out > 0).sum())
    assert current * steps == pytest.approx(state.v.item() + v_th * n_spikes, abs=1e-9)
    assert n_spikes <= steps
    if current <= v_th:  # below saturation the count is floor(T I / v_th) (up to the strict '>' at equality)
        assert abs(n_spikes - math.floor(steps * current / v_th)) <= 1


def _toy_ann(gen: torch.Generator) -> nn.Sequential:
    ann = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1, bias=False),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(3 * 4 * 4, 6),
        nn.ReLU(),
        nn.Dropout(0.3),
        nn.Linear(6, 4),
    ).double()
    with torch.no_grad():
        for p in ann.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=F64) * 0.5)
        ann[1].running_mean.copy_(torch.randn(3, generator=gen, dtype=F64) * 0.1)
        ann[1].running_var.copy_(torch.rand(3, generator=gen, dtype=F64) + 0.5)
    return ann.eval()


def test_analog_twin_is_the_ann_and_the_structure_is_as_converted():
    g = torch.Generator().manual_seed(1)
    ann = _toy_ann(g)
    x = torch.rand(5, 1, 8, 8, generator=g, dtype=F64)
    snn = convert(ann, [x], steps=4)
    assert isinstance(snn, ConvertedSNN) and not snn.training and snn.steps == 4
    assert len(snn.neurons()) == 2
    torch.testing.assert_close(snn(x, AnalogTwin()), ann(x), rtol=1e-12, atol=1e-12)
    # the ANN is untouched (BN still there, still in eval mode)
    assert isinstance(ann[1], nn.BatchNorm2d) and not ann.training


def test_thresholds_are_percentiles_layer_by_layer_by_hand():
    g = torch.Generator().manual_seed(2)
    ann = _toy_ann(g)
    batches = [torch.rand(4, 1, 8, 8, generator=g, dtype=F64) for _ in range(3)]
    steps, pct = 3, 90.0
    snn = convert(ann, batches, steps=steps, percentile=pct, scale=1.0, reset="soft", min_threshold=1e-6)
    conv = fold_batchnorm(ann[0], ann[1]).requires_grad_(False)
    ann.requires_grad_(False)

    def percentile(v: torch.Tensor) -> float:  # the k-th smallest, k = ceil(p n)
        flat = v.reshape(-1).sort().values
        return float(flat[math.ceil(pct / 100 * flat.numel()) - 1])

    # layer 1: its input is the (static) folded conv output at every step
    th1 = max(percentile(conv(b).expand(steps, *conv(b).shape)) for b in batches)
    assert snn.thresholds()["body.layers.1"] == pytest.approx(th1, rel=1e-12)
    # layer 2: input from the *spiking* layer 1, run by hand with soft reset and the threshold above
    th2 = -math.inf
    for b in batches:
        current = conv(b)
        v, currents = torch.zeros_like(current), []
        for _ in range(steps):
            u = v + current
            z = (u > th1).double()
            v = u - th1 * z
            currents.append(ann[5](ann[4](ann[3](th1 * z))))
        th2 = max(th2, percentile(torch.stack(currents)))
    assert snn.thresholds()["body.layers.5"] == pytest.approx(th2, rel=1e-12)
    # the global scale multiplies every threshold
    scaled = convert(ann, batches, steps=steps, percentile=pct, scale=0.3, reset="soft", min_threshold=1e-6)
    for name, value in scaled.thresholds().items():
        assert value == pytest.approx(0.3 * snn.thresholds()[name], rel=1e-12)


def test_percentile_100_is_the_maximum_and_dead_layers_get_the_floor():
    g = torch.Generator().manual_seed(3)
    ann = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).double().eval()
    with torch.no_grad():
        ann[1].weight.copy_(
            torch.tensor([[1.0, 2.0, 0, 0], [0, 0, 1.0, 0], [-1.0, -1.0, -1.0, -1.0]], dtype=F64)
        )
        ann[1].bias.zero_()
    x = torch.rand(7, 1, 2, 2, generator=g, dtype=F64)
    snn = convert(ann, [x], steps=2, percentile=100, scale=1.0)
    with torch.no_grad():
        assert snn.thresholds()["body.layers.2"] == pytest.approx(float(ann[1](ann[0](x)).max()), rel=1e-12)
    dead = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).double().eval()
    with torch.no_grad():
        dead[1].weight.fill_(-1.0)
        dead[1].bias.zero_()
    snn = convert(dead, [x], steps=2, min_threshold=0.05)
    assert snn.thresholds()["body.layers.2"] == pytest.approx(0.05)


def test_residual_network_converts_and_approximates_the_ann_at_large_T():
    g = torch.Generator().manual_seed(4)
    ann = resnet_cnn(1, 5, widths=(4, 8), blocks=1, generator=g).double()
    with torch.no_grad():  # non-trivial BN statistics
        for m in ann.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g, dtype=F64) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g, dtype=F64) + 0.5)
    ann.eval()
    x = torch.rand(6, 1, 8, 8, generator=g, dtype=F64)
    kinds = [type(m).__name__ for m in ann]
    assert "ResidualBlock" in kinds
    snn = convert(ann, [x], steps=512, percentile=100.0, scale=1.0, reset="soft")
    # stem IF, block 1 (body IF + output IF), block 2 (body IF + output IF)
    assert len(snn.neurons()) == 5
    torch.testing.assert_close(snn(x, AnalogTwin()), ann(x), rtol=1e-10, atol=1e-10)
    # with max thresholds (no clipping) and soft reset the rates converge to the ReLUs
    with torch.no_grad():
        err = (snn(x) - ann(x)).abs().max() / ann(x).abs().max()
    assert float(err) < 0.1


def _train_small_cnn(seed: int, n_train: int = 1000, epochs: int = 3):
    from neuromorph.data.mnist import load_mnist

    xtr, ytr = load_mnist(None, "train")
    xte, yte = load_mnist(None, "test")
    xtr = torch.tensor(xtr[:n_train], dtype=torch.float32).unsqueeze(1) / 255
    ytr = torch.tensor(ytr[:n_train])
    xte = torch.tensor(xte, dtype=torch.float32).unsqueeze(1) / 255
    g = torch.Generator().manual_seed(seed)
    net = vgg_cnn(1, 10, 28, features=(8, "A", 16, "A"), hidden=(64,), dropout=0.1, generator=g)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    for _ in range(epochs):
        perm = torch.randperm(n_train, generator=g)
        net.train()
        for i in range(0, n_train, 50):
            idx = perm[i : i + 50]
            loss = F.cross_entropy(net(xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval(), xtr, xte, torch.tensor(yte)


@pytest.mark.slow
def test_conversion_at_T128_keeps_clean_accuracy_within_one_point():
    """The issue's claim on a trained (non-robust) VGG-style CNN, MNIST 5k subset, 1,000 test images."""
    net, xtr, xte, yte = _train_small_cnn(0, n_train=4000, epochs=3)
    with torch.no_grad():
        ann_acc = float((net(xte).argmax(1) == yte).float().mean())
    assert ann_acc > 0.9
    snn = convert(net, [xtr[:200], xtr[200:400]], steps=128, percentile=99.7, scale=1.0, reset="soft",
                  calibration_steps=32)  # fmt: skip
    with torch.no_grad():
        snn_acc = float(
            torch.cat([snn(xte[i : i + 250]).argmax(1) for i in range(0, 1000, 250)]).eq(yte).float().mean()
        )
    assert abs(ann_acc - snn_acc) <= 0.01, (ann_acc, snn_acc)


def test_conversion_of_a_trained_cnn_at_T64_is_close():
    """Fast version of the claim: 300 test images, T = 64, within 2 points."""
    net, xtr, xte, yte = _train_small_cnn(1, n_train=1000, epochs=2)
    x, y = xte[:300], yte[:300]
    with torch.no_grad():
        ann_acc = float((net(x).argmax(1) == y).float().mean())
        snn = convert(net, [xtr[:200]], steps=64, reset="soft", calibration_steps=16)
        snn_acc = float((snn(x).argmax(1) == y).float().mean())
    assert ann_acc > 0.8
    assert abs(ann_acc - snn_acc) <= 0.02, (ann_acc, snn_acc)


def test_gradient_paths_differ_and_bptr_follows_its_rule():
    g = torch.Generator().manual_seed(5)
    ann = _toy_ann(g)
    x = torch.rand(3, 1, 8, 8, generator=g, dtype=F64)
    snn = convert(ann, [x], steps=6)
    grads = {}
    for name, path in [("pcw", PiecewiseLinear(1.0)), ("ste", StraightThrough()), ("bptr", RateBackprop()),
                       ("twin", AnalogTwin())]:  # fmt: skip
        xg = x.clone().requires_grad_(True)
        out = snn(xg, path)
        if name in ("pcw", "ste", "bptr"):  # the forward is the true SNN for these
            torch.testing.assert_close(out, snn(x))
        out.sum().backward()
        grads[name] = xg.grad
    assert not torch.allclose(grads["pcw"], grads["ste"])
    assert not torch.allclose(grads["bptr"], grads["twin"])
    # BPTR on one population by hand: dL/dI(t) = dL/ds(t) * 1[neuron fired at least once]
    neurons = IFNeurons(1.0, reset="hard").double()
    current = torch.tensor([[[0.6, 0.2]]], dtype=F64).expand(4, 1, 2).clone().requires_grad_(True)
    out, _ = neurons(current, None, RateBackprop())
    assert out[:, 0, 0].tolist() == [0.0, 1.0, 0.0, 1.0] and out[:, 0, 1].tolist() == [0.0] * 4
    w = torch.arange(8, dtype=F64).reshape(4, 1, 2)
    (out * w).sum().backward()
    torch.testing.assert_close(current.grad, w * torch.tensor([1.0, 0.0], dtype=F64))


@pytest.mark.parametrize("reset", ["hard", "soft"])
def test_inference_forward_is_bit_for_bit_the_autograd_forward(reset):
    """Without autograd an IF population runs an in-place loop (evaluation speed); it must give the very
    bits of the autograd path, for a full input and for the direct input repeated over time, and so must
    BPTR's forward and a whole converted SNN."""
    g = torch.Generator().manual_seed(6)
    neurons = IFNeurons(0.7, reset=reset)
    full = torch.randn(6, 3, 4, 5, generator=g) * 1.5
    direct = torch.randn(1, 3, 4, 5, generator=g).expand(6, 3, 4, 5)
    for x in (full, direct):
        slow, slow_state = neurons(x)  # the threshold is a parameter: autograd path
        assert slow.requires_grad
        with torch.no_grad():
            fast, fast_state = neurons(x)
        assert torch.equal(fast, slow) and torch.equal(fast_state.v, slow_state.v)
        assert torch.equal(neurons(x, None, RateBackprop())[0], slow)
    ann = _toy_ann(g).float()
    x = torch.rand(5, 1, 8, 8, generator=g)
    snn = convert(ann, [x], steps=6, reset=reset)
    slow = snn(x)
    assert slow.requires_grad
    with torch.no_grad():
        assert torch.equal(snn(x), slow)


def test_gradient_path_says_when_its_forward_is_the_snns():
    g = torch.Generator().manual_seed(7)
    x = torch.rand(3, 1, 8, 8, generator=g, dtype=F64)
    snn = convert(_toy_ann(g), [x], steps=4)
    other = convert(_toy_ann(g), [x], steps=4)
    assert GradientPath(snn, PiecewiseLinear(0.5)).forward_equals(snn)
    assert GradientPath(snn, StraightThrough()).forward_equals(snn)
    assert not GradientPath(snn, PiecewiseLinear(0.5)).forward_equals(other)
    assert not GradientPath(snn, AnalogTwin()).forward_equals(snn)  # the twin's forward is the ANN
    assert not GradientPath(snn, RateBackprop()).forward_equals(snn)  # not claimed (own forward code)


def test_paper_gradient_list_has_19_named_paths():
    paths = paper_gradients()
    assert len(paths) == 19
    assert {
        "bptt-pcw-1",
        "bptt-exp-d-0.5",
        "bptt-exp-2",
        "bptt-rect-4",
        "bptt-ste",
        "bptr",
        "ann-twin",
    } <= set(paths)


def test_thresholds_are_learnable_and_clamped():
    g = torch.Generator().manual_seed(6)
    ann = _toy_ann(g)
    x = torch.rand(3, 1, 8, 8, generator=g, dtype=F64)
    snn = convert(ann, [x], steps=4, min_threshold=0.03)
    snn(x).sum().backward()
    assert all(m.threshold.grad is not None for _, m in snn.neurons())
    with torch.no_grad():
        snn.neurons()[0][1].threshold.fill_(-1.0)
    assert float(snn.neurons()[0][1].v_th().detach()) == pytest.approx(0.03)  # used value is floored
    snn.clamp_thresholds_()
    assert float(snn.neurons()[0][1].threshold.detach()) == pytest.approx(0.03)


# -- bad input ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("percentile", [0, -1, 100.5, float("nan"), True])
def test_percentile_outside_0_100_is_refused(percentile):
    g = torch.Generator().manual_seed(7)
    with pytest.raises(ValueError, match="percentile"):
        convert(_toy_ann(g), [torch.rand(2, 1, 8, 8, dtype=F64)], steps=4, percentile=percentile)


@pytest.mark.parametrize("steps", [0, -3, 2.5])
def test_T_below_one_is_refused(steps):
    g = torch.Generator().manual_seed(8)
    with pytest.raises(ValueError, match="T"):
        convert(_toy_ann(g), [torch.rand(2, 1, 8, 8, dtype=F64)], steps=steps)


@pytest.mark.parametrize(
    "layer, needle",
    [(nn.MaxPool2d(2), "unsupported layer 1 (MaxPool2d)"), (nn.Sigmoid(), "unsupported layer 1 (Sigmoid)"),
     (nn.LeakyReLU(), "unsupported layer 1 (LeakyReLU)")],
)  # fmt: skip
def test_unsupported_layer_is_named(layer, needle):
    ann = nn.Sequential(nn.Conv2d(1, 2, 3), layer, nn.Flatten(), nn.LazyLinear(3))
    ann(torch.rand(1, 1, 8, 8))
    with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        convert(ann.eval(), [torch.rand(2, 1, 8, 8)], steps=4)


def test_nested_unsupported_layer_is_named_with_its_path():
    body = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.GELU())
    ann = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), ResidualBlock(body), nn.Flatten(), nn.Linear(32, 2)
    )
    with pytest.raises(ValueError, match=r"2\.body\.1 \(GELU\)"):
        convert(ann.eval(), [torch.rand(2, 1, 4, 4)], steps=4)


def test_misplaced_batchnorm_and_missing_readout_are_refused():
    bad_bn = nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.ReLU(), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2 * 36, 2)
    )
    with pytest.raises(ValueError, match=r"layer 2 \(BatchNorm2d\) does not directly follow"):
        convert(bad_bn.eval(), [torch.rand(2, 1, 8, 8)], steps=4)
    no_readout = nn.Sequential(nn.Flatten(), nn.Linear(64, 3), nn.ReLU())
    with pytest.raises(ValueError, match="must end with its Linear readout"):
        convert(no_readout.eval(), [torch.rand(2, 1, 8, 8)], steps=4)
    with pytest.raises(ValueError, match="nn.Sequential"):
        convert(nn.Linear(3, 2), [torch.rand(2, 3)], steps=4)
    with pytest.raises(ValueError, match="at least one batch"):
        convert(nn.Sequential(nn.Linear(3, 2)), [], steps=4)
    with pytest.raises(ValueError, match="scale"):
        convert(nn.Sequential(nn.Linear(3, 2)), [torch.rand(2, 3)], steps=4, scale=0.0)
    with pytest.raises(ValueError, match="reset"):
        convert(nn.Sequential(nn.Linear(3, 2)), [torch.rand(2, 3)], steps=4, reset="zero")
    with pytest.raises(ValueError, match="NaN"):
        convert(nn.Sequential(nn.Linear(3, 2)), [torch.full((2, 3), float("nan"))], steps=4)


def test_gradient_argument_is_checked():
    snn = convert(nn.Sequential(nn.Linear(3, 2)), [torch.rand(2, 3)], steps=2)
    with pytest.raises(ValueError, match="gradient must be"):
        snn(torch.rand(2, 3), "bptt")
    with pytest.raises(ValueError, match="T"):
        snn.with_steps(0)
