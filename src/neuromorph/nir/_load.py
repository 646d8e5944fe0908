"""NIR -> neuromorph: :func:`load` rebuilds neuromorph's own layers from their metadata and gives every
other node NIR's meaning, discretised (mapping in :mod:`neuromorph.nir`)."""

from __future__ import annotations

import nir  # the NIR package (absolute import; this package is neuromorph.nir)
import numpy as np
import torch
from torch import nn

from .. import _validate
from ..layers.delay import DelayLayer
from ..layers.feedforward import FeedForwardSpikingLayer
from ..layers.graph import SpikingGraph
from ..layers.integrate_fire import IntegrateFireLayer
from ..layers.lif_box import LIBoxLayer, LIFBoxLayer
from ..layers.pointwise import Scale, Threshold
from ..layers.readout import LeakyReadout
from ..layers.recurrent import RecurrentSpikingLayer
from ..layers.sequential import SpikingSequential
from ..spikes import PiecewiseLinear, Triangle
from ._units import (
    LSNN_LAYERS,
    MS,
    SUPPORTED_NODES,
    as_str,
    from_seconds,
    node_meta,
    surrogate_from_meta,
    to_tensor,
    torch_dtype,
)

__all__ = ["load"]


def load(
    graph: nir.NIRGraph,
    *,
    dt: float | None = None,
    integration: str = "euler",
    reset: str = "hard",
    use_metadata: bool = True,
) -> SpikingGraph:
    """A :class:`SpikingGraph` computing ``graph`` (time-major ``[T, B, ...]``, one step per ``dt``).

    Nodes written by :func:`export` (``neuromorph_*`` metadata) come back as the layers they were, with
    identical spikes. Other nodes take NIR's meaning, discretised with ``dt`` (ms; default 1 ms =
    Norse's default; snnTorch's exporter assumes 0.1 ms), ``integration`` ("euler", what snnTorch and
    Norse simulate, or "exact") and ``reset`` ("hard" = NIR's reset to v_reset, or "soft" for files
    from tools that subtract the threshold without saying so). ``use_metadata=False`` ignores the
    neuromorph metadata (what any other NIR tool sees). Unknown node types and inconsistent shapes
    raise ``ValueError`` naming the node."""
    if not isinstance(graph, nir.NIRGraph):
        raise ValueError(f"graph must be a nir.NIRGraph, got {type(graph).__name__}")
    if dt is not None:
        _validate.positive("dt", dt)
    if integration not in ("euler", "exact"):
        raise ValueError(f"integration must be 'euler' or 'exact', got {integration!r}")
    if reset not in ("hard", "soft"):
        raise ValueError(f"reset must be 'hard' or 'soft', got {reset!r}")
    opts = dict(dt=dt, integration=integration, reset=reset, use_metadata=use_metadata)
    nodes, edges = _flatten(graph, "")
    inputs = [k for k, v in graph.nodes.items() if isinstance(v, nir.Input)]
    outputs = [k for k, v in graph.nodes.items() if isinstance(v, nir.Output)]
    if len(inputs) != 1 or len(outputs) != 1:
        raise ValueError(
            f"graph must have exactly one Input and one Output node, got inputs {inputs}, outputs {outputs}"
        )
    in_shape = _input_shape(inputs[0], nodes, edges)
    raw_edges = list(edges)
    modules: dict[str, nn.Module | None] = {}
    groups = _groups(nodes) if use_metadata else {}
    grouped = {k for members in groups.values() for k in members}
    for (layer, prefix), members in groups.items():
        try:
            module, entries, exit_ = _rebuild(layer, prefix, members, nodes, edges)
        except KeyError as err:
            raise ValueError(f"layer {prefix!r} ({layer}): its node metadata lacks {err}") from None
        edges = _collapse(edges, set(members), entries, exit_, prefix)
        modules[prefix] = module
    for key, node in nodes.items():
        if key not in grouped:
            modules[key] = _generic(key, node, opts, _shape_hint(key, nodes, raw_edges))
    try:
        net = SpikingGraph(modules, edges, inputs[0], outputs[0])
    except ValueError as err:
        raise ValueError(f"the NIR graph's structure is not usable: {err}") from err
    net = net.to(_graph_dtype(nodes))
    shapes = net.infer_shapes(in_shape)
    want = nodes[outputs[0]].output_type.get("output")  # the declared output shape must be what arrives
    if want is not None and np.size(want):
        want = tuple(int(s) for s in np.atleast_1d(want))
        if shapes[outputs[0]] not in (want, want[1:]):  # Norse: [B, n]
            raise ValueError(
                f"node {outputs[0]!r} (Output) declares shape {want}, but {shapes[outputs[0]]} arrives"
            )
    return net


