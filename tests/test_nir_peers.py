"""NIR across libraries: snnTorch 1.0 and Norse 1.1 networks load into neuromorph with the same spike
trains and neuromorph exports load into them; where a peer's convention differs, the test pins the
difference down (docs/interop.md lists every combination)."""

from __future__ import annotations

import logging
import warnings

import nir
import numpy as np
import pytest
import torch
from torch import nn

import neuromorph.nir as nmnir
from neuromorph.layers import FeedForwardSpikingLayer
from neuromorph.layers.integrate_fire import IntegrateFireLayer
from neuromorph.layers.lif_box import LIFBoxLayer
from neuromorph.layers.sequential import SpikingSequential

snn = pytest.importorskip("snntorch")
norse = pytest.importorskip("norse.torch")
pytest.importorskip("nirtorch")
from norse.torch.utils.export_nir import to_nir  # noqa: E402
from norse.torch.utils.import_nir import from_nir  # noqa: E402
from snntorch.export_nir import export_to_nir  # noqa: E402
from snntorch.import_nir import import_from_nir  # noqa: E402

T, B = 80, 3
F64 = torch.float64


@pytest.fixture(autouse=True)
def _quiet(caplog):
    caplog.set_level(logging.ERROR)  # norse logs r != 1 warnings; snntorch prints its own notes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # nirtorch.extract_nir_graph
        yield


def _seeded(module: nn.Module, seed: int, scale: float) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return module


def _spikes(n: int, seed: int = 0, rate: float = 0.3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(T, B, n, generator=g) < rate).float()


def _steps(module, x: torch.Tensor, *, stateful_call: bool) -> torch.Tensor:
    """Run a peer's single-step module over ``x`` [T, B, n]."""
    out, state = [], None
    with torch.no_grad():
        for t in range(x.shape[0]):
            if stateful_call:
                y, state = module(x[t], state)
            else:
                y = module(x[t])
            while isinstance(y, tuple):  # (spikes, membrane) or (output, graph state)
                y = y[0]
            out.append(y.to(x.dtype))
    return torch.stack(out)


def _run(model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)[0]


def _check_active(z: torch.Tensor) -> None:
    assert 0.02 < float(z.mean()) < 0.9, "the comparison needs spikes, and not saturation"


# -- snnTorch -> neuromorph -------------------------------------------------------------------------


def _snntorch_ff(reset="zero", reset_delay=False):
    g = torch.Generator().manual_seed(4)
    beta1, beta2 = torch.rand(5, generator=g) * 0.3 + 0.65, torch.rand(4, generator=g) * 0.3 + 0.65
    kwargs = dict(init_hidden=True, reset_mechanism=reset, reset_delay=reset_delay)
    return nn.Sequential(
        _seeded(nn.Linear(6, 5), 0, 0.8),
        snn.Leaky(beta=beta1, threshold=torch.full((5,), 1.0), **kwargs),
        _seeded(nn.Linear(5, 4), 1, 0.9),
        snn.Leaky(beta=beta2, threshold=torch.full((4,), 0.7), output=True, **kwargs),
    )


def test_snntorch_leaky_network_loads_with_identical_spikes():
    """snnTorch ``Leaky(reset_mechanism="zero", reset_delay=False)`` is NIR's LIF with forward Euler at
    snnTorch's implied dt = 0.1 ms (tau = dt / (1 - beta), r = tau / dt)."""
    x = _spikes(6)
    graph = export_to_nir(_snntorch_ff(), x[0], ignore_dims=[0])
    lif = graph.nodes["1"]
    np.testing.assert_allclose(lif.tau * (1 - _snntorch_ff()[1].beta.numpy()), 1e-4, rtol=1e-5)
    want = _steps(_snntorch_ff(), x, stateful_call=False)
    got = _run(nmnir.load(graph, dt=0.1), x)
    _check_active(want)
    assert torch.equal(got, want)


def test_snntorch_default_subtractive_reset_is_not_in_the_file():
    """snnTorch's default Leaky subtracts the threshold one step late (reset_delay=True); its exporter writes
    NIR's LIF with v_reset = 0 anyway. Every NIR reader, snnTorch's own importer included, then
    simulates a reset to zero: neuromorph agrees with snnTorch's re-import, not with the original."""
    x = _spikes(6)
    graph = export_to_nir(_snntorch_ff("subtract", True), x[0], ignore_dims=[0])
    assert np.all(graph.nodes["1"].v_reset == 0)
    original = _steps(_snntorch_ff("subtract", True), x, stateful_call=False)
    reimported = _steps(import_from_nir(graph), x, stateful_call=False)
    got = _run(nmnir.load(graph, dt=0.1), x)
    assert torch.equal(got, reimported)
    assert not torch.equal(got, original)


