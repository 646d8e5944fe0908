"""Firing-rate regulariser of the LSNN-official tutorials against the hand formula."""

from __future__ import annotations

import pytest
import torch

from neuromorph.learning import firing_rate_loss

F64 = torch.float64

# [T = 4, B = 2, N = 3]: neuron 0 fires in 2 of 8 (t, b) slots, neuron 1 never, neuron 2 always
Z = torch.zeros(4, 2, 3, dtype=F64)
Z[1, 0, 0] = Z[3, 1, 0] = 1.0
Z[:, :, 2] = 1.0


def test_hand_formula():
    # rates 0.25, 0, 1 spikes/ms against f0 = 10 Hz = 0.01 /ms
    loss = firing_rate_loss(Z, target_hz=10.0, coefficient=0.5)
    assert loss.item() == pytest.approx(0.5 * (0.24**2 + 0.01**2 + 0.99**2), rel=1e-14)
    assert loss.item() == pytest.approx(0.5189, rel=1e-12)


def test_defaults_and_zero_at_target():
    z = torch.zeros(100, 1, 2, dtype=F64)
    z[::10] = 1.0  # 10 spikes in 100 ms: exactly 100 Hz
    assert firing_rate_loss(z, target_hz=100.0).item() == pytest.approx(0.0, abs=1e-20)
    # defaults: 10 Hz, coefficient 1
    assert firing_rate_loss(Z).item() == pytest.approx(0.24**2 + 0.01**2 + 0.99**2, rel=1e-14)


def test_rate_is_per_ms_whatever_dt():
    # At dt = 0.5 ms a neuron emits z = H / dt = 2 per spike: one spike every 10 steps is 200 Hz.
    z = torch.zeros(100, 1, 1, dtype=F64)
    z[::10] = 2.0
    assert firing_rate_loss(z, target_hz=200.0).item() == pytest.approx(0.0, abs=1e-20)


def test_gradient_by_hand():
    z = Z.clone().requires_grad_()
    firing_rate_loss(z, target_hz=10.0, coefficient=0.5).backward()
    # d/dz[t, b, j] = c * 2 * (rate_j - f0) / (T * B)
    want = torch.tensor([0.24, -0.01, 0.99], dtype=F64) * 2 * 0.5 / 8
    torch.testing.assert_close(z.grad, want.expand(4, 2, 3), rtol=1e-14, atol=0)


@pytest.mark.parametrize(
    "z, kwargs, name",
    [
        (torch.zeros(4, 3), {}, "z"),
        ([[0.0]], {}, "z"),
        (Z, dict(target_hz=-1.0), "target_hz"),
        (Z, dict(coefficient=-0.1), "coefficient"),
        (Z, dict(coefficient=float("nan")), "coefficient"),
    ],
)
def test_validation(z, kwargs, name):
    with pytest.raises(ValueError, match=name):
        firing_rate_loss(z, **kwargs)
