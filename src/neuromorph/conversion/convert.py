"""ANN-to-SNN conversion with per-layer percentile thresholds (Oezdenizci & Legenstein, TMLR 2024).

IGITUGraz/RobustSNNConversion ``main_train.py`` / ``utils.py``, following the hybrid conversion of
Rathi et al. (ICLR 2020):

1. Copy the ANN's weights; fold every batch norm into the conv/linear layer before it
   (``W' = W g / sqrt(var + eps)``, ``b' = (b - mean) g / sqrt(var + eps) + beta``, eval statistics);
   dropout and identity layers vanish; each ReLU becomes an IF population (:mod:`.spiking`).
2. Thresholds layer by layer, earlier layers already spiking: for IF population ``k`` run the SNN with
   its converted predecessors for ``calibration_steps`` steps on each calibration batch, take the
   ``percentile`` (paper 99.7) of population ``k``'s input currents ``I(t)`` over all steps, samples and
   neurons, and set ``v_th,k`` to the maximum of that percentile over the batches (paper: 11 batches).
3. Multiply every threshold by one global ``scale`` (paper 0.3 for low T).

Supported layers: ``Conv2d``, ``Linear``, ``BatchNorm1d/2d`` (directly after a conv/linear), ``ReLU``,
``AvgPool2d``, ``AdaptiveAvgPool2d``, ``Flatten``, ``Dropout``, ``Identity``, nested ``Sequential`` and
:class:`~.networks.ResidualBlock`. The last layer must be the (analog) ``Linear`` readout. Anything else
(max pooling, other activations, ...) raises a ``ValueError`` naming the layer.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
from torch import nn

from .. import _validate
from ..neurons.integrate_fire import RESETS
from ..spikes import PiecewiseLinear, Surrogate
from .networks import ResidualBlock
from .spiking import ConvertedSequential, ConvertedSNN, IFNeurons, SpikingResidual, TimeDistributed

__all__ = ["convert", "calibrate_thresholds", "fold_batchnorm", "SUPPORTED", "check_percentile"]

SUPPORTED = (
    "Conv2d, Linear, BatchNorm1d/2d (after a Conv2d/Linear), ReLU, AvgPool2d, AdaptiveAvgPool2d, Flatten, "
    "Dropout, Identity, Sequential, ResidualBlock"
)
_LINEAR_STATELESS = (nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Flatten)
_DROPPED = (nn.Dropout, nn.Identity)


def check_percentile(percentile) -> None:
    if (
        isinstance(percentile, bool)
        or not isinstance(percentile, int | float)
        or not math.isfinite(percentile)
        or not 0 < percentile <= 100
    ):
        raise ValueError(f"percentile must be a number in (0, 100], got {percentile!r}")


@torch.no_grad()
def fold_batchnorm(layer: nn.Conv2d | nn.Linear, bn: nn.BatchNorm1d | nn.BatchNorm2d) -> nn.Module:
    """A copy of ``layer`` computing ``bn(layer(x))`` with the BN's running statistics (eval mode)."""
    if not bn.track_running_stats or bn.running_mean is None:
        raise ValueError(f"{type(bn).__name__} without running statistics cannot be folded")
    fused = copy.deepcopy(layer)
    scale = (bn.running_var + bn.eps).rsqrt()
    if bn.affine:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale + (bn.bias if bn.affine else 0.0)
    fused.weight.copy_(layer.weight * scale.reshape(-1, *([1] * (layer.weight.dim() - 1))))
    bias = layer.bias * scale + shift if layer.bias is not None else shift
    fused.bias = nn.Parameter(bias.detach().clone().to(layer.weight.dtype))
    return fused


def _convert_sequence(seq: nn.Sequential, prefix: str, neuron_kw: dict) -> list[nn.Module]:
    items = list(seq.named_children())
    out: list[nn.Module] = []
    i = 0
    while i < len(items):
        name, m = items[i]
        path = f"{prefix}.{name}" if prefix else name
        if isinstance(m, nn.Conv2d | nn.Linear):
            nxt = items[i + 1][1] if i + 1 < len(items) else None
            bn_type = nn.BatchNorm2d if isinstance(m, nn.Conv2d) else nn.BatchNorm1d
            if isinstance(nxt, bn_type):
                try:
                    out.append(TimeDistributed(fold_batchnorm(m, nxt)))
                except ValueError as err:
                    raise ValueError(f"layer {path}.. : {err}") from None
                i += 2
                continue
            out.append(TimeDistributed(copy.deepcopy(m)))
        elif isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            raise ValueError(
                f"layer {path} ({type(m).__name__}) does not directly follow a Conv2d/Linear, so it cannot "
                "be folded; put every batch norm right after its conv or linear layer"
            )
        elif type(m) is nn.ReLU:
            out.append(IFNeurons(1.0, **neuron_kw))
        elif isinstance(m, _LINEAR_STATELESS):
            out.append(TimeDistributed(copy.deepcopy(m)))
        elif isinstance(m, _DROPPED):
            pass  # identity at inference
        elif type(m) is nn.Sequential:
            out.extend(_convert_sequence(m, path, neuron_kw))
        elif isinstance(m, ResidualBlock):
            body = ConvertedSequential(_convert_sequence(m.body, f"{path}.body", neuron_kw))
            sc = m.shortcut
            sc_seq = sc if isinstance(sc, nn.Sequential) else nn.Sequential(sc)
            shortcut = ConvertedSequential(_convert_sequence(sc_seq, f"{path}.shortcut", neuron_kw))
            out.append(SpikingResidual(body, shortcut, IFNeurons(1.0, **neuron_kw)))
        else:
            raise ValueError(
                f"unsupported layer {path} ({type(m).__name__}) for ANN-to-SNN conversion; "
                f"supported: {SUPPORTED}"
            )
        i += 1
    return out


