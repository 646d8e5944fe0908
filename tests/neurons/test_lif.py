"""LIF step (LSNN-official conventions) against hand computations, finite differences and its contracts."""

from __future__ import annotations

import math

import pytest
import torch

import neuromorph.neurons.lif as lif_module
from neuromorph.neurons.alif import ALIFParameters, ALIFState, alif_step
from neuromorph.neurons.lif import LIFParameters, LIFState, lif_initial_state, lif_step, validate_parameters
from neuromorph.spikes import Triangle

F64 = torch.float64


def _t(values) -> torch.Tensor:
    return torch.tensor([values], dtype=F64)


# Neuron 0 spikes, neuron 1 spiked last step (soft reset) and is refractory although above threshold,
# neuron 2 stays below threshold.
P_HAND = LIFParameters(tau_mem=10.0, threshold=0.5, n_refractory=2, dt=1.0)
STATE_HAND = LIFState(v=_t([0.9, 1.2, 0.3]), z=_t([0.0, 1.0, 0.0]), refractory=_t([0, 2, 0]))
I_HAND = _t([0.4, -0.2, 1.0])
ALPHA = math.exp(-1.0 / 10.0)


def test_one_step_by_hand():
    z, new = lif_step(I_HAND, STATE_HAND, P_HAND)
    assert isinstance(new, LIFState)
    assert z.tolist() == [[1.0, 0.0, 0.0]]
    assert new.z.tolist() == [[1.0, 0.0, 0.0]]
    assert new.refractory.tolist() == [[2.0, 1.0, 0.0]]
    want_v = [
        ALPHA * 0.9 + (1 - ALPHA) * 0.4,
        ALPHA * 1.2 + (1 - ALPHA) * -0.2 - 0.5 * 1.0 * 1.0,  # soft reset by thr * z(t-1) * dt
        ALPHA * 0.3 + (1 - ALPHA) * 1.0,
    ]
    assert new.v[0].tolist() == pytest.approx(want_v, rel=1e-14)
    assert new.v[0].tolist() == pytest.approx(
        [0.8524187090179798, 0.5667723852503435, 0.36661380737482835], rel=1e-12
    )


def test_one_step_gradient_by_hand():
    v = STATE_HAND.v.clone().requires_grad_()
    z, _ = lif_step(I_HAND, STATE_HAND._replace(v=v), P_HAND)
    z.sum().backward()
    s0, s2 = (0.9 - 0.5) / 0.5, (0.3 - 0.5) / 0.5  # 0.8 and -0.4
    want = [0.3 * (1 - s0) / 0.5, 0.0, 0.3 * (1 - abs(s2)) / 0.5]  # 0.12, 0 (refractory), 0.36
    assert v.grad[0].tolist() == pytest.approx(want, rel=1e-12)
    assert v.grad[0].tolist() == pytest.approx([0.12, 0.0, 0.36], rel=1e-12)


def test_dt_half():
    p = LIFParameters(tau_mem=10.0, threshold=0.5, dt=0.5)
    alpha = math.exp(-0.5 / 10.0)
    state = LIFState(v=_t([1.0, 0.1]), z=_t([0.0, 0.0]), refractory=_t([0, 0]))
    z1, s1 = lif_step(_t([0.2, 0.2]), state, p)
    assert z1.tolist() == [[2.0, 0.0]]
    assert s1.v[0, 0].item() == pytest.approx(0.9609835396005713, rel=1e-14)
    z2, s2 = lif_step(_t([0.2, 0.2]), s1, p)
    assert z2[0, 0].item() == 2.0
    # reset subtracts thr * z * dt = thr (one threshold per spike)
    assert s2.v[0, 0].item() == pytest.approx(alpha * 0.9609835396005713 + (1 - alpha) * 0.2 - 0.5, rel=1e-14)


def test_equals_alif_with_beta_zero():
    gen = torch.Generator().manual_seed(1)
    currents = torch.rand(30, 2, 4, generator=gen, dtype=F64) * 2.5
    lp = LIFParameters(tau_mem=15.0, threshold=0.4, n_refractory=2)
    ap = ALIFParameters(tau_mem=15.0, tau_adapt=100.0, beta=0.0, threshold=0.4, n_refractory=2)
    ls = lif_initial_state(2, 4, dtype=F64)
    as_ = ALIFState(ls.v, ls.z, torch.zeros(2, 4, dtype=F64), ls.refractory)
    total = 0.0
    for i in currents:
        zl, ls = lif_step(i, ls, lp)
        za, as_ = alif_step(i, as_, ap)
        assert torch.equal(zl, za)
        torch.testing.assert_close(ls.v, as_.v, rtol=0, atol=1e-14)
        total += zl.sum().item()
    assert total > 0


