"""A directed graph of time-major layers, with cycles: what a NIR graph becomes in neuromorph.

NIR (Pedersen et al., Nature Communications 15:8122, 2024) describes a network as nodes and edges;
several edges into one node add up. Execution here:

- nodes outside any cycle run on the whole sequence at once, in topological order
  (``(y, s) = layer(sum of inputs [T, B, ...], s)``; stateless modules per step, folded into the batch);
- the nodes of a cycle (a strongly connected component, e.g. ``lif -> w_rec -> lif``) run step by step
  together; the edge that closes the cycle carries the previous step's value, the one-step recurrent
  delay of the LSNN, snnTorch's ``RLeaky`` and Norse's recurrent cells:

      I_lif(t) = W_in x(t) + W_rec z(t-1)

Nodes without a module (``None``) pass their summed input through (NIR ``Input``/``Output``).
The state is a dict ``{node name: layer state}`` for the stateful nodes, plus ``("previous", node)``
entries holding the values in flight on the edges that close cycles (so chunks continue exactly).
"""

from __future__ import annotations

import torch
from torch import nn

from .. import _validate
from .sequential import apply_per_step, is_stateful

__all__ = ["SpikingGraph"]


def _key(name: str) -> str:
    return "n_" + name.replace(".", "__")  # ModuleDict keys may not contain "."


