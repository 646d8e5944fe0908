"""ALIF step (LSNN-official conventions) against hand computations, finite differences and its contracts."""

from __future__ import annotations

import math

import pytest
import torch

import neuromorph.neurons.alif as alif_module
from neuromorph.neurons.alif import (
    ALIFParameters,
    ALIFState,
    adaptive_threshold,
    alif_initial_state,
    alif_step,
    validate_parameters,
)
from neuromorph.spikes import Triangle

F64 = torch.float64


def _t(values) -> torch.Tensor:
    return torch.tensor([values], dtype=F64)


# -- one step by hand ---------------------------------------------------------------------------------
# Neuron 0 spikes (v above its adaptive threshold), neuron 1 spiked last step and is refractory although
# its voltage is above threshold (it also gets the soft reset), neuron 2 stays below threshold.
P_HAND = ALIFParameters(tau_mem=10.0, tau_adapt=50.0, beta=0.8, threshold=0.5, n_refractory=2, dt=1.0)
STATE_HAND = ALIFState(
    v=_t([0.9, 1.2, 0.3]), z=_t([0.0, 1.0, 0.0]), b=_t([0.1, 0.2, 0.05]), refractory=_t([0, 2, 0])
)
I_HAND = _t([0.4, -0.2, 1.0])

ALPHA = math.exp(-1.0 / 10.0)
RHO = math.exp(-1.0 / 50.0)
B_NEW = [RHO * 0.1, RHO * 0.2 + (1 - RHO) * 1.0, RHO * 0.05]
A_NEW = [0.5 + 0.8 * b for b in B_NEW]  # approx. 0.5784, 0.6727, 0.5392


def test_one_step_by_hand():
    z, new = alif_step(I_HAND, STATE_HAND, P_HAND)
    assert z.tolist() == [[1.0, 0.0, 0.0]]
    assert new.z.tolist() == [[1.0, 0.0, 0.0]]
    assert new.refractory.tolist() == [[2.0, 1.0, 0.0]]
    want_b = [0.09801986733067553, 0.2158410613545958, 0.04900993366533776]
    assert new.b[0].tolist() == pytest.approx(B_NEW, rel=1e-15)
    assert new.b[0].tolist() == pytest.approx(want_b, rel=1e-6)  # the literal check of the formula above
    want_v = [
        ALPHA * 0.9 + (1 - ALPHA) * 0.4,
        ALPHA * 1.2 + (1 - ALPHA) * -0.2 - A_NEW[1] * 1.0 * 1.0,  # soft reset by the *new* threshold
        ALPHA * 0.3 + (1 - ALPHA) * 1.0,
    ]
    assert new.v[0].tolist() == pytest.approx(want_v, rel=1e-14)
    assert new.v[0].tolist() == pytest.approx(
        [0.8524187090179798, 0.3940995361666668, 0.36661380737482835], rel=1e-6
    )
    # adaptive threshold differs from b0 and is b0 + beta * b
    a = adaptive_threshold(new.b, P_HAND)
    assert a[0].tolist() == pytest.approx(A_NEW, rel=1e-15)
    assert all(x > 0.5 + 1e-3 for x in a[0].tolist())


def test_spike_uses_previous_voltage_against_new_threshold():
    # v(t-1) = 0.58 is above b0 = 0.5 but below A(t) = 0.5 + 0.8 * rho * 0.1 = 0.5784 ... -> spike
    # and v(t-1) = 0.575 is below A(t) -> no spike although v(t-1) > b0: the *new* threshold counts.
    p = P_HAND._replace(n_refractory=0)
    state = ALIFState(v=_t([0.58, 0.575]), z=_t([0.0, 0.0]), b=_t([0.1, 0.1]), refractory=_t([0, 0]))
    z, new = alif_step(_t([100.0, 100.0]), state, p)  # a huge current only acts on v(t), not on z(t)
    assert A_NEW[0] == pytest.approx(0.57841589386, rel=1e-9)
    assert z.tolist() == [[1.0, 0.0]]


