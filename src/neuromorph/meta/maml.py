"""Gradient-based meta-learning on ``torch.func``: MAML, first-order MAML, ANIL and Reptile.

- MAML (Finn, Abbeel, Levine, ICML 2017): inner loop ``phi_0 = theta``,
  ``phi_{s+1} = phi_s - alpha * grad_phi L_support(phi_s)`` for ``s < S``; meta-loss
  ``L_query(phi_S)``, differentiated through the inner loop (second order: the Hessian-vector products
  of every inner step are part of ``d L_query(phi_S) / d theta``).
- First-order MAML (same paper, section 5.2): the inner gradients are treated as constants, so
  ``d L_query(phi_S) / d theta = grad_phi L_query(phi_S)``.
- ANIL (Raghu, Raghu, Bengio, Vinyals, ICLR 2020) / the L2L-PCM image experiment (Ortner et al.,
  Nat. Commun. 2025): only the readout adapts in the inner loop; the body's features ``h = f_body(x)``
  are computed once per set and the inner loop runs on the readout alone (second order through the
  features: ``d L_query / d theta_body`` includes the path through the readout's inner updates).
- Reptile (Nichol, Achiam, Schulman 2018): ``theta <- theta + epsilon * mean_tasks(phi_S - theta)``,
  with ``phi_S`` from S plain SGD steps on the task.

Everything is a pure function of a parameter dict (``functional_call``), so any ``nn.Module`` works,
spiking layers included (with ``batched=False`` where a layer's custom autograd cannot be vmapped). Tasks
are batched with ``torch.func.vmap`` by :func:`meta_batch`; inner gradients use ``torch.func.grad``
under ``vmap`` and ``torch.autograd.grad(create_graph=True)`` otherwise; both remain differentiable by
the outer ``loss.backward()``. BatchNorm layers should use batch
statistics (``track_running_stats=False``, as in MAML): the support and the query set are normalised by
their own statistics.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from .. import _validate
from .tasks import FewShotTask, check_task

__all__ = [
    "InnerLoop",
    "QueryResult",
    "params_of",
    "adapt",
    "maml_query",
    "find_readout",
    "readout_features",
    "anil_query",
    "meta_batch",
    "reptile_update",
]

Params = dict[str, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class InnerLoop(NamedTuple):
    """The inner loop: ``steps`` SGD steps of learning rate ``lr``; ``first_order`` drops the second
    derivatives (FOMAML). ``steps = 0`` evaluates the meta-learned initialisation itself."""

    steps: int = 1
    lr: float = 0.1
    first_order: bool = False


def _check_inner(inner: InnerLoop) -> None:
    if not isinstance(inner, InnerLoop):
        raise ValueError(f"inner must be an InnerLoop, got {type(inner).__name__}")
    if isinstance(inner.steps, bool) or not isinstance(inner.steps, int) or inner.steps < 0:
        raise ValueError(f"inner.steps must be an int >= 0 (number of inner SGD steps), got {inner.steps!r}")
    lr = inner.lr
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr < 0:
        raise ValueError(f"inner.lr must be a finite number >= 0, got {lr!r}")


class QueryResult(NamedTuple):
    """Query loss after adaptation (a scalar, or ``[B]`` from :func:`meta_batch`) and the model's query
    output (``[N*Q, classes]``, or ``[B, N*Q, classes]``)."""

    loss: torch.Tensor
    output: torch.Tensor


def params_of(model: nn.Module) -> Params:
    """The model's parameters by qualified name (the starting point theta of every function here)."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    return dict(model.named_parameters())


