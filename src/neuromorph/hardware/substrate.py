"""Analog neuromorphic substrate (BrainScaleS-like): fixed-pattern mismatch, weight resolution, noise.

Petrovici et al. 2017, "Pattern representation and recognition with accelerated analog neuromorphic
systems" (arXiv:1703.06043) and Schmitt et al. 2017 (IJCNN, arXiv:1703.01909): analog components
cannot be perfectly controlled, so a network trained in software loses accuracy when it is mapped onto
the chip. The model follows the simulation recipe of ``reference/hardware.md`` section 3.3 and the
semantics of the hxtorch mock of the BSS-2 analog MAC (signed 6-bit weights, trial-to-trial noise),
plus the fixed-pattern noise that the mock leaves out.

A layer of rate neurons on the chip computes, for input activities ``x`` (with a constant-1 "bias row",
which on BSS-2 is a synapse row driven by a constant input):

    Q(w)   = clip(round(w / lsb), -(2^b - 1), 2^b - 1) * lsb,   lsb = w_max / (2^b - 1)  (weight DAC)
    u_i    = sum_j Q(w_ij) * s_ij * x_j                      synaptic input, per-synapse mismatch s_ij
    a_i    = g_i * (u_i - theta_i) + sigma_n * eps_i          neuron gain g_i, threshold theta_i, noise
    r_i    = clamp(a_i, 0, 1)   (hidden: rate, saturating)    or   r_i = a_i   (output: membrane/ADC)

with the fixed pattern drawn once per chip ("a seed is a chip"):

    s_ij = max(0, 1 + sigma_s * xi_ij),  g_i = max(0, 1 + sigma_g * xi_i),  theta_i = sigma_theta * xi'_i

and fresh ``eps ~ N(0, 1)`` on every call (trial-to-trial noise). The standard normals ``xi`` of a chip
depend only on the seed and the layer's index and shape, so changing a sigma scales the same pattern.
The ideal software model is the same network with ``s = g = 1``, ``theta = 0``, no noise and no weight
quantisation; with those settings :func:`substrate_forward` returns exactly what
:class:`RateNetwork` computes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from .. import _validate
from ..families import WEIGHTS

__all__ = [
    "SubstrateParams",
    "ChipLayer",
    "Chip",
    "RateLayer",
    "RateNetwork",
    "validate_parameters",
    "make_chip",
    "quantize_weights",
    "with_bias_input",
    "substrate_layer",
    "substrate_forward",
    "deployment_scales",
]


class SubstrateParams(NamedTuple):
    """Statistics of a family of chips (each a relative standard deviation unless said otherwise).

    ``synapse_mismatch`` sigma_s of the multiplicative per-synapse factor; ``gain_mismatch`` sigma_g of
    the per-neuron gain; ``threshold_mismatch`` sigma_theta of the per-neuron threshold (offset), in
    activity units (a rate of 1 is the saturated neuron); ``noise`` sigma_n of the trial-to-trial noise
    at each neuron, in activity units; ``weight_bits`` magnitude bits of the signed synapse weights
    (1..16; BSS-2 has 6), ``None`` for continuous weights (the ideal model)."""

    synapse_mismatch: float = 0.3
    gain_mismatch: float = 0.2
    threshold_mismatch: float = 0.1
    noise: float = 0.02
    weight_bits: int | None = 6


class ChipLayer(NamedTuple):
    """Fixed pattern of one layer of one chip: ``synapse`` [n_out, n_in] factors s_ij (>= 0),
    ``gain`` [n_out] g_i (>= 0), ``threshold`` [n_out] theta_i."""

    synapse: torch.Tensor
    gain: torch.Tensor
    threshold: torch.Tensor


class Chip(NamedTuple):
    """One simulated chip instance: its ``seed``, the ``params`` it was drawn with, one
    :class:`ChipLayer` per network layer (the synapse shapes include the bias row)."""

    seed: int
    params: SubstrateParams
    layers: tuple[ChipLayer, ...]


def validate_parameters(p: SubstrateParams) -> None:
    """Raise ``ValueError`` naming the field unless every sigma is finite and >= 0 and ``weight_bits``
    is ``None`` or an int in 1..16."""
    if not isinstance(p, SubstrateParams):
        raise ValueError(f"params must be a SubstrateParams, got {type(p).__name__}")
    for name in ("synapse_mismatch", "gain_mismatch", "threshold_mismatch", "noise"):
        _validate.positive(name, getattr(p, name), allow_zero=True)
    bits = p.weight_bits
    if bits is not None and (isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 16):
        raise ValueError(f"weight_bits must be None or an int in 1..16, got {bits!r}")


def _layer_generator(seed: int, index: int) -> torch.Generator:
    # One well-mixed stream per (chip, layer): a layer's pattern does not depend on the other layers.
    state = np.random.SeedSequence([seed, index]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def make_chip(
    shapes: Sequence[tuple[int, int]],
    params: SubstrateParams,
    seed: int,
    *,
    dtype: torch.dtype = torch.float32,
) -> Chip:
    """Draw the fixed pattern of chip ``seed`` for layers of synapse shapes ``[(n_out, n_in), ...]``
    (``n_in`` counting the bias row). The same ``(shapes, seed)`` always gives the same chip; the
    normal deviates are drawn even for a sigma of 0, so a sigma only scales the chip's pattern."""
    validate_parameters(params)
    _validate.non_negative_int("seed", seed)
    if isinstance(shapes, (str, bytes)) or not isinstance(shapes, Sequence) or not shapes:
        raise ValueError(f"shapes must be a non-empty sequence of (n_out, n_in) pairs, got {shapes!r}")
    layers = []
    for index, shape in enumerate(shapes):
        if not (isinstance(shape, (tuple, list)) and len(shape) == 2):
            raise ValueError(f"shapes[{index}] must be an (n_out, n_in) pair, got {shape!r}")
        n_out, n_in = shape
        _validate.positive_int(f"shapes[{index}][0] (n_out)", n_out)
        _validate.positive_int(f"shapes[{index}][1] (n_in)", n_in)
        gen = _layer_generator(seed, index)
        xi_s = torch.randn(n_out, n_in, generator=gen, dtype=torch.float64)
        xi_g = torch.randn(n_out, generator=gen, dtype=torch.float64)
        xi_t = torch.randn(n_out, generator=gen, dtype=torch.float64)
        layers.append(
            ChipLayer(
                synapse=(1.0 + params.synapse_mismatch * xi_s).clamp(min=0.0).to(dtype),
                gain=(1.0 + params.gain_mismatch * xi_g).clamp(min=0.0).to(dtype),
                threshold=(params.threshold_mismatch * xi_t).to(dtype),
            )
        )
    return Chip(seed=seed, params=params, layers=tuple(layers))


