"""Non-leaky IF neuron (conversion): hard and soft reset by hand, gradients, validation."""

from __future__ import annotations

import pytest
import torch

import neuromorph.neurons.integrate_fire as if_module
from neuromorph.neurons.integrate_fire import (
    IFParameters,
    IFState,
    if_initial_state,
    if_step,
    validate_parameters,
)
from neuromorph.spikes import PiecewiseLinear

F64 = torch.float64


def _t(values) -> torch.Tensor:
    return torch.tensor([values], dtype=F64)


# u = v + I = [1.3, 0.95, 0.1, 1.0]: neuron 0 spikes, 1 and 2 stay below, 3 sits exactly at threshold
V0 = _t([0.5, 0.9, -0.2, 0.75])
I0 = _t([0.8, 0.05, 0.3, 0.25])


def test_hard_reset_by_hand():
    z, new = if_step(I0, IFState(V0), IFParameters(threshold=1.0, reset="hard"))
    assert z.tolist() == [[1.0, 0.0, 0.0, 0.0]]
    assert new.v[0].tolist() == pytest.approx([0.0, 0.95, 0.1, 1.0], abs=1e-15)


def test_soft_reset_by_hand():
    z, new = if_step(I0, IFState(V0), IFParameters(threshold=1.0, reset="soft"))
    assert z.tolist() == [[1.0, 0.0, 0.0, 0.0]]
    assert new.v[0].tolist() == pytest.approx([0.3, 0.95, 0.1, 1.0], abs=1e-15)


def test_spike_uses_voltage_after_integration():
    z, _ = if_step(_t([0.6]), IFState(_t([0.5])), IFParameters(threshold=1.0))
    assert z.item() == 1.0  # v(t-1) = 0.5 alone is below threshold


@pytest.mark.parametrize("reset, want", [("hard", [-0.91, 0.0975, 0.99]), ("soft", [0.3, 0.05, 0.9])])
def test_gradient_by_hand(reset, want):
    # PiecewiseLinear(1): dz/du = max(0, 1 - |u - thr|) = 0.7, 0.95, 0.1 at u = 1.3, 0.95, 0.1
    # hard: dv/dI = (1 - z) - u * dz/du ; soft: dv/dI = 1 - thr * dz/du
    current = I0[:, :3].clone().requires_grad_()
    _, new = if_step(current, IFState(V0[:, :3]), IFParameters(threshold=1.0, reset=reset))
    new.v.sum().backward()
    assert current.grad[0].tolist() == pytest.approx(want, abs=1e-12)


def test_soft_reset_rate_coding():
    # constant input 0.375 (exact in binary) for 10 steps against threshold 1 with soft reset: the residue
    # is kept, 3 spikes in 3.75 units of charge; at step 7 u is exactly 1.0, which does not spike
    state = if_initial_state((1, 1), dtype=F64)
    p = IFParameters(threshold=1.0, reset="soft")
    zs = []
    for _ in range(10):
        z, state = if_step(_t([0.375]), state, p)
        zs.append(z.item())
    assert zs == [0, 0, 1, 0, 0, 1, 0, 0, 1, 0]
    assert state.v.item() == 0.75


def test_hard_reset_drops_residue():
    state = if_initial_state((1, 1), dtype=F64)
    p = IFParameters(threshold=1.0, reset="hard")
    zs = []
    for _ in range(8):
        z, state = if_step(_t([0.4]), state, p)
        zs.append(z.item())
    assert zs == [0, 0, 1, 0, 0, 1, 0, 0]  # 1.2 -> 0 (residue 0.2 lost), so 3 steps per spike
    assert state.v.item() == pytest.approx(0.8, abs=1e-12)


def _smooth_spike(x, surrogate, eps=0.3):
    return torch.sigmoid(x / eps)


@pytest.mark.parametrize("reset", ["hard", "soft"])
def test_gradient_20_steps_matches_finite_differences(monkeypatch, reset):
    monkeypatch.setattr(if_module, "spike", _smooth_spike)
    gen = torch.Generator().manual_seed(2)
    p = IFParameters(threshold=torch.tensor([0.8, 1.0, 1.2], dtype=F64), reset=reset)
    currents = 0.3 + 0.3 * torch.randn(20, 2, 3, generator=gen, dtype=F64)
    v0 = torch.rand(2, 3, generator=gen, dtype=F64)
    w = torch.randn(20, 2, 3, generator=gen, dtype=F64)

    def run(c, v):
        state, loss = IFState(v), 0.0
        for t in range(20):
            z, state = if_step(c[t], state, p)
            loss = loss + (z * w[t]).sum()
        return loss + state.v.sum()

    c = currents.clone().requires_grad_()
    v = v0.clone().requires_grad_()
    g_c, g_v = torch.autograd.grad(run(c, v), (c, v))
    assert g_c.abs().max() > 1e-3
    with torch.no_grad():
        for x, g in ((currents, g_c), (v0, g_v)):
            fd = torch.zeros_like(x)
            for k in range(x.numel()):
                old = x.view(-1)[k].item()
                x.view(-1)[k] = old + 1e-5
                up = run(currents, v0).item()
                x.view(-1)[k] = old - 1e-5
                down = run(currents, v0).item()
                x.view(-1)[k] = old
                fd.view(-1)[k] = (up - down) / 2e-5
            torch.testing.assert_close(g, fd, rtol=1e-6, atol=1e-8)


def test_initial_state_and_defaults():
    st = if_initial_state((2, 3, 4), dtype=F64)
    assert st.v.shape == (2, 3, 4) and st.v.dtype == F64 and not st.v.any()
    p = IFParameters()
    validate_parameters(p)
    assert p.threshold == 1.0 and p.reset == "hard" and p.surrogate == PiecewiseLinear(width=1.0)


@pytest.mark.parametrize(
    "field, value",
    [("threshold", 0.0), ("threshold", -1.0), ("threshold", torch.tensor([1.0, 0.0])), ("reset", "none")],
)
def test_validate_parameters_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        validate_parameters(IFParameters()._replace(**{field: value}))
