"""NIR-semantics LIF/LI step functions: exact and Euler leaks, spike from the new voltage, resets, by hand."""

from __future__ import annotations

import math

import pytest
import torch

from neuromorph.neurons.lif_box import (
    BoxState,
    LIBoxParameters,
    LIFBoxParameters,
    li_box_step,
    lif_box_step,
    validate_li_parameters,
    validate_lif_parameters,
)

F64 = torch.float64


def _t(values) -> torch.Tensor:
    return torch.tensor([values], dtype=F64)


def test_exact_leak_by_hand():
    p = LIFBoxParameters(tau_mem=10.0, r=2.0, v_leak=0.1, threshold=5.0, integration="exact", dt=1.0)
    z, s = lif_box_step(_t([0.5]), BoxState(_t([0.2])), p)
    v_inf = 0.1 + 2.0 * 0.5
    assert s.v.item() == pytest.approx(v_inf + (0.2 - v_inf) * math.exp(-0.1), rel=1e-14)
    assert z.item() == 0.0


def test_euler_leak_by_hand():
    p = LIFBoxParameters(tau_mem=10.0, r=2.0, v_leak=0.1, threshold=5.0, integration="euler", dt=1.0)
    _, s = lif_box_step(_t([0.5]), BoxState(_t([0.2])), p)
    assert s.v.item() == pytest.approx(0.2 + 0.1 * (2.0 * 0.5 + 0.1 - 0.2), rel=1e-14)


@pytest.mark.parametrize("reset, after", [("hard", [-0.3, 0.95]), ("soft", [0.5, 0.95])])
def test_spike_from_the_new_voltage_then_reset(reset, after):
    # tau = r = 1e9: no leak, unit input gain (v += I)
    p = LIFBoxParameters(tau_mem=1e9, r=1e9, threshold=1.0, v_reset=-0.3, reset=reset, integration="euler")
    z, s = lif_box_step(_t([0.6, 0.05]), BoxState(_t([0.9, 0.9])), p)  # v = [1.5, 0.95]
    assert z.tolist() == [[1.0, 0.0]]
    assert s.v[0].tolist() == pytest.approx(after, abs=1e-7)


def test_leaky_integrator_outputs_its_voltage():
    p = LIBoxParameters(tau=5.0, dt=0.5, integration="exact")
    y, s = li_box_step(_t([1.0]), BoxState(_t([0.0])), p)
    assert y.item() == s.v.item() == pytest.approx(1 - math.exp(-0.1), rel=1e-14)


def test_validation():
    with pytest.raises(ValueError, match="integration must be one of"):
        validate_lif_parameters(LIFBoxParameters(integration="rk4"))
    with pytest.raises(ValueError, match="reset must be one of"):
        validate_lif_parameters(LIFBoxParameters(reset="zero"))
    with pytest.raises(ValueError, match="tau must be positive"):
        validate_li_parameters(LIBoxParameters(tau=0.0))
