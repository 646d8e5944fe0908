"""The integrate-and-fire SNN that ANN-to-SNN conversion produces, with its three gradient paths.

Oezdenizci & Legenstein (TMLR 2024), "Adversarially robust spiking neural networks through conversion";
IGITUGraz/RobustSNNConversion ``models/layers.py`` (``LIFSpike`` with leak 1), ``utils.py`` (BPTT, BPTR
and "Act" attack forwards). Every ReLU of the ANN becomes a population of non-leaky IF neurons with one
scalar threshold per layer (learnable, clamped at ``min_threshold``), run for ``T`` steps on the analog
image repeated at every step (direct input):

    u(t) = v(t-1) + I(t);   z(t) = H(u(t) - v_th)                 (neurons.integrate_fire)
    v(t) = u(t) (1 - z(t))   (hard reset)   or   u(t) - v_th z(t)   (soft reset)
    s(t) = v_th z(t)                                                 (output passed on)

Emitting ``v_th z`` keeps the ANN's activation scale, so weights are copied unchanged and the rate
``mean_t s(t)`` approximates ``clip(ReLU(I), 0, v_th)``. The readout (last linear layer) is analog; the
network's output is its time average ``(1/T) sum_t W s_L(t) + b``.

Gradient paths (``forward(x, gradient=...)``), all with the same weights:

- a :class:`~neuromorph.spikes.Surrogate`: BPTT through the unrolled spikes with that pseudo-derivative
  acting on ``u - v_th`` (the forward pass is the true SNN);
- :class:`RateBackprop` (BPTR, "rate backprop", RGA of Bu et al. 2023): true forward; backward
  ``dL/dI(t) = dL/ds(t) * 1[mean_t z > 0]``, the gradient of a ReLU at the neuron's rate;
- :class:`AnalogTwin`: the ANN twin (``T = 0`` in the paper): every IF layer replaced by ReLU (or by the
  clipped ReLU ``clamp(I, 0, v_th)`` that the rates approximate); its forward is *not* the SNN.

Time is folded into the batch for the stateless layers (conv, linear, pooling: ``[T*B, ...]``) as in the
official code; layers before the first IF population run once and are repeated over time.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from .. import _validate
from ..families import THRESHOLDS
from ..neurons.integrate_fire import RESETS, IFParameters, IFState, if_initial_state, if_step
from ..spikes import (
    Exponential,
    PiecewiseLinear,
    Rectangular,
    StraightThrough,
    Surrogate,
)

__all__ = [
    "RateBackprop",
    "AnalogTwin",
    "Gradient",
    "IFNeurons",
    "TimeDistributed",
    "SpikingResidual",
    "ConvertedSequential",
    "ConvertedSNN",
    "GradientPath",
    "paper_gradients",
    "gradient_name",
]


@dataclass(frozen=True)
class RateBackprop:
    """BPTR: true spiking forward, backward ``grad * 1[mean_t z > 0]`` per neuron (a rate ReLU)."""


@dataclass(frozen=True)
class AnalogTwin:
    """The ANN twin: IF layers replaced by ``ReLU`` (``clip=False``, the paper's "Act") or by
    ``clamp(I, 0, v_th)`` (``clip=True``, the function the rates approximate)."""

    clip: bool = False


Gradient = Surrogate | RateBackprop | AnalogTwin


def _check_gradient(gradient) -> None:
    if gradient is not None and not isinstance(gradient, Surrogate | RateBackprop | AnalogTwin):
        raise ValueError(
            "gradient must be None, a neuromorph.spikes.Surrogate, RateBackprop() or AnalogTwin(), "
            f"got {type(gradient).__name__}"
        )


def _if_inference(x: torch.Tensor, v_th: torch.Tensor, hard: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The IF dynamics of :func:`~neuromorph.neurons.integrate_fire.if_step` without autograd, in place:
    ``(s [T, B, ...], v(T))``. The same float operations as ``if_step`` (``u = v + I``,
    ``z = 1[u - v_th > 0]``, ``v = u (1 - z)`` or ``u - v_th z``, ``s = v_th z``), so the result is bit
    for bit that of the autograd path; it only avoids allocating a tensor per operation and step (the
    inference forwards of an evaluation: Square's queries, APGD's checks, every prediction)."""
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    v = torch.zeros(x.shape[1:], dtype=x.dtype, device=x.device)
    d, z = torch.empty_like(v), torch.empty_like(v)
    for t in range(x.shape[0]):
        v.add_(x[t])  # u = v + I
        torch.sub(v, v_th, out=d)
        torch.gt(d, 0, out=z)  # z = 1[u - v_th > 0] as 0.0 / 1.0
        torch.mul(v_th, z, out=out[t])  # s = v_th z
        if hard:
            v.mul_(z.neg_().add_(1.0))  # u (1 - z)
        else:
            v.sub_(out[t])  # u - v_th z
    return out, v


class _RateBackprop(torch.autograd.Function):
    """IF dynamics forward (no graph); backward passes ``grad`` where the neuron fired at least once."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, v_th: torch.Tensor, hard: bool) -> torch.Tensor:
        out, _ = _if_inference(x, v_th.detach(), hard)
        ctx.save_for_backward((out > 0).any(0))
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (active,) = ctx.saved_tensors
        return grad * active.to(grad.dtype), None, None


class IFNeurons(nn.Module):
    """One IF population with a scalar, learnable threshold (clamped at ``min_threshold``).

    ``forward(x [T, B, ...], state=None, gradient=None) -> (s [T, B, ...], IFState)`` with ``s = v_th z``;
    ``gradient`` picks the path (module docstring); ``None`` uses ``surrogate``."""

    families = {"threshold": THRESHOLDS}

    def __init__(
        self,
        threshold: float = 1.0,
        *,
        reset: str = "hard",
        surrogate: Surrogate = PiecewiseLinear(width=1.0),
        min_threshold: float = 0.03,
    ) -> None:
        super().__init__()
        _validate.positive("threshold", threshold)
        _validate.positive("min_threshold", min_threshold)
        if reset not in RESETS:
            raise ValueError(f"reset must be one of {RESETS}, got {reset!r}")
        if not isinstance(surrogate, Surrogate):
            raise ValueError(
                f"surrogate must be a neuromorph.spikes.Surrogate, got {type(surrogate).__name__}"
            )
        self.reset, self.surrogate, self.min_threshold = reset, surrogate, float(min_threshold)
        self.threshold = nn.Parameter(torch.tensor(float(threshold)))

    def v_th(self) -> torch.Tensor:
        """The threshold in use: ``max(threshold, min_threshold)`` (differentiable above the floor)."""
        return self.threshold.clamp(min=self.min_threshold)

    def forward(
        self, x: torch.Tensor, state: IFState | None = None, gradient: Gradient | None = None
    ) -> tuple[torch.Tensor, IFState]:
        v_th = self.v_th().to(x.dtype)
        if isinstance(gradient, AnalogTwin):
            out = torch.minimum(torch.relu(x), v_th) if gradient.clip else torch.relu(x)
            return out, state if state is not None else if_initial_state(x.shape[1:], device=x.device)
        if isinstance(gradient, RateBackprop):
            if state is not None:
                raise ValueError("RateBackprop runs whole sequences from rest; pass state=None")
            out = _RateBackprop.apply(x, v_th, self.reset == "hard")
            return out, if_initial_state(x.shape[1:], device=x.device, dtype=x.dtype)
        surrogate = self.surrogate if gradient is None else gradient
        if state is None and not torch.is_grad_enabled():
            out, v = _if_inference(x, v_th, self.reset == "hard")
            return out, IFState(v)
        if state is None:
            state = if_initial_state(x.shape[1:], device=x.device, dtype=x.dtype)
        p = IFParameters(v_th, self.reset, surrogate)
        outs = []
        for i_t in x.unbind(0):
            z, state = if_step(i_t, state, p)
            outs.append(v_th * z)
        return torch.stack(outs), state

    def extra_repr(self) -> str:
        return (
            f"threshold={float(self.threshold):.4g}, reset={self.reset}, min_threshold={self.min_threshold}"
        )


class TimeDistributed(nn.Module):
    """A stateless layer (conv, linear, pooling, flatten) applied at every step: ``[T, B, ...]`` is folded
    into ``[T*B, ...]``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t, b = x.shape[:2]
        y = self.module(x.reshape(t * b, *x.shape[2:]))
        return y.reshape(t, b, *y.shape[1:])


def _apply(layer: nn.Module, x: torch.Tensor, gradient, steps: int) -> torch.Tensor:
    if isinstance(layer, TimeDistributed):
        return layer(x)
    if x.shape[0] == 1 and steps > 1:  # direct input: the static prefix is repeated from here on
        x = x.expand(steps, *x.shape[1:])
    if isinstance(layer, IFNeurons):
        return layer(x, None, gradient)[0]
    return layer(x, gradient, steps)


class ConvertedSequential(nn.Module):
    """Layers in order; ``forward(x [T or 1, B, ...], gradient, steps) -> [T, B, ...]``."""

    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        for layer in layers:
            if not isinstance(layer, TimeDistributed | IFNeurons | SpikingResidual | ConvertedSequential):
                raise ValueError(f"unsupported layer {type(layer).__name__} in a ConvertedSequential")
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor, gradient=None, steps: int = 1) -> torch.Tensor:
        for layer in self.layers:
            x = _apply(layer, x, gradient, steps)
        return x