def _graph_dtype(nodes: dict) -> torch.dtype:
    """One float precision for the whole network: float64 when every weight (else every threshold) in
    the file is float64, float32 otherwise (peers mix float64 neuron parameters with float32 weights)."""
    for fields in (("weight",), ("v_threshold", "threshold")):
        arrays = [np.asarray(getattr(n, f)) for n in nodes.values() for f in fields if hasattr(n, f)]
        if arrays:
            return torch.float64 if all(a.dtype == np.float64 for a in arrays) else torch.float32
    return torch.float32


def _shape_hint(key: str, nodes: dict, edges: list) -> tuple[int, ...] | None:
    """The declared output shape of a predecessor: the population size of a node whose parameters
    are scalars (Norse writes scalar neuron parameters)."""
    for a, b in edges:
        if b == key:
            t = (getattr(nodes[a], "output_type", None) or {}).get("output")
            if t is not None and np.size(t):
                return tuple(int(s) for s in np.atleast_1d(t))
    return None


def _flatten(graph: nir.NIRGraph, prefix: str) -> tuple[dict, list]:
    """Inline nested NIRGraph nodes (names joined with '.'); their Input/Output become pass-throughs."""
    nodes, edges = {}, []
    for key, node in graph.nodes.items():
        full = f"{prefix}{key}"
        if isinstance(node, nir.NIRGraph):
            sub_nodes, sub_edges = _flatten(node, f"{full}.")
            nodes.update(sub_nodes)
            edges += sub_edges
        else:
            nodes[full] = node
    for a, b in graph.edges:
        for end in (a, b):
            if end not in graph.nodes:
                raise ValueError(f"edge ({a!r}, {b!r}) names node {prefix}{end!r}, which is not in the graph")
        srcs = _ends(graph, a, prefix, nir.Output)
        dsts = _ends(graph, b, prefix, nir.Input)
        edges += [(s, d) for s in srcs for d in dsts]
    return nodes, edges


def _ends(graph: nir.NIRGraph, key: str, prefix: str, kind) -> list[str]:
    node = graph.nodes[key]
    if not isinstance(node, nir.NIRGraph):
        return [f"{prefix}{key}"]
    ends = [k for k, v in node.nodes.items() if isinstance(v, kind)]
    if len(ends) != 1:
        raise ValueError(f"subgraph {prefix}{key!r} must have exactly one {kind.__name__} node, got {ends}")
    return [f"{prefix}{key}.{ends[0]}"]


def _input_shape(key: str, nodes: dict, edges: list) -> tuple[int, ...]:
    declared = nodes[key].input_type.get("input")
    if declared is None or np.size(declared) == 0:
        raise ValueError(f"node {key!r} (Input) declares no shape")
    shape = tuple(int(s) for s in np.atleast_1d(declared))
    # Norse 1.1.0 writes the sample's batch dimension into the Input node ([B, n]); its successors say [n]
    succ = [
        nodes[b].input_type.get("input") for a, b in edges if a == key and hasattr(nodes[b], "input_type")
    ]
    succ = [tuple(int(s) for s in np.atleast_1d(t)) for t in succ if t is not None and np.size(t)]
    if succ and all(s == shape[1:] for s in succ):
        return shape[1:]
    return shape


def _groups(nodes: dict) -> dict[tuple[str, str], list[str]]:
    groups: dict[tuple[str, str], list[str]] = {}
    for key, node in nodes.items():
        meta = node_meta(node)
        layer = meta.get("neuromorph_layer")
        if layer is not None and as_str(layer) in LSNN_LAYERS:
            groups.setdefault((as_str(layer), as_str(meta["neuromorph_name"])), []).append(key)
    return groups


