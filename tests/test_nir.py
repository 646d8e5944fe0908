"""neuromorph <-> NIR: round trips give identical spikes for every supported layer (hypothesis), the unit
mapping by hand, .nir files, ALIF/strict refusals, and errors that name the offending node."""

from __future__ import annotations

import math
import warnings

import nir
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import neuromorph.nir as nmnir
from neuromorph.layers import FeedForwardSpikingLayer, LeakyReadout, RecurrentSpikingLayer
from neuromorph.layers.delay import DelayLayer
from neuromorph.layers.graph import SpikingGraph
from neuromorph.layers.integrate_fire import IntegrateFireLayer
from neuromorph.layers.lif_box import LIBoxLayer, LIFBoxLayer
from neuromorph.layers.sequential import SpikingSequential

KINDS = (
    "feedforward", "recurrent", "alif_beta0", "readout", "if", "lif_box", "li_box", "delay", "conv2d",
    "conv1d", "lsnn_stack",
)  # fmt: skip


def _export(model, x, **kwargs) -> nir.NIRGraph:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", nmnir.NIRConventionWarning)
        return nmnir.export(model, x, **kwargs)


def _spikes_in(x_shape, gen, rate=0.3):
    return (torch.rand(*x_shape, generator=gen) < rate).float()


def _rewire(*tensors, gen, fraction):
    """Zero a fraction of the weights, as DEEP R leaves dormant synapses."""
    for t in tensors:
        t.data[torch.rand(t.shape, generator=gen) < fraction] = 0.0


def _init(module: nn.Module, gen: torch.Generator, scale: float) -> nn.Module:
    """Seeded weights (torch's default init draws from the global generator)."""
    with torch.no_grad():
        for t in module.parameters():
            t.copy_(torch.randn(t.shape, generator=gen) * scale)
    return module


DEFAULTS = dict(steps=30, batch=2, n_in=5, n=5, tau=10.0, thr_lsnn=0.01, n_ref=1, n_delay=3, dt=1.0,
                flag=True, sparsity=0.5, reset="hard", integration="exact", r=1.0, stride=1,
                padding=1)  # fmt: skip


