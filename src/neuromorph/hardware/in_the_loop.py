"""In-the-loop training: forward on the (simulated) chip, backward with the software model.

Schmitt et al. 2017, "Neuromorphic hardware in the loop: Training a deep spiking network on the
BrainScaleS wafer-scale system" (IJCNN, arXiv:1703.01909); the general rule of hxtorch's ``Unterjubel``
(``reference/hardware.md`` 3.2): forward = measured hardware activity (mismatch and noise included),
backward = the differentiable ideal model evaluated at the measured states. With recorded activities
``r_l`` of every layer (``r_0 = x``) and the software weights ``W_l`` (``papers.md`` 7.2):

    delta_L = dE/dr_L                                   (r_L: the chip's output, read as logits)
    delta_l = (W_{l+1}^T delta_{l+1})[:n_l] * f'(r_l)   f' of the ideal transfer at the recorded rate
    dE/dW_l = delta_l [r_{l-1}; 1]^T

where ``f(a) = clamp(a, 0, 1)`` so ``f'(r) = 1`` for ``0 < r < 1`` and 0 for a silent or saturated
neuron; the chip's gains, thresholds and synapse factors never enter the backward pass (the software
does not know them). The software keeps float weights; the chip holds their quantised values, so an
update reaches the substrate at its weight resolution on the next forward pass. ``SignDescent`` is
the variant that uses only the sign of each gradient component (the update need only roughly follow
the gradient).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .. import _validate
from .substrate import Chip, RateNetwork, substrate_forward, with_bias_input

__all__ = ["recorded_layer", "in_the_loop_forward", "InTheLoopNetwork", "SignDescent", "clip_to_range_"]


class _RecordedLayer(torch.autograd.Function):
    """Value: the recorded activity. Gradient: the ideal layer at the recorded input and activity."""

    @staticmethod
    def forward(ctx, x_aug, weight, activity, rectified: bool):
        ctx.save_for_backward(x_aug, weight, activity)
        ctx.rectified = rectified
        return activity.clone()

    @staticmethod
    def backward(ctx, grad):
        x_aug, weight, activity = ctx.saved_tensors
        if ctx.rectified:
            grad = grad * ((activity > 0) & (activity < 1)).to(grad.dtype)
        grad_x = grad @ weight if ctx.needs_input_grad[0] else None
        grad_w = grad.T @ x_aug if ctx.needs_input_grad[1] else None
        return grad_x, grad_w, None, None


def recorded_layer(
    x_aug: torch.Tensor, weight: torch.Tensor, activity: torch.Tensor, *, rectified: bool
) -> torch.Tensor:
    """Return ``activity`` (the chip's recording, [B, n_out]) with the gradient of the ideal layer
    ``f(weight @ x_aug)`` evaluated at the recording: ``d/dx_aug = (g * f'(activity)) @ weight`` and
    ``d/dweight = (g * f'(activity))^T @ x_aug`` (``f' = 1`` when not ``rectified``)."""
    for name, t in (("x_aug", x_aug), ("weight", weight), ("activity", activity)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2:
            raise ValueError(f"{name} must be a 2-d tensor, got {getattr(t, 'shape', type(t).__name__)}")
    if weight.shape[1] != x_aug.shape[1] or activity.shape != (x_aug.shape[0], weight.shape[0]):
        raise ValueError(
            f"shapes do not fit: x_aug {tuple(x_aug.shape)}, weight {tuple(weight.shape)}, "
            f"activity {tuple(activity.shape)} (expected [B, n_in], [n_out, n_in], [B, n_out])"
        )
    return _RecordedLayer.apply(x_aug, weight, activity.detach(), bool(rectified))


def in_the_loop_forward(
    net: RateNetwork,
    x: torch.Tensor,
    chip: Chip,
    *,
    weight_max: Sequence[float],
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The chip's output for ``x`` [B, n_in] (its value: what the substrate computed from the network's
    weights); ``backward()`` then gives the in-the-loop gradients of the module docstring in the
    network's weights. ``generator`` draws the chip's trial-to-trial noise."""
    if not isinstance(net, RateNetwork):
        raise ValueError(f"net must be a RateNetwork, got {type(net).__name__}")
    if tuple(net.shapes) != tuple(tuple(layer.synapse.shape) for layer in chip.layers):
        raise ValueError(
            f"the chip's layer shapes {[tuple(layer.synapse.shape) for layer in chip.layers]} do not "
            f"match the network's {list(net.shapes)}"
        )
    weights = net.weights()
    with torch.no_grad():
        activity = substrate_forward(x, weights, chip, weight_max=weight_max, generator=generator)
    h = x
    last = len(weights) - 1
    for index, (w, r) in enumerate(zip(weights, activity, strict=True)):
        h = recorded_layer(with_bias_input(h), w, r, rectified=index < last)
    return h


class InTheLoopNetwork(nn.Module):
    """A :class:`RateNetwork` run on ``chip`` (so that DDP can wrap it): ``forward(x, generator)`` is
    :func:`in_the_loop_forward`. The chip and the mapping ranges are configuration, not state."""

    def __init__(self, net: RateNetwork, chip: Chip, weight_max: Sequence[float]) -> None:
        super().__init__()
        if len(weight_max) != len(net.layers):
            raise ValueError(f"weight_max needs {len(net.layers)} entries, got {len(weight_max)}")
        for index, w in enumerate(weight_max):
            _validate.positive(f"weight_max[{index}]", w)
        self.net = net
        self.chip = chip
        self.weight_max = tuple(float(w) for w in weight_max)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return in_the_loop_forward(self.net, x, self.chip, weight_max=self.weight_max, generator=generator)


class SignDescent(torch.optim.Optimizer):
    """``w <- w - lr * sign(dE/dw)``: every weight moves by ``lr`` against its gradient's sign (0 where
    the gradient is 0). Stateless."""

    def __init__(self, params, lr: float) -> None:
        _validate.positive("lr", lr)
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("SignDescent.step takes no closure")
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(torch.sign(p.grad), alpha=-group["lr"])
        return None


@torch.no_grad()
def clip_to_range_(net: RateNetwork, weight_max: Sequence[float]) -> None:
    """Keep the software weights inside what the chip can hold, ``|W_l| <= weight_max[l]`` (in place),
    so that the float copy does not drift away from the values the substrate shows."""
    if len(weight_max) != len(net.layers):
        raise ValueError(f"weight_max needs {len(net.layers)} entries, got {len(weight_max)}")
    for layer, w_max in zip(net.layers, weight_max, strict=True):
        _validate.positive("weight_max", w_max)
        layer.weight.clamp_(-w_max, w_max)