class SpikingGraph(nn.Module):
    """``forward(x [T, B, ...], state=None) -> (y [T, B, ...], {node: state})``.

    ``nodes`` maps names to modules (or ``None`` for pass-through); ``edges`` are ``(source, target)``;
    ``input`` and ``output`` name the entry and exit nodes."""

    time_major_stateful = True

    def __init__(
        self,
        nodes: dict[str, nn.Module | None],
        edges: list[tuple[str, str]],
        input: str,
        output: str,
    ) -> None:
        super().__init__()
        if not isinstance(nodes, dict) or not nodes:
            raise ValueError("nodes must be a non-empty dict {name: module or None}")
        for name, module in nodes.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"node names must be non-empty strings, got {name!r}")
            if module is not None and not isinstance(module, nn.Module):
                raise ValueError(
                    f"node {name!r} must be a torch.nn.Module or None, got {type(module).__name__}"
                )
        edges = [(str(a), str(b)) for a, b in edges]
        for a, b in edges:
            for end in (a, b):
                if end not in nodes:
                    raise ValueError(f"edge ({a!r}, {b!r}) names node {end!r}, which is not in the graph")
        if len(set(edges)) != len(edges):
            raise ValueError("edges must not repeat")
        for end, label in ((input, "input"), (output, "output")):
            if end not in nodes:
                raise ValueError(f"{label} node {end!r} is not in the graph (nodes: {sorted(nodes)})")
        self.names = list(nodes)
        self.edges = edges
        self.input, self.output = input, output
        self.nodes = nn.ModuleDict({_key(n): m for n, m in nodes.items() if m is not None})
        self._preds = {n: [a for a, b in edges if b == n] for n in self.names}
        if self._preds[input]:
            raise ValueError(f"input node {input!r} must have no incoming edges, got {self._preds[input]}")
        self._check_reachable()
        self._schedule = self._make_schedule()
        self._shape_cache: dict = {}

    # -- structure -----------------------------------------------------------------------------
    def module(self, name: str) -> nn.Module | None:
        """The module of node ``name`` (``None`` for a pass-through node)."""
        if name not in self._preds:
            raise ValueError(f"no node {name!r}; nodes: {self.names}")
        return self.nodes[_key(name)] if _key(name) in self.nodes else None

    def execution_order(self) -> list[str]:
        """Every node name in the order a forward pass computes them (cycles: in their step order)."""
        return [n for order, _ in self._schedule for n in order]

    def predecessors(self, name: str) -> list[str]:
        """The nodes with an edge into ``name`` (their outputs are summed)."""
        if name not in self._preds:
            raise ValueError(f"no node {name!r}; nodes: {self.names}")
        return list(self._preds[name])

    def layers(self) -> list[tuple[str, nn.Module]]:
        """``(name, module)`` of the nodes that have a module, in execution order."""
        return [(n, self.module(n)) for n in self.execution_order() if self.module(n) is not None]

    def _succ(self, name: str) -> list[str]:
        return [b for a, b in self.edges if a == name]

    def _check_reachable(self) -> None:
        seen, todo = {self.input}, [self.input]
        while todo:
            for b in self._succ(todo.pop()):
                if b not in seen:
                    seen.add(b)
                    todo.append(b)
        missing = [n for n in self.names if n not in seen]
        if missing:
            raise ValueError(f"node(s) {missing} cannot be reached from the input node {self.input!r}")
        if self.output not in seen:
            raise ValueError(f"output node {self.output!r} cannot be reached from the input")

    def _components(self) -> list[list[str]]:
        """Strongly connected components (Tarjan), in topological order."""
        index, low, on_stack, stack, comps = {}, {}, set(), [], []

        def visit(v: str) -> None:
            index[v] = low[v] = len(index)
            stack.append(v)
            on_stack.add(v)
            for w in self._succ(v):
                if w not in index:
                    visit(w)
                    low[v] = min(low[v], low[w])
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                comps.append(comp)

        for v in self.names:
            if v not in index:
                visit(v)
        return comps[::-1]

    def _make_schedule(self) -> list[tuple[list[str], set[tuple[str, str]]]]:
        """``[(nodes in step order, back edges)]`` per component; back edges carry the previous step."""
        schedule = []
        for comp in self._components():
            members = set(comp)
            cyclic = len(comp) > 1 or (comp[0], comp[0]) in self.edges
            if not cyclic:
                schedule.append((comp, set()))
                continue
            entries = [
                n for n in self.names if n in members and any(p not in members for p in self._preds[n])
            ]
            order: list[str] = []
            for v in entries or [n for n in self.names if n in members][:1]:
                if v not in order:
                    self._dfs(v, members, order)
            pos = {v: i for i, v in enumerate(order)}
            back = {(a, b) for a, b in self.edges if a in members and b in members and pos[b] <= pos[a]}
            schedule.append((order, back))
        return schedule

    def _dfs(self, v: str, members: set[str], order: list[str]) -> None:
        order.append(v)
        for w in self._succ(v):
            if w in members and w not in order:
                self._dfs(w, members, order)

    # -- dynamics ------------------------------------------------------------------------------
    def _run(self, name: str, x: torch.Tensor, state: dict) -> torch.Tensor:
        module = self.module(name)
        if module is None:
            return x
        if is_stateful(module):
            y, state[name] = module(x, state.get(name))
            return y
        return apply_per_step(module, x)

    def _sum(self, name: str, terms: list[tuple[str, torch.Tensor]]) -> torch.Tensor:
        shapes = {tuple(t.shape[2:]) for _, t in terms}
        if len(shapes) > 1:
            got = ", ".join(f"{src!r} {tuple(t.shape[2:])}" for src, t in terms)
            raise ValueError(f"node {name!r} receives inputs of different shapes: {got}")
        total = terms[0][1]
        for _, t in terms[1:]:
            total = total + t
        return total

    def forward(self, x: torch.Tensor, state: dict | None = None) -> tuple[torch.Tensor, dict]:
        values, state = self.node_values(x, state)
        return values[self.output], state

    def node_values(self, x: torch.Tensor, state: dict | None = None) -> tuple[dict[str, torch.Tensor], dict]:
        """Every node's output sequence ``{name: [T, B, ...]}`` and the new state."""
        if not isinstance(x, torch.Tensor) or x.dim() < 3:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must be a time-major tensor [T, B, ...], got {got}")
        _validate.finite_tensor("x", x)
        if state is None:
            state = {}
        elif not isinstance(state, dict):
            raise ValueError(f"state must be None or a dict {{node: state}}, got {type(state).__name__}")
        state = dict(state)
        values: dict[str, torch.Tensor] = {}
        for order, back in self._schedule:
            if not back and len(order) == 1:
                name = order[0]
                terms = (
                    [(self.input, x)] if name == self.input else [(p, values[p]) for p in self._preds[name]]
                )
                values[name] = self._run(name, self._sum(name, terms), state)
                continue
            values.update(self._run_cycle(order, back, values, state, x))
        return values, state

    def infer_shapes(self, input_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
        """Feature shape of every node's output for input ``[T, B, *input_shape]`` (one zero step
        through each node); a node that rejects its input raises ``ValueError`` naming the node."""
        floats = [t for t in (*self.parameters(), *self.buffers()) if t.is_floating_point()]
        ref = floats[0] if floats else torch.zeros(())
        shapes: dict[str, tuple[int, ...]] = {}
        for order, back in self._schedule:
            for name in order:
                srcs = [(self.input, tuple(input_shape))] if name == self.input else []
                srcs += [(p, shapes[p]) for p in self._preds[name] if (p, name) not in back]
                if len({s for _, s in srcs}) > 1:
                    got = ", ".join(f"{p!r} {s}" for p, s in srcs)
                    raise ValueError(f"node {name!r} receives inputs of different shapes: {got}")
                x = torch.zeros(1, 1, *srcs[0][1], dtype=ref.dtype, device=ref.device)
                try:
                    with torch.no_grad():
                        y = self._run(name, x, {})
                except (ValueError, RuntimeError) as err:
                    raise ValueError(f"node {name!r} cannot take input of shape {srcs[0][1]}: {err}") from err
                shapes[name] = tuple(y.shape[2:])
            for name in order:  # back edges too, now that the whole cycle has shapes
                got = {(p, shapes[p]) for p in self._preds[name]}
                if len({s for _, s in got}) > 1:
                    listed = ", ".join(f"{p!r} {s}" for p, s in sorted(got))
                    raise ValueError(f"node {name!r} receives inputs of different shapes: {listed}")
        return shapes

    def _rest_outputs(self, back, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """What the stateless sources of back edges emit before the first step: their response to
        zero input (an affine node's bias, as snnTorch's ``RLeaky`` adds at t = 0). Stateful sources
        (neurons, delays) start at zero and are left out."""
        out = {}
        for p in sorted({a for a, _ in back}):
            module = self.module(p)
            if module is None or is_stateful(module):
                continue
            in_shape = self._in_shapes(tuple(x.shape[2:]))[p]
            out[p] = self._run(p, x.new_zeros(1, x.shape[1], *in_shape), {})
        return out

    def _in_shapes(self, input_shape) -> dict[str, tuple[int, ...]]:
        if input_shape not in self._shape_cache:
            shapes = self.infer_shapes(input_shape)
            self._shape_cache[input_shape] = {
                n: (input_shape if n == self.input else shapes[self._preds[n][0]]) for n in self.names
            }
        return self._shape_cache[input_shape]

    def _run_cycle(self, order, back, values, state, x) -> dict[str, torch.Tensor]:
        members = set(order)
        sources = {a for a, _ in back}
        if all(("previous", p) in state for p in sources):  # continuing a sequence: what was in flight
            prev = {p: state[("previous", p)] for p in sources if state[("previous", p)] is not None}
        else:
            prev = self._rest_outputs(back, x)
        out: dict[str, list[torch.Tensor]] = {n: [] for n in order}
        for t in range(x.shape[0]):
            cur: dict[str, torch.Tensor] = {}
            for name in order:
                terms = []
                for p in self._preds[name]:
                    if p not in members:
                        terms.append((p, values[p][t : t + 1]))
                    elif (p, name) in back:
                        if p in prev:  # nothing has travelled around the cycle before the first step
                            terms.append((p, prev[p]))
                    else:
                        terms.append((p, cur[p]))
                if not terms:
                    raise ValueError(f"node {name!r} has no input at the first step of its cycle")
                cur[name] = self._run(name, self._sum(name, terms), state)
                out[name].append(cur[name])
            prev = cur
        for p in sources:
            state[("previous", p)] = prev.get(p)
        return {n: torch.cat(v) for n, v in out.items()}

    def extra_repr(self) -> str:
        return f"input={self.input!r}, output={self.output!r}, edges={self.edges}"