def _build(kind: str, seed: int, p: dict):
    """A model of ``kind`` and an input for it; ``p`` holds the drawn parameters (defaults: DEFAULTS)."""
    p = {**DEFAULTS, **p}
    g = torch.Generator().manual_seed(seed)
    T, B, n_in, n = p["steps"], p["batch"], p["n_in"], p["n"]
    if kind == "feedforward":
        m = FeedForwardSpikingLayer(
            n_in, n, tau_mem=p["tau"], threshold=p["thr_lsnn"], n_refractory=p["n_ref"], dt=p["dt"],
            bias=p["flag"], generator=g,
        )  # fmt: skip
        _rewire(m.weight, gen=g, fraction=p["sparsity"])
        return m, _spikes_in((T, B, n_in), g)
    if kind in ("recurrent", "alif_beta0"):
        n_alif = 0 if kind == "recurrent" else max(1, n // 2)
        m = RecurrentSpikingLayer(
            n_in, n, n_alif, tau_mem=torch.rand(n + n_alif, generator=g) * 30 + 3, beta=0.0,
            threshold=p["thr_lsnn"], n_refractory=p["n_ref"], n_delay=p["n_delay"], dt=p["dt"],
            dale=0.8 if p["flag"] else None, generator=g,
        )  # fmt: skip
        _rewire(m.w_in, m.w_rec, gen=g, fraction=p["sparsity"])
        return m, _spikes_in((T, B, n_in), g)
    if kind == "readout":
        m = LeakyReadout(n_in, n, tau_out=p["tau"], dt=p["dt"], bias=p["flag"], generator=g)
        return m, _spikes_in((T, B, n_in), g)
    if kind == "lsnn_stack":
        m = SpikingSequential(
            {
                "ff": FeedForwardSpikingLayer(n_in, n, threshold=p["thr_lsnn"], generator=g),
                "rsnn": RecurrentSpikingLayer(
                    n, n + 1, 0, n_delay=p["n_delay"], threshold=p["thr_lsnn"], generator=g
                ),
                "readout": LeakyReadout(n + 1, 3, bias=True, generator=g),
            }
        )
        return m, _spikes_in((T, B, n_in), g)

    x = torch.rand(T, B, n_in, generator=g) * 1.5
    linear = _init(nn.Linear(n_in, n, bias=p["flag"]), g, 1.0 / math.sqrt(n_in))
    thr = torch.rand(n, generator=g) * 0.9 + 0.1
    if kind == "if":
        hard = p["reset"] == "hard"
        neurons = IntegrateFireLayer(
            n, threshold=thr, reset=p["reset"], r=p["r"], v_reset=-0.1 if hard else 0.0
        )
        return SpikingSequential(linear, neurons), x
    if kind == "lif_box":
        neurons = LIFBoxLayer(
            n, tau_mem=torch.rand(n, generator=g) * 20 + 2, r=p["r"], v_leak=0.05, threshold=thr,
            v_reset=-0.05, reset=p["reset"], integration=p["integration"], dt=p["dt"],
        )  # fmt: skip
        return SpikingSequential(linear, neurons), x
    if kind == "li_box":
        neurons = LIBoxLayer(n, tau=p["tau"], r=p["r"], v_leak=0.1, integration=p["integration"], dt=p["dt"])
        return SpikingSequential(linear, neurons), x
    if kind == "delay":
        steps = torch.randint(0, 4, (n,), generator=g)
        return SpikingSequential(linear, DelayLayer(n, steps, dt=p["dt"])), x
    if kind == "conv2d":
        conv = _init(nn.Conv2d(2, 3, 3, stride=p["stride"], padding=p["padding"], bias=p["flag"]), g, 0.4)
        pool = nn.AvgPool2d(2, divisor_override=1 if p["reset"] == "hard" else None)
        shape = conv(torch.zeros(1, 2, 9, 8)).shape[1:]
        flat = int(np.prod(pool(torch.zeros(1, *shape)).shape[1:]))
        head = _init(nn.Linear(flat, n), g, 3.0 / math.sqrt(flat))
        m = SpikingSequential(
            conv, IntegrateFireLayer(tuple(shape), threshold=0.5), pool, nn.Flatten(), head,
            LIFBoxLayer(n, tau_mem=p["tau"], threshold=0.1, integration=p["integration"], dt=p["dt"]),
        )  # fmt: skip
        return m, torch.rand(T, B, 2, 9, 8, generator=g)
    if kind == "conv1d":
        conv = _init(nn.Conv1d(2, 3, 3, stride=p["stride"], padding=p["padding"]), g, 0.5)
        length = conv(torch.zeros(1, 2, 11)).shape[-1]
        m = SpikingSequential(
            conv, LIFBoxLayer((3, length), tau_mem=p["tau"], threshold=0.3, reset=p["reset"])
        )
        return m, torch.rand(T, B, 2, 11, generator=g)
    raise AssertionError(kind)


params = st.fixed_dictionaries(
    {
        "steps": st.integers(1, 25),
        "batch": st.integers(1, 3),
        "n_in": st.integers(1, 6),
        "n": st.integers(1, 6),
        "tau": st.floats(2.0, 40.0),
        "thr_lsnn": st.floats(0.003, 0.05),
        "n_ref": st.integers(0, 3),
        "n_delay": st.integers(1, 4),
        "dt": st.sampled_from([1.0, 0.5, 0.1]),
        "flag": st.booleans(),
        "sparsity": st.sampled_from([0.0, 0.5]),
        "reset": st.sampled_from(["hard", "soft"]),
        "integration": st.sampled_from(["exact", "euler"]),
        "r": st.sampled_from([1.0, 0.5, 2.0]),
        "stride": st.integers(1, 2),
        "padding": st.integers(0, 1),
    }
)


@settings(max_examples=80, deadline=None)
@given(kind=st.sampled_from(KINDS), p=params, seed=st.integers(0, 2**31 - 1), double=st.booleans())
def test_round_trip_gives_identical_output(kind, p, seed, double):
    model, x = _build(kind, seed, p)
    if double:
        model, x = model.double(), x.double()
    with torch.no_grad():
        want, _ = model(x)
        net = nmnir.load(_export(model, x))
        got, _ = net(x)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert torch.equal(got, want), f"{kind}: {int((got != want).sum())} values differ"


def test_round_trip_cases_spike():
    """The property above is not vacuous: its spiking layers do spike."""
    p = dict(steps=40)
    for kind in ("feedforward", "recurrent", "if", "lif_box", "conv2d", "conv1d"):
        model, x = _build(kind, 3, p)
        with torch.no_grad():
            z = model(x)[0]
        assert 0 < float(z.mean()) < 1, kind


def test_loaded_layers_are_neuromorph_layers_with_the_same_tensors():
    model, x = _build("lsnn_stack", 0, dict(steps=5, batch=1, n_in=4, n=5, thr_lsnn=0.01, n_delay=3))
    net = nmnir.load(_export(model, x))
    assert [type(net.module(n)).__name__ for n in ("ff", "rsnn", "readout")] == [
        "FeedForwardSpikingLayer", "RecurrentSpikingLayer", "LeakyReadout",
    ]  # fmt: skip
    for name in ("ff", "rsnn", "readout"):
        want, got = model[name].state_dict(), net.module(name).state_dict()
        assert want.keys() == got.keys()
        for key in want:
            if key in ("w_rec",):  # exported as used: autapses masked (the mask multiplies it again)
                assert torch.equal(model[name].effective_w_rec(), got[key])
            else:
                assert torch.equal(want[key], got[key]), (name, key)


def test_loaded_recurrent_graph_continues_across_chunks():
    """State passes between calls, through delays and the recurrent (cycle-closing) edges."""
    model, x = _build("recurrent", 1, dict(steps=30, batch=2, n_in=4, n=5, thr_lsnn=0.01, n_ref=0, n_delay=3,
                                           dt=1.0, flag=False, sparsity=0.0))  # fmt: skip
    graph = _export(model, x)
    for net in (nmnir.load(graph), nmnir.load(graph, use_metadata=False)):  # native layer; generic cycle
        whole, _ = net(x)
        first, state = net(x[:11])
        second, _ = net(x[11:], state)
        assert torch.equal(torch.cat([first, second]), whole)


# -- NIR-native layers: what any NIR tool sees is exactly the model -------------------------------


@settings(max_examples=40, deadline=None)
@given(
    kind=st.sampled_from(["if", "lif_box", "li_box", "delay", "conv2d"]),
    p=params,
    seed=st.integers(0, 2**31 - 1),
)
def test_nir_native_layers_need_no_metadata(kind, p, seed):
    p = {**p, "reset": "hard"}
    model, x = _build(kind, seed, p)
    graph = nmnir.export(model, x, strict=True)  # nothing outside NIR 1.0: no warning, no refusal
    net = nmnir.load(graph, use_metadata=False, dt=p["dt"], integration=p["integration"])
    with torch.no_grad():
        assert torch.equal(net(x)[0], model(x)[0])


# -- the unit mapping, by hand ---------------------------------------------------------------------


def test_lsnn_lif_maps_to_nir_lif_in_seconds():
    m = FeedForwardSpikingLayer(3, 2, tau_mem=20.0, threshold=0.02, dt=0.5, n_refractory=2, bias=True)
    graph = _export(m, torch.zeros(4, 1, 3))
    lif, w = graph.nodes["0.lif"], graph.nodes["0.weight"]
    assert isinstance(lif, nir.LIF) and isinstance(w, nir.Affine)
    np.testing.assert_allclose(lif.tau, [0.02, 0.02])  # 20 ms -> 0.02 s
    assert np.all(lif.r == 1) and np.all(lif.v_leak == 0) and np.all(lif.v_reset == 0)
    np.testing.assert_allclose(lif.v_threshold, [0.02, 0.02])
    assert np.array_equal(w.weight, m.weight.detach().numpy().T)  # [in, out] -> NIR [out, in]
    assert lif.metadata["neuromorph_convention"] == "lsnn" and lif.metadata["neuromorph_n_refractory"] == 2
    assert lif.metadata["neuromorph_dt_ms"] == 0.5
    assert graph.edges == [("input", "0.weight"), ("0.weight", "0.lif"), ("0.lif", "output")]


def test_nir_lif_ode_over_one_step_is_the_lsnn_leak():
    """exp(-dt/tau) v + (1 - exp(-dt/tau)) r I solves tau dv/dt = -v + r I over one step (I constant)."""
    tau, dt, v0, current = 0.02, 1e-3, 0.3, 0.7
    exact = current + (v0 - current) * math.exp(-dt / tau)
    v, h = v0, dt / 10000
    for _ in range(10000):
        v += h / tau * (-v + current)
    assert v == pytest.approx(exact, rel=1e-6)
    a = math.exp(-1.0 / 20.0)
    assert a * v0 + (1 - a) * current == pytest.approx(exact, rel=1e-12)


def test_readout_and_if_map_by_hand():
    readout = LeakyReadout(4, 2, tau_out=25.0, bias=False)
    neurons = IntegrateFireLayer(2, threshold=0.7)
    graph = nmnir.export(SpikingSequential({"ro": readout, "if": neurons}), torch.zeros(3, 1, 4), strict=True)
    li, w, node = graph.nodes["ro.li"], graph.nodes["ro.weight"], graph.nodes["if"]
    assert isinstance(li, nir.LI) and isinstance(w, nir.Linear) and isinstance(node, nir.IF)
    np.testing.assert_allclose(li.tau, np.full(4, 0.025))
    assert np.all(li.r == 1) and np.all(li.v_leak == 0)
    assert np.array_equal(w.weight, readout.weight.detach().numpy().T)
    np.testing.assert_allclose(node.v_threshold, [0.7, 0.7])
    assert np.all(node.r == 1) and np.all(node.v_reset == 0)


def test_delays_become_delay_nodes_in_seconds():
    m = RecurrentSpikingLayer(3, 4, 0, n_delay=3, dt=0.5, generator=torch.Generator().manual_seed(0))
    graph = _export(m, torch.zeros(2, 1, 3))
    for role, w, delay in (("w_in", m.w_in, m.in_delay), ("w_rec", m.effective_w_rec(), m.rec_delay)):
        total = np.zeros(tuple(w.shape[::-1]), dtype=np.float32)
        for d in range(3):
            key = f"0.{role}.d{d}"
            if key not in graph.nodes:
                assert not bool((delay == d).any())
                continue
            total += graph.nodes[key].weight
            if d:
                np.testing.assert_allclose(graph.nodes[f"{key}.delay"].delay, np.full(4, d * 0.5e-3))
                assert (key, f"{key}.delay") in graph.edges and (f"{key}.delay", "0.lif") in graph.edges
        assert np.array_equal(total, w.detach().numpy().T)


def test_sparse_and_dale_weights_export_dense_with_zeros():
    g = torch.Generator().manual_seed(2)
    m = RecurrentSpikingLayer(5, 6, 0, dale=0.5, generator=g)
    _rewire(m.w_in, m.w_rec, gen=g, fraction=0.6)
    graph = _export(m, torch.zeros(2, 1, 5))
    w_in, w_rec = graph.nodes["0.w_in"].weight, graph.nodes["0.w_rec"].weight
    assert w_in.shape == (6, 5) and w_rec.shape == (6, 6)  # dense
    assert np.array_equal(w_in == 0, m.w_in.detach().numpy().T == 0)
    assert np.array_equal(w_rec, m.effective_w_rec().detach().numpy().T)
    assert np.all(np.diag(w_rec) == 0)  # no autapses
    sign = m.rec_sign.numpy()
    assert np.all(w_rec * sign[None, :] >= 0)  # column = presynaptic neuron: its sign (Dale)
    np.testing.assert_array_equal(graph.nodes["0.lif"].metadata["neuromorph_dale_sign"], sign)


# -- files -----------------------------------------------------------------------------------------


def test_save_and_read_round_trip(tmp_path):
    model, x = _build("lsnn_stack", 5, dict(steps=20, batch=2, n_in=4, n=5, thr_lsnn=0.01, n_delay=2))
    graph = _export(model, x)
    path = tmp_path / "model.nir"
    nmnir.save(graph, path)
    back = nmnir.read(path)
    assert set(back.nodes) == set(graph.nodes) and sorted(back.edges) == sorted(graph.edges)
    for key, node in graph.nodes.items():
        for field in ("weight", "bias", "tau", "r", "v_threshold", "delay"):
            if hasattr(node, field):
                np.testing.assert_array_equal(getattr(back.nodes[key], field), getattr(node, field))
    with torch.no_grad():
        assert torch.equal(nmnir.load(back)(x)[0], model(x)[0])
    assert list(tmp_path.iterdir()) == [path]  # written atomically: no temporary left behind


def test_conv_network_file_round_trip(tmp_path):
    p = dict(
        steps=6, batch=2, n=4, tau=10.0, integration="euler", reset="hard", stride=2, padding=1, flag=True
    )
    model, x = _build("conv2d", 0, p)
    nmnir.save(nmnir.export(model, x, strict=True), tmp_path / "cnn.nir")
    graph = nmnir.read(tmp_path / "cnn.nir")
    assert [type(graph.nodes[k]).__name__ for k in ("0", "1", "2", "3", "4", "5")] == [
        "Conv2d", "IF", "SumPool2d", "Flatten", "Affine", "LIF",
    ]  # fmt: skip
    with torch.no_grad():
        assert torch.equal(nmnir.load(graph)(x)[0], model(x)[0])


def test_read_missing_or_broken_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no NIR file"):
        nmnir.read(tmp_path / "absent.nir")
    (tmp_path / "junk.nir").write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match="junk.nir"):
        nmnir.read(tmp_path / "junk.nir")


