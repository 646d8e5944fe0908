"""Weight averaging (averaging.py): the update against hand computation, integer buffers copied, the
warm-up schedule, bad decays."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from neuromorph.averaging import ema_init, ema_update, warmup_decay


def _net() -> nn.Module:
    net = nn.Sequential(nn.Linear(2, 1), nn.BatchNorm1d(1))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, -2.0]]))
        net[0].bias.fill_(0.5)
    return net


def test_update_is_the_convex_combination_by_hand():
    net = _net()
    ema = ema_init(net)
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[3.0, 2.0]]))
        net[0].bias.fill_(-0.5)
    net[1].num_batches_tracked.fill_(7)
    ema_update(ema, net, 0.75)
    # 0.75 * old + 0.25 * new
    assert torch.allclose(ema["0.weight"], torch.tensor([[1.5, -1.0]]))
    assert torch.allclose(ema["0.bias"], torch.tensor([0.25]))
    assert int(ema["1.num_batches_tracked"]) == 7  # integer buffers are copied, not averaged
    assert ema["0.weight"].data_ptr() != net[0].weight.data_ptr()  # a copy, not the module's tensor


def test_decay_zero_copies_the_model():
    net = _net()
    ema = ema_init(net)
    with torch.no_grad():
        net[0].weight.mul_(4.0)
    ema_update(ema, net, 0.0)
    assert torch.equal(ema["0.weight"], net[0].weight)


@pytest.mark.parametrize("decay", [1.0, 1.5, -0.1, float("nan")])
def test_bad_decay_is_a_clear_error(decay):
    net = _net()
    with pytest.raises(ValueError, match="decay"):
        ema_update(ema_init(net), net, decay)


def test_warmup_by_hand():
    assert warmup_decay(0.97, 0) == pytest.approx(0.1)
    assert warmup_decay(0.97, 10) == pytest.approx(11 / 20)
    assert warmup_decay(0.97, 1000) == 0.97


@given(st.floats(0.0, 0.999), st.integers(0, 10_000))
def test_warmup_never_exceeds_the_decay_and_grows(decay, n):
    assert 0.0 <= warmup_decay(decay, n) <= decay
    assert warmup_decay(decay, n) <= warmup_decay(decay, n + 1)
