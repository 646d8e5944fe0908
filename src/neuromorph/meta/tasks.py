"""N-way K-shot few-shot tasks (Vinyals et al. 2016; the protocol of MAML, Finn et al. ICML 2017).

A task draws ``n_way`` classes of a :class:`ClassPool` without replacement, relabels them ``0..n_way-1``
in a random order, and draws ``k_shot`` support and ``q_query`` query examples per class, all distinct
samples of that class. The L2L-PCM code drew classes with replacement and copied one query image into
every query slot of a class (papers.md section 4.5, pitfall 2); neither is done here.

Everything random comes from the ``numpy.random.Generator`` passed in, so a task is a function of its
seed (``np.random.default_rng([seed, role, iteration, rank])`` in the recipes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

import numpy as np
import torch

from .. import _validate

__all__ = ["ClassPool", "FewShotTask", "check_task", "sample_task", "sample_tasks", "stack_tasks"]


class ClassPool(Protocol):
    """Anything that can draw examples of its classes: ``n_classes``, ``samples_per_class`` (``None``:
    unlimited) and ``draw(cls, n, rng) -> float32 array [n, ...]`` of ``n`` distinct samples of ``cls``."""

    n_classes: int
    samples_per_class: int | None

    def draw(self, cls: int, n: int, rng: np.random.Generator) -> np.ndarray: ...


class FewShotTask(NamedTuple):
    """One task (or a batch of tasks with a leading task dimension): support ``[N*K, ...]`` with labels
    ``[N*K]`` (int64, class-major: K examples of class 0, then of class 1, ...) and query ``[N*Q, ...]``."""

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor

    def to(self, device) -> FewShotTask:
        return FewShotTask(*(t.to(device) for t in self))


def check_task(task: FewShotTask, *, batched: bool = False) -> None:
    """``ValueError`` for a task without support or query examples, mismatched labels or NaN inputs."""
    if not isinstance(task, FewShotTask):
        raise ValueError(f"task must be a FewShotTask, got {type(task).__name__}")
    lead = 1 if batched else 0
    for part in ("support", "query"):
        x, y = getattr(task, f"{part}_x"), getattr(task, f"{part}_y")
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise ValueError(f"task.{part}_x and task.{part}_y must be tensors")
        if x.dim() <= lead or x.shape[lead] == 0:
            raise ValueError(
                f"the {part} set is empty (task.{part}_x has shape {tuple(x.shape)}); "
                "a task needs at least one support and one query example"
            )
        if y.shape != x.shape[: lead + 1]:
            raise ValueError(
                f"task.{part}_y must have shape {tuple(x.shape[: lead + 1])} (one label per example), "
                f"got {tuple(y.shape)}"
            )
        _validate.finite_tensor(f"task.{part}_x", x)


def sample_task(
    pool: ClassPool, *, n_way: int, k_shot: int, q_query: int, rng: np.random.Generator
) -> FewShotTask:
    """One N-way K-shot task from ``pool``: classes without replacement, labels in random order."""
    _validate.positive_int("n_way", n_way)
    _validate.positive_int("k_shot", k_shot)
    _validate.positive_int("q_query", q_query)
    if n_way > pool.n_classes:
        raise ValueError(f"n_way = {n_way} is larger than the {pool.n_classes} classes the data has")
    per_class = pool.samples_per_class
    if per_class is not None and k_shot + q_query > per_class:
        raise ValueError(
            f"k_shot + q_query = {k_shot} + {q_query} = {k_shot + q_query} is larger than the {per_class} "
            "examples per class the data has"
        )
    classes = rng.choice(pool.n_classes, size=n_way, replace=False)  # already in random label order
    support, query = [], []
    for cls in classes:
        x = pool.draw(int(cls), k_shot + q_query, rng)
        support.append(x[:k_shot])
        query.append(x[k_shot:])
    labels = np.arange(n_way, dtype=np.int64)
    return FewShotTask(
        torch.from_numpy(np.concatenate(support)).float(),
        torch.from_numpy(np.repeat(labels, k_shot)),
        torch.from_numpy(np.concatenate(query)).float(),
        torch.from_numpy(np.repeat(labels, q_query)),
    )


def stack_tasks(tasks: Sequence[FewShotTask]) -> FewShotTask:
    """A batch of same-shaped tasks with a leading task dimension (for ``vmap`` over tasks)."""
    if not tasks:
        raise ValueError("stack_tasks needs at least one task")
    return FewShotTask(*(torch.stack(parts) for parts in zip(*tasks, strict=True)))


def sample_tasks(
    pool: ClassPool, count: int, *, n_way: int, k_shot: int, q_query: int, rng: np.random.Generator
) -> FewShotTask:
    """``count`` tasks stacked: ``support_x [count, N*K, ...]`` etc."""
    _validate.positive_int("count", count)
    return stack_tasks(
        [sample_task(pool, n_way=n_way, k_shot=k_shot, q_query=q_query, rng=rng) for _ in range(count)]
    )