def _collapse(edges: list, members: set, entries: list, exit_: str, name: str) -> list:
    """Replace a group of nodes by one node ``name``: edges into its entries and out of its exit."""
    out = []
    for a, b in edges:
        if a in members and b in members:
            continue
        if b in members:
            if b not in entries:
                raise ValueError(
                    f"node {b!r} of layer {name!r} receives an edge from {a!r} outside its layer"
                )
            b = name
        if a in members:
            if a != exit_:
                raise ValueError(f"node {a!r} of layer {name!r} sends an edge to {b!r} outside its layer")
            a = name
        if (a, b) not in out:
            out.append((a, b))
    return out


def _role(nodes: dict, members: list, role: str) -> list[str]:
    return [k for k in members if as_str(node_meta(nodes[k]).get("neuromorph_role")) == role]


def _one(nodes: dict, members: list, role: str, kinds, layer: str) -> str:
    found = _role(nodes, members, role)
    if len(found) != 1 or not isinstance(nodes[found[0]], kinds):
        raise ValueError(f"layer {layer!r}: expected one {role} node of type {kinds}, found {found}")
    return found[0]


def _lsnn_neurons(key: str, node, layer: str) -> dict:
    if not isinstance(node, nir.LIF):
        raise ValueError(f"node {key!r} of layer {layer!r} must be a LIF node, got {type(node).__name__}")
    for field, want in (("r", 1.0), ("v_leak", 0.0), ("v_reset", 0.0)):
        if not np.all(np.asarray(getattr(node, field)) == want):
            raise ValueError(
                f"node {key!r} of layer {layer!r}: the LSNN neuron needs {field} = {want}; this file has "
                "other values (load it with use_metadata=False to simulate it as a plain NIR LIF)"
            )
    return node_meta(node)


def _rebuild(layer: str, name: str, members: list, nodes: dict, edges: list):
    """The neuromorph layer that ``export`` wrote as ``members``; returns (module, entries, exit)."""
    inside = {(a, b) for a, b in edges if a in members and b in members}
    if layer == "FeedForwardSpikingLayer":
        w = _one(nodes, members, "weight", (nir.Linear, nir.Affine), name)
        lif = _one(nodes, members, "neurons", nir.LIF, name)
        meta = _lsnn_neurons(lif, nodes[lif], name)
        if inside != {(w, lif)} or len(members) != 2:
            raise ValueError(f"layer {name!r}: nodes {members} are not the Linear -> LIF pair export writes")
        weight = np.asarray(nodes[w].weight)
        dtype = torch_dtype(weight)
        m = FeedForwardSpikingLayer(
            weight.shape[1], weight.shape[0], n_refractory=int(meta["neuromorph_n_refractory"]),
            dt=float(meta["neuromorph_dt_ms"]), bias=isinstance(nodes[w], nir.Affine),
            surrogate=surrogate_from_meta(meta, Triangle(0.3)), generator=torch.Generator().manual_seed(0),
        ).to(dtype)  # fmt: skip
        _set_neurons(m, nodes[lif], dtype)
        m.weight.data = to_tensor(weight.T.copy(), dtype)
        if m.bias is not None:
            m.bias.data = to_tensor(nodes[w].bias, dtype)
        return m, [w], lif
    if layer == "LeakyReadout":
        li = _one(nodes, members, "filter", nir.LI, name)
        w = _one(nodes, members, "weight", (nir.Linear, nir.Affine), name)
        if inside != {(li, w)} or len(members) != 2:
            raise ValueError(f"layer {name!r}: nodes {members} are not the LI -> Linear pair export writes")
        tau = np.unique(np.asarray(nodes[li].tau))
        if (
            tau.size != 1
            or not np.all(np.asarray(nodes[li].r) == 1)
            or np.any(np.asarray(nodes[li].v_leak) != 0)
        ):
            raise ValueError(f"layer {name!r}: a LeakyReadout has one tau_out, r = 1 and v_leak = 0")
        weight = np.asarray(nodes[w].weight)
        dtype = torch_dtype(weight)
        meta = node_meta(nodes[li])
        m = LeakyReadout(
            weight.shape[1], weight.shape[0], dt=float(meta["neuromorph_dt_ms"]),
            bias=isinstance(nodes[w], nir.Affine), generator=torch.Generator().manual_seed(0),
        ).to(dtype)  # fmt: skip
        m.tau_out.copy_(from_seconds(tau[0], dtype))
        m.weight.data = to_tensor(weight.T.copy(), dtype)
        if m.bias is not None:
            m.bias.data = to_tensor(nodes[w].bias, dtype)
        return m, [li], w
    return _rebuild_recurrent(name, members, nodes, inside)


