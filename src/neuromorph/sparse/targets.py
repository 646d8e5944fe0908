"""What rewiring acts on: weight tensors with fixed signs and the connections they may hold.

Bellec, Kappel, Maass, Legenstein (ICLR 2018), "Deep Rewiring: Training very sparse deep networks":
every potential connection k of a weight tensor has a fixed sign s_k (random, or that of its
presynaptic neuron under Dale's law) and is either active (a non-zero weight) or dormant (exactly 0).

- :class:`RewiringTarget` names one tensor to rewire, optionally with its signs (any tensor that
  broadcasts to the weight's shape, entries +1/-1; ``rec_sign[:, None]`` gives Dale's law for a
  ``[pre, post]`` matrix) and the connections allowed to exist (e.g. no autapses).
- :func:`rewiring_targets` lists the weight matrices of a model: tensors of family ``weights``
  (:mod:`neuromorph.families`), the ``weight`` of torch's Linear/Conv layers, and whole
  :class:`~neuromorph.sparse.sparse_linear.SparseLinear` layers. The recurrent matrix of
  :class:`~neuromorph.layers.RecurrentSpikingLayer` comes with its Dale signs and without autapses.

The helpers below (target checks, budget resolution, moving a weight out of an optimizer) are shared
by DEEP R and soft-DEEP R.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from ..families import WEIGHTS
from ..layers.recurrent import RecurrentSpikingLayer
from .sparse_linear import SparseLinear

__all__ = ["RewiringTarget", "rewiring_targets"]


class RewiringTarget(NamedTuple):
    """One weight tensor to rewire (a dense ``nn.Parameter`` or a :class:`SparseLinear` layer).

    ``sign``: fixed signs (+1/-1), broadcastable to the weight's shape; ``None`` keeps the sign of each
    non-zero initial weight and draws the others at random. ``allowed``: bool mask, broadcastable to the
    shape, of the connections that may exist (``None``: all)."""

    weight: torch.Tensor | SparseLinear
    sign: torch.Tensor | None = None
    allowed: torch.Tensor | None = None


def rewiring_targets(module: nn.Module) -> list[RewiringTarget]:
    """Every weight matrix of ``module`` as a :class:`RewiringTarget`, in ``named_modules`` order.

    Family-``weights`` tensors that are trainable parameters, the ``weight`` of ``nn.Linear`` and
    ``nn.ConvNd`` layers, and each :class:`SparseLinear` layer as a whole. A
    :class:`RecurrentSpikingLayer` gives ``w_in`` and ``w_rec``; the latter with ``allowed`` = no
    autapses and, when the layer has Dale's law, ``sign`` = the sign of each presynaptic neuron."""
    if not isinstance(module, nn.Module):
        raise ValueError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    out: list[RewiringTarget] = []
    seen: set[int] = set()
    for _, sub in module.named_modules():
        if isinstance(sub, SparseLinear):
            out.append(RewiringTarget(sub))
            seen.add(id(sub.values))
            continue
        if isinstance(sub, RecurrentSpikingLayer):
            out.append(RewiringTarget(sub.w_in))
            sign = sub.rec_sign[:, None] if sub.rec_sign is not None else None
            out.append(RewiringTarget(sub.w_rec, sign=sign, allowed=sub.rec_mask > 0))
            seen.update((id(sub.w_in), id(sub.w_rec)))
            continue
        own = [t for _, t in _own_weights(sub)]
        if not own and isinstance(sub, (nn.Linear, nn.modules.conv._ConvNd)):
            own = [sub.weight]
        for t in own:
            if isinstance(t, nn.Parameter) and t.requires_grad and id(t) not in seen:
                out.append(RewiringTarget(t))
                seen.add(id(t))
    return out


def _own_weights(sub: nn.Module):
    for name, fam in getattr(type(sub), "families", {}).items():
        if fam == WEIGHTS and isinstance(getattr(sub, name, None), torch.Tensor):
            yield name, getattr(sub, name)


# -- shared machinery (DEEP R and soft-DEEP R) ----------------------------------------------------