def adapt(
    model: nn.Module,
    params: Params,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: LossFn,
    inner: InnerLoop,
    *,
    names: list[str] | None = None,
) -> Params:
    """``phi_S``: ``inner.steps`` SGD steps ``phi <- phi - lr * grad L(model_phi(x), y)`` on the
    parameters ``names`` (default: all); the others stay at ``params``. The result is differentiable with
    respect to ``params`` (second order unless ``inner.first_order``)."""
    _check_inner(inner)
    names = list(params) if names is None else list(names)
    missing = [n for n in names if n not in params]
    if missing:
        raise ValueError(f"names: no parameter {missing[0]!r}; the parameters are {sorted(params)}")
    fixed = {k: v for k, v in params.items() if k not in names}
    fast = {k: params[k] for k in names}

    def support_loss(fast_params: Params) -> torch.Tensor:
        return loss_fn(functional_call(model, {**fixed, **fast_params}, (x,)), y)

    for _ in range(inner.steps):
        grads = _inner_grads(support_loss, fast, inner.first_order)
        fast = {k: fast[k] - inner.lr * grads[k] for k in names}
    return {**fixed, **fast}


def _inner_grads(loss_of: Callable[[Params], torch.Tensor], params: Params, first_order: bool) -> Params:
    """``grad_phi loss_of(phi)`` at ``params``, differentiable by the outer backward unless first order.

    Under ``vmap`` (and other torch.func transforms) this is ``torch.func.grad``; outside of them it is
    ``torch.autograd.grad``, which also differentiates ``autograd.Function``s written without
    ``setup_context`` (the spike functions of the spiking layers), which torch.func cannot."""
    if torch._C._are_functorch_transforms_active():
        grads = grad(loss_of)(params)
        return {k: g.detach() for k, g in grads.items()} if first_order else grads
    with torch.enable_grad():
        # a tensor that does not require grad is one nobody differentiates through: make it a leaf
        leaves = {k: v if v.requires_grad else v.detach().requires_grad_(True) for k, v in params.items()}
        loss = loss_of(leaves)
        grads = torch.autograd.grad(loss, list(leaves.values()), create_graph=not first_order)
    return dict(zip(leaves, grads, strict=True))


def maml_query(
    model: nn.Module, params: Params, task: FewShotTask, loss_fn: LossFn, inner: InnerLoop
) -> QueryResult:
    """MAML (or FOMAML): adapt every parameter on the support set, evaluate on the query set."""
    fast = adapt(model, params, task.support_x, task.support_y, loss_fn, inner)
    out = functional_call(model, fast, (task.query_x,))
    return QueryResult(loss_fn(out, task.query_y), out)


# -- ANIL: readout-only adaptation --------------------------------------------------------------------