def test_one_step_gradient_by_hand():
    v = STATE_HAND.v.clone().requires_grad_()
    b = STATE_HAND.b.clone().requires_grad_()
    current = I_HAND.clone().requires_grad_()
    state = STATE_HAND._replace(v=v, b=b)
    z, new = alif_step(current, state, P_HAND)
    z.sum().backward()
    s = [(0.9 - A_NEW[0]) / A_NEW[0], None, (0.3 - A_NEW[2]) / A_NEW[2]]
    psi = [0.3 * (1 - abs(s[0])), 0.0, 0.3 * (1 - abs(s[2]))]  # neuron 1 refractory: no gradient
    # dz/dv = psi / A ; dz/db(t-1) = psi * d((v - A)/A)/dA * beta * rho = psi * (-v / A^2) * beta * rho
    want_gv = [psi[0] / A_NEW[0], 0.0, psi[2] / A_NEW[2]]
    want_gb = [psi[0] * (-0.9 / A_NEW[0] ** 2) * 0.8 * RHO, 0.0, psi[2] * (-0.3 / A_NEW[2] ** 2) * 0.8 * RHO]
    assert v.grad[0].tolist() == pytest.approx(want_gv, rel=1e-12)
    assert b.grad[0].tolist() == pytest.approx(want_gb, rel=1e-12)
    assert v.grad[0, 0].item() == pytest.approx(0.3 * (1 - (0.9 / A_NEW[0] - 1)) / A_NEW[0], rel=1e-12)
    assert current.grad is None  # z(t) does not depend on I(t)

    _, new = alif_step(current, state, P_HAND)
    new.v.sum().backward()
    assert current.grad[0].tolist() == pytest.approx([1 - ALPHA] * 3, rel=1e-14)


def test_dt_half_spikes_are_one_over_dt_and_reset_uses_dt():
    p = ALIFParameters(tau_mem=10.0, tau_adapt=50.0, beta=0.8, threshold=0.5, n_refractory=0, dt=0.5)
    alpha, rho = math.exp(-0.5 / 10.0), math.exp(-0.5 / 50.0)
    state = ALIFState(v=_t([1.0, 0.1]), z=_t([0.0, 0.0]), b=_t([0.0, 0.0]), refractory=_t([0, 0]))
    current = _t([0.2, 0.2])
    z1, s1 = alif_step(current, state, p)
    assert z1.tolist() == [[2.0, 0.0]]
    v1 = [alpha * 1.0 + (1 - alpha) * 0.2, alpha * 0.1 + (1 - alpha) * 0.2]
    assert s1.v[0].tolist() == pytest.approx(v1, rel=1e-14)
    z2, s2 = alif_step(current, s1, p)
    b2 = (1 - rho) * 2.0  # b follows z = H / dt
    a2 = 0.5 + 0.8 * b2
    assert s2.b[0].tolist() == pytest.approx([b2, 0.0], rel=1e-14)
    # reset subtracts A(t) * z(t-1) * dt = A(t) (one threshold per spike, whatever dt)
    assert s2.v[0, 0].item() == pytest.approx(alpha * v1[0] + (1 - alpha) * 0.2 - a2 * 2.0 * 0.5, rel=1e-14)
    assert z2[0, 0].item() == (2.0 if v1[0] > a2 else 0.0)