class SpikingResidual(nn.Module):
    """``s = IF(body(x) + shortcut(x))``: the converted :class:`~.networks.ResidualBlock`."""

    def __init__(self, body: ConvertedSequential, shortcut: ConvertedSequential, neurons: IFNeurons) -> None:
        super().__init__()
        self.body, self.shortcut, self.neurons = body, shortcut, neurons

    def forward(self, x: torch.Tensor, gradient=None, steps: int = 1) -> torch.Tensor:
        return self.neurons(
            self.body(x, gradient, steps) + self.shortcut(x, gradient, steps), None, gradient
        )[0]


class ConvertedSNN(nn.Module):
    """The converted network: ``forward(x [B, ...] in [0, 1], gradient=None) -> logits [B, classes]``,
    the readout averaged over ``steps`` time steps (``AnalogTwin`` runs one ANN pass instead)."""

    def __init__(self, body: ConvertedSequential, steps: int) -> None:
        super().__init__()
        _validate.positive_int("T (steps)", steps)
        if not isinstance(body, ConvertedSequential):
            raise ValueError(f"body must be a ConvertedSequential, got {type(body).__name__}")
        self.body = body
        self.steps = steps

    def sequence(self, x: torch.Tensor, gradient: Gradient | None = None, steps: int | None = None):
        """Readout at every step ``[T, B, classes]`` (``T = 1`` for ``AnalogTwin``)."""
        _check_gradient(gradient)
        _validate.finite_tensor("x", x)
        if x.dim() < 2:
            raise ValueError(f"x must be a batch [B, ...], got shape {tuple(x.shape)}")
        steps = self.steps if steps is None else steps
        _validate.positive_int("T (steps)", steps)
        if isinstance(gradient, AnalogTwin):
            steps = 1
        out = self.body(x.unsqueeze(0), gradient, steps)
        return out.expand(steps, *out.shape[1:]) if out.shape[0] == 1 else out

    def forward(self, x: torch.Tensor, gradient: Gradient | None = None) -> torch.Tensor:
        return self.sequence(x, gradient).mean(0)

    def neurons(self) -> list[tuple[str, IFNeurons]]:
        """Every IF population in the order the input reaches it."""
        return [(n, m) for n, m in self.named_modules() if isinstance(m, IFNeurons)]

    def thresholds(self) -> dict[str, float]:
        return {n: float(m.v_th().detach()) for n, m in self.neurons()}

    @torch.no_grad()
    def clamp_thresholds_(self) -> None:
        """Project learnable thresholds back above their floor (after an optimizer step)."""
        for _, m in self.neurons():
            m.threshold.clamp_(min=m.min_threshold)

    @torch.no_grad()
    def firing_rates(self, x: torch.Tensor) -> dict[str, float]:
        """Mean spikes per neuron and step of each IF population on ``x`` (true forward)."""
        rates: dict[str, float] = {}
        hooks = [
            m.register_forward_hook(
                lambda mod, args, out, name=name: rates.__setitem__(name, float((out[0] > 0).float().mean()))
            )
            for name, m in self.neurons()
        ]
        try:
            self(x)
        finally:
            for h in hooks:
                h.remove()
        return rates

    def with_steps(self, steps: int) -> ConvertedSNN:
        """A copy (own parameters) run for ``steps`` steps."""
        _validate.positive_int("T (steps)", steps)
        twin = copy.deepcopy(self)
        twin.steps = steps
        return twin

    def extra_repr(self) -> str:
        return f"T={self.steps}"


