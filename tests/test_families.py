"""Parameter families: ``tensors_of_family`` / ``family_of`` over networks of neuromorph layers."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from neuromorph.families import FAMILIES, family_of, tensors_of_family
from neuromorph.layers import FeedForwardSpikingLayer, LeakyReadout, RecurrentSpikingLayer


class Net(nn.Module):
    def __init__(self, bias: bool = True) -> None:
        super().__init__()
        self.rsnn = RecurrentSpikingLayer(3, 2, 2, n_delay=2)
        self.readout = LeakyReadout(4, 2, bias=bias)


def _names(module, family):
    return {name for name, _ in tensors_of_family(module, family)}


def test_weights_of_a_module():
    net = Net()
    found = dict(tensors_of_family(net, "weights"))
    assert set(found) == {"rsnn.w_in", "rsnn.w_rec", "readout.weight"}
    assert found["rsnn.w_in"] is net.rsnn.w_in
    assert found["rsnn.w_rec"] is net.rsnn.w_rec
    assert found["readout.weight"] is net.readout.weight


def test_weights_of_a_sequential():
    seq = nn.Sequential(RecurrentSpikingLayer(3, 2, 2), LeakyReadout(4, 2), FeedForwardSpikingLayer(2, 2))
    assert _names(seq, "weights") == {"0.w_in", "0.w_rec", "1.weight", "2.weight"}
    named_params = dict(seq.named_parameters())
    for name, tensor in tensors_of_family(seq, "weights"):
        assert named_params[name] is tensor


def test_other_families():
    net = Net(bias=True)
    assert _names(net, "taus") == {"rsnn.tau_mem", "rsnn.tau_adapt", "readout.tau_out"}
    found = dict(tensors_of_family(net, "taus"))
    assert found["rsnn.tau_mem"] is net.rsnn.tau_mem  # buffers are found too
    assert _names(net, "biases") == {"readout.bias"}
    assert _names(Net(bias=False), "biases") == set()  # bias=None is skipped
    assert _names(net, "thresholds") == {"rsnn.threshold"}
    assert _names(net, "adaptation") == {"rsnn.beta"}
    assert _names(nn.Linear(2, 2), "weights") == set()  # undeclared modules have no families


def test_single_layer_has_unprefixed_names():
    assert _names(RecurrentSpikingLayer(2, 1, 1), "weights") == {"w_in", "w_rec"}


def test_unknown_family():
    net = Net()
    with pytest.raises(ValueError) as info:
        tensors_of_family(net, "delays")  # raises at the call, before any iteration
    for family in FAMILIES:
        assert family in str(info.value)


def test_family_of():
    net = Net()
    assert family_of(net, "rsnn.w_rec") == "weights"
    assert family_of(net, "readout.tau_out") == "taus"
    assert family_of(net, "rsnn.beta") == "adaptation"
    assert family_of(net, "rsnn.in_delay") is None
    assert family_of(RecurrentSpikingLayer(2, 1, 1), "w_in") == "weights"


def test_tags_survive_deepcopy_and_state_dict():
    net = Net()
    clone = copy.deepcopy(net)
    for family in FAMILIES:
        assert _names(clone, family) == _names(net, family)
    found = dict(tensors_of_family(clone, "weights"))
    assert found["rsnn.w_in"] is clone.rsnn.w_in and found["rsnn.w_in"] is not net.rsnn.w_in
    assert torch.equal(found["rsnn.w_in"], net.rsnn.w_in)
    fresh = Net()
    fresh.load_state_dict(net.state_dict())
    assert _names(fresh, "taus") == _names(net, "taus")
