"""Random 2-layer target networks (LSNN paper, supervised L2L): hand-computed values, shapes, seeds."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from neuromorph.tasks.function_family import (
    TargetNetworks,
    evaluate,
    sample_episodes,
    sample_target_networks,
)


def test_evaluate_matches_hand_computation():
    # one function, 1 input, 2 hidden units: f(x) = 2 sig(1 x + 0) - 1 sig(-3 x + 1) + 0.5
    nets = TargetNetworks(
        w1=torch.tensor([[[1.0, -3.0]]]),
        b1=torch.tensor([[0.0, 1.0]]),
        w2=torch.tensor([[2.0, -1.0]]),
        b2=torch.tensor([0.5]),
    )
    sig = lambda u: 1 / (1 + math.exp(-u))  # noqa: E731
    for x in (-1.0, 0.0, 0.3, 1.0):
        want = 2 * sig(x) - sig(-3 * x + 1) + 0.5
        got = evaluate(nets, torch.tensor([[[x]]]))
        assert got.shape == (1, 1)
        assert got.item() == pytest.approx(want, abs=1e-6)


def test_episodes_shapes_ranges_and_seed():
    a = sample_episodes(5, 7, np.random.default_rng(3), n_inputs=2)
    b = sample_episodes(5, 7, np.random.default_rng(3), n_inputs=2)
    c = sample_episodes(5, 7, np.random.default_rng(4), n_inputs=2)
    assert a.x.shape == (7, 5, 2) and a.y.shape == (7, 5)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.equal(a.y, c.y)
    assert a.x.abs().max() <= 1.0


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 6), d=st.integers(1, 3), h=st.integers(1, 12))
def test_targets_are_the_drawn_networks(seed, n, d, h):
    """The episode targets are f(x) of networks drawn first from the same stream (one function each)."""
    rng = np.random.default_rng(seed)
    ep = sample_episodes(n, 4, rng, n_inputs=d, n_hidden=h)
    nets = sample_target_networks(n, np.random.default_rng(seed), n_inputs=d, n_hidden=h)
    assert torch.allclose(ep.y, evaluate(nets, ep.x), atol=1e-6)
    assert torch.isfinite(ep.y).all()
    # each function's outputs lie within |b2| + sum |w2| (sigmoid in (0, 1))
    bound = nets.b2.abs() + nets.w2.abs().sum(-1)
    assert (ep.y.abs() <= bound + 1e-5).all()


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"n": 0}, "n must be"),
        ({"n_inputs": 0}, "n_inputs"),
        ({"n_hidden": -1}, "n_hidden"),
        ({"w_scale": 0.0}, "w_scale"),
        ({"offset_scale": -1.0}, "offset_scale"),
    ],
)
def test_bad_arguments(kwargs, needle):
    args = {"n": 2, **kwargs}
    with pytest.raises(ValueError, match=needle):
        sample_target_networks(args.pop("n"), np.random.default_rng(0), **args)


def test_bad_rng_and_shapes():
    with pytest.raises(ValueError, match="rng"):
        sample_target_networks(2, 0)
    nets = sample_target_networks(2, np.random.default_rng(0), n_inputs=2)
    with pytest.raises(ValueError, match=r"x must have shape \[K, 2, 2\]"):
        evaluate(nets, torch.zeros(3, 2, 1))
    with pytest.raises(ValueError, match="n_examples"):
        sample_episodes(2, 0, np.random.default_rng(0))


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), d=st.integers(1, 2), h=st.integers(1, 12))
def test_centred_functions_have_the_drawn_offset_as_their_mean(seed, d, h):
    """centred: same W1, b1, w2 as the plain draw; the mean of f over x ~ U[-1, 1]^d is the drawn offset c
    (= the plain draw's b2), and the variation of f over x is unchanged."""
    plain = sample_target_networks(8, np.random.default_rng(seed), n_inputs=d, n_hidden=h)
    cent = sample_target_networks(8, np.random.default_rng(seed), n_inputs=d, n_hidden=h, centred=True)
    for a, b in zip(plain[:3], cent[:3], strict=True):
        assert torch.equal(a, b)
    x = torch.rand(20000, 8, d, generator=torch.Generator().manual_seed(seed % 1000)) * 2 - 1
    yp, yc = evaluate(plain, x), evaluate(cent, x)
    assert torch.allclose(yc - yp, (cent.b2 - plain.b2).expand_as(yc), atol=1e-5)  # a shift only
    sem = 4 * yc.std(0) / math.sqrt(x.shape[0]) + 2e-3  # Monte-Carlo error of the sample mean
    assert ((yc.mean(0) - plain.b2).abs() <= sem).all()


def test_centring_by_hand():
    # f(x) = w2 sig(a x) + b2 on x ~ U[-1, 1]: E sig(a x) = 1/2 (sig(u) - 1/2 is odd), so centring
    # subtracts w2 / 2; with w1 = 0 the hidden unit is the constant sig(b1)
    from neuromorph.tasks.function_family import _mean_over_inputs

    w1 = np.array([[[3.0]], [[0.0]]])
    b1 = np.array([[0.0], [0.7]])
    w2 = np.array([[2.0], [-1.5]])
    got = _mean_over_inputs(w1, b1, w2)
    assert got == pytest.approx([1.0, -1.5 / (1 + math.exp(-0.7))], abs=1e-9)
    ep = sample_episodes(3, 5, np.random.default_rng(0), n_inputs=1, centred=True, offset_scale=0.0)
    assert ep.y.shape == (5, 3) and torch.isfinite(ep.y).all()