def quantize_weights(weight: torch.Tensor, bits: int | None, weight_max: float) -> torch.Tensor:
    """Q(w) = clip(round(w / lsb), -(2^b - 1), 2^b - 1) * lsb with lsb = w_max / (2^b - 1): the signed
    weights a synapse DAC of ``bits`` magnitude bits can hold (round half to even). ``bits=None``
    only clips to [-w_max, w_max]."""
    _validate.finite_tensor("weight", weight)
    _validate.positive("weight_max", weight_max)
    if bits is None:
        return weight.clamp(-weight_max, weight_max)
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 16:
        raise ValueError(f"bits must be None or an int in 1..16, got {bits!r}")
    levels = 2**bits - 1
    lsb = weight_max / levels
    return torch.round(weight / lsb).clamp(-levels, levels) * lsb


def with_bias_input(x: torch.Tensor) -> torch.Tensor:
    """Append the constant-1 input that drives the bias row: ``[B, n] -> [B, n + 1]``."""
    return torch.cat([x, x.new_ones(x.shape[:-1] + (1,))], dim=-1)


def _check_activity(name: str, x: torch.Tensor, n: int) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] != n or not x.is_floating_point():
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a float tensor [batch, {n}], got {got}")
    _validate.finite_tensor(name, x)


def substrate_layer(
    x: torch.Tensor,
    weight: torch.Tensor,
    layer: ChipLayer,
    params: SubstrateParams,
    *,
    weight_max: float,
    rectify: bool,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One layer on the chip (module docstring): ``x`` [B, n_in] (bias row included), ``weight``
    [n_out, n_in] as the software holds it; returns the activity the chip shows, [B, n_out]: rates
    ``clamp(a, 0, 1)`` when ``rectify``, else the membrane value ``a`` (the output layer's ADC read).
    ``generator`` draws the trial-to-trial noise and is required when ``params.noise > 0``."""
    n_out, n_in = layer.synapse.shape
    _check_activity("x", x, n_in)
    if not isinstance(weight, torch.Tensor) or tuple(weight.shape) != (n_out, n_in):
        got = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ValueError(f"weight must have the chip layer's shape {(n_out, n_in)}, got {got}")
    if params.noise > 0 and generator is None:
        raise ValueError(f"generator is required for the trial-to-trial noise (params.noise={params.noise})")
    w = quantize_weights(weight, params.weight_bits, weight_max) * layer.synapse.to(weight)
    u = x @ w.T
    a = layer.gain.to(u) * (u - layer.threshold.to(u))
    if params.noise > 0:
        eps = torch.randn(a.shape, generator=generator, dtype=a.dtype, device="cpu").to(a.device)
        a = a + params.noise * eps
    return a.clamp(0.0, 1.0) if rectify else a


def substrate_forward(
    x: torch.Tensor,
    weights: Sequence[torch.Tensor],
    chip: Chip,
    *,
    weight_max: Sequence[float],
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, ...]:
    """Run a rate network (every layer rectified but the last) on ``chip`` and record its activity:
    returns one tensor per layer, ``(r_1, ..., r_L)``, where ``r_L`` is the output membrane value.
    ``x`` [B, n_in] without the bias row; ``weight_max[l]`` is layer l's mapping range."""
    if not isinstance(chip, Chip):
        raise ValueError(f"chip must be a Chip (make_chip), got {type(chip).__name__}")
    validate_parameters(chip.params)
    if len(weights) != len(chip.layers) or len(weight_max) != len(chip.layers):
        raise ValueError(
            f"weights and weight_max need one entry per chip layer ({len(chip.layers)}), "
            f"got {len(weights)} and {len(weight_max)}"
        )
    _check_activity("x", x, chip.layers[0].synapse.shape[1] - 1)
    out, h = [], x
    last = len(chip.layers) - 1
    for index, (w, layer, w_max) in enumerate(zip(weights, chip.layers, weight_max, strict=True)):
        h = substrate_layer(
            with_bias_input(h),
            w,
            layer,
            chip.params,
            weight_max=w_max,
            rectify=index < last,
            generator=generator,
        )
        out.append(h)
    return tuple(out)


def deployment_scales(weights: Sequence[torch.Tensor]) -> tuple[float, ...]:
    """Map each layer to the full weight range of the chip: ``w_max = max |W|`` per layer (as the
    full-range mapping of analog in-memory computing); a layer of zeros gets 1."""
    scales = []
    for index, w in enumerate(weights):
        _validate.finite_tensor(f"weights[{index}]", w)
        m = float(w.detach().abs().max()) if w.numel() else 0.0
        scales.append(m if m > 0 else 1.0)
    return tuple(scales)


class RateLayer(nn.Module):
    """Weights of one layer, ``weight`` [n_out, n_in + 1] (last column: the bias row)."""

    families = {"weight": WEIGHTS}

    def __init__(self, n_in: int, n_out: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        _validate.positive_int("n_in", n_in)
        _validate.positive_int("n_out", n_out)
        bound = 1.0 / math.sqrt(n_in)
        w = (torch.rand(n_out, n_in + 1, generator=generator) * 2.0 - 1.0) * bound
        self.weight = nn.Parameter(w)


class RateNetwork(nn.Module):
    """The ideal software model: ``sizes = (n_in, n_hidden..., n_out)``; hidden layers
    ``r = clamp(W [x; 1], 0, 1)``, the output ``W [r; 1]`` (logits).
    ``forward(x [B, n_in]) -> [B, n_out]``."""

    def __init__(self, sizes: Sequence[int], generator: torch.Generator | None = None) -> None:
        super().__init__()
        if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence) or len(sizes) < 2:
            raise ValueError(f"sizes must list at least (n_in, n_out), got {sizes!r}")
        for index, n in enumerate(sizes):
            _validate.positive_int(f"sizes[{index}]", n)
        self.sizes = tuple(int(n) for n in sizes)
        self.layers = nn.ModuleList(
            RateLayer(a, b, generator) for a, b in zip(self.sizes[:-1], self.sizes[1:], strict=True)
        )

    @property
    def shapes(self) -> tuple[tuple[int, int], ...]:
        """Synapse shapes for :func:`make_chip` (bias row included)."""
        return tuple((b, a + 1) for a, b in zip(self.sizes[:-1], self.sizes[1:], strict=True))

    def weights(self) -> tuple[torch.Tensor, ...]:
        return tuple(layer.weight for layer in self.layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_activity("x", x, self.sizes[0])
        h = x
        last = len(self.layers) - 1
        for index, layer in enumerate(self.layers):
            a = with_bias_input(h) @ layer.weight.T
            h = a.clamp(0.0, 1.0) if index < last else a
        return h
