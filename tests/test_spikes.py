"""Heaviside forward and the pseudo-derivatives of ``neuromorph.spikes`` against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from neuromorph.spikes import (
    SURROGATES,
    Exponential,
    PiecewiseLinear,
    Rectangular,
    Sigmoid,
    StraightThrough,
    Surrogate,
    Triangle,
    spike,
    surrogate_from_name,
)

ALL_SURROGATES = [
    Triangle(gamma=0.3),
    PiecewiseLinear(width=2.0),
    Rectangular(width=0.5),
    Exponential(alpha=0.3, gamma=2.0),
    Sigmoid(slope=4.0),
    StraightThrough(),
]


def _grad_at(points: list[float], surrogate: Surrogate) -> list[float]:
    x = torch.tensor(points, dtype=torch.float64, requires_grad=True)
    spike(x, surrogate).sum().backward()
    return x.grad.tolist()


@pytest.mark.parametrize("surrogate", ALL_SURROGATES, ids=lambda s: type(s).__name__)
def test_forward_is_heaviside_with_zero_at_zero(surrogate):
    x = torch.tensor([-2.0, -1e-12, 0.0, 1e-12, 0.3, 5.0], dtype=torch.float64)
    z = spike(x, surrogate)
    assert z.dtype == torch.float64
    assert z.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]


def test_forward_keeps_shape_and_float32():
    x = torch.tensor([[0.5, -0.5], [0.0, 2.0]])
    z = spike(x, Triangle())
    assert z.shape == (2, 2) and z.dtype == torch.float32
    assert z.tolist() == [[1.0, 0.0], [0.0, 1.0]]


def test_triangle_lsnn_values():
    got = _grad_at([0.0, 0.5, -0.5, 0.9, 1.0, -1.0, 1.5, -3.0], Triangle(gamma=0.3))
    want = [0.3, 0.15, 0.15, 0.3 * 0.1, 0.0, 0.0, 0.0, 0.0]
    assert got == pytest.approx(want, abs=1e-15)


def test_triangle_width():
    # gamma * max(0, 1 - |x| / width), width 2: at 1 -> gamma / 2, at 2 -> 0
    got = _grad_at([0.0, 1.0, -1.5, 2.0, 2.5], Triangle(gamma=0.5, width=2.0))
    assert got == pytest.approx([0.5, 0.25, 0.125, 0.0, 0.0], abs=1e-15)


def test_piecewise_linear_values():
    # max(0, w - |x|) / w^2 with w = 2
    got = _grad_at([0.0, 1.0, -1.0, 1.5, 2.0, -2.5], PiecewiseLinear(width=2.0))
    assert got == pytest.approx([0.5, 0.25, 0.25, 0.125, 0.0, 0.0], abs=1e-15)


def test_rectangular_values():
    # 1(|x| < w / 2) / w with w = 0.5: height 2 on (-0.25, 0.25)
    got = _grad_at([0.0, 0.2, -0.2, 0.25, -0.3, 1.0], Rectangular(width=0.5))
    assert got == [2.0, 2.0, 2.0, 0.0, 0.0, 0.0]


def test_exponential_values():
    got = _grad_at([0.0, 0.5, -1.0, 3.0], Exponential(alpha=0.3, gamma=2.0))
    want = [0.3, 0.3 * math.exp(-1.0), 0.3 * math.exp(-2.0), 0.3 * math.exp(-6.0)]
    assert got == pytest.approx(want, rel=1e-14)


def test_sigmoid_values():
    def expected(x: float, k: float) -> float:
        s = 1.0 / (1.0 + math.exp(-k * x))
        return k * s * (1.0 - s)

    got = _grad_at([0.0, 0.25, -1.0], Sigmoid(slope=4.0))
    assert got[0] == pytest.approx(1.0, rel=1e-14)  # slope / 4 at 0
    assert got == pytest.approx([expected(x, 4.0) for x in (0.0, 0.25, -1.0)], rel=1e-12)


def test_straight_through_values():
    assert _grad_at([-5.0, 0.0, 0.2, 7.0], StraightThrough()) == [1.0, 1.0, 1.0, 1.0]


def test_backward_multiplies_upstream_gradient():
    x = torch.tensor([0.0, 0.5, 2.0], dtype=torch.float64, requires_grad=True)
    upstream = torch.tensor([2.0, -4.0, 10.0], dtype=torch.float64)
    (spike(x, Triangle(gamma=0.3)) * upstream).sum().backward()
    assert x.grad.tolist() == pytest.approx([0.6, -0.6, 0.0], abs=1e-15)


@pytest.mark.parametrize(
    "surrogate",
    [PiecewiseLinear(width=1.0), PiecewiseLinear(width=0.3), Rectangular(width=1.0), Rectangular(width=2.5)],
    ids=repr,
)
def test_unit_area(surrogate):
    x = torch.linspace(-5.0, 5.0, 200_001, dtype=torch.float64)
    area = torch.trapezoid(surrogate.derivative(x), x).item()
    assert area == pytest.approx(1.0, abs=1e-3)


def test_triangle_area_is_gamma_times_width():
    x = torch.linspace(-5.0, 5.0, 200_001, dtype=torch.float64)
    area = torch.trapezoid(Triangle(gamma=0.3, width=2.0).derivative(x), x).item()
    assert area == pytest.approx(0.6, abs=1e-6)


@pytest.mark.parametrize(
    "factory, name",
    [
        (lambda: Triangle(gamma=0.0), "gamma"),
        (lambda: Triangle(gamma=-0.3), "gamma"),
        (lambda: Triangle(width=0.0), "width"),
        (lambda: Triangle(gamma=float("nan")), "gamma"),
        (lambda: PiecewiseLinear(width=-1.0), "width"),
        (lambda: PiecewiseLinear(width=float("inf")), "width"),
        (lambda: Rectangular(width=0.0), "width"),
        (lambda: Exponential(alpha=0.0), "alpha"),
        (lambda: Exponential(gamma=-1.0), "gamma"),
        (lambda: Sigmoid(slope=0.0), "slope"),
        (lambda: Triangle(gamma="0.3"), "gamma"),
    ],
)
def test_bad_parameters_raise_naming_the_argument(factory, name):
    with pytest.raises(ValueError, match=name):
        factory()


def test_spike_rejects_non_surrogate():
    with pytest.raises(ValueError, match="surrogate"):
        spike(torch.zeros(3), lambda x: x)


def test_surrogates_are_frozen():
    t = Triangle()
    with pytest.raises(AttributeError):
        t.gamma = 1.0  # type: ignore[misc]


def test_surrogate_from_name():
    s = surrogate_from_name("pcw", width=0.5)
    assert isinstance(s, PiecewiseLinear) and s.width == 0.5
    assert surrogate_from_name("triangle") == Triangle(gamma=0.3)
    assert isinstance(surrogate_from_name("ste"), StraightThrough)
    assert set(SURROGATES) == {"triangle", "pcw", "rect", "exp", "sigmoid", "ste"}


def test_surrogate_from_name_unknown_lists_valid_names():
    with pytest.raises(ValueError) as info:
        surrogate_from_name("gauss")
    message = str(info.value)
    assert "gauss" in message
    for name in SURROGATES:
        assert name in message


def test_surrogate_from_name_validates_kwargs():
    with pytest.raises(ValueError, match="width"):
        surrogate_from_name("rect", width=-1.0)