class _Target:
    """A normalised target: the parameter whose gradient is read, the fixed sign table, the allowed
    connections, and (for a SparseLinear) the layer."""

    def __init__(self, where: str, spec, generator: torch.Generator) -> None:
        if isinstance(spec, (nn.Parameter, SparseLinear)):
            spec = RewiringTarget(spec)
        if not isinstance(spec, RewiringTarget):
            raise ValueError(
                f"{where} must be an nn.Parameter, a SparseLinear or a RewiringTarget, "
                f"got {type(spec).__name__}"
            )
        self.where = where
        self.layer = spec.weight if isinstance(spec.weight, SparseLinear) else None
        param = self.layer.values if self.layer is not None else spec.weight
        if not isinstance(param, torch.Tensor) or not param.is_floating_point():
            raise ValueError(f"{where} must be a floating-point tensor, got {type(param).__name__}")
        if not param.is_leaf or not param.requires_grad:
            raise ValueError(f"{where} must be a trainable leaf tensor (an nn.Parameter with requires_grad)")
        self.param = param
        self.shape = tuple(self.layer.shape) if self.layer is not None else tuple(param.shape)
        if self.layer is None and not param.is_contiguous():
            raise ValueError(f"{where} must be contiguous, got strides {param.stride()}")
        self.numel = math.prod(self.shape)
        if self.numel == 0:
            raise ValueError(f"{where} has no entries (shape {self.shape})")
        dev = param.device
        self.allowed_mask: torch.Tensor | None = None
        self.allowed_index: torch.Tensor | None = None
        if spec.allowed is not None:
            allowed = _broadcast(f"allowed of {where}", spec.allowed, self.shape).to(dev)
            if allowed.dtype != torch.bool:
                raise ValueError(f"allowed of {where} must be a bool tensor, got {allowed.dtype}")
            flat = allowed.reshape(-1)
            if not bool(flat.all()):
                self.allowed_mask = flat.clone()
                self.allowed_index = flat.nonzero().flatten()
        self.n_allowed = self.numel if self.allowed_index is None else int(self.allowed_index.numel())
        if self.n_allowed == 0:
            raise ValueError(f"allowed of {where} permits no connection")
        dense = self.dense_weight()
        if spec.sign is not None:
            sign = _broadcast(f"sign of {where}", spec.sign, self.shape).to(dev).reshape(-1)
            if not bool(((sign == 1) | (sign == -1)).all()):
                raise ValueError(f"sign of {where} must hold only +1 and -1 entries")
            self.sign = sign.to(torch.int8).clone()
        else:
            rnd = torch.randint(0, 2, (self.numel,), generator=generator).to(dev, torch.int8) * 2 - 1
            own = torch.sign(dense.reshape(-1)).to(torch.int8)
            self.sign = torch.where(own != 0, own, rnd)

    def dense_weight(self) -> torch.Tensor:
        """The weight as a dense tensor (a copy for a SparseLinear, the parameter itself otherwise)."""
        if self.layer is not None:
            return self.layer.dense_weight().detach()
        return self.param.detach()

    def nonzero_allowed(self) -> torch.Tensor:
        """Flat indices of the non-zero allowed entries of the current weight."""
        if self.layer is not None:
            idx = self.layer.index[self.layer.values.detach() != 0]
        else:
            idx = self.param.detach().reshape(-1).nonzero().flatten()
        if self.allowed_mask is not None:
            idx = idx[self.allowed_mask[idx]]
        return idx


def _broadcast(name: str, t, shape: tuple[int, ...]) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    try:
        return t.detach().expand(shape)
    except RuntimeError as err:
        raise ValueError(f"{name} has shape {tuple(t.shape)}, which does not broadcast to {shape}") from err


def normalise_targets(weights, generator: torch.Generator) -> list[_Target]:
    """Check ``weights`` (non-empty sequence, no tensor twice) and normalise every entry."""
    if isinstance(weights, (torch.Tensor, nn.Module, RewiringTarget)) or not isinstance(weights, Sequence):
        raise ValueError(
            "weights must be a list of nn.Parameter / SparseLinear / RewiringTarget "
            f"(e.g. rewiring_targets(model)), got {type(weights).__name__}"
        )
    if not weights:
        raise ValueError("weights must name at least one tensor to rewire, got an empty list")
    targets = [_Target(f"weights[{i}]", w, generator) for i, w in enumerate(weights)]
    first: dict[int, int] = {}
    for i, t in enumerate(targets):
        j = first.setdefault(id(t.param), i)
        if j != i:
            raise ValueError(
                f"weights[{i}] is the same tensor as weights[{j}]: a tensor can be wrapped only once"
            )
    return targets


