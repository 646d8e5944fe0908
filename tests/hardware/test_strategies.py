"""The auxiliary homeostatic population and the robust ensemble architecture."""

from __future__ import annotations

import pytest
import torch

from neuromorph.hardware.strategies import ensemble_network, ensemble_readout, homeostatic_compensation
from neuromorph.hardware.substrate import (
    RateNetwork,
    SubstrateParams,
    deployment_scales,
    make_chip,
    substrate_forward,
)

IDEAL = SubstrateParams(0.0, 0.0, 0.0, 0.0, None)


def _net_and_inputs():
    net = RateNetwork((10, 24, 5), torch.Generator().manual_seed(0))
    x = torch.rand(400, 10, generator=torch.Generator().manual_seed(1))
    return net, x


def test_ensemble_on_an_ideal_chip_computes_the_network():
    net, x = _net_and_inputs()
    ens = ensemble_network(net, 3)
    assert ens.sizes == (10, 72, 15)
    chip = make_chip(ens.shapes, IDEAL, 0)
    out = substrate_forward(x, ens.weights(), chip, weight_max=deployment_scales(ens.weights()))[-1]
    with torch.no_grad():
        torch.testing.assert_close(ensemble_readout(out, 3), net(x), rtol=1e-6, atol=1e-6)
        # the copies really are disjoint: copy 1's outputs do not read copy 0's hidden neurons
        assert (ens.layers[1].weight[5:10, :24] == 0).all() and (ens.layers[1].weight[:5, 24:72] == 0).all()


def test_ensemble_shrinks_the_mismatch_error():
    net, x = _net_and_inputs()
    params = SubstrateParams(0.4, 0.3, 0.2, 0.0, None)
    with torch.no_grad():
        ideal = net(x)

    def error(copies: int) -> float:
        errs = []
        for seed in range(4):
            ens = ensemble_network(net, copies)
            chip = make_chip(ens.shapes, params, seed)
            out = substrate_forward(x, ens.weights(), chip, weight_max=deployment_scales(ens.weights()))[-1]
            errs.append((ensemble_readout(out, copies) - ideal).pow(2).mean().item())
        return sum(errs) / len(errs)

    assert error(16) < 0.25 * error(1)


def test_homeostasis_changes_nothing_on_an_ideal_chip():
    net, x = _net_and_inputs()
    chip = make_chip(net.shapes, IDEAL, 0)
    out = homeostatic_compensation(net, chip, x, weight_max=deployment_scales(net.weights()), iterations=5)
    for a, b in zip(out.weights(), net.weights(), strict=True):
        assert torch.equal(a, b)
    assert out is not net


def test_homeostasis_undoes_gain_and_threshold_mismatch():
    net, x = _net_and_inputs()
    chip = make_chip(net.shapes, SubstrateParams(0.0, 0.3, 0.2, 0.0, None), 2)
    w_max = tuple(2 * m for m in deployment_scales(net.weights()))
    with torch.no_grad():
        ideal = net(x)
    before = substrate_forward(x, net.weights(), chip, weight_max=w_max)[-1]
    homeo = homeostatic_compensation(net, chip, x, weight_max=w_max, iterations=40)
    after = substrate_forward(x, homeo.weights(), chip, weight_max=w_max)[-1]
    err_before, err_after = (before - ideal).pow(2).mean().item(), (after - ideal).pow(2).mean().item()
    assert err_after < 0.1 * err_before
    # it used no labels and left the software network alone
    assert not any(torch.equal(a, b) for a, b in zip(homeo.weights(), net.weights(), strict=True))


def test_homeostasis_keeps_weights_in_the_chip_range_even_with_dead_neurons():
    net, x = _net_and_inputs()
    chip = make_chip(net.shapes, SubstrateParams(0.3, 3.0, 0.5, 0.02, 6), 1)  # many gains clamp to 0
    assert (chip.layers[0].gain == 0).any()
    w_max = deployment_scales(net.weights())
    homeo = homeostatic_compensation(
        net, chip, x, weight_max=w_max, iterations=30, generator=torch.Generator()
    )
    for w, m in zip(homeo.weights(), w_max, strict=True):
        assert torch.isfinite(w).all() and w.abs().max() <= m


def test_bad_input():
    net, x = _net_and_inputs()
    chip = make_chip(net.shapes, IDEAL, 0)
    w_max = deployment_scales(net.weights())
    with pytest.raises(ValueError, match="copies must be a positive int, got 0"):
        ensemble_network(net, 0)
    with pytest.raises(ValueError, match="copies=4"):
        ensemble_readout(torch.ones(2, 10), 4)
    with pytest.raises(ValueError, match="iterations"):
        homeostatic_compensation(net, chip, x, weight_max=w_max, iterations=0)
    with pytest.raises(ValueError, match="eta"):
        homeostatic_compensation(net, chip, x, weight_max=w_max, eta=-1.0)
    with pytest.raises(ValueError, match="max_scale must be >= 1"):
        homeostatic_compensation(net, chip, x, weight_max=w_max, max_scale=0.5)
    with pytest.raises(ValueError, match="weight_max needs 2 entries"):
        homeostatic_compensation(net, chip, x, weight_max=(1.0,))
    with pytest.raises(ValueError, match="net must be a RateNetwork"):
        ensemble_network(torch.nn.Linear(2, 2), 2)