# -- refusals and warnings -------------------------------------------------------------------------


def test_alif_is_refused_naming_the_layer():
    net = SpikingSequential({"rsnn": RecurrentSpikingLayer(3, 4, 2, beta=1.7), "readout": LeakyReadout(6, 2)})
    with pytest.raises(ValueError, match=r"layer 'rsnn' \(RecurrentSpikingLayer\) has 2 adaptive \(ALIF\)"):
        nmnir.export(net, torch.zeros(3, 1, 3))


def test_lsnn_conventions_warn_or_are_refused_with_strict():
    m = SpikingSequential({"hidden": FeedForwardSpikingLayer(3, 2, n_refractory=2)})
    with pytest.warns(
        nmnir.NIRConventionWarning, match=r"layer 'hidden'.*previous step's voltage.*refractory"
    ):
        nmnir.export(m, torch.zeros(3, 1, 3))
    with pytest.raises(ValueError, match="layer 'hidden'"):
        nmnir.export(m, torch.zeros(3, 1, 3), strict=True)
    soft = SpikingSequential({"fc": nn.Linear(3, 2), "ifs": IntegrateFireLayer(2, reset="soft")})
    with pytest.raises(ValueError, match="layer 'ifs': IF with soft reset"):
        nmnir.export(soft, torch.zeros(3, 1, 3), strict=True)