def resolve_budgets(
    targets: list[_Target], connectivity, connections, *, global_budget: bool
) -> list[int | None]:
    """Number of active connections per target (``None``: keep the weight's current non-zeros).

    ``connectivity``: a number in (0, 1] or one per target (``None`` entries keep the current
    non-zeros); ``connections``: an int (per target, or the total with a global budget) or one per target.
    """
    n = len(targets)
    if connectivity is not None and connections is not None:
        raise ValueError("give either connectivity or connections, not both")
    if connections is not None:
        if global_budget and _is_int(connections):
            total = int(connections)
            cap = sum(t.n_allowed for t in targets)
            if total < 1 or total > cap:
                raise ValueError(
                    f"connections={total} must be in [1, {cap}] (the allowed connections of all weights)"
                )
            return _split(total, [t.n_allowed for t in targets])
        per = _per_target("connections", connections, n)
        out: list[int | None] = []
        for i, (t, k) in enumerate(zip(targets, per, strict=True)):
            if k is None:
                out.append(None)
                continue
            if not _is_int(k) or k < 1:
                raise ValueError(f"connections[{i}] must be a positive int, got {k!r}")
            if k > t.n_allowed:
                raise ValueError(
                    f"connections[{i}]={k} is larger than {t.where} allows: {t.n_allowed} connections "
                    f"(shape {t.shape})"
                )
            out.append(int(k))
        return out
    if connectivity is None:
        return [None] * n
    per = _per_target("connectivity", connectivity, n)
    out = []
    for i, (t, p) in enumerate(zip(targets, per, strict=True)):
        if p is None:
            out.append(None)
            continue
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not (0.0 < p <= 1.0):
            raise ValueError(f"connectivity[{i}] must be a number in (0, 1], got {p!r}")
        out.append(max(1, int(round(p * t.n_allowed))))
    return out


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _per_target(name: str, value, n: int) -> list:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if name == "connectivity" and not (0.0 < value <= 1.0):
            raise ValueError(f"connectivity must be a number in (0, 1], got {value!r}")
        return [value] * n
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != n:
            raise ValueError(f"{name} must be a number or have one entry per weight ({n}), got {len(value)}")
        return list(value)
    raise ValueError(f"{name} must be a number or a sequence of numbers, got {value!r}")


def _split(total: int, sizes: list[int]) -> list[int]:
    """``total`` split in proportion to ``sizes`` (largest remainders), each part at most its size."""
    whole = sum(sizes)
    raw = [total * s / whole for s in sizes]
    parts = [min(int(math.floor(r)), s) for r, s in zip(raw, sizes, strict=True)]
    order = sorted(range(len(sizes)), key=lambda i: raw[i] - parts[i], reverse=True)
    i = 0
    while sum(parts) < total:
        j = order[i % len(order)]
        if parts[j] < sizes[j]:
            parts[j] += 1
        i += 1
    return parts


def take_out_of_optimizer(
    optimizer: torch.optim.Optimizer, targets: list[_Target], *, same_group: bool
) -> list[int]:
    """Index of the param group holding each target; check that none has optimizer state yet."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ValueError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    groups = []
    for t in targets:
        gi = next(
            (
                g
                for g, group in enumerate(optimizer.param_groups)
                if any(p is t.param for p in group["params"])
            ),
            None,
        )
        if gi is None:
            raise ValueError(
                f"{t.where} is not among the optimizer's parameters: build the optimizer over the model's "
                "parameters first (a tensor already wrapped by DEEP R / soft-DEEP R has been moved out of it)"
            )
        if optimizer.state.get(t.param):
            raise ValueError(f"{t.where} already has optimizer state: wrap before the first optimizer step")
        groups.append(gi)
    if same_group and len(set(groups)) > 1:
        raise ValueError(
            f"all weights must be in one param group of the optimizer (their theta is one tensor), "
            f"got groups {groups}"
        )
    return groups


def replace_in_group(group: dict, old: list[torch.Tensor], new: torch.Tensor) -> None:
    """Put ``new`` where the first of ``old`` was in ``group['params']`` and drop the others."""
    params = list(group["params"])
    at = min(i for i, p in enumerate(params) if any(p is o for o in old))
    kept = [p for p in params if not any(p is o for o in old)]
    kept.insert(at, new)
    group["params"] = kept


def group_lr(group: dict) -> float:
    lr = group["lr"]
    return float(lr.item() if isinstance(lr, torch.Tensor) else lr)


def step_generator(seed: int, step: int) -> torch.Generator:
    """The CPU generator of one rewiring step: a function of (seed, step) only, so a resumed run draws
    the same noise and the same new connections."""
    value = (int(seed) * 1_000_003 + int(step) * 7_919 + 0x5DEECE66D) % (2**63 - 1)
    return torch.Generator().manual_seed(value)
