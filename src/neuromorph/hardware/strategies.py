"""The two strategies besides in-the-loop training for networks on imperfect analog substrates.

Petrovici et al. 2017, "Pattern representation and recognition with accelerated analog neuromorphic
systems" (arXiv:1703.06043) name three ways to live with analog variability: (1) auxiliary network
components that stabilise activity, (2) architectures that are robust by construction, (3) training
with the hardware in the loop (``in_the_loop.py``). This module implements (1) and (2) for the rate
networks of ``substrate.py`` so the three can be compared on the same chip.

(1) Auxiliary homeostatic components (:func:`homeostatic_compensation`). Every neuron i of the chip
gets an auxiliary drive beta_i from a population of constant-rate sources (the bias row) and a
synaptic-scaling factor c_i on its trained input synapses. Both adapt without labels and without
gradients, from activity recorded on the chip for unlabelled inputs, until each neuron's mean and
spread match those of the same neuron in the software model (targets mu*_i, sigma*_i):

    c_i    <- c_i * clip((sigma*_i / sigma_i)^eta, 1/2, 2)          synaptic scaling (spread)
    beta_i <- beta_i + eta * (mu*_i - mu_i)                          auxiliary drive (mean)
    W'_i   = [c_i * W_i,in ; W_i,bias + beta_i]

This undoes per-neuron gain and threshold mismatch (and the mean effect of synapse mismatch), not the
per-synapse pattern itself.

(2) Robust architecture: an ensemble / population code (:func:`ensemble_network`). Each hidden and
output unit is represented by ``copies`` neurons in ``copies`` disjoint copies of the trained network
(the input layer is shared); the class scores are the population averages. The copies sit on
different neurons and synapses, so their mismatch errors are independent and the average's error
shrinks roughly as 1/sqrt(copies), at copies-fold the chip area. No retraining is needed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .. import _validate
from .substrate import Chip, RateNetwork, substrate_forward

__all__ = ["homeostatic_compensation", "ensemble_network", "ensemble_readout"]


def _activity_stats(acts: Sequence[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(a.mean(0), a.std(0, unbiased=False)) for a in acts]


@torch.no_grad()
def homeostatic_compensation(
    net: RateNetwork,
    chip: Chip,
    x: torch.Tensor,
    *,
    weight_max: Sequence[float],
    iterations: int = 20,
    eta: float = 0.5,
    max_scale: float = 4.0,
    generator: torch.Generator | None = None,
) -> RateNetwork:
    """Return a copy of ``net`` whose weights include the auxiliary drive and synaptic scaling of the
    module docstring, adapted for ``iterations`` rounds on ``chip`` (mapped with the fixed ranges
    ``weight_max``) with the unlabelled inputs ``x`` [B, n_in]. Each round runs the chip once; all
    layers adapt together, each neuron towards the software model's statistics on ``x``. A silent
    neuron (no spread) is not scaled, only driven; the scaling stays within [1/max_scale, max_scale]
    and every weight within the chip's range, so a dead neuron cannot wind the controller up.
    ``generator`` draws the chip's trial-to-trial noise."""
    if not isinstance(net, RateNetwork):
        raise ValueError(f"net must be a RateNetwork, got {type(net).__name__}")
    _validate.positive_int("iterations", iterations)
    _validate.positive("eta", eta)
    _validate.positive("max_scale", max_scale)
    if max_scale < 1:
        raise ValueError(f"max_scale must be >= 1, got {max_scale!r}")
    if len(weight_max) != len(net.layers):
        raise ValueError(f"weight_max needs {len(net.layers)} entries, got {len(weight_max)}")
    out = RateNetwork(net.sizes).to(x.device)
    out.load_state_dict(net.state_dict())
    targets = _activity_stats(_software_activity(net, x))
    base = [w.detach().clone() for w in net.weights()]
    scale = [torch.ones(w.shape[0], dtype=w.dtype, device=w.device) for w in base]
    for _ in range(iterations):
        acts = substrate_forward(x, out.weights(), chip, weight_max=weight_max, generator=generator)
        for li, ((mu, sd), (mu_t, sd_t)) in enumerate(zip(_activity_stats(acts), targets, strict=True)):
            ratio = torch.where((sd > 0) & (sd_t > 0), sd_t / sd.clamp(min=1e-12), torch.ones_like(sd))
            scale[li] = (scale[li] * ratio.pow(eta)).clamp(1.0 / max_scale, max_scale)
            w = out.layers[li].weight
            bias = w[:, -1] + eta * (mu_t - mu)
            new = torch.cat([base[li][:, :-1] * scale[li][:, None], bias[:, None]], dim=1)
            w.copy_(new.clamp(-weight_max[li], weight_max[li]))
    return out


def _software_activity(net: RateNetwork, x: torch.Tensor) -> list[torch.Tensor]:
    acts, h = [], x
    last = len(net.layers) - 1
    for index, layer in enumerate(net.layers):
        a = torch.cat([h, h.new_ones(h.shape[0], 1)], dim=1) @ layer.weight.T
        h = a.clamp(0.0, 1.0) if index < last else a
        acts.append(h)
    return acts


@torch.no_grad()
def ensemble_network(net: RateNetwork, copies: int) -> RateNetwork:
    """``copies`` disjoint copies of ``net`` side by side on one chip, reading the same input: sizes
    ``(n_in, copies * n_1, ..., copies * n_L)``; layer 1 repeats ``net``'s rows, deeper layers are
    block-diagonal (copy-major order) and share the bias row. Its ideal output, read with
    :func:`ensemble_readout`, equals ``net``'s output."""
    if not isinstance(net, RateNetwork):
        raise ValueError(f"net must be a RateNetwork, got {type(net).__name__}")
    _validate.positive_int("copies", copies)
    sizes = (net.sizes[0], *(copies * n for n in net.sizes[1:]))
    ens = RateNetwork(sizes).to(net.layers[0].weight.device)
    for index, (src, dst) in enumerate(zip(net.layers, ens.layers, strict=True)):
        w = src.weight.detach()
        if index == 0:
            dst.weight.copy_(w.repeat(copies, 1))
            continue
        blocks = torch.block_diag(*([w[:, :-1]] * copies))
        dst.weight.copy_(torch.cat([blocks, w[:, -1:].repeat(copies, 1)], dim=1))
    return ens


def ensemble_readout(out: torch.Tensor, copies: int) -> torch.Tensor:
    """Population average of an ensemble's output ``[B, copies * n] -> [B, n]`` (copy-major)."""
    _validate.positive_int("copies", copies)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] % copies:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"out must be [batch, copies * n] with copies={copies}, got {got}")
    return out.reshape(out.shape[0], copies, -1).mean(1)