def _set_neurons(m, node, dtype) -> None:
    m.tau_mem.copy_(from_seconds(node.tau, dtype).reshape(m.tau_mem.shape))
    m.threshold.copy_(to_tensor(node.v_threshold, dtype).reshape(m.threshold.shape))


def _rebuild_recurrent(name: str, members: list, nodes: dict, inside: set):
    lif = _one(nodes, members, "neurons", nir.LIF, name)
    meta = _lsnn_neurons(lif, nodes[lif], name)
    n = int(np.asarray(nodes[lif].v_threshold).shape[0])
    n_delay = int(meta["neuromorph_n_delay"])
    dt = float(meta["neuromorph_dt_ms"])
    expected, weights = set(), {"w_in": [], "w_rec": []}
    for role in ("w_in", "w_rec"):
        for key in _role(nodes, members, role):
            node = nodes[key]
            if not isinstance(node, nir.Linear):
                raise ValueError(
                    f"node {key!r} of layer {name!r} must be a Linear node, got {type(node).__name__}"
                )
            d = int(node_meta(node)["neuromorph_delay"])
            if not 0 <= d < n_delay:
                raise ValueError(f"node {key!r} of layer {name!r}: delay {d} outside [0, {n_delay})")
            weights[role].append((d, np.asarray(node.weight)))
            head = key
            if d:
                delay_key = f"{key}.delay"
                if delay_key not in members or not isinstance(nodes[delay_key], nir.Delay):
                    raise ValueError(
                        f"layer {name!r}: node {key!r} (delay {d}) needs its Delay node {delay_key!r}"
                    )
                steps = np.asarray(nodes[delay_key].delay, dtype=np.float64) / (dt * MS)
                if not np.allclose(steps, d, rtol=0, atol=1e-6):
                    raise ValueError(
                        f"node {delay_key!r} of layer {name!r}: delay is not {d} steps of {dt} ms"
                    )
                expected.add((key, delay_key))
                head = delay_key
            expected.add((head, lif))
            if role == "w_rec":
                expected.add((lif, key))
    if inside != expected or not weights["w_in"] or not weights["w_rec"]:
        raise ValueError(
            f"layer {name!r}: nodes {sorted(members)} are not the recurrent structure export writes"
        )
    dtype = torch_dtype(weights["w_in"][0][1])
    n_in = weights["w_in"][0][1].shape[1]

    def merge(items, rows: int, stored):
        w = np.zeros((rows, n), dtype=items[0][1].dtype)
        delay = np.zeros((rows, n), dtype=np.int64)
        if (
            stored is not None
            and np.shape(stored) == (rows, n)
            and np.all((0 <= stored) & (stored < n_delay))
        ):
            delay[:] = stored  # zero synapses keep their delay (nonzero ones are set from the branches)
        for d, w_d in items:
            if w_d.shape != (n, rows):
                raise ValueError(f"layer {name!r}: a weight has shape {w_d.shape}, expected {(n, rows)}")
            w += w_d.T
            delay[w_d.T != 0] = d
        return w, delay

    w_in, in_delay = merge(weights["w_in"], n_in, meta.get("neuromorph_in_delay"))
    w_rec, rec_delay = merge(weights["w_rec"], n, meta.get("neuromorph_rec_delay"))
    m = RecurrentSpikingLayer(
        n_in, n, 0, tau_mem=from_seconds(nodes[lif].tau, torch.float32),
        n_refractory=int(meta["neuromorph_n_refractory"]), n_delay=n_delay, dt=dt,
        surrogate=surrogate_from_meta(meta, Triangle(0.3)), generator=torch.Generator().manual_seed(0),
    ).to(dtype)  # fmt: skip
    _set_neurons(m, nodes[lif], dtype)
    m.w_in.data = to_tensor(w_in, dtype)
    m.w_rec.data = to_tensor(w_rec, dtype)
    m.in_delay.copy_(torch.from_numpy(in_delay))
    m.rec_delay.copy_(torch.from_numpy(rec_delay))
    if "neuromorph_dale_sign" in meta:
        m.rec_sign = to_tensor(meta["neuromorph_dale_sign"], dtype)
    return m, sorted(_role(nodes, members, "w_in")), lif


