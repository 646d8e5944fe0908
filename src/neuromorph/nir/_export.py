"""neuromorph -> NIR: :func:`export` walks a model and writes NIR nodes (mapping in :mod:`neuromorph.nir`)."""

from __future__ import annotations

from typing import NamedTuple

import nir  # the NIR package (absolute import; this package is neuromorph.nir)
import numpy as np
import torch
from torch import nn

from .. import __version__
from ..layers.delay import DelayLayer
from ..layers.feedforward import FeedForwardSpikingLayer
from ..layers.graph import SpikingGraph
from ..layers.integrate_fire import IntegrateFireLayer
from ..layers.lif_box import LIBoxLayer, LIFBoxLayer
from ..layers.pointwise import Scale, Threshold
from ..layers.readout import LeakyReadout
from ..layers.recurrent import RecurrentSpikingLayer
from ..layers.sequential import SpikingSequential, apply_per_step, is_stateful
from ._units import MS, not_nir, np_array, seconds, surrogate_meta, tag

__all__ = ["export"]


class _Part(NamedTuple):
    nodes: dict
    edges: list
    entries: list  # nodes that receive the part's input
    exit: str  # node that emits the part's output


def export(model: nn.Module, sample_input: torch.Tensor, *, strict: bool = False) -> nir.NIRGraph:
    """The NIR graph of ``model`` (see the module docstring for the unit mapping).

    ``model``: a neuromorph layer, a :class:`SpikingSequential`, a :class:`SpikingGraph` (what
    :func:`load` returns) or an ``nn.Sequential`` of these and of ``nn.Linear``, ``nn.Conv1d/2d``,
    ``nn.AvgPool2d`` (``divisor_override=1`` = sum pooling), ``nn.LPPool2d(1, ...)``, ``nn.Flatten``,
    ``nn.Identity``. ``sample_input`` ``[T, B, *shape]`` fixes the input shape and is run through the
    model once (nothing is changed). ``strict=True`` refuses what only the metadata can carry."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(sample_input, torch.Tensor) or sample_input.dim() < 3 or 0 in sample_input.shape[:2]:
        got = (
            tuple(sample_input.shape)
            if isinstance(sample_input, torch.Tensor)
            else type(sample_input).__name__
        )
        raise ValueError(f"sample_input must be a time-major tensor [T, B, ...] with T, B >= 1, got {got}")
    with torch.no_grad():
        if isinstance(model, (SpikingSequential, SpikingGraph, nn.Sequential)):
            part, y = _export_module("", model, sample_input, strict)
        else:
            part, y = _export_chain("", [("0", model)], sample_input, strict)
    if part is None:
        raise ValueError("model has no layer to export (only identities)")
    for reserved in ("input", "output"):
        if reserved in part.nodes:
            raise ValueError(
                f"a layer is named {reserved!r}, which NIR reserves for the graph's ends; rename it"
            )
    nodes = {"input": nir.Input(np.array(sample_input.shape[2:])), **part.nodes}
    nodes["output"] = nir.Output(np.array(y.shape[2:]))
    edges = [("input", e) for e in part.entries] + part.edges + [(part.exit, "output")]
    meta = {"source": "neuromorph", "neuromorph_version": __version__, "time_unit": "s"}
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=meta)


def _export_chain(prefix: str, named: list, x: torch.Tensor, strict: bool):
    nodes, edges, entries, exit_ = {}, [], [], None
    for name, module in named:
        part, x = _export_module(f"{prefix}.{name}" if prefix else str(name), module, x, strict)
        if part is None:
            continue
        nodes.update(part.nodes)
        edges += part.edges
        if exit_ is None:
            entries = part.entries
        else:
            edges += [(exit_, e) for e in part.entries]
        exit_ = part.exit
    return (None if exit_ is None else _Part(nodes, edges, entries, exit_)), x


def _export_graph(prefix: str, graph: SpikingGraph, x: torch.Tensor, strict: bool):
    values, _ = graph.node_values(x)
    nodes, edges, ins, outs = {}, [], {}, {}
    for name in graph.execution_order():
        full = f"{prefix}.{name}" if prefix else name
        preds = graph.predecessors(name)
        module = graph.module(name)
        if module is None:
            if name == graph.input:
                outs[name] = None  # the enclosing graph's entry; resolved below
            else:
                if any(p not in outs for p in preds):
                    raise ValueError(f"pass-through node {full!r} inside a cycle cannot be exported")
                outs[name] = [o for p in preds for o in (outs[p] or [None])]
            continue
        x_in = x if name == graph.input else sum(values[p] for p in preds)
        part, _ = _export_module(full, module, x_in, strict)
        if part is None:
            raise ValueError(f"node {full!r} exports to nothing; remove identity nodes from the graph")
        nodes.update(part.nodes)
        edges += part.edges
        ins[name], outs[name] = part.entries, [part.exit]
    entries: list[str] = []
    for a, b in graph.edges:
        if b not in ins:
            continue
        for o in outs[a] or [None]:
            for i in ins[b]:
                if o is None:
                    entries.append(i)
                elif (o, i) not in edges:
                    edges.append((o, i))
    if graph.input in ins:
        entries = ins[graph.input] + entries
    exits = outs[graph.output] or []
    if len(exits) != 1 or exits[0] is None:
        raise ValueError(
            f"graph {prefix or 'model'!r}: the output must come from exactly one layer, got {exits}"
        )
    return _Part(nodes, edges, list(dict.fromkeys(entries)), exits[0]), values[graph.output]


def _export_module(name: str, module: nn.Module, x: torch.Tensor, strict: bool):
    if isinstance(module, SpikingSequential):
        return _export_chain(name, module.named_layers(), x, strict)
    if isinstance(module, nn.Sequential):
        return _export_chain(name, list(module.named_children()), x, strict)
    if isinstance(module, SpikingGraph):
        return _export_graph(name, module, x, strict)
    try:
        y = module(x)[0] if is_stateful(module) else apply_per_step(module, x)
    except (ValueError, RuntimeError, TypeError) as err:
        raise ValueError(
            f"layer {name!r} ({type(module).__name__}) cannot take input of shape {tuple(x.shape)}: {err}"
        ) from err
    return _export_leaf(name, module, tuple(x.shape[2:]), strict), y


def _affine(weight: np.ndarray, bias, meta: dict):
    if bias is None:
        return nir.Linear(weight=weight, metadata=meta)
    return nir.Affine(weight=weight, bias=bias, metadata=meta)


def _pair(v, what: str, name: str) -> tuple[int, int]:
    t = (v, v) if isinstance(v, int) else tuple(v)
    if len(t) != 2:
        raise ValueError(f"layer {name!r}: {what} must be an int or a pair, got {v!r}")
    return int(t[0]), int(t[1])


def _export_leaf(name: str, m: nn.Module, in_shape: tuple[int, ...], strict: bool) -> _Part | None:
    single = lambda node: _Part({name: node}, [], [name], name)  # noqa: E731
    if isinstance(m, nn.Identity):
        return None
    if isinstance(m, nn.Linear):
        return single(_affine(np_array(m.weight), None if m.bias is None else np_array(m.bias), {}))
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        if m.padding_mode != "zeros":
            raise ValueError(f"layer {name!r}: padding_mode {m.padding_mode!r} has no NIR form (use 'zeros')")
        bias = (
            np_array(m.bias)
            if m.bias is not None
            else np.zeros(m.out_channels, dtype=np_array(m.weight).dtype)
        )
        pad = m.padding if isinstance(m.padding, str) else tuple(m.padding)
        if isinstance(m, nn.Conv1d):
            node = nir.Conv1d(
                input_shape=int(in_shape[1]), weight=np_array(m.weight), stride=int(m.stride[0]),
                padding=pad if isinstance(pad, str) else int(pad[0]), dilation=int(m.dilation[0]),
                groups=m.groups, bias=bias,
            )  # fmt: skip
        else:
            node = nir.Conv2d(
                input_shape=tuple(int(s) for s in in_shape[1:]), weight=np_array(m.weight),
                stride=tuple(m.stride), padding=pad, dilation=tuple(m.dilation), groups=m.groups, bias=bias,
            )  # fmt: skip
        return single(node)
    if isinstance(m, (nn.AvgPool2d, nn.LPPool2d)):
        kernel = _pair(m.kernel_size, "kernel_size", name)
        stride = kernel if m.stride is None else _pair(m.stride, "stride", name)
        if m.ceil_mode:
            raise ValueError(f"layer {name!r}: ceil_mode=True has no NIR form")
        if isinstance(m, nn.LPPool2d):
            if m.norm_type != 1:
                raise ValueError(f"layer {name!r}: only LPPool2d(norm_type=1) (= sum pooling) has a NIR form")
            return single(nir.SumPool2d(np.array(kernel), np.array(stride), np.array([0, 0])))
        padding = np.array(_pair(m.padding, "padding", name))
        if m.divisor_override == 1:
            return single(nir.SumPool2d(np.array(kernel), np.array(stride), padding))
        if m.divisor_override is not None:
            raise ValueError(
                f"layer {name!r}: divisor_override={m.divisor_override} has no NIR form (None or 1)"
            )
        if padding.any() and not m.count_include_pad:
            raise ValueError(f"layer {name!r}: count_include_pad=False with padding has no NIR form")
        return single(nir.AvgPool2d(np.array(kernel), np.array(stride), padding))
    if isinstance(m, nn.Flatten):
        nd = len(in_shape) + 1  # with the batch dimension
        start, end = m.start_dim % nd, m.end_dim % nd
        if start == 0:
            raise ValueError(f"layer {name!r}: Flatten(start_dim=0) would merge the batch into the features")
        end = -1 if end == nd - 1 else end - 1  # NIR counts dimensions without the batch
        return single(nir.Flatten(input_type={"input": np.array(in_shape)}, start_dim=start - 1, end_dim=end))
    if isinstance(m, Scale):
        return single(nir.Scale(scale=np_array(m.scale)))
    if isinstance(m, Threshold):
        return single(nir.Threshold(threshold=np_array(m.threshold)))
    if isinstance(m, DelayLayer):
        return single(
            nir.Delay(delay=m.steps.double().cpu().numpy() * m.dt * MS, metadata={"neuromorph_dt_ms": m.dt})
        )
    if isinstance(m, IntegrateFireLayer):
        meta = {"neuromorph_reset": m.reset, **surrogate_meta(m.surrogate)}
        if m.reset == "soft":
            not_nir(name, "IF with soft reset (subtract the threshold); NIR's IF resets to v_reset", strict)
        return single(
            nir.IF(
                r=np_array(m.r), v_threshold=np_array(m.threshold), v_reset=np_array(m.v_reset), metadata=meta
            )
        )
    if isinstance(m, LIFBoxLayer):
        meta = {
            "neuromorph_reset": m.reset,
            "neuromorph_integration": m.integration,
            "neuromorph_dt_ms": m.dt,
        }
        if m.reset == "soft":
            not_nir(name, "LIF with soft reset (subtract the threshold); NIR's LIF resets to v_reset", strict)
        node = nir.LIF(
            tau=seconds(m.tau_mem), r=np_array(m.r), v_leak=np_array(m.v_leak),
            v_threshold=np_array(m.threshold), v_reset=np_array(m.v_reset),
            metadata={**meta, **surrogate_meta(m.surrogate)},
        )  # fmt: skip
        return single(node)
    if isinstance(m, LIBoxLayer):
        meta = {"neuromorph_integration": m.integration, "neuromorph_dt_ms": m.dt}
        return single(nir.LI(tau=seconds(m.tau), r=np_array(m.r), v_leak=np_array(m.v_leak), metadata=meta))
    if isinstance(m, FeedForwardSpikingLayer):
        return _export_feedforward(name, m, strict)
    if isinstance(m, RecurrentSpikingLayer):
        return _export_recurrent(name, m, strict)
    if isinstance(m, LeakyReadout):
        return _export_readout(name, m)
    raise ValueError(
        f"layer {name!r} is a {type(m).__name__}, which has no NIR export; supported: neuromorph's "
        "FeedForwardSpikingLayer, RecurrentSpikingLayer (LIF), LeakyReadout, IntegrateFireLayer, "
        "LIFBoxLayer, LIBoxLayer, DelayLayer, Scale, Threshold, SpikingSequential, SpikingGraph and "
        "torch's Linear, Conv1d, Conv2d, AvgPool2d, LPPool2d(1), Flatten, Identity"
    )


def _lsnn_lif(
    name: str, layer: str, tau_mem, threshold, n_refractory: int, dt: float, surrogate, strict, **extra
):
    what = (
        f"{layer} uses the LSNN conventions: spike from the previous step's voltage, threshold subtracted "
        f"one step after the spike, spikes of height 1/dt = {1.0 / dt:g}"
    )
    if n_refractory:
        what += f", a refractory period of {n_refractory} steps"
    not_nir(name, what, strict)
    n = threshold.shape[0]
    meta = tag(
        layer, name, "neurons", convention="lsnn", dt_ms=float(dt), n_refractory=int(n_refractory), **extra
    )
    zeros = np.zeros(n, dtype=np_array(threshold).dtype)
    return nir.LIF(
        tau=seconds(tau_mem), r=np.ones_like(zeros), v_leak=zeros, v_threshold=np_array(threshold),
        v_reset=zeros.copy(), metadata={**meta, **surrogate_meta(surrogate)},
    )  # fmt: skip


def _export_feedforward(name: str, m: FeedForwardSpikingLayer, strict: bool) -> _Part:
    lif = _lsnn_lif(
        name, "FeedForwardSpikingLayer", m.tau_mem, m.threshold, m.n_refractory, m.dt, m.surrogate, strict
    )
    bias = None if m.bias is None else np_array(m.bias)
    w = _affine(np_array(m.weight.T), bias, tag("FeedForwardSpikingLayer", name, "weight"))
    nodes = {f"{name}.weight": w, f"{name}.lif": lif}
    return _Part(nodes, [(f"{name}.weight", f"{name}.lif")], [f"{name}.weight"], f"{name}.lif")


def _export_recurrent(name: str, m: RecurrentSpikingLayer, strict: bool) -> _Part:
    if m.n_alif and bool((m.beta[m.n_lif :] != 0).any()):
        raise ValueError(
            f"layer {name!r} (RecurrentSpikingLayer) has {m.n_alif} adaptive (ALIF) neurons with beta > 0. "
            "NIR 1.0 has no adaptive-threshold neuron, and the ALIF reset A(t) z(t) multiplies two state "
            "variables, which no composition of NIR's linear nodes can express, so it is not exported rather "
            "than changed. Export a LIF-only network (n_alif=0, e.g. store-recall's 'lif' variant or "
            "smnist with --set n_alif=0)"
        )
    # delays as used; also those of zero (dormant, rewirable) synapses, which the branches cannot show
    extra = {
        "n_delay": int(m.n_delay),
        "in_delay": m.in_delay.cpu().numpy().astype(np.int32),
        "rec_delay": m.rec_delay.cpu().numpy().astype(np.int32),
    }
    if m.rec_sign is not None:
        extra["dale_sign"] = np_array(m.rec_sign)
    lif = _lsnn_lif(
        name,
        "RecurrentSpikingLayer",
        m.tau_mem,
        m.threshold,
        m.n_refractory,
        m.dt,
        m.surrogate,
        strict,
        **extra,
    )
    nodes, edges = {f"{name}.lif": lif}, []
    n = m.n

    def branches(role: str, w: torch.Tensor, delay: torch.Tensor) -> list[str]:
        used = sorted(int(d) for d in torch.unique(delay))
        heads = []
        for d in used:
            key = f"{name}.{role}" if used == [0] else f"{name}.{role}.d{d}"
            w_d = torch.where(delay == d, w, torch.zeros_like(w))
            nodes[key] = nir.Linear(
                weight=np_array(w_d.T), metadata=tag("RecurrentSpikingLayer", name, role, delay=d)
            )
            if d:
                nodes[f"{key}.delay"] = nir.Delay(
                    delay=np.full(n, d * m.dt * MS),
                    metadata=tag("RecurrentSpikingLayer", name, f"{role}_delay", delay=d),
                )
                edges.extend([(key, f"{key}.delay"), (f"{key}.delay", f"{name}.lif")])
            else:
                edges.append((key, f"{name}.lif"))
            heads.append(key)
        return heads

    entries = branches("w_in", m.w_in.detach(), m.in_delay)
    for head in branches("w_rec", m.effective_w_rec().detach(), m.rec_delay):
        edges.append((f"{name}.lif", head))
    return _Part(nodes, edges, entries, f"{name}.lif")


def _export_readout(name: str, m: LeakyReadout) -> _Part:
    li = nir.LI(
        tau=np.full(m.n_in, seconds(m.tau_out).item()),
        r=np.ones(m.n_in, dtype=np_array(m.weight).dtype),
        v_leak=np.zeros(m.n_in, dtype=np_array(m.weight).dtype),
        metadata=tag("LeakyReadout", name, "filter", integration="exact", dt_ms=float(m.dt)),
    )
    bias = None if m.bias is None else np_array(m.bias)
    w = _affine(np_array(m.weight.T), bias, tag("LeakyReadout", name, "weight"))
    nodes = {f"{name}.li": li, f"{name}.weight": w}
    return _Part(nodes, [(f"{name}.li", f"{name}.weight")], [f"{name}.li"], f"{name}.weight")
