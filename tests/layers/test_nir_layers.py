"""The element-wise layers NIR graphs need (IF, LIF box, LI box, delay) and the SpikingSequential
container: against manual step loops, chunked = whole sequence, and shape errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from neuromorph.layers.delay import DelayLayer
from neuromorph.layers.integrate_fire import IntegrateFireLayer
from neuromorph.layers.lif_box import LIBoxLayer, LIFBoxLayer
from neuromorph.layers.sequential import SpikingSequential
from neuromorph.neurons.integrate_fire import IFParameters, IFState, if_step
from neuromorph.neurons.lif_box import BoxState, lif_box_step

F64 = torch.float64


def _x(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64) * 1.5


def test_lif_box_layer_is_the_step_loop():
    layer = LIFBoxLayer((2, 3), tau_mem=torch.linspace(2, 30, 6).view(2, 3), r=1.5, threshold=0.8,
                        integration="euler").double()  # fmt: skip
    x = _x(20, 4, 2, 3)
    z, state = layer(x)
    s, p, want = BoxState(torch.zeros(4, 2, 3, dtype=F64)), layer.parameters_for_neurons(), []
    for t in range(20):
        zt, s = lif_box_step(x[t], s, p)
        want.append(zt)
    assert torch.equal(z, torch.stack(want)) and torch.equal(state.v, s.v)
    assert 0 < float(z.mean()) < 1


@pytest.mark.parametrize("layer", [
    LIFBoxLayer(3, threshold=0.5, reset="soft"), LIBoxLayer(3, tau=4.0), IntegrateFireLayer(3, threshold=0.7),
    DelayLayer(3, torch.tensor([0, 2, 5])),
])  # fmt: skip
def test_chunks_continue_exactly(layer):
    layer = layer.double()
    x = _x(17, 2, 3)
    whole, _ = layer(x)
    first, state = layer(x[:6])
    second, _ = layer(x[6:], state)
    assert torch.equal(torch.cat([first, second]), whole)


def test_if_layer_with_input_scale_and_reset_potential():
    layer = IntegrateFireLayer(2, threshold=1.0, r=2.0, v_reset=-0.25).double()
    x = _x(15, 1, 2)
    z, _ = layer(x)
    s, want = IFState(torch.zeros(1, 2, dtype=F64)), []
    for t in range(15):
        zt, s = if_step(2.0 * x[t], s, IFParameters(1.0, "hard"))
        s = IFState(s.v + zt * -0.25)
        want.append(zt)
    assert torch.equal(z, torch.stack(want))
    with pytest.raises(ValueError, match="v_reset applies to the hard reset only"):
        IntegrateFireLayer(2, reset="soft", v_reset=0.5)


def test_delay_by_hand():
    layer = DelayLayer(2, torch.tensor([0, 2]))
    x = torch.arange(1.0, 6.0).view(5, 1, 1).expand(5, 1, 2)
    y, state = layer(x)
    assert y[:, 0].tolist() == [[1, 0], [2, 0], [3, 1], [4, 2], [5, 3]]
    assert state.pending.shape == (1, 2, 2)
    with pytest.raises(ValueError, match="whole numbers of time steps"):
        DelayLayer(2, torch.tensor([0.5, 1.0]))


def test_sequential_applies_stateless_modules_per_step():
    fc = nn.Linear(3, 2).double()
    net = SpikingSequential({"fc": fc, "if": IntegrateFireLayer(2, threshold=0.3).double()})
    x = _x(9, 4, 3)
    z, state = net(x)
    want, _ = net["if"](fc(x))
    assert torch.equal(z, want) and state[0] is None and net[1] is net["if"]
    with pytest.raises(ValueError, match="state must be None or a tuple of 2"):
        net(x, (None,))


def test_shape_errors_name_the_expected_shape():
    with pytest.raises(ValueError, match=r"x must have shape \[T, B, 2, 3\]"):
        LIFBoxLayer((2, 3))(torch.zeros(4, 1, 6))
    with pytest.raises(ValueError, match="shape must be a positive int or a tuple"):
        LIBoxLayer((0, 2))
    with pytest.raises(ValueError, match=r"state.v must have shape \(2, 3\)"):
        LIFBoxLayer(3)(torch.zeros(4, 2, 3), BoxState(torch.zeros(1, 3)))
    with pytest.raises(ValueError, match="layer names must be non-empty strings without"):
        SpikingSequential({"a.b": nn.Identity()})