def test_per_neuron_tensor_parameters_equal_scalar_runs():
    gen = torch.Generator().manual_seed(3)
    taus_m, taus_a, betas, thrs = [5.0, 20.0, 40.0], [30.0, 200.0, 900.0], [0.0, 0.7, 1.9], [0.3, 0.5, 0.8]
    p_vec = ALIFParameters(
        tau_mem=torch.tensor(taus_m, dtype=F64),
        tau_adapt=torch.tensor(taus_a, dtype=F64),
        beta=torch.tensor(betas, dtype=F64),
        threshold=torch.tensor(thrs, dtype=F64),
        n_refractory=1,
    )
    currents = torch.rand(15, 2, 3, generator=gen, dtype=F64) * 3
    state = alif_initial_state(2, 3, dtype=F64)
    zs = []
    for i in currents:
        z, state = alif_step(i, state, p_vec)
        zs.append(z)
    z_vec = torch.stack(zs)
    assert z_vec.sum() > 0
    for j in range(3):
        p = ALIFParameters(taus_m[j], taus_a[j], betas[j], thrs[j], n_refractory=1)
        st = alif_initial_state(2, 1, dtype=F64)
        for t, i in enumerate(currents):
            z, st = alif_step(i[:, j : j + 1], st, p)
            assert torch.equal(z, z_vec[t, :, j : j + 1])
        torch.testing.assert_close(st.v, state.v[:, j : j + 1], rtol=1e-13, atol=1e-15)
        torch.testing.assert_close(st.b, state.b[:, j : j + 1], rtol=1e-13, atol=1e-15)


# -- gradient through 20 steps against finite differences ------------------------------------------------
def _smooth_spike(x, surrogate, eps=0.3):
    return torch.sigmoid(x / eps)