def _smooth_spike(x, surrogate, eps=0.3):
    return torch.sigmoid(x / eps)


def _run(currents, v0, state, p, w_z, w_v):
    st = state._replace(v=v0)
    loss = 0.0
    for t in range(currents.shape[0]):
        z, st = lif_step(currents[t], st, p)
        loss = loss + (z * w_z[t]).sum()
    return loss + (st.v * w_v).sum()


def _central_differences(f, x: torch.Tensor, h: float) -> torch.Tensor:
    grad = torch.zeros_like(x)
    flat, gflat = x.view(-1), grad.view(-1)
    for k in range(flat.numel()):
        old = flat[k].item()
        flat[k] = old + h
        up = f().item()
        flat[k] = old - h
        down = f().item()
        flat[k] = old
        gflat[k] = (up - down) / (2 * h)
    return grad


def test_gradient_20_steps_matches_finite_differences(monkeypatch):
    monkeypatch.setattr(lif_module, "spike", _smooth_spike)
    gen = torch.Generator().manual_seed(0)
    steps, batch, n = 20, 2, 3
    p = LIFParameters(tau_mem=torch.tensor([10.0, 20.0, 5.0], dtype=F64), threshold=0.6, dt=1.0)
    state = LIFState(
        v=0.5 + 0.5 * torch.randn(batch, n, generator=gen, dtype=F64),
        z=(torch.rand(batch, n, generator=gen, dtype=F64) > 0.5).to(F64),
        refractory=torch.zeros(batch, n, dtype=F64),
    )
    currents = 1.0 + torch.randn(steps, batch, n, generator=gen, dtype=F64)
    v0 = state.v.clone()
    w_z = torch.randn(steps, batch, n, generator=gen, dtype=F64)
    w_v = torch.randn(batch, n, generator=gen, dtype=F64)

    c = currents.clone().requires_grad_()
    v = v0.clone().requires_grad_()
    g_c, g_v = torch.autograd.grad(_run(c, v, state, p, w_z, w_v), (c, v))
    assert g_c.abs().max() > 1e-3 and g_v.abs().max() > 1e-3
    with torch.no_grad():
        fd_c = _central_differences(lambda: _run(currents, v0, state, p, w_z, w_v), currents, 1e-5)
        fd_v = _central_differences(lambda: _run(currents, v0, state, p, w_z, w_v), v0, 1e-5)
    torch.testing.assert_close(g_c, fd_c, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(g_v, fd_v, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("n_ref", [1, 2, 5])
def test_refractory_period_is_exactly_n_refractory_steps(n_ref):
    p = LIFParameters(threshold=0.01, n_refractory=n_ref)
    state = LIFState(v=_t([10.0]), z=_t([0.0]), refractory=_t([0]))
    zs = []
    for _ in range(3 * (n_ref + 1)):
        z, state = lif_step(_t([1e4]), state, p)
        zs.append(z.item())
    assert zs == ([1.0] + [0.0] * n_ref) * 3


def test_initial_state():
    st = lif_initial_state(3, 5, dtype=F64)
    assert len(st) == 3
    for t in st:
        assert t.shape == (3, 5) and t.dtype == F64 and not t.any()


def test_defaults_valid():
    p = LIFParameters()
    validate_parameters(p)
    assert (p.tau_mem, p.threshold, p.n_refractory, p.dt) == (20.0, 0.01, 0, 1.0)
    assert p.surrogate == Triangle(gamma=0.3)


@pytest.mark.parametrize(
    "field, value",
    [
        ("tau_mem", 0.0),
        ("tau_mem", -5.0),
        ("tau_mem", torch.tensor([1.0, -1.0])),
        ("threshold", 0.0),
        ("threshold", float("inf")),
        ("n_refractory", -2),
        ("n_refractory", 2.0),
        ("dt", 0.0),
    ],
)
def test_validate_parameters_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        validate_parameters(LIFParameters()._replace(**{field: value}))