def test_unsupported_module_is_named():
    m = SpikingSequential({"fc": nn.Linear(3, 2), "act": nn.ReLU()})
    with pytest.raises(ValueError, match="layer 'act' is a ReLU, which has no NIR export"):
        nmnir.export(m, torch.zeros(3, 1, 3))


def test_bad_sample_input():
    with pytest.raises(ValueError, match="sample_input must be a time-major tensor"):
        nmnir.export(nn.Linear(3, 2), torch.zeros(3, 3))
    with pytest.raises(ValueError, match=r"layer '0' \(FeedForwardSpikingLayer\) cannot take input"):
        nmnir.export(FeedForwardSpikingLayer(3, 2), torch.zeros(3, 1, 4))


# -- bad graphs: errors name the node ---------------------------------------------------------------


def _lif(n):
    return nir.LIF(tau=np.full(n, 0.01), r=np.ones(n), v_leak=np.zeros(n), v_threshold=np.ones(n))


def test_unknown_node_type_is_named():
    graph = nir.NIRGraph(
        nodes={
            "input": nir.Input(np.array([3])),
            "integrator": nir.I(r=np.ones(3)),
            "output": nir.Output(np.array([3])),
        },
        edges=[("input", "integrator"), ("integrator", "output")],
    )
    with pytest.raises(
        ValueError, match="node 'integrator' has type I, which neuromorph.nir.load does not support"
    ):
        nmnir.load(graph)