def _node_dt(meta: dict, opts: dict) -> float:
    if opts["use_metadata"] and "neuromorph_dt_ms" in meta:
        return float(meta["neuromorph_dt_ms"])
    return 1.0 if opts["dt"] is None else float(opts["dt"])


def _choice(meta: dict, key: str, opts: dict, option: str) -> str:
    if opts["use_metadata"] and key in meta:
        return as_str(meta[key])
    return opts[option]


def _generic(key: str, node, opts: dict, hint) -> nn.Module | None:
    """The module for one plain NIR node (``None`` for Input/Output pass-throughs)."""
    try:
        return _generic_module(key, node, opts, hint)
    except ValueError as err:
        if str(err).startswith(f"node {key!r}"):
            raise
        raise ValueError(f"node {key!r} ({type(node).__name__}): {err}") from err


def _arr(node, field: str) -> np.ndarray:
    return np.asarray(getattr(node, field))


def _population(key: str, node, field: str, hint) -> tuple[int, ...]:
    shape = _arr(node, field).shape
    if shape:
        return shape
    if hint is None:
        raise ValueError(
            f"node {key!r} ({type(node).__name__}) has scalar parameters and no predecessor of known shape"
        )
    return hint


def _generic_module(key: str, node, opts: dict, hint) -> nn.Module | None:
    meta = node_meta(node) if opts["use_metadata"] else {}
    if isinstance(node, (nir.Input, nir.Output, nir.ir.graph.Identity)):
        return None
    if isinstance(node, (nir.Affine, nir.Linear)):
        w = _arr(node, "weight")
        if w.ndim != 2:
            raise ValueError(
                f"node {key!r} ({type(node).__name__}): weight must be 2-D [out, in], got {w.shape}"
            )
        has_bias = isinstance(node, nir.Affine)
        m = nn.Linear(w.shape[1], w.shape[0], bias=has_bias).to(torch_dtype(w))
        m.weight.data = to_tensor(w)
        if has_bias:
            b = _arr(node, "bias")
            if b.shape != (w.shape[0],):
                raise ValueError(f"node {key!r} (Affine): bias has shape {b.shape}, expected {(w.shape[0],)}")
            m.bias.data = to_tensor(b, m.weight.dtype)
        return m
    if isinstance(node, (nir.Conv1d, nir.Conv2d)):
        w = _arr(node, "weight")
        two = isinstance(node, nir.Conv2d)
        if w.ndim != (4 if two else 3):
            raise ValueError(f"node {key!r} ({type(node).__name__}): weight has shape {w.shape}")
        pad = node.padding if isinstance(node.padding, str) else _ints(node.padding)
        if isinstance(pad, bytes):
            pad = pad.decode()
        cls = nn.Conv2d if two else nn.Conv1d
        groups = int(np.asarray(node.groups))
        m = cls(
            w.shape[1] * groups, w.shape[0], tuple(w.shape[2:]), stride=_ints(node.stride), padding=pad,
            dilation=_ints(node.dilation), groups=groups,
        ).to(torch_dtype(w))  # fmt: skip
        m.weight.data = to_tensor(w)
        m.bias.data = to_tensor(_arr(node, "bias"), m.weight.dtype)
        return m
    if isinstance(node, (nir.SumPool2d, nir.AvgPool2d)):
        kernel, stride, padding = _ints(node.kernel_size), _ints(node.stride), _ints(node.padding)
        divisor = 1 if isinstance(node, nir.SumPool2d) else None
        return nn.AvgPool2d(kernel, stride, padding, divisor_override=divisor)
    if isinstance(node, nir.Flatten):
        start, end = int(node.start_dim), int(node.end_dim)
        return nn.Flatten(start + 1 if start >= 0 else start, end + 1 if end >= 0 else end)
    if isinstance(node, nir.Scale):
        return Scale(_population(key, node, "scale", hint), to_tensor(node.scale))
    if isinstance(node, nir.Threshold):
        return Threshold(_population(key, node, "threshold", hint), to_tensor(node.threshold))
    if isinstance(node, nir.Delay):
        d = _arr(node, "delay").astype(np.float64)
        dt = _node_dt(meta, opts)
        steps = d / (dt * MS)
        if not np.allclose(steps, np.round(steps), rtol=0, atol=1e-6) or np.any(steps < 0):
            raise ValueError(
                f"node {key!r} (Delay): delays {d.ravel()[:4]} s are not whole steps of dt = {dt} ms"
            )
        return DelayLayer(_population(key, node, "delay", hint), torch.from_numpy(np.round(steps)), dt=dt)
    if isinstance(node, nir.IF):
        shape = _population(key, node, "v_threshold", hint)
        return IntegrateFireLayer(
            shape, threshold=to_tensor(node.v_threshold), r=to_tensor(node.r),
            v_reset=to_tensor(node.v_reset), reset=_choice(meta, "neuromorph_reset", opts, "reset"),
            surrogate=surrogate_from_meta(meta, PiecewiseLinear(1.0)),
        )  # fmt: skip
    if isinstance(node, nir.LIF):
        return _lif(node, _arr(node, "tau"), _population(key, node, "v_threshold", hint), meta, opts)
    if isinstance(node, nir.LI):
        shape = _population(key, node, "tau", hint)
        return _li(_arr(node, "tau"), _arr(node, "r"), _arr(node, "v_leak"), shape, meta, opts)
    if isinstance(node, (nir.CubaLIF, nir.CubaLI)):
        # tau_syn dI/dt = -I + w_in S feeds tau_mem dv/dt = (v_leak - v) + r I: Scale -> LI -> LIF (or LI)
        shape = _population(key, node, "tau_syn", hint)
        synapse = _li(_arr(node, "tau_syn"), 1.0, 0.0, shape, meta, opts)
        if isinstance(node, nir.CubaLIF):
            membrane = _lif(node, _arr(node, "tau_mem"), shape, meta, opts)
        else:
            membrane = _li(_arr(node, "tau_mem"), _arr(node, "r"), _arr(node, "v_leak"), shape, meta, opts)
        return SpikingSequential(
            {"w_in": Scale(shape, to_tensor(node.w_in)), "synapse": synapse, "membrane": membrane}
        )
    if isinstance(node, nir.NIRNode):
        raise ValueError(
            f"node {key!r} has type {type(node).__name__}, which neuromorph.nir.load does not support; "
            f"supported: {', '.join(SUPPORTED_NODES)}"
        )
    raise ValueError(f"node {key!r} is a {type(node).__name__}, not a NIR node")