def find_readout(model: nn.Module, readout: str | None = None) -> str:
    """The qualified name of the readout module: ``readout`` if given, else the last ``nn.Linear``.

    ``ValueError`` when there is none, when the named module does not exist or holds no parameters."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    modules = dict(model.named_modules())
    if readout is None:
        linear = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
        if not linear:
            raise ValueError(
                f"cannot find a readout in {type(model).__name__}: it has no nn.Linear layer; name the "
                "readout module with readout='...'"
            )
        return linear[-1]
    if readout not in modules or readout == "":
        known = ", ".join(repr(n) for n in modules if n) or "(none)"
        raise ValueError(f"readout: the model has no module named {readout!r}; its modules: {known}")
    if not any(True for _ in modules[readout].parameters(recurse=True)):
        raise ValueError(f"readout: module {readout!r} has no parameters to adapt")
    return readout


class _Features(NamedTuple):
    args: tuple
    output: torch.Tensor


def readout_features(model: nn.Module, params: Params, x: torch.Tensor, readout: str) -> tuple:
    """The readout's inputs for ``x`` (the body's features), from one forward pass of the whole model.

    ``ValueError`` if the readout's output is not the model's output (then adapting it alone on cached
    features would not be the model)."""
    module = model.get_submodule(readout)
    seen: list[_Features] = []
    handle = module.register_forward_hook(lambda _m, args, out: seen.append(_Features(args, out)))
    try:
        out = functional_call(model, params, (x,))
    finally:
        handle.remove()
    if len(seen) != 1 or seen[0].output is not out:
        raise ValueError(
            f"readout {readout!r} ({type(module).__name__}) is not the model's last layer (called "
            f"{len(seen)} times; the model's output is not its output): ANIL adapts the readout on the "
            "body's features, so name the module whose output the model returns"
        )
    return seen[0].args


def _head_params(params: Params, readout: str) -> Params:
    prefix = readout + "."
    return {k[len(prefix) :]: v for k, v in params.items() if k.startswith(prefix)}


def anil_query(
    model: nn.Module, params: Params, task: FewShotTask, loss_fn: LossFn, inner: InnerLoop, readout: str
) -> QueryResult:
    """ANIL: the body runs once on the support and once on the query set; the readout ``readout``
    (a name from :func:`find_readout`) takes ``inner.steps`` SGD steps on the support features."""
    _check_inner(inner)
    head = model.get_submodule(readout)
    support = readout_features(model, params, task.support_x, readout)
    query = readout_features(model, params, task.query_x, readout)

    def head_loss(hp: Params) -> torch.Tensor:
        return loss_fn(functional_call(head, hp, support), task.support_y)

    hp = _head_params(params, readout)
    for _ in range(inner.steps):
        grads = _inner_grads(head_loss, hp, inner.first_order)
        hp = {k: hp[k] - inner.lr * grads[k] for k in hp}
    out = functional_call(head, hp, query)
    return QueryResult(loss_fn(out, task.query_y), out)


# -- batches of tasks -----------------------------------------------------------------------------------


def meta_batch(
    query_fn: Callable[..., QueryResult],
    model: nn.Module,
    params: Params,
    tasks: FewShotTask,
    loss_fn: LossFn,
    inner: InnerLoop,
    *,
    batched: bool = True,
    **kwargs,
) -> QueryResult:
    """Run ``query_fn`` (:func:`maml_query` or :func:`anil_query`) on every task of a stacked batch
    (:func:`~neuromorph.meta.tasks.stack_tasks`); ``loss`` is ``[B]`` (its mean is the meta-loss) and
    ``output`` ``[B, N*Q, classes]``. ``batched`` vectorises over tasks with ``vmap``; ``False`` loops
    (for layers whose custom autograd functions cannot be vmapped)."""
    _check_inner(inner)
    check_task(tasks, batched=True)

    def one(task: FewShotTask) -> QueryResult:
        return query_fn(model, params, task, loss_fn, inner, **kwargs)

    if batched:
        return vmap(one, randomness="same")(tasks)
    results = [one(FewShotTask(*(t[i] for t in tasks))) for i in range(tasks.support_x.shape[0])]
    return QueryResult(torch.stack([r.loss for r in results]), torch.stack([r.output for r in results]))


# -- Reptile --------------------------------------------------------------------------------------------


@torch.no_grad()
def reptile_update(
    model: nn.Module,
    params: Params,
    tasks: FewShotTask,
    loss_fn: LossFn,
    inner: InnerLoop,
    *,
    epsilon: float,
) -> Params:
    """``theta + epsilon * mean_b(phi_S^b - theta)``, where ``phi_S^b`` takes ``inner.steps`` SGD steps on
    task b's support and query examples together (Reptile trains on all of a task's data). Returns the new
    parameters (detached); write them back with ``torch.func.functional_call`` or ``param.copy_``."""
    _check_inner(inner)
    _validate.positive("epsilon", epsilon)
    check_task(tasks, batched=True)
    theta = {k: v.detach() for k, v in params.items()}
    moved = {k: torch.zeros_like(v) for k, v in theta.items()}
    count = tasks.support_x.shape[0]
    for b in range(count):
        x = torch.cat([tasks.support_x[b], tasks.query_x[b]])
        y = torch.cat([tasks.support_y[b], tasks.query_y[b]])
        with torch.enable_grad():
            phi = adapt(model, theta, x, y, loss_fn, inner._replace(first_order=True))
        for k in moved:
            moved[k] += phi[k].detach() - theta[k]
    return {k: theta[k] + epsilon * moved[k] / count for k in theta}