def test_inconsistent_shapes_are_named():
    nodes = {
        "input": nir.Input(np.array([5])),
        "fc": nir.Linear(weight=np.ones((4, 5), dtype=np.float32)),
        "spiking": _lif(3),
        "output": nir.Output(np.array([3])),
    }
    edges = [("input", "fc"), ("fc", "spiking"), ("spiking", "output")]
    with pytest.raises(ValueError, match="spiking"):  # nir's own type check names it too
        nir.NIRGraph(nodes=dict(nodes), edges=list(edges))
    graph = nir.NIRGraph(nodes=nodes, edges=edges, type_check=False)
    with pytest.raises(ValueError, match=r"node 'spiking' cannot take input of shape \(4,\)"):
        nmnir.load(graph)


def test_mismatched_sum_and_bad_parameters_are_named():
    nodes = {
        "input": nir.Input(np.array([5])),
        "a": nir.Linear(weight=np.ones((4, 5), dtype=np.float32)),
        "b": nir.Linear(weight=np.ones((3, 5), dtype=np.float32)),
        "join": _lif(4),
        "output": nir.Output(np.array([4])),
    }
    edges = [("input", "a"), ("input", "b"), ("a", "join"), ("b", "join"), ("join", "output")]
    with pytest.raises(ValueError, match=r"node 'join' receives inputs of different shapes"):
        nmnir.load(nir.NIRGraph(nodes=nodes, edges=edges, type_check=False))
    bad = nir.IF(r=np.ones(2), v_threshold=np.array([1.0, -1.0]))
    graph = nir.NIRGraph(
        nodes={"input": nir.Input(np.array([2])), "neg": bad, "output": nir.Output(np.array([2]))},
        edges=[("input", "neg"), ("neg", "output")],
    )
    with pytest.raises(ValueError, match=r"node 'neg' \(IF\): threshold must be positive"):
        nmnir.load(graph)