def _run(currents, v0, state, p, w_z, w_v):
    st = state._replace(v=v0)
    loss = 0.0
    for t in range(currents.shape[0]):
        z, st = alif_step(currents[t], st, p)
        loss = loss + (z * w_z[t]).sum()
    return loss + (st.v * w_v).sum() + (st.b * w_v).sum()


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
    monkeypatch.setattr(alif_module, "spike", _smooth_spike)
    gen = torch.Generator().manual_seed(0)
    steps, batch, n = 20, 2, 3
    p = ALIFParameters(
        tau_mem=torch.tensor([10.0, 20.0, 5.0], dtype=F64),
        tau_adapt=torch.tensor([40.0, 100.0, 60.0], dtype=F64),
        beta=torch.tensor([0.0, 0.8, 1.5], dtype=F64),
        threshold=0.6,
        n_refractory=0,
        dt=1.0,
    )
    state = ALIFState(
        v=0.5 + 0.5 * torch.randn(batch, n, generator=gen, dtype=F64),
        z=(torch.rand(batch, n, generator=gen, dtype=F64) > 0.5).to(F64),
        b=0.5 * torch.rand(batch, n, generator=gen, dtype=F64),
        refractory=torch.zeros(batch, n, dtype=F64),
    )
    currents = 1.0 + torch.randn(steps, batch, n, generator=gen, dtype=F64)
    v0 = state.v.clone()
    w_z = torch.randn(steps, batch, n, generator=gen, dtype=F64)
    w_v = torch.randn(batch, n, generator=gen, dtype=F64)

    c = currents.clone().requires_grad_()
    v = v0.clone().requires_grad_()
    loss = _run(c, v, state, p, w_z, w_v)
    g_c, g_v = torch.autograd.grad(loss, (c, v))
    assert g_c.abs().max() > 1e-3 and g_v.abs().max() > 1e-3

    with torch.no_grad():
        fd_c = _central_differences(lambda: _run(currents, v0, state, p, w_z, w_v), currents, 1e-5)
        fd_v = _central_differences(lambda: _run(currents, v0, state, p, w_z, w_v), v0, 1e-5)
    torch.testing.assert_close(g_c, fd_c, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(g_v, fd_v, rtol=1e-6, atol=1e-8)


# -- refractoriness ----------------------------------------------------------------------------------
@pytest.mark.parametrize("n_ref", [1, 3])
def test_refractory_period_is_exactly_n_refractory_steps(n_ref):
    p = ALIFParameters(tau_mem=20.0, tau_adapt=200.0, beta=1.7, threshold=0.01, n_refractory=n_ref)
    state = ALIFState(v=_t([10.0]), z=_t([0.0]), b=_t([0.0]), refractory=_t([0]))
    zs, rs = [], []
    for _ in range(4 * (n_ref + 1)):
        z, state = alif_step(_t([1e4]), state, p)  # huge input: the neuron wants to fire every step
        zs.append(z.item())
        rs.append(state.refractory.item())
    period = [1.0] + [0.0] * n_ref
    assert zs == period * 4
    assert rs == [float(n_ref - k) for k in range(n_ref + 1)] * 4


def test_initial_refractory_state_blocks_until_it_runs_out():
    p = ALIFParameters(threshold=0.01, beta=0.0, n_refractory=5)
    state = ALIFState(v=_t([10.0, 10.0]), z=_t([0.0, 0.0]), b=_t([0.0, 0.0]), refractory=_t([2, 0]))
    zs = []
    for _ in range(3):
        z, state = alif_step(_t([1e4, 1e4]), state, p)
        zs.append(z[0].tolist())
    assert zs == [[0.0, 1.0], [0.0, 0.0], [1.0, 0.0]]


def test_no_refractoriness_fires_every_step():
    p = ALIFParameters(threshold=0.01, n_refractory=0)
    state = ALIFState(v=_t([10.0]), z=_t([0.0]), b=_t([0.0]), refractory=_t([0]))
    zs = []
    for _ in range(5):
        z, state = alif_step(_t([1e4]), state, p)
        zs.append(z.item())
    assert zs == [1.0] * 5


def test_adaptation_raises_threshold_and_decays():
    p = ALIFParameters(tau_mem=20.0, tau_adapt=100.0, beta=2.0, threshold=0.1)
    rho = math.exp(-1.0 / 100.0)
    state = ALIFState(v=_t([0.0]), z=_t([1.0]), b=_t([0.0]), refractory=_t([0]))
    _, state = alif_step(_t([0.0]), state, p)
    assert state.b.item() == pytest.approx(1 - rho, rel=1e-14)
    _, state = alif_step(_t([0.0]), state, p)
    assert state.b.item() == pytest.approx(rho * (1 - rho), rel=1e-14)
    assert adaptive_threshold(state.b, p).item() == pytest.approx(0.1 + 2.0 * rho * (1 - rho), rel=1e-14)


def test_initial_state():
    st = alif_initial_state(4, 7, dtype=F64)
    assert isinstance(st, ALIFState)
    for t in st:
        assert t.shape == (4, 7) and t.dtype == F64 and not t.any()
    st.v.add_(1.0)  # tensors are independent
    assert not st.z.any() and not st.b.any() and not st.refractory.any()


# -- validation ----------------------------------------------------------------------------------------
def test_default_parameters_are_the_lsnn_ones_and_valid():
    p = ALIFParameters()
    validate_parameters(p)
    assert (p.tau_mem, p.tau_adapt, p.beta, p.threshold, p.dt) == (20.0, 1200.0, 1.7, 0.01, 1.0)
    assert p.surrogate == Triangle(gamma=0.3)
    validate_parameters(p._replace(beta=0.0))  # beta = 0 is a LIF neuron
    validate_parameters(p._replace(tau_mem=torch.tensor([5.0, 20.0])))


@pytest.mark.parametrize(
    "field, value",
    [
        ("tau_mem", 0.0),
        ("tau_mem", -20.0),
        ("tau_mem", float("nan")),
        ("tau_mem", torch.tensor([20.0, 0.0])),
        ("tau_adapt", 0.0),
        ("tau_adapt", -1.0),
        ("tau_adapt", torch.tensor([100.0, float("inf")])),
        ("beta", -0.1),
        ("beta", torch.tensor([0.0, -1.0])),
        ("threshold", 0.0),
        ("threshold", -0.01),
        ("n_refractory", -1),
        ("n_refractory", 1.5),
        ("dt", 0.0),
        ("dt", -1.0),
    ],
)
def test_validate_parameters_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        validate_parameters(ALIFParameters()._replace(**{field: value}))