class GradientPath(nn.Module):
    """``x -> snn(x, gradient)``: the SNN seen through one gradient path, for attacks. Shares the SNN's
    parameters. Its forward equals the SNN's for surrogates and BPTR, not for ``AnalogTwin``."""

    def __init__(self, snn: ConvertedSNN, gradient: Gradient) -> None:
        super().__init__()
        _check_gradient(gradient)
        if gradient is None:
            raise ValueError("gradient must be a Surrogate, RateBackprop() or AnalogTwin(), got None")
        self.snn, self.gradient = snn, gradient
        self.train(snn.training)  # mirror the SNN's mode (attacks refuse training-mode modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.snn(x, self.gradient)

    def forward_equals(self, model: nn.Module) -> bool:
        """Whether this path's forward is ``model``'s, bit for bit: a surrogate changes only the
        backward pass of ``model`` itself (attacks then reuse the logits of a gradient step as
        ``model``'s prediction instead of running ``model`` again)."""
        return model is self.snn and isinstance(self.gradient, Surrogate)

    def extra_repr(self) -> str:
        return gradient_name(self.gradient)


def gradient_name(gradient: Gradient) -> str:
    """Short stable name of a gradient path: ``bptt-pcw-1``, ``bptt-exp-d-0.5``, ``bptr``, ``ann-twin``."""
    _check_gradient(gradient)
    if isinstance(gradient, RateBackprop):
        return "bptr"
    if isinstance(gradient, AnalogTwin):
        return "ann-twin-clip" if gradient.clip else "ann-twin"
    g = gradient
    num = lambda v: f"{v:g}"  # noqa: E731
    if isinstance(g, PiecewiseLinear):
        return f"bptt-pcw-{num(g.width)}"
    if isinstance(g, Rectangular):
        return f"bptt-rect-{num(g.width)}"
    if isinstance(g, Exponential):
        kind = "exp" if g.alpha == 1.0 else ("exp-d" if g.alpha == 0.3 else f"exp-a{num(g.alpha)}")
        return f"bptt-{kind}-{num(g.gamma)}"
    if isinstance(g, StraightThrough):
        return "bptt-ste"
    fields = ",".join(f"{k}={num(v)}" for k, v in vars(g).items())
    return f"bptt-{type(g).__name__.lower()}({fields})"


def paper_gradients() -> dict[str, Gradient]:
    """The 19 gradient paths of the paper's ensemble (RobustSNNConversion ``attack/ensemble.py``):
    BPTT with PCW widths {0.25, 0.5, 1, 2, 3}, EXP-D (alpha 0.3) and EXP (alpha 1) with gamma {0.5, 1, 2},
    RECT widths {0.25, 0.5, 1, 2, 4} and STE; BPTR; the ANN twin."""
    paths: list[Gradient] = [PiecewiseLinear(w) for w in (0.25, 0.5, 1.0, 2.0, 3.0)]
    paths += [Exponential(alpha=0.3, gamma=g) for g in (0.5, 1.0, 2.0)]
    paths += [Exponential(alpha=1.0, gamma=g) for g in (0.5, 1.0, 2.0)]
    paths += [Rectangular(w) for w in (0.25, 0.5, 1.0, 2.0, 4.0)]
    paths += [StraightThrough(), RateBackprop(), AnalogTwin()]
    return {gradient_name(g): g for g in paths}