def test_unknown_node_type_in_a_file_is_named(tmp_path):
    graph = nir.NIRGraph(
        nodes={"input": nir.Input(np.array([2])), "mystery": _lif(2), "output": nir.Output(np.array([2]))},
        edges=[("input", "mystery"), ("mystery", "output")],
    )
    nmnir.save(graph, tmp_path / "g.nir")
    import h5py

    with h5py.File(tmp_path / "g.nir", "r+") as f:
        del f["node/nodes/mystery/type"]
        f["node/nodes/mystery"].create_dataset("type", data="Spiral", dtype=h5py.string_dtype())
    with pytest.raises(ValueError, match="node 'mystery' has type 'Spiral'"):
        nmnir.read(tmp_path / "g.nir")


def test_graph_structure_errors():
    two_inputs = nir.NIRGraph(
        nodes={
            "a": nir.Input(np.array([2])),
            "b": nir.Input(np.array([2])),
            "n": _lif(2),
            "out": nir.Output(np.array([2])),
        },
        edges=[("a", "n"), ("b", "n"), ("n", "out")],
    )
    with pytest.raises(ValueError, match="exactly one Input and one Output"):
        nmnir.load(two_inputs)
    with pytest.raises(ValueError, match="graph must be a nir.NIRGraph"):
        nmnir.load({"nodes": {}})
    with pytest.raises(ValueError, match="integration must be"):
        nmnir.load(two_inputs, integration="rk4")


def test_tampered_neuromorph_layer_is_refused_not_changed():
    model = FeedForwardSpikingLayer(3, 2)
    graph = _export(model, torch.zeros(2, 1, 3))
    graph.nodes["0.lif"].v_reset = np.full(2, 0.5)
    with pytest.raises(ValueError, match="node '0.lif' of layer '0': the LSNN neuron needs v_reset = 0"):
        nmnir.load(graph)
    net = nmnir.load(graph, use_metadata=False)  # as a plain NIR LIF it loads
    assert isinstance(net.module("0.lif"), LIFBoxLayer)


# -- the graph executor -----------------------------------------------------------------------------


def test_spiking_graph_sums_inputs_and_reports_node_values():
    a, b = nn.Linear(3, 2, bias=False), nn.Linear(3, 2, bias=False)
    net = SpikingGraph(
        {"in": None, "a": a, "b": b, "out": None},
        [("in", "a"), ("in", "b"), ("a", "out"), ("b", "out")],
        "in",
        "out",
    )
    x = torch.rand(4, 2, 3)
    values, _ = net.node_values(x)
    with torch.no_grad():
        assert torch.allclose(values["out"], a(x) + b(x))
    with pytest.raises(ValueError, match=r"node\(s\) \['lost'\] cannot be reached"):
        SpikingGraph({"in": None, "lost": a, "out": None}, [("in", "out")], "in", "out")
    with pytest.raises(ValueError, match="names node 'ghost'"):
        SpikingGraph({"in": None, "out": None}, [("in", "ghost")], "in", "out")


