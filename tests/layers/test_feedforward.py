"""FeedForwardSpikingLayer: a dense projection into a LIF population, against a manual lif_step loop."""

from __future__ import annotations

import pytest
import torch

from neuromorph.layers import FeedForwardSpikingLayer
from neuromorph.neurons.lif import LIFParameters, LIFState, lif_initial_state, lif_step

F64 = torch.float64


def _layer(**kwargs) -> FeedForwardSpikingLayer:
    return FeedForwardSpikingLayer(3, 4, generator=torch.Generator().manual_seed(0), **kwargs).double()


def _input(steps=25, batch=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(steps, batch, 3, generator=gen, dtype=F64) < 0.5).to(F64)


def _manual(x, weight, bias, p, state):
    zs = []
    for t in range(x.shape[0]):
        current = x[t] @ weight
        if bias is not None:
            current = current + bias
        z, state = lif_step(current, state, p)
        zs.append(z)
    return torch.stack(zs), state


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(tau_mem=10.0, threshold=0.25),
        dict(tau_mem=5.0, threshold=0.25, n_refractory=2, bias=True),
        dict(tau_mem=20.0, threshold=0.5, dt=0.5, bias=True),
    ],
    ids=["plain", "refractory-bias", "dt"],
)
def test_equals_manual_lif_loop(kwargs):
    layer = _layer(**kwargs)
    with torch.no_grad():
        layer.weight.abs_()
        if layer.bias is not None:
            layer.bias.fill_(0.05)
    x = _input()
    z, state = layer(x)
    p = LIFParameters(
        tau_mem=kwargs["tau_mem"],
        threshold=kwargs["threshold"],
        n_refractory=kwargs.get("n_refractory", 0),
        dt=kwargs.get("dt", 1.0),
    )
    with torch.no_grad():
        want_z, want_state = _manual(x, layer.weight, layer.bias, p, lif_initial_state(2, 4, dtype=F64))
    assert z.sum() > 0
    assert torch.equal(z.detach(), want_z)
    for a, b in zip(state, want_state, strict=True):
        torch.testing.assert_close(a.detach(), b, rtol=0, atol=1e-13)


def test_state_continues_across_chunks():
    layer = _layer(tau_mem=10.0, threshold=0.25, n_refractory=1)
    x = _input(30, 2, seed=1)
    whole, end = layer(x)
    first, mid = layer(x[:11])
    second, end2 = layer(x[11:], mid)
    assert isinstance(mid, LIFState)
    assert torch.equal(torch.cat([first, second]), whole)
    for a, b in zip(end2, end, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-14)


def test_gradient_reaches_weight_and_bias():
    layer = _layer(tau_mem=10.0, threshold=0.25, bias=True)
    z, _ = layer(_input())
    z.sum().backward()
    assert layer.weight.grad.abs().sum() > 0 and layer.bias.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(tau_mem=0.0), "tau_mem"),
        (dict(threshold=-1.0), "threshold"),
        (dict(n_refractory=-1), "n_refractory"),
        (dict(dt=0.0), "dt"),
    ],
)
def test_constructor_validation(kwargs, name):
    with pytest.raises(ValueError, match=name):
        FeedForwardSpikingLayer(3, 4, **kwargs)
    with pytest.raises(ValueError, match="n_out"):
        FeedForwardSpikingLayer(3, 0)


@pytest.mark.parametrize(
    "x, match",
    [
        (torch.zeros(4, 3, dtype=F64), "rank 3"),
        (torch.zeros(4, 2, 2, dtype=F64), "features"),
        (torch.full((4, 2, 3), float("nan"), dtype=F64), "NaN"),
    ],
)
def test_bad_input(x, match):
    with pytest.raises(ValueError, match=match):
        _layer()(x)


@pytest.mark.parametrize("impl", ["reference", "fused", "native", "triton"])
def test_every_impl_equals_the_manual_loop(impl):
    layer = FeedForwardSpikingLayer(
        3, 4, n_refractory=1, impl=impl, generator=torch.Generator().manual_seed(0)
    )
    x = _input().float()
    p = LIFParameters(tau_mem=layer.tau_mem, threshold=layer.threshold, n_refractory=1)
    with torch.no_grad():
        layer.weight.abs_().mul_(0.1)
        want, _ = _manual(x, layer.weight, None, p, lif_initial_state(2, 4))
    z, _ = layer(x)
    assert want.sum() > 0 and torch.equal(z.detach(), want)


@pytest.mark.parametrize(
    "x, match",
    [
        (torch.zeros(4, 2, 3, dtype=torch.float32), "x is torch.float32 on cpu but weight is torch.float64"),
        (torch.zeros(4, 2, 3, dtype=F64, device="meta"), "x is torch.float64 on meta but weight"),
        (torch.zeros(0, 2, 3, dtype=F64), "at least one time step"),
    ],
)
def test_mismatched_or_empty_input(x, match):
    with pytest.raises(ValueError, match=match):
        _layer()(x)


def test_impl_validated():
    with pytest.raises(ValueError, match="impl must be one of"):
        FeedForwardSpikingLayer(3, 4, impl="gpu")
