"""LeakyReadout: exponential filter of the spikes, then a linear layer (LSNN-official tutorials)."""

from __future__ import annotations

import math

import pytest
import torch

from neuromorph.layers import LeakyReadout

F64 = torch.float64


def _readout(n_in=3, n_out=2, **kwargs) -> LeakyReadout:
    return LeakyReadout(n_in, n_out, generator=torch.Generator().manual_seed(0), **kwargs).double()


def _spikes(steps, batch, n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(steps, batch, n, generator=gen, dtype=F64) < 0.4).to(F64)


def _hand(z, kappa, weight, bias, y0):
    y, outs, ys = y0.clone(), [], []
    for t in range(z.shape[0]):
        y = kappa * y + (1 - kappa) * z[t]
        ys.append(y)
        outs.append(y @ weight + (bias if bias is not None else 0.0))
    return torch.stack(outs), torch.stack(ys)


@pytest.mark.parametrize("tau_out, dt, bias", [(20.0, 1.0, False), (15.0, 1.0, True), (10.0, 0.5, True)])
def test_output_equals_hand_loop(tau_out, dt, bias):
    readout = _readout(tau_out=tau_out, dt=dt, bias=bias)
    if bias:
        with torch.no_grad():
            readout.bias.copy_(torch.tensor([0.25, -0.5], dtype=F64))
    z = _spikes(12, 2, 3)
    out, y_last = readout(z)
    kappa = math.exp(-dt / tau_out)
    want_out, want_y = _hand(z, kappa, readout.weight.detach(), readout.bias, torch.zeros(2, 3, dtype=F64))
    assert out.shape == (12, 2, 2) and y_last.shape == (2, 3)
    torch.testing.assert_close(out, want_out.detach(), rtol=0, atol=1e-13)
    torch.testing.assert_close(y_last, want_y[-1], rtol=0, atol=1e-14)
    torch.testing.assert_close(readout.filtered(z), want_y, rtol=0, atol=1e-14)


def test_hand_values_single_spike():
    readout = _readout(n_in=1, n_out=1, tau_out=20.0)
    with torch.no_grad():
        readout.weight.fill_(2.0)
    z = torch.tensor([[[1.0]], [[0.0]], [[0.0]]], dtype=F64)
    out, _ = readout(z)
    k = math.exp(-1 / 20)
    assert out[:, 0, 0].tolist() == pytest.approx(
        [2 * (1 - k), 2 * (1 - k) * k, 2 * (1 - k) * k**2], rel=1e-13
    )


def test_state_continues_across_chunks():
    readout = _readout(bias=True)
    z = _spikes(20, 2, 3, seed=1)
    whole, y_end = readout(z)
    first, y_mid = readout(z[:8])
    second, y_end2 = readout(z[8:], y_mid)
    torch.testing.assert_close(torch.cat([first, second]), whole, rtol=0, atol=1e-14)
    torch.testing.assert_close(y_end2, y_end, rtol=0, atol=1e-15)


def test_gradients_reach_weight_and_spikes():
    readout = _readout(bias=True)
    z = _spikes(6, 2, 3).requires_grad_()
    out, _ = readout(z)
    out.sum().backward()
    assert readout.weight.grad.abs().sum() > 0 and readout.bias.grad.tolist() == [12.0, 12.0]
    # d out[t] / d z[s] = (1 - k) k^(t - s) W; summed over t >= s and over outputs
    k = math.exp(-1 / 20)
    w_row = readout.weight.detach().sum(1)
    want_last = (1 - k) * w_row  # the last step only reaches itself
    torch.testing.assert_close(z.grad[-1, 0], want_last, rtol=1e-12, atol=0)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(tau_out=0.0), "tau_out"),
        (dict(tau_out=-1.0), "tau_out"),
        (dict(dt=0.0), "dt"),
        (dict(n_in=0), "n_in"),
    ],
)
def test_constructor_validation(kwargs, name):
    args = dict(n_in=3, n_out=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        LeakyReadout(args.pop("n_in"), args.pop("n_out"), **args)


@pytest.mark.parametrize(
    "z, match",
    [
        (torch.zeros(4, 3, dtype=F64), "rank 3"),
        (torch.zeros(4, 2, 5, dtype=F64), "features"),
        (torch.full((4, 2, 3), float("inf"), dtype=F64), "NaN or inf"),
    ],
)
def test_bad_input(z, match):
    with pytest.raises(ValueError, match=match):
        _readout()(z)
