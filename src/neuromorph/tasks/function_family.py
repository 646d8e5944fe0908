"""A family of nonlinear functions, each defined by a random small 2-layer target network.

Bellec, Salaj, Subramoney, Legenstein, Maass (NeurIPS 2018), "Long short-term memory and
learning-to-learn in networks of spiking neurons", supervised learning-to-learn: the task family is
"nonlinear transformations defined by randomly drawn 2-layer networks" (exact sizes and weight laws of
the paper are unverified; the defaults here are ours: 2 inputs, 10 sigmoid hidden units, 1 output).

A function ``f`` of the family (one per task, ``B`` drawn at once) is

    f(x) = w2 . sigmoid(W1 x + b1) + b2,      x in [-1, 1]^d,

with ``W1 ~ N(0, w_scale^2)``, ``b1 ~ N(0, 1)``, ``w2 ~ N(0, out_scale^2 / H)`` and
``b2 ~ N(0, offset_scale^2)``. With ``centred=True`` the hidden part is centred over the input
distribution, ``b2 = c - E_x[w2 . sigmoid(W1 x + b1)]`` with ``c ~ N(0, offset_scale^2)``, so that each
function's mean over ``x`` (its offset) is exactly ``c`` and its variation over ``x`` is independent of
it: the offset no longer dominates what a learner has to find (the expectation is a midpoint rule on a
fixed grid of ``[-1, 1]^d``, no random draw, so ``centred`` changes no other draw).

An episode of ``n_examples`` examples ``(x_k, f(x_k))`` of one function is what the learner sees; the
learner predicts ``f(x_k)`` from ``x_k`` and the previous examples. All draws come from an explicit
``numpy.random.Generator``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from .. import _validate

__all__ = ["TargetNetworks", "FunctionEpisodes", "sample_target_networks", "evaluate", "sample_episodes"]


class TargetNetworks(NamedTuple):
    """``B`` random 2-layer networks: ``w1 [B, d, H]``, ``b1 [B, H]``, ``w2 [B, H]``, ``b2 [B]``."""

    w1: torch.Tensor
    b1: torch.Tensor
    w2: torch.Tensor
    b2: torch.Tensor


class FunctionEpisodes(NamedTuple):
    """Inputs ``x [K, B, d]`` and targets ``y [K, B]`` of ``B`` functions, ``K`` examples each."""

    x: torch.Tensor
    y: torch.Tensor


def sample_target_networks(
    n: int,
    rng: np.random.Generator,
    *,
    n_inputs: int = 2,
    n_hidden: int = 10,
    w_scale: float = 2.0,
    out_scale: float = 2.0,
    offset_scale: float = 0.5,
    centred: bool = False,
) -> TargetNetworks:
    """Draw ``n`` target networks (the laws in the module docstring; ``centred``: offset = ``c``)."""
    _validate.positive_int("n", n)
    _validate.positive_int("n_inputs", n_inputs)
    _validate.positive_int("n_hidden", n_hidden)
    _validate.positive("w_scale", w_scale)
    _validate.positive("out_scale", out_scale)
    _validate.positive("offset_scale", offset_scale, allow_zero=True)
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    w1 = rng.normal(0.0, w_scale, (n, n_inputs, n_hidden))
    b1 = rng.normal(0.0, 1.0, (n, n_hidden))
    w2 = rng.normal(0.0, out_scale / np.sqrt(n_hidden), (n, n_hidden))
    b2 = rng.normal(0.0, 1.0, n) * offset_scale
    as_t = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    if centred:
        b2 = b2 - _mean_over_inputs(w1, b1, w2)
    return TargetNetworks(as_t(w1), as_t(b1), as_t(w2), as_t(b2))


def _mean_over_inputs(w1: np.ndarray, b1: np.ndarray, w2: np.ndarray) -> np.ndarray:
    """``E_x[w2 . sigmoid(W1 x + b1)]`` for ``x ~ U[-1, 1]^d``: midpoint rule, ~4096 grid points in all."""
    d = w1.shape[1]
    per_dim = max(2, int(round(4096 ** (1.0 / d))))
    centres = -1.0 + (2.0 * np.arange(per_dim) + 1.0) / per_dim
    grid = np.stack(np.meshgrid(*[centres] * d, indexing="ij"), -1).reshape(-1, d)  # [G, d]
    h = 1.0 / (1.0 + np.exp(-(np.einsum("gd,ndh->ngh", grid, w1) + b1[:, None, :])))
    return np.einsum("ngh,nh->n", h, w2) / grid.shape[0]


def evaluate(nets: TargetNetworks, x: torch.Tensor) -> torch.Tensor:
    """``f_b(x[k, b])`` for every example ``k`` and function ``b``: ``x [K, B, d] -> [K, B]``."""
    if x.dim() != 3 or x.shape[1] != nets.w1.shape[0] or x.shape[2] != nets.w1.shape[1]:
        raise ValueError(
            f"x must have shape [K, {nets.w1.shape[0]}, {nets.w1.shape[1]}] (examples, functions, inputs), "
            f"got {tuple(x.shape)}"
        )
    _validate.finite_tensor("x", x)
    h = torch.sigmoid(torch.einsum("kbd,bdh->kbh", x, nets.w1) + nets.b1)
    return torch.einsum("kbh,bh->kb", h, nets.w2) + nets.b2


def sample_episodes(
    n_functions: int,
    n_examples: int,
    rng: np.random.Generator,
    *,
    n_inputs: int = 2,
    n_hidden: int = 10,
    w_scale: float = 2.0,
    out_scale: float = 2.0,
    offset_scale: float = 0.5,
    centred: bool = False,
) -> FunctionEpisodes:
    """``n_functions`` new functions with ``n_examples`` examples each, ``x`` uniform in ``[-1, 1]^d``."""
    _validate.positive_int("n_examples", n_examples)
    nets = sample_target_networks(
        n_functions,
        rng,
        n_inputs=n_inputs,
        n_hidden=n_hidden,
        w_scale=w_scale,
        out_scale=out_scale,
        offset_scale=offset_scale,
        centred=centred,
    )
    x = torch.as_tensor(rng.uniform(-1.0, 1.0, (n_examples, n_functions, n_inputs)), dtype=torch.float32)
    return FunctionEpisodes(x, evaluate(nets, x))