def test_snntorch_rleaky_recurrent_network_loads_with_identical_spikes():
    """``RLeaky`` exports as LIF <-> Affine cycle; the cycle-closing edge carries z(t-1) and the recurrent
    bias enters from t = 0, as in snnTorch."""

    def net():
        rleaky = snn.RLeaky(
            beta=torch.full((5,), 0.85), threshold=torch.full((5,), 1.0), linear_features=5, init_hidden=True,
            reset_mechanism="zero", reset_delay=False,
        )  # fmt: skip
        _seeded(rleaky.recurrent, 2, 0.6)
        return nn.Sequential(_seeded(nn.Linear(6, 5), 0, 0.8), rleaky)

    x = _spikes(6)
    graph = export_to_nir(net(), x[0], ignore_dims=[0])
    assert ("1.w_rec", "1.lif") in graph.edges and ("1.lif", "1.w_rec") in graph.edges
    want = _steps(net(), x, stateful_call=False)
    got = _run(nmnir.load(graph, dt=0.1), x)
    _check_active(want)
    assert torch.equal(got, want)


def test_snntorch_synaptic_loads_as_cuba_lif():
    """``Synaptic`` -> NIR CubaLIF -> neuromorph Scale(w_in) -> LI(tau_syn) -> LIF(tau_mem, r)."""

    def net():
        g = torch.Generator().manual_seed(1)
        syn = snn.Synaptic(
            alpha=torch.rand(4, generator=g) * 0.3 + 0.5, beta=torch.rand(4, generator=g) * 0.2 + 0.7,
            threshold=torch.full((4,), 1.0), init_hidden=True, reset_mechanism="zero", reset_delay=False,
        )  # fmt: skip
        return nn.Sequential(_seeded(nn.Linear(6, 4), 0, 0.6), syn)

    x = _spikes(6)
    graph = export_to_nir(net(), x[0], ignore_dims=[0])
    assert isinstance(graph.nodes["1"], nir.CubaLIF)
    want = _steps(net(), x, stateful_call=False)
    got = _run(nmnir.load(graph, dt=0.1), x)
    _check_active(want)
    assert torch.equal(got, want)


# -- neuromorph -> snnTorch -------------------------------------------------------------------------


def test_neuromorph_lif_box_network_runs_identically_in_snntorch():
    """snnTorch's importer assumes dt = 0.1 ms and Euler: a neuromorph LIFBoxLayer with dt = 0.1,
    integration="euler" and r = tau / dt (unit input gain) becomes ``Leaky(beta = 1 - dt/tau)``."""
    model = SpikingSequential(
        _seeded(nn.Linear(6, 5), 0, 0.8),
        LIFBoxLayer(5, tau_mem=1.0, r=10.0, threshold=1.0, dt=0.1, integration="euler"),
        _seeded(nn.Linear(5, 4), 1, 0.9),
        LIFBoxLayer(4, tau_mem=0.5, r=5.0, threshold=0.7, dt=0.1, integration="euler"),
    )
    x = _spikes(6)
    graph = nmnir.export(model, x, strict=True)
    peer = import_from_nir(graph)
    leaky = [m for m in peer.modules() if isinstance(m, snn.Leaky)]
    assert [float(m.beta.min()) for m in leaky] == pytest.approx([0.9, 0.8])
    assert [float(m.beta.max()) for m in leaky] == pytest.approx([0.9, 0.8])
    want = _run(model, x)
    got = _steps(peer, x, stateful_call=False)
    _check_active(want)
    assert torch.equal(got, want)


def test_snntorch_imports_nir_if_as_a_leaky_neuron():
    """Documented difference: snnTorch 1.0's importer turns NIR's IF into ``Leaky(beta=0.9)`` (it leaks);
    Norse and neuromorph integrate without leak."""
    model = SpikingSequential(_seeded(nn.Linear(6, 4), 0, 0.5), IntegrateFireLayer(4, threshold=1.0))
    x = _spikes(6)
    peer = import_from_nir(nmnir.export(model, x, strict=True))
    leaky = [m for m in peer.modules() if isinstance(m, snn.Leaky)]
    assert len(leaky) == 1 and float(leaky[0].beta.max()) == pytest.approx(0.9)
    want = _run(model, x)
    assert not torch.equal(_steps(peer, x, stateful_call=False), want)


