"""Natural e-prop: a meta-trained spiking network emits the e-prop learning signals of a trainee network.

Ortner et al. (Nat. Commun. 2025), "Rapid learning with phase-change memory-based in-memory computing
through learning-to-learn", robot-arm experiment (``reference/papers.md`` section 4.4); e-prop of Bellec
et al. (Nat. Commun. 2020). Two networks:

- the **trainee**: recurrent LIF neurons (LSNN-official conventions of ``neurons/alif.py`` with
  ``beta = 0``) driven by a fixed clock input, with a leaky readout of the joint angular velocities;
- the **learning-signal generator** (LSG): an LSNN (LIF + ALIF) that sees the clock and the target
  (binary-coded end-effector coordinates) and emits one learning signal ``L_j(t)`` per trainee neuron
  through a leaky readout.

One inner update (natural e-prop, the LIF case of ``learning/eprop.py``; no readout filtering, since the
LSG's signals are not readout errors):

    psi_j(t)  = gamma max(0, 1 - |s_j(t)|) / (A dt),   s = (v_j(t-1) - A) / A,   0 while refractory
    xbar_i(t) = alpha xbar_i(t-1) + (1 - alpha) u_i(t)      (u: the input x_i(t), or the spike z_i(t-1))
    dW_ji     = -eta sum_t L_j(t) psi_j(t) xbar_i(t-1)                         (W_in and W_rec; W_out fixed)

optionally rounded to the device grid (``update_step``; the L2L robot code rounds to 1/16), with a straight-
through gradient, and the updated weights clipped to the device range (``w_max``). Meta-training (outer
loop, in software): run the trainee, the LSG and the update, run the trainee again with the updated weights,
and backpropagate the loss of the second run (``tasks.arm.trajectory_loss`` + firing-rate regularisers)
through the update into the LSG and into the trainee's initial weights (BPTT through one inner update; the
surrogate gradient crosses the spikes).

``smooth``: a temperature ``tau`` replaces the trainee's Heaviside spike by ``sigmoid(s / tau)`` and the
pseudo-derivative by its exact derivative. This makes the whole computation differentiable in the
ordinary sense, so that finite differences can check the meta-gradient (tests); it is not a model.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .. import _validate
from ..layers.readout import LeakyReadout
from ..layers.recurrent import RecurrentSpikingLayer
from ..spikes import Surrogate, Triangle, spike
from ..tasks.arm import Arm, Trajectories, trajectory_loss
from .regularizers import firing_rate_loss

__all__ = [
    "Trainee",
    "LearningSignalGenerator",
    "TraineeRun",
    "trainee_run",
    "natural_eprop_update",
    "quantise_straight_through",
    "MetaLoss",
    "meta_loss",
]


class Trainee(nn.Module):
    """Recurrent LIF layer (clock input, no autapses, ``n_delay = 1``) + leaky readout of ``n_out``
    angular velocities. The module only holds the weights; :func:`trainee_run` runs it."""

    def __init__(
        self,
        n_in: int,
        n: int,
        n_out: int,
        *,
        threshold: float = 0.6,
        tau_mem: float = 20.0,
        tau_out: float = 20.0,
        n_refractory: int = 5,
        gamma: float = 0.3,
        in_scale: float = 1.0,
        out_scale: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        _validate.positive("in_scale", in_scale)
        _validate.positive("out_scale", out_scale)
        self.rsnn = RecurrentSpikingLayer(
            n_in,
            n,
            0,
            tau_mem=tau_mem,
            threshold=threshold,
            n_refractory=n_refractory,
            surrogate=Triangle(gamma=gamma),
            generator=generator,
        )
        self.readout = LeakyReadout(n, n_out, tau_out=tau_out, generator=generator)
        with torch.no_grad():
            self.rsnn.w_in.mul_(in_scale)
            self.readout.weight.mul_(out_scale)


class LearningSignalGenerator(nn.Module):
    """LSNN (``n_lif`` LIF + ``n_alif`` ALIF) + leaky readout (with bias) to ``n_signals`` learning
    signals; ``forward(x [T, B, n_in]) -> (signals [T, B, n_signals], spikes [T, B, n_lif + n_alif])``."""

    def __init__(
        self,
        n_in: int,
        n_lif: int,
        n_alif: int,
        n_signals: int,
        *,
        threshold: float = 1.3,
        beta: float = 1.6,
        tau_adapt: float = 600.0,
        tau_mem: float = 20.0,
        tau_out: float = 20.0,
        n_refractory: int = 5,
        gamma: float = 0.3,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.rsnn = RecurrentSpikingLayer(
            n_in,
            n_lif,
            n_alif,
            tau_mem=tau_mem,
            tau_adapt=tau_adapt,
            beta=beta,
            threshold=threshold,
            n_refractory=n_refractory,
            surrogate=Triangle(gamma=gamma),
            generator=generator,
        )
        self.readout = LeakyReadout(
            n_lif + n_alif, n_signals, tau_out=tau_out, bias=True, generator=generator
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z, _ = self.rsnn(x)
        signals, _ = self.readout(z)
        return signals, z


class TraineeRun(NamedTuple):
    """One trainee run: spikes ``z`` and ``psi`` (pseudo-derivative over ``A dt``) ``[T, B, N]``,
    readout ``outputs`` ``[T, B, K]``, presynaptic traces ``pre`` ``[T, B, n_in + N]`` (``xbar(t-1)``:
    the input synapses first, then the recurrent ones)."""

    z: torch.Tensor
    outputs: torch.Tensor
    psi: torch.Tensor
    pre: torch.Tensor


def _drive(u: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return u @ w if w.dim() == 2 else torch.bmm(u.unsqueeze(1), w).squeeze(1)


def _check_weight(name: str, w: torch.Tensor, shape: tuple[int, int]) -> None:
    if not isinstance(w, torch.Tensor) or w.dim() not in (2, 3) or tuple(w.shape[-2:]) != shape:
        got = tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__
        raise ValueError(f"{name} must have shape {shape} or [B, {shape[0]}, {shape[1]}], got {got}")


def trainee_run(
    trainee: Trainee,
    x: torch.Tensor,
    w_in: torch.Tensor | None = None,
    w_rec: torch.Tensor | None = None,
    w_out: torch.Tensor | None = None,
    *,
    smooth: float | None = None,
) -> TraineeRun:
    """Run the trainee over ``x`` ``[T, B, n_in]`` with its own weights or the given ones (``[n_pre, N]``
    shared, or ``[B, n_pre, N]`` one per sequence; ``w_rec`` is used as given: pass effective weights)
    and record what the e-prop update needs. Differentiable with respect to the weights (surrogate
    gradient through the spikes, ordinary gradient through ``psi``)."""
    layer = trainee.rsnn
    n, n_in = layer.n, layer.n_in
    _validate.sequence("x", x, n_in)
    w_in = layer.w_in if w_in is None else w_in
    w_rec = layer.effective_w_rec() if w_rec is None else w_rec
    w_out = trainee.readout.weight if w_out is None else w_out
    _check_weight("w_in", w_in, (n_in, n))
    _check_weight("w_rec", w_rec, (n, n))
    if not isinstance(w_out, torch.Tensor) or tuple(w_out.shape) != (n, trainee.readout.n_out):
        raise ValueError(f"w_out must have shape {(n, trainee.readout.n_out)}, got {tuple(w_out.shape)}")
    if smooth is not None:
        _validate.positive("smooth", smooth)
        if layer.n_refractory:
            raise ValueError(
                f"smooth spikes need a trainee without refractoriness, got n_refractory={layer.n_refractory}"
            )
    batches = {"x": x.shape[1]}
    batches.update({name: w.shape[0] for name, w in (("w_in", w_in), ("w_rec", w_rec)) if w.dim() == 3})
    batch = max(batches.values())
    bad = {name: b for name, b in batches.items() if b not in (1, batch)}
    if bad:
        raise ValueError(f"batch sizes disagree: {bad} (each must be 1 or {batch})")
    x = x.expand(-1, batch, -1)
    if not bool((layer.tau_mem == layer.tau_mem[0]).all()):
        raise ValueError(
            "the trainee needs one tau_mem for all neurons (its traces are kept per presynaptic input)"
        )
    dt, thr = layer.dt, layer.threshold.to(x)
    alpha = float(torch.exp(-dt / layer.tau_mem[0]))
    kappa = float(torch.exp(-trainee.readout.dt / trainee.readout.tau_out))
    surrogate: Surrogate = layer.surrogate
    zeros = x.new_zeros(batch, n)
    v, z_prev, refractory, y = zeros, zeros, zeros, zeros
    ev = x.new_zeros(batch, n_in + n)
    zs, outs, psis, pres = [], [], [], []
    for t in range(x.shape[0]):
        s = (v - thr) / thr
        if smooth is None:
            z = spike(s, surrogate)
            psi = surrogate.derivative(s)
            if layer.n_refractory > 0:
                free = (refractory == 0).to(x.dtype)
                z, psi = z * free, psi * free
                refractory = torch.where(z > 0, float(layer.n_refractory), (refractory - 1).clamp(min=0))
        else:
            z = torch.sigmoid(s / smooth)
            psi = z * (1.0 - z) / smooth
        z = z / dt
        u = torch.cat([x[t], z_prev], dim=1)
        pres.append(ev)
        psis.append(psi / (thr * dt))
        current = _drive(x[t], w_in) + _drive(z_prev, w_rec)
        v = alpha * v + (1.0 - alpha) * current - thr * z_prev * dt
        ev = alpha * ev + (1.0 - alpha) * u
        y = kappa * y + (1.0 - kappa) * z
        zs.append(z)
        outs.append(y @ w_out)
        z_prev = z
    return TraineeRun(torch.stack(zs), torch.stack(outs), torch.stack(psis), torch.stack(pres))


def natural_eprop_update(
    run: TraineeRun, signals: torch.Tensor, eta: float, *, n_in: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One natural e-prop update per sequence: ``dW_ji = -eta sum_t L_j(t) psi_j(t) xbar_i(t-1)``.

    ``signals`` ``[T, B, N]`` (one learning signal per trainee neuron and step; a run of batch 1 is
    shared by all B). Returns ``(dw_in [B, n_in, N], dw_rec [B, N, N])`` (autapses not masked here)."""
    if not isinstance(run, TraineeRun):
        raise ValueError(f"run must be a TraineeRun, got {type(run).__name__}")
    n_steps, b_run, n = run.psi.shape
    if (
        not isinstance(signals, torch.Tensor)
        or signals.dim() != 3
        or signals.shape[0] != n_steps
        or signals.shape[2] != n
    ):
        got = tuple(signals.shape) if isinstance(signals, torch.Tensor) else type(signals).__name__
        raise ValueError(
            f"learning signals must have shape [T={n_steps}, B, N={n}] (one per trainee neuron), got {got}"
        )
    if b_run not in (1, signals.shape[1]):
        raise ValueError(
            f"learning signals have batch {signals.shape[1]} but the trainee run has batch {b_run}"
        )
    _validate.finite_tensor("learning signals", signals)
    if isinstance(eta, bool) or not isinstance(eta, (int, float)):
        raise ValueError(f"eta must be a number, got {eta!r}")
    _validate.positive("eta", eta, allow_zero=True)
    batch = signals.shape[1]
    factor = (run.psi * signals).expand(n_steps, batch, n)
    pre = run.pre.expand(n_steps, batch, run.pre.shape[2])
    dw = -eta * torch.einsum("tbi,tbj->bij", pre, factor)
    return dw[:, :n_in], dw[:, n_in:]


