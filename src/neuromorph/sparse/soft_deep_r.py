"""soft-DEEP R: DEEP R without a hard budget; theta of every potential connection does a random walk.

Bellec, Kappel, Maass, Legenstein (ICLR 2018), "Deep Rewiring: Training very sparse deep networks",
soft-DEEP R; official code guillaumeBellec/deep_rewiring ``script_mnist_soft_deep_rewiring.py``.

As in DEEP R, w_k = s_k theta_k if theta_k > 0 else 0 with fixed signs s_k. Each step, after the
wrapped optimizer's step on theta (gradient s_k dE/dw_k on active connections only):

    theta_k <- max(theta_min, theta_k - eta * alpha * [theta_k > 0] + sqrt(2 eta T) * nu_k),  nu_k ~ N(0, 1)

so the L1 term acts on active connections and the noise on all of them; dormant ones diffuse between
theta_min and 0 and come back when they cross 0. There is no hard budget: the number of active
connections fluctuates. The official rule of thumb for the clip (``weight_sampler_with_clip``),

    theta_min = -((1 - p0) / p0) * (T / alpha),

makes p0 the stationary fraction of active connections in the absence of gradients: a dormant theta
is uniform on [theta_min, 0] and an active one exponential with rate alpha / T. It is the default
``theta_min`` for the target connectivity ``connectivity`` (= p0). The official noise is
std = eta * gdnoise, i.e. T = eta * gdnoise^2 / 2.

Representation: unlike :class:`~neuromorph.sparse.DeepR`, every potential connection needs its theta
(dormant ones move too), so each rewired tensor gets a dense ``theta`` of its shape, which replaces the
weight in the optimizer's param group; the weight is written as s * relu(theta) after each step. A
guard restores theta of connections that were dormant before the step (momentum or Adam could
otherwise move them: their gradient is 0). Initialisation: each allowed connection is active with
probability p0, with theta = |w| of the model's initial weight; the others start uniform in
[theta_min, 0) (the official script). Randomness from (``seed``, step) only, as DEEP R.
"""

from __future__ import annotations

import math

import torch

from .deep_r import check_hyper
from .targets import (
    group_lr,
    normalise_targets,
    replace_in_group,
    step_generator,
    take_out_of_optimizer,
)

__all__ = ["SoftDeepR", "soft_theta_min"]


def soft_theta_min(connectivity: float, temperature: float, l1: float) -> float:
    """theta_min = -((1 - p0) / p0) * (T / alpha) (official rule of thumb; see the module docstring)."""
    if not 0 < connectivity <= 1:
        raise ValueError(f"connectivity must be in (0, 1], got {connectivity!r}")
    if temperature <= 0 or l1 <= 0:
        raise ValueError(
            f"the default theta_min needs temperature > 0 and l1 > 0, got temperature={temperature!r}, "
            f"l1={l1!r}: give theta_min explicitly"
        )
    return -((1.0 - connectivity) / connectivity) * (temperature / l1)