# -- Norse -> neuromorph ----------------------------------------------------------------------------


def _norse_if_net():
    return norse.SequentialState(
        _seeded(nn.Linear(6, 5), 0, 0.7), norse.IAFCell(), _seeded(nn.Linear(5, 4), 1, 0.8), norse.IAFCell()
    )


def test_norse_if_network_loads_with_identical_spikes():
    x = _spikes(6)
    graph = to_nir(_norse_if_net(), x[0])
    want = _steps(_norse_if_net(), x, stateful_call=True)
    got = _run(nmnir.load(graph), x)
    _check_active(want)
    assert torch.equal(got, want)


def _norse_lif_net():
    p1 = norse.LIFBoxParameters(tau_mem_inv=torch.tensor(50.0), v_th=torch.tensor(0.3))
    p2 = norse.LIFBoxParameters(tau_mem_inv=torch.tensor(100.0), v_th=torch.tensor(0.2))
    return norse.SequentialState(
        _seeded(nn.Linear(6, 5), 0, 0.7),
        norse.LIFBoxCell(p1),
        _seeded(nn.Linear(5, 4), 1, 0.8),
        norse.LIFBoxCell(p2),
    )


def test_norse_lif_box_tau_is_written_times_dt():
    """Norse 1.1.0 writes LIFBox's tau as dt / tau_mem_inv = dt * tau (norse/norse#411, fixed after 1.1.0 by
    #413): 2e-5 "s" for tau = 20 ms. neuromorph reads tau literally (so does Norse's own importer); dividing
    tau by dt (1 ms) restores the network, which then gives Norse's spikes exactly."""
    x = _spikes(6)
    graph = to_nir(_norse_lif_net(), x[0])
    assert float(graph.nodes["1"].tau) == pytest.approx(1e-3 / 50.0)
    want = _steps(_norse_lif_net(), x, stateful_call=True)
    literal = _run(nmnir.load(graph), x)
    assert not torch.equal(literal, want)
    for node in graph.nodes.values():
        if isinstance(node, nir.LIF):
            node.tau = node.tau / 1e-3
    got = _run(nmnir.load(graph), x)
    _check_active(want)
    assert torch.equal(got, want)


# -- neuromorph -> Norse ----------------------------------------------------------------------------


def test_neuromorph_lif_and_if_network_runs_identically_in_norse():
    """Norse simulates LIF with Euler at dt = 1 ms and ignores r (r must be 1): LIFBoxLayer with
    integration="euler" and IntegrateFireLayer (hard reset) map one to one onto LIFBoxCell and IAFCell."""
    model = SpikingSequential(
        _seeded(nn.Linear(6, 5), 0, 0.7),
        LIFBoxLayer(5, tau_mem=20.0, threshold=0.3, integration="euler"),
        _seeded(nn.Linear(5, 4), 1, 0.8),
        IntegrateFireLayer(4, threshold=0.5),
    )
    x = _spikes(6)
    peer = from_nir(nmnir.export(model, x, strict=True))
    want = _run(model, x)
    got = _steps(peer, x, stateful_call=True)
    _check_active(want)
    assert torch.equal(got, want)


def test_neuromorph_lsnn_layer_in_norse_follows_nir_not_lsnn_conventions():
    """Documented difference: Norse sees an LSNN layer's NIR nodes only (its metadata is neuromorph's): it
    runs NIR's LIF (Euler, spike from the new voltage, reset to 0) and gives exactly what neuromorph gives
    for the same file without metadata - and not the LSNN layer's own spikes."""
    g = torch.Generator().manual_seed(0)
    layer = FeedForwardSpikingLayer(6, 5, threshold=0.02, generator=g)
    x = _spikes(6)
    with pytest.warns(nmnir.NIRConventionWarning):
        graph = nmnir.export(layer, x)
    as_nir = _run(nmnir.load(graph, use_metadata=False), x)
    peer = _steps(from_nir(graph), x, stateful_call=True)
    want = _run(layer, x)
    _check_active(want)
    _check_active(peer)
    assert torch.equal(peer, as_nir)
    assert not torch.equal(peer, want)