class _RoundST(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, step: float) -> torch.Tensor:
        return torch.round(x / step) * step

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def quantise_straight_through(delta: torch.Tensor, step: float) -> torch.Tensor:
    """``step * round(delta / step)`` (nearest, the L2L robot code's rounding) with the gradient passed
    straight through."""
    _validate.positive("step", step)
    return _RoundST.apply(delta, float(step))


class MetaLoss(NamedTuple):
    """Loss of one meta-training step and what went into it (runs before/after the update, learning
    signals, LSG spikes, the per-sequence updates ``dw_in``/``dw_rec``)."""

    loss: torch.Tensor
    task_loss: torch.Tensor
    before: TraineeRun
    after: TraineeRun
    signals: torch.Tensor
    lsg_spikes: torch.Tensor
    dw_in: torch.Tensor
    dw_rec: torch.Tensor


def meta_loss(
    trainee: Trainee,
    lsg: LearningSignalGenerator,
    clock: torch.Tensor,
    lsg_input: torch.Tensor,
    target: Trajectories,
    arm: Arm,
    *,
    eta: float,
    update_step: float | None = None,
    reg_trainee: float = 0.0,
    reg_lsg: float = 0.0,
    rate_trainee_hz: float = 20.0,
    rate_lsg_hz: float = 10.0,
    smooth: float | None = None,
    w_max: float | None = None,
) -> MetaLoss:
    """Loss after one natural e-prop update (differentiable into the LSG and the trainee's weights).

    ``clock`` ``[T, n_clock]`` (the trainee's input, the same for every task), ``lsg_input``
    ``[T, B, n_lsg_in]`` (clock + coded target), ``target`` the B movements to learn. ``w_max`` clips the
    updated weights to the device range ``[-w_max, w_max]`` as the chip does (the gradient of the clip is
    the true one: zero where it bites), so that the LSG learns updates the device can hold."""
    if not isinstance(clock, torch.Tensor) or clock.dim() != 2:
        raise ValueError(
            f"clock must have shape [T, n_clock], got {getattr(clock, 'shape', type(clock).__name__)}"
        )
    layer = trainee.rsnn
    before = trainee_run(trainee, clock.unsqueeze(1), smooth=smooth)
    signals, lsg_z = lsg(lsg_input)
    dw_in, dw_rec = natural_eprop_update(before, signals, eta, n_in=layer.n_in)
    if update_step is not None:
        dw_in, dw_rec = (
            quantise_straight_through(dw_in, update_step),
            quantise_straight_through(dw_rec, update_step),
        )
    w_in, w_rec = layer.w_in + dw_in, layer.w_rec + dw_rec
    if w_max is not None:
        _validate.positive("w_max", w_max)
        w_in, w_rec = w_in.clamp(-w_max, w_max), w_rec.clamp(-w_max, w_max)
    w_rec = w_rec * layer.rec_mask
    after = trainee_run(trainee, clock.unsqueeze(1), w_in, w_rec, smooth=smooth)
    task = trajectory_loss(after.outputs, target, arm)
    loss = task
    if reg_trainee > 0:
        loss = loss + firing_rate_loss(
            torch.cat([before.z.expand_as(after.z), after.z]),
            target_hz=rate_trainee_hz,
            coefficient=reg_trainee,
        )
    if reg_lsg > 0:
        loss = loss + firing_rate_loss(lsg_z, target_hz=rate_lsg_hz, coefficient=reg_lsg)
    return MetaLoss(loss, task, before, after, signals, lsg_z, dw_in, dw_rec)