def _generic_graph() -> nir.NIRGraph:
    """A hand-written NIR graph with what peers write: a subgraph, a CubaLIF, a recurrent cycle with
    a bias, a delay, Scale and Threshold nodes, an LI output."""
    g = np.random.default_rng(0)
    w = lambda *shape: g.normal(0, 0.8, shape).astype(np.float32)  # noqa: E731
    rec = nir.NIRGraph(
        nodes={
            "input": nir.Input(np.array([4])),
            "lif": nir.LIF(
                tau=np.full(4, 0.01), r=np.full(4, 2.0), v_leak=np.zeros(4), v_threshold=np.full(4, 0.6)
            ),
            "w_rec": nir.Affine(weight=w(4, 4), bias=w(4) * 0.1),
            "output": nir.Output(np.array([4])),
        },
        edges=[("input", "lif"), ("lif", "w_rec"), ("w_rec", "lif"), ("lif", "output")],
    )
    nodes = {
        "input": nir.Input(np.array([3])),
        "fc": nir.Affine(weight=w(4, 3), bias=w(4) * 0.1),
        "cuba": nir.CubaLIF(
            tau_syn=np.full(4, 0.005),
            tau_mem=np.full(4, 0.02),
            r=np.full(4, 4.0),
            v_leak=np.zeros(4),
            v_threshold=np.full(4, 0.5),
            w_in=np.full(4, 3.0),
        ),  # fmt: skip
        "fc2": nir.Linear(weight=w(4, 4)),
        "rnn": rec,
        "delay": nir.Delay(delay=np.array([0.0, 1e-3, 2e-3, 3e-3])),
        "scale": nir.Scale(scale=np.array([1.0, -1.0, 0.5, 2.0])),
        "thr": nir.Threshold(threshold=np.full(4, 0.2)),
        "li": nir.LI(tau=np.full(4, 0.02), r=np.ones(4), v_leak=np.zeros(4)),
        "output": nir.Output(np.array([4])),
    }
    edges = [("input", "fc"), ("fc", "cuba"), ("cuba", "fc2"), ("fc2", "rnn"), ("rnn", "delay"),
             ("delay", "scale"), ("scale", "thr"), ("thr", "li"), ("li", "output")]  # fmt: skip
    return nir.NIRGraph(nodes=nodes, edges=edges)


def test_generic_graph_loads_runs_and_re_exports_identically(tmp_path):
    graph = _generic_graph()
    nmnir.save(graph, tmp_path / "peer.nir")
    net = nmnir.load(nmnir.read(tmp_path / "peer.nir"))
    x = torch.rand(40, 2, 3, generator=torch.Generator().manual_seed(0)) * 2
    with torch.no_grad():
        values, _ = net.node_values(x)
        assert 0 < float(values["rnn.lif"].mean()) < 1 and 0 < float(values["thr"].mean()) < 1
        again = nmnir.load(nmnir.export(net, x, strict=True))
        assert torch.equal(again(x)[0], values["output"])
        first, state = net(x[:13])
        second, _ = net(x[13:], state)
    assert torch.equal(torch.cat([first, second]), values["output"])


def test_generic_lif_step_by_hand():
    """One NIR LIF node, Euler at dt = 1 ms: v += dt/tau (r I - v); spike above threshold; reset to
    v_reset."""
    one = lambda v: np.array([v])  # noqa: E731
    node = nir.LIF(tau=one(0.01), r=one(2.0), v_leak=one(0.0), v_threshold=one(1.0), v_reset=one(-0.5))
    graph = nir.NIRGraph(
        nodes={"input": nir.Input(np.array([1])), "lif": node, "output": nir.Output(np.array([1]))},
        edges=[("input", "lif"), ("lif", "output")],
    )
    x = torch.tensor([3.0, 3.0, 3.0, 0.0], dtype=torch.float64).view(4, 1, 1)
    z, state = nmnir.load(graph).double()(x)
    v, want = 0.0, []
    for i in [3.0, 3.0, 3.0, 0.0]:
        v += 0.1 * (2.0 * i - v)
        want.append(float(v > 1.0))
        v = -0.5 if v > 1.0 else v
    assert z.view(-1).tolist() == want == [0.0, 1.0, 0.0, 0.0]
    assert state["lif"].v.item() == pytest.approx(v)


def test_neuromorph_nir_does_not_shadow_the_nir_package():
    graph = nmnir.export(nn.Linear(2, 2), torch.zeros(1, 1, 2), strict=True)
    assert nmnir.__name__ == "neuromorph.nir" and nir.__name__ == "nir" and nmnir is not nir
    assert type(graph) is nir.NIRGraph and "neuromorph" not in nir.__file__