def _ints(v):
    a = np.atleast_1d(np.asarray(v)).astype(np.int64)
    return tuple(int(x) for x in a) if a.size > 1 else int(a[0])


def _lif(node, tau: np.ndarray, shape: tuple[int, ...], meta: dict, opts: dict) -> LIFBoxLayer:
    return LIFBoxLayer(
        shape, tau_mem=from_seconds(tau, torch.float64), r=to_tensor(node.r), v_leak=to_tensor(node.v_leak),
        threshold=to_tensor(node.v_threshold), v_reset=to_tensor(node.v_reset),
        reset=_choice(meta, "neuromorph_reset", opts, "reset"),
        integration=_choice(meta, "neuromorph_integration", opts, "integration"), dt=_node_dt(meta, opts),
        surrogate=surrogate_from_meta(meta, PiecewiseLinear(1.0)),
    )  # fmt: skip


def _li(tau: np.ndarray, r, v_leak, shape: tuple[int, ...], meta: dict, opts: dict) -> LIBoxLayer:
    return LIBoxLayer(
        shape, tau=from_seconds(tau, torch.float64), r=to_tensor(r), v_leak=to_tensor(v_leak),
        integration=_choice(meta, "neuromorph_integration", opts, "integration"), dt=_node_dt(meta, opts),
    )  # fmt: skip