class SoftDeepR:
    """soft-DEEP R around ``optimizer`` for the dense tensors ``weights`` (module docstring).

    ``connectivity`` (p0, in (0, 1], one number or one per tensor) is the target fraction of active
    connections; ``theta_min`` (< 0; one number or one per tensor) defaults to the official rule of
    thumb. ``l1`` = alpha, ``temperature`` = T; ``seed`` fixes every random draw."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        weights,
        *,
        connectivity,
        l1: float = 1e-5,
        temperature: float,
        theta_min=None,
        seed: int = 0,
    ) -> None:
        check_hyper(l1, temperature)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an int, got {seed!r}")
        gen = step_generator(seed, -1)
        targets = normalise_targets(weights, gen)
        for t in targets:
            if t.layer is not None:
                raise ValueError(
                    f"{t.where} is a SparseLinear: soft-DEEP R needs a theta for every potential "
                    "connection, i.e. a dense weight tensor"
                )
        groups = take_out_of_optimizer(optimizer, targets, same_group=False)
        n = len(targets)
        p0 = _per("connectivity", connectivity, n)
        for i, p in enumerate(p0):
            if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1:
                raise ValueError(f"connectivity[{i}] must be a number in (0, 1], got {p!r}")
        if theta_min is None:
            mins = [soft_theta_min(p, temperature, l1) for p in p0]
        else:
            mins = _per("theta_min", theta_min, n)
            for i, m in enumerate(mins):
                if isinstance(m, bool) or not isinstance(m, (int, float)) or not -math.inf < m < 0:
                    raise ValueError(f"theta_min[{i}] must be a finite number < 0, got {m!r}")
        self.optimizer, self.targets, self._groups = optimizer, targets, groups
        self.connectivity_target = [float(p) for p in p0]
        self.theta_min = [float(m) for m in mins]
        self.l1, self.temperature, self.seed, self.step_count = float(l1), float(temperature), seed, 0
        self.thetas: list[torch.nn.Parameter] = []
        with torch.no_grad():
            for t, p, m, gi in zip(targets, p0, mins, groups, strict=True):
                w = t.param.detach()
                on = torch.rand(w.shape, generator=gen) < p
                low = torch.rand(w.shape, generator=gen, dtype=w.dtype) * m  # in (m, 0]
                theta = torch.where(on.to(w.device), w.abs().clamp_min(1e-12), low.to(w.device))
                theta = torch.where(theta == 0, torch.full_like(theta, m / 2), theta)  # 0 is dormant
                if t.allowed_mask is not None:
                    theta.view(-1)[~t.allowed_mask] = m
                param = torch.nn.Parameter(theta.contiguous())
                self.thetas.append(param)
                replace_in_group(optimizer.param_groups[gi], [t.param], param)
            self._write()

    def zero_grad(self, set_to_none: bool = True) -> None:
        """The optimizer's ``zero_grad`` and the rewired weights' gradients."""
        self.optimizer.zero_grad(set_to_none=set_to_none)
        for t in self.targets:
            t.param.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """Optimizer step on the active thetas, guard, L1 + noise, clip at theta_min, weights written."""
        saved = []
        for t, theta in zip(self.targets, self.thetas, strict=True):
            active = theta > 0
            g = t.param.grad
            theta.grad = (
                torch.zeros_like(theta)
                if g is None
                else t.sign.view(theta.shape).to(theta.dtype) * g * active
            )
            t.param.grad = None
            saved.append((~active, theta.detach().clone()))
        self.optimizer.step()
        gen = step_generator(self.seed, self.step_count)
        for t, theta, m, gi, (dormant, before) in zip(
            self.targets, self.thetas, self.theta_min, self._groups, saved, strict=True
        ):
            lr = group_lr(self.optimizer.param_groups[gi])
            theta.copy_(torch.where(dormant, before, theta))  # the guard
            if self.l1 > 0:
                theta.sub_((theta > 0).to(theta.dtype), alpha=lr * self.l1)
            if self.temperature > 0:
                noise = torch.randn(theta.shape, generator=gen, dtype=theta.dtype).to(theta.device)
                theta.add_(noise, alpha=math.sqrt(2.0 * lr * self.temperature))
            theta.clamp_(min=m)
            if t.allowed_mask is not None:
                theta.view(-1)[~t.allowed_mask] = m
        self._write()
        self.step_count += 1

    def _write(self) -> None:
        for t, theta in zip(self.targets, self.thetas, strict=True):
            t.param.copy_(t.sign.view(theta.shape).to(theta.dtype) * theta.detach().clamp_min(0))

    def active_counts(self) -> list[int]:
        return [int((theta > 0).sum()) for theta in self.thetas]

    def connectivity(self) -> list[float]:
        """Fraction of non-zero entries per tensor."""
        return [c / t.numel for c, t in zip(self.active_counts(), self.targets, strict=True)]

    def state_tensors(self, prefix: str = "") -> dict[str, torch.Tensor]:
        out = {f"{prefix}theta.{i}": th.detach() for i, th in enumerate(self.thetas)}
        out.update({f"{prefix}sign_table.{i}": t.sign for i, t in enumerate(self.targets)})
        out[f"{prefix}step"] = torch.tensor([self.step_count], dtype=torch.long)
        return out

    @torch.no_grad()
    def load_state_tensors(self, prefix: str, tensors: dict[str, torch.Tensor]) -> None:
        for i, (t, theta) in enumerate(zip(self.targets, self.thetas, strict=True)):
            for key in (f"{prefix}theta.{i}", f"{prefix}sign_table.{i}"):
                if key not in tensors:
                    raise ValueError(f"soft-DEEP R state incomplete: missing {key}")
            theta.copy_(tensors[f"{prefix}theta.{i}"])
            t.sign = tensors[f"{prefix}sign_table.{i}"].to(theta.device, torch.int8).clone()
        self.step_count = int(tensors[f"{prefix}step"][0])
        self._write()

    def __repr__(self) -> str:
        return (
            f"SoftDeepR({type(self.optimizer).__name__}, {len(self.targets)} tensors, "
            f"p0={self.connectivity_target}, l1={self.l1}, T={self.temperature})"
        )


def _per(name: str, value, n: int) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name} must be a number or have one entry per weight ({n}), got {len(value)}")
        return list(value)
    return [value] * n