def _percentile(values: torch.Tensor, percentile: float) -> float:
    flat = values.reshape(-1)
    k = min(flat.numel(), max(1, math.ceil(percentile / 100.0 * flat.numel())))
    return float(torch.kthvalue(flat, k).values)


class _Captured(Exception):
    def __init__(self, x: torch.Tensor) -> None:
        super().__init__()
        self.x = x


@torch.no_grad()
def calibrate_thresholds(
    snn: ConvertedSNN,
    batches: Sequence[torch.Tensor],
    *,
    percentile: float = 99.7,
    scale: float = 1.0,
    calibration_steps: int | None = None,
) -> dict[str, float]:
    """Set every IF threshold by the layer-by-layer percentile rule (module docstring, steps 2-3).

    A population whose inputs never exceed zero at the percentile gets its ``min_threshold``.
    Returns the thresholds in use (after scaling)."""
    check_percentile(percentile)
    _validate.positive("scale", scale)
    steps = snn.steps if calibration_steps is None else calibration_steps
    _validate.positive_int("calibration_steps", steps)
    batches = list(batches)
    if not batches:
        raise ValueError("calibration needs at least one batch of images, got none")
    for j, b in enumerate(batches):
        _validate.finite_tensor(f"calibration batch {j}", b)
    for _, neurons in snn.neurons():
        best = -math.inf

        def grab(module, args, neurons=neurons):
            raise _Captured(args[0])

        hook = neurons.register_forward_pre_hook(grab)
        try:
            for b in batches:
                try:
                    snn.sequence(b, steps=steps)
                except _Captured as cap:
                    best = max(best, _percentile(cap.x, percentile))
        finally:
            hook.remove()
        neurons.threshold.fill_(best if best > neurons.min_threshold else neurons.min_threshold)
    for _, neurons in snn.neurons():
        neurons.threshold.mul_(scale).clamp_(min=neurons.min_threshold)
    return snn.thresholds()


def convert(
    ann: nn.Module,
    calibration: Sequence[torch.Tensor],
    *,
    steps: int,
    percentile: float = 99.7,
    scale: float = 1.0,
    reset: str = "hard",
    surrogate: Surrogate = PiecewiseLinear(width=1.0),
    min_threshold: float = 0.03,
    calibration_steps: int | None = None,
) -> ConvertedSNN:
    """Convert ``ann`` (an ``nn.Sequential`` of the supported layers) into an IF SNN run for ``steps``
    steps (``T``), thresholds calibrated on the image batches ``calibration`` (module docstring).

    The ANN is not modified; BN folding uses its running statistics. The SNN is returned in eval mode,
    its thresholds are learnable parameters (see :mod:`.finetune`)."""
    if not isinstance(ann, nn.Sequential):
        raise ValueError(
            f"ann must be an nn.Sequential of supported layers ({SUPPORTED}), got {type(ann).__name__}"
        )
    _validate.positive_int("T (steps)", steps)
    check_percentile(percentile)
    _validate.positive("scale", scale)
    if reset not in RESETS:
        raise ValueError(f"reset must be one of {RESETS}, got {reset!r}")
    neuron_kw = dict(reset=reset, surrogate=surrogate, min_threshold=min_threshold)
    IFNeurons(1.0, **neuron_kw)  # validates surrogate and min_threshold
    layers = _convert_sequence(ann, "", neuron_kw)
    if not layers or not (
        isinstance(layers[-1], TimeDistributed) and isinstance(layers[-1].module, nn.Linear)
    ):
        last = type(layers[-1]).__name__ if layers else "nothing"
        raise ValueError(
            "the ANN must end with its Linear readout (it stays analog, averaged over time); "
            f"it ends with {last}"
        )
    param = next(ann.parameters(), None)
    snn = ConvertedSNN(ConvertedSequential(layers), steps)
    if param is not None:
        snn = snn.to(device=param.device, dtype=param.dtype)
    calibrate_thresholds(
        snn, calibration, percentile=percentile, scale=scale, calibration_steps=calibration_steps
    )
    return snn.eval()
