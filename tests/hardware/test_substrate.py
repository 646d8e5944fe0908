"""Analog substrate model: frozen chips, the ideal limit, weight resolution and a layer by hand."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from neuromorph.hardware.substrate import (
    Chip,
    ChipLayer,
    RateNetwork,
    SubstrateParams,
    deployment_scales,
    make_chip,
    quantize_weights,
    substrate_forward,
    substrate_layer,
    with_bias_input,
)

F64 = torch.float64
IDEAL = SubstrateParams(0.0, 0.0, 0.0, 0.0, None)
SHAPES = ((16, 9), (4, 17))


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _same_chip(a: Chip, b: Chip) -> bool:
    pairs = zip(a.layers, b.layers, strict=True)
    return all(torch.equal(x, y) for la, lb in pairs for x, y in zip(la, lb, strict=True))


def test_a_seed_is_a_chip():
    p = SubstrateParams()
    a, b = make_chip(SHAPES, p, seed=7), make_chip(SHAPES, p, seed=7)
    assert _same_chip(a, b)
    c = make_chip(SHAPES, p, seed=8)
    for la, lc in zip(a.layers, c.layers, strict=True):
        assert not torch.equal(la.synapse, lc.synapse)
        assert not torch.equal(la.gain, lc.gain)
        assert not torch.equal(la.threshold, lc.threshold)


def test_a_layer_does_not_depend_on_the_other_layers_and_sigma_scales_one_pattern():
    one = make_chip(SHAPES[:1], SubstrateParams(0.2, 0.1, 0.05, 0.0), seed=3)
    two = make_chip(SHAPES, SubstrateParams(0.4, 0.2, 0.1, 0.0), seed=3)
    s1, s2 = one.layers[0].synapse.double() - 1, two.layers[0].synapse.double() - 1
    inside = (s2 > -1) & (s1 > -1)  # neither clamped at 0
    torch.testing.assert_close(s2[inside], 2 * s1[inside], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(two.layers[0].threshold, 2 * one.layers[0].threshold, rtol=1e-5, atol=1e-7)


def test_mismatch_statistics_of_a_large_chip():
    p = SubstrateParams(synapse_mismatch=0.2, gain_mismatch=0.1, threshold_mismatch=0.05, noise=0.0)
    layer = make_chip(((4000, 250),), p, seed=1).layers[0]
    assert abs(layer.synapse.mean().item() - 1.0) < 0.002 and abs(layer.synapse.std().item() - 0.2) < 0.002
    assert abs(layer.gain.mean().item() - 1.0) < 0.01 and abs(layer.gain.std().item() - 0.1) < 0.01
    assert abs(layer.threshold.mean().item()) < 0.005 and abs(layer.threshold.std().item() - 0.05) < 0.005
    big = make_chip(((200, 200),), SubstrateParams(synapse_mismatch=2.0, gain_mismatch=2.0), seed=1)
    assert big.layers[0].synapse.min() == 0 and big.layers[0].gain.min() == 0  # no sign flips


def test_zero_mismatch_and_noise_is_the_ideal_model_exactly():
    net = RateNetwork((8, 16, 4), _gen(1))
    x = torch.rand(32, 8, generator=_gen(2))
    chip = make_chip(net.shapes, IDEAL, seed=5)
    out = substrate_forward(x, net.weights(), chip, weight_max=deployment_scales(net.weights()))
    with torch.no_grad():
        assert torch.equal(out[-1], net(x))
        assert torch.equal(out[0], (with_bias_input(x) @ net.layers[0].weight.T).clamp(0, 1))


def test_zero_mismatch_with_6_bits_is_the_ideal_model_with_quantised_weights():
    net = RateNetwork((8, 16, 4), _gen(1))
    x = torch.rand(32, 8, generator=_gen(2))
    w_max = deployment_scales(net.weights())
    chip = make_chip(net.shapes, IDEAL._replace(weight_bits=6), seed=5)
    out = substrate_forward(x, net.weights(), chip, weight_max=w_max)[-1]
    with torch.no_grad():
        for layer, m in zip(net.layers, w_max, strict=True):
            layer.weight.copy_(quantize_weights(layer.weight, 6, m))
        assert torch.equal(out, net(x))


def test_quantisation_by_hand():
    w = torch.tensor([0.14, 0.16, -0.44, 1.2, -5.0, 0.45, 0.0], dtype=F64)
    # 2 bits: levels -3..3 of lsb = 0.9 / 3 = 0.3; 0.45 / 0.3 = 1.5 rounds half to even (2).
    want = torch.tensor([0.0, 0.3, -0.3, 0.9, -0.9, 0.6, 0.0], dtype=F64)
    torch.testing.assert_close(quantize_weights(w, 2, 0.9), want)
    torch.testing.assert_close(quantize_weights(w, None, 0.9), w.clamp(-0.9, 0.9))
    # 1 bit: {-w_max, 0, w_max}
    assert quantize_weights(w, 1, 1.0).tolist() == [0.0, 0.0, -0.0, 1.0, -1.0, 0.0, 0.0]


@settings(max_examples=60, deadline=None)
@given(
    bits=st.integers(1, 16),
    w_max=st.floats(1e-3, 10.0),
    values=st.lists(st.floats(-20, 20, allow_nan=False), min_size=1, max_size=20),
)
def test_quantised_weights_lie_on_the_grid_within_half_a_step(bits, w_max, values):
    w = torch.tensor(values, dtype=F64)
    q = quantize_weights(w, bits, w_max)
    lsb = w_max / (2**bits - 1)
    codes = q / lsb
    torch.testing.assert_close(codes, codes.round(), rtol=0, atol=1e-6)
    assert (codes.abs() <= 2**bits - 1 + 1e-6).all()
    assert ((q - w.clamp(-w_max, w_max)).abs() <= lsb / 2 + 1e-9).all()


def _hand_layer(gain0: float = 6.0) -> ChipLayer:
    return ChipLayer(
        synapse=torch.tensor([[1.5, 0.5, 1.0], [1.0, 2.0, 0.0]], dtype=F64),
        gain=torch.tensor([gain0, 0.5], dtype=F64),
        threshold=torch.tensor([0.1, -0.2], dtype=F64),
    )


W_HAND = torch.tensor([[0.2, -0.4, 0.1], [0.6, 0.2, -0.3]], dtype=F64)
X_HAND = torch.tensor([[1.0, 0.5, 1.0]], dtype=F64)  # last entry: the bias row


def test_one_layer_by_hand():
    # u = (W * s) @ x: u0 = 0.3 - 0.1 + 0.1 = 0.3, u1 = 0.6 + 0.2 + 0 = 0.8
    # a = g (u - theta): a0 = 6 * 0.2 = 1.2, a1 = 0.5 * 1.0 = 0.5
    p = IDEAL
    kw = {"weight_max": 1.0, "generator": None}
    membrane = substrate_layer(X_HAND, W_HAND, _hand_layer(), p, rectify=False, **kw)
    torch.testing.assert_close(membrane, torch.tensor([[1.2, 0.5]], dtype=F64))
    rate = substrate_layer(X_HAND, W_HAND, _hand_layer(), p, rectify=True, **kw)
    torch.testing.assert_close(rate, torch.tensor([[1.0, 0.5]], dtype=F64))  # neuron 0 saturates
    # 2 bits, w_max 0.9 (lsb 0.3): Q(W) = [[0.3, -0.3, 0.0], [0.6, 0.3, -0.3]]
    # u = [0.45 - 0.075 + 0, 0.6 + 0.3 + 0] = [0.375, 0.9]; with g0 = 2: a = [2 * 0.275, 0.5 * 1.1]
    p2 = p._replace(weight_bits=2)
    q = substrate_layer(X_HAND, W_HAND, _hand_layer(2.0), p2, weight_max=0.9, rectify=True)
    torch.testing.assert_close(q, torch.tensor([[0.55, 0.55]], dtype=F64))


def test_trial_to_trial_noise_is_fresh_per_call_and_seeded():
    p = SubstrateParams(0.0, 0.0, 0.0, noise=0.1, weight_bits=None)
    layer = ChipLayer(torch.ones(3, 2), torch.ones(3), torch.zeros(3))
    x = torch.full((20000, 2), 0.1)
    w = torch.full((3, 2), 1.0)
    g = _gen(4)
    a = substrate_layer(x, w, layer, p, weight_max=1.0, rectify=False, generator=g)
    b = substrate_layer(x, w, layer, p, weight_max=1.0, rectify=False, generator=g)
    assert not torch.equal(a, b)
    again = substrate_layer(x, w, layer, p, weight_max=1.0, rectify=False, generator=_gen(4))
    assert torch.equal(a, again)
    assert abs(a.mean().item() - 0.2) < 0.003 and abs(a.std().item() - 0.1) < 0.003


@pytest.mark.parametrize(
    "call, needle",
    [
        (lambda: make_chip(SHAPES, SubstrateParams(weight_bits=0), 0), "weight_bits"),
        (lambda: make_chip(SHAPES, SubstrateParams(weight_bits=17), 0), "got 17"),
        (lambda: make_chip(SHAPES, SubstrateParams(weight_bits=True), 0), "weight_bits"),
        (lambda: make_chip(SHAPES, SubstrateParams(synapse_mismatch=-0.1), 0), "synapse_mismatch"),
        (lambda: make_chip(SHAPES, SubstrateParams(gain_mismatch=float("nan")), 0), "gain_mismatch"),
        (lambda: make_chip(SHAPES, SubstrateParams(noise=float("inf")), 0), "noise"),
        (lambda: make_chip(SHAPES, SubstrateParams(), -1), "seed"),
        (lambda: make_chip((), SubstrateParams(), 0), "shapes"),
        (lambda: make_chip(((3, 0),), SubstrateParams(), 0), "n_in"),
        (lambda: make_chip(SHAPES, (0.1, 0.1, 0.1, 0.0, 6), 0), "SubstrateParams"),
        (lambda: quantize_weights(torch.ones(2), 6, 0.0), "weight_max"),
        (lambda: quantize_weights(torch.ones(2), 20, 1.0), "bits"),
        (lambda: quantize_weights(torch.tensor([float("nan")]), 6, 1.0), "weight"),
        (
            lambda: substrate_layer(
                torch.ones(2, 4), W_HAND, _hand_layer(), IDEAL, weight_max=1.0, rectify=True
            ),
            "x must be",
        ),
        (
            lambda: substrate_layer(
                X_HAND, W_HAND[:, :2], _hand_layer(), IDEAL, weight_max=1.0, rectify=True
            ),
            "weight must have",
        ),
        (
            lambda: substrate_layer(
                X_HAND, W_HAND, _hand_layer(), SubstrateParams(noise=0.1), weight_max=1.0, rectify=True
            ),
            "generator",
        ),
        (lambda: RateNetwork((8,)), "sizes"),
        (lambda: RateNetwork((8, 0, 2)), "sizes[1]"),
    ],
)
def test_bad_input_names_the_argument(call, needle):
    with pytest.raises(ValueError, match=None) as info:
        call()
    assert needle in str(info.value)


def test_forward_needs_one_weight_and_range_per_chip_layer():
    net = RateNetwork((8, 16, 4))
    chip = make_chip(net.shapes, IDEAL, 0)
    with pytest.raises(ValueError, match="one entry per chip layer"):
        substrate_forward(torch.ones(2, 8), net.weights()[:1], chip, weight_max=(1.0, 1.0))
    with pytest.raises(ValueError, match="chip must be a Chip"):
        substrate_forward(torch.ones(2, 8), net.weights(), chip.layers, weight_max=(1.0, 1.0))
    with pytest.raises(ValueError, match=r"x must be a float tensor \[batch, 8\]"):
        substrate_forward(torch.ones(2, 9), net.weights(), chip, weight_max=(1.0, 1.0))
