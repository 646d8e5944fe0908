"""Recurrent spiking layer with a mixed LIF + ALIF population: the LSNN.

Bellec, Salaj, Subramoney, Legenstein, Maass (NeurIPS 2018), "Long short-term memory and
learning-to-learn in networks of spiking neurons"; official code IGITUGraz/LSNN-official
(``lsnn/spiking_models.py``, ``ALIF`` with ``beta = 0`` for the regular neurons, as the tutorials do).

The first ``n_lif`` neurons are regular (``beta = 0``), the next ``n_alif`` adaptive, each with its own
``tau_adapt`` and ``beta``. The input current of neuron ``j`` is

    I_j(t) = sum_i W_in[i, j] x_i(t - d_in[i, j]) + sum_k W_rec[k, j] z_k(t - 1 - d_rec[k, j])

with integer delays ``d`` drawn uniformly from ``{0, ..., n_delay - 1}`` and fixed; autapses
``W_rec[j, j]`` are forced to zero. With ``dale`` set, a fraction of neurons is excitatory and every
outgoing recurrent weight takes its neuron's sign: ``W_rec[k, :] = sign_k * |theta[k, :]|``.
The neuron dynamics are :mod:`neuromorph.neurons.alif`; the loop over time is
:func:`neuromorph.kernels.alif_sequence` (fused BPTT unless gradients must reach the initial state).
Tensors are time-major ``[T, B, features]``; state is explicit.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from .. import _validate
from ..families import ADAPTATION, TAUS, THRESHOLDS, WEIGHTS
from ..kernels import cpu_native
from ..kernels.alif_sequence import (
    IMPLEMENTATIONS,
    NATIVE_MAX_NEURONS,
    alif_sequence,
    alif_sequence_checkpointed,
)
from ..neurons.alif import ALIFParameters, ALIFState, alif_initial_state
from ..spikes import Surrogate, Triangle

__all__ = ["RecurrentState", "SpikeTrace", "RecurrentSpikingLayer"]


class RecurrentState(NamedTuple):
    """Neuron state (``v, z, b, refractory``, each ``[B, N]``) and the delayed currents already on
    their way (``pending``, ``[B, n_delay, N]``; slot ``d`` arrives ``d`` steps into the next call)."""

    neurons: ALIFState
    pending: torch.Tensor

    def detach(self) -> RecurrentState:
        """The same state cut from the graph (carry it over between batches, as the official code)."""
        return RecurrentState(ALIFState(*(t.detach() for t in self.neurons)), self.pending.detach())


class SpikeTrace(NamedTuple):
    """Spikes ``z``, membrane voltages ``v`` and adaptive thresholds ``a``, each ``[T, B, N]``."""

    z: torch.Tensor
    v: torch.Tensor
    a: torch.Tensor


def _per_neuron(name: str, value, n: int) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=torch.float32).flatten()
    if t.numel() == 1:
        t = t.expand(n).clone()
    if t.numel() != n:
        raise ValueError(f"{name} must be a number or have {n} entries, got {t.numel()}")
    return t


class RecurrentSpikingLayer(nn.Module):
    """LSNN layer: ``n_lif`` LIF + ``n_alif`` ALIF neurons, input and recurrent weights with delays.

    ``forward(x, state=None) -> (z, state)`` with ``x`` ``[T, B, n_in]`` and ``z`` ``[T, B, N]``;
    ``trace(x, state=None) -> (SpikeTrace, state)`` also returns voltages and thresholds.
    Defaults are the LSNN store-recall tutorial's (tau_mem 20 ms, tau_adapt 1200 ms, beta 1.7,
    b0 0.01, pseudo-derivative ``Triangle(0.3)``).

    ``checkpoint_every=k`` trades compute for memory in training: the sequence runs in chunks of ``k``
    steps under activation checkpointing (``kernels.alif_sequence.alif_sequence_checkpointed``), so
    BPTT over ``T = 10,000`` steps keeps ``T / k`` states instead of every step's intermediates."""

    families = {
        "w_in": WEIGHTS,
        "w_rec": WEIGHTS,
        "threshold": THRESHOLDS,
        "tau_mem": TAUS,
        "tau_adapt": TAUS,
        "beta": ADAPTATION,
    }

    def __init__(
        self,
        n_in: int,
        n_lif: int,
        n_alif: int,
        *,
        tau_mem: float | torch.Tensor = 20.0,
        tau_adapt: float | torch.Tensor = 1200.0,
        beta: float | torch.Tensor = 1.7,
        threshold: float = 0.01,
        n_refractory: int = 0,
        n_delay: int = 1,
        dt: float = 1.0,
        surrogate: Surrogate = Triangle(gamma=0.3),
        dale: float | None = None,
        generator: torch.Generator | None = None,
        impl: str = "auto",
        checkpoint_every: int | None = None,
    ) -> None:
        super().__init__()
        _validate.positive_int("n_in", n_in)
        _validate.non_negative_int("n_lif", n_lif)
        _validate.non_negative_int("n_alif", n_alif)
        if n_lif + n_alif == 0:
            raise ValueError(f"n_lif + n_alif must be at least 1, got n_lif={n_lif}, n_alif={n_alif}")
        _validate.positive("tau_mem", tau_mem if not isinstance(tau_mem, torch.Tensor) else tau_mem.float())
        _validate.positive(
            "tau_adapt", tau_adapt if not isinstance(tau_adapt, torch.Tensor) else tau_adapt.float()
        )
        _validate.positive(
            "beta", beta if not isinstance(beta, torch.Tensor) else beta.float(), allow_zero=True
        )
        _validate.positive("threshold", threshold)
        _validate.non_negative_int("n_refractory", n_refractory)
        _validate.positive_int("n_delay", n_delay)
        _validate.positive("dt", dt)
        if not isinstance(surrogate, Surrogate):
            raise ValueError(
                f"surrogate must be a neuromorph.spikes.Surrogate, got {type(surrogate).__name__}"
            )
        if dale is not None and not (isinstance(dale, (int, float)) and 0.0 <= dale <= 1.0):
            raise ValueError(f"dale (fraction of excitatory neurons) must be in [0, 1] or None, got {dale!r}")
        if impl not in IMPLEMENTATIONS:
            raise ValueError(f"impl must be one of {IMPLEMENTATIONS}, got {impl!r}")
        if checkpoint_every is not None:
            _validate.positive_int("checkpoint_every", checkpoint_every)
            if impl == "native":
                raise ValueError(
                    "checkpoint_every needs impl 'auto', 'fused' or 'reference', got impl='native'"
                )
        self.checkpoint_every = checkpoint_every
        n = n_lif + n_alif
        self.n_in, self.n_lif, self.n_alif, self.n = n_in, n_lif, n_alif, n
        self.n_refractory, self.n_delay, self.dt, self.surrogate, self.impl = (
            n_refractory,
            n_delay,
            dt,
            surrogate,
            impl,
        )

        self.register_buffer("tau_mem", _per_neuron("tau_mem", tau_mem, n))
        tau_a = torch.full((n,), 1.0)
        b = torch.zeros(n)
        if n_alif:
            tau_a[n_lif:] = _per_neuron("tau_adapt", tau_adapt, n_alif)
            b[n_lif:] = _per_neuron("beta", beta, n_alif)
        tau_a[:n_lif] = tau_a[n_lif:].mean() if n_alif else 1.0  # irrelevant for LIF (beta = 0)
        self.register_buffer("tau_adapt", tau_a)
        self.register_buffer("beta", b)
        self.register_buffer("threshold", torch.full((n,), float(threshold)))

        g = generator
        self.w_in = nn.Parameter(torch.randn(n_in, n, generator=g) / math.sqrt(n_in))
        self.w_rec = nn.Parameter(torch.randn(n, n, generator=g) / math.sqrt(n))
        self.register_buffer("in_delay", torch.randint(n_delay, (n_in, n), generator=g))
        self.register_buffer("rec_delay", torch.randint(n_delay, (n, n), generator=g))
        self.register_buffer("rec_mask", 1.0 - torch.eye(n))  # no autapses
        if dale is not None:
            n_exc = int(round(dale * n))
            sign = torch.ones(n)
            sign[torch.randperm(n, generator=g)[n_exc:]] = -1.0
            self.register_buffer("rec_sign", sign)
        else:
            self.register_buffer("rec_sign", None)

    # -- weights -------------------------------------------------------------------------------
    def effective_w_rec(self) -> torch.Tensor:
        """``[N_pre, N_post]`` recurrent weights as used: autapses removed, Dale signs applied."""
        w = self.w_rec
        if self.rec_sign is not None:
            w = self.rec_sign[:, None] * w.abs()
        return w * self.rec_mask

    def _delayed(self, w: torch.Tensor, delay: torch.Tensor) -> torch.Tensor:
        """``[pre, post]`` weights and delays -> ``[D, pre, post]`` with one non-zero delay per synapse."""
        onehot = torch.nn.functional.one_hot(delay, self.n_delay).to(w.dtype)  # [pre, post, D]
        return (w.unsqueeze(-1) * onehot).permute(2, 0, 1)

    def parameters_for_neurons(self) -> ALIFParameters:
        return ALIFParameters(
            tau_mem=self.tau_mem,
            tau_adapt=self.tau_adapt,
            beta=self.beta,
            threshold=self.threshold,
            n_refractory=self.n_refractory,
            dt=self.dt,
            surrogate=self.surrogate,
        )

    # -- state ---------------------------------------------------------------------------------
    def initial_state(self, batch_size: int, *, device=None, dtype=torch.float32) -> RecurrentState:
        """Zero state for ``batch_size`` sequences."""
        _validate.positive_int("batch_size", batch_size)
        device = device if device is not None else self.w_in.device
        neurons = alif_initial_state(batch_size, self.n, device=device, dtype=dtype)
        return RecurrentState(
            neurons, torch.zeros(batch_size, self.n_delay, self.n, device=device, dtype=dtype)
        )

    def _check_state(self, state: RecurrentState, x: torch.Tensor) -> None:
        if not isinstance(state, RecurrentState):
            raise ValueError(f"state must be a RecurrentState (or None), got {type(state).__name__}")
        batch = x.shape[1]
        for name, t in zip(ALIFState._fields, state.neurons, strict=True):
            _validate.same_device_dtype(f"state.neurons.{name}", t, "x", x)
            if tuple(t.shape) != (batch, self.n):
                raise ValueError(
                    f"state.neurons.{name} must have shape {(batch, self.n)}, got {tuple(t.shape)}"
                )
        _validate.same_device_dtype("state.pending", state.pending, "x", x)
        if tuple(state.pending.shape) != (batch, self.n_delay, self.n):
            want = (batch, self.n_delay, self.n)
            raise ValueError(f"state.pending must have shape {want}, got {tuple(state.pending.shape)}")

    # -- dynamics ------------------------------------------------------------------------------
    def external_current(self, x: torch.Tensor) -> torch.Tensor:
        """Input current with input delays resolved: ``[T + D, B, N]`` (the last D rows spill over)."""
        n_steps, batch, _ = x.shape
        d = self.n_delay
        # Event-driven input in C: always with impl="native"; with "auto" when delays make the dense
        # product D times wasteful or the layer is small (a dense BLAS product wins for wide layers).
        wanted = self.impl == "native" or (self.impl == "auto" and (d > 1 or self.n <= NATIVE_MAX_NEURONS))
        if (
            wanted
            and x.device.type == "cpu"
            and self.w_in.device.type == "cpu"
            and x.dtype == self.w_in.dtype
            and x.dtype in (torch.float32, torch.float64)
            and not x.requires_grad
            and cpu_native.available()
        ):  # event-driven over the non-zero inputs, in C; no gradient to x
            return cpu_native.NativeDelayedInput.apply(x, self.w_in, self.in_delay, d)
        if d == 1:
            current = x @ self.w_in
            return torch.cat([current, current.new_zeros(1, batch, self.n)])
        w_all = self._delayed(self.w_in, self.in_delay).permute(1, 0, 2).reshape(self.n_in, d * self.n)
        y = (x.reshape(n_steps * batch, self.n_in) @ w_all).view(n_steps, batch, d, self.n)
        current = y.new_zeros(n_steps + d, batch, self.n)
        for k, y_k in enumerate(y.unbind(2)):  # unbind: one gradient buffer, not one per delay
            current[k : k + n_steps] += y_k
        return current

    def _run(self, x: torch.Tensor, state: RecurrentState | None, impl: str, checkpointed: bool = False):
        _validate.same_device_dtype("x", x, "w_in", self.w_in)
        _validate.sequence("x", x, self.n_in)
        if state is None:
            state = self.initial_state(x.shape[1], device=x.device, dtype=x.dtype)
        else:
            self._check_state(state, x)
        w_rec = self._delayed(self.effective_w_rec(), self.rec_delay)
        args = (self.external_current(x), w_rec, state.neurons, state.pending, self.parameters_for_neurons())
        if checkpointed and self.checkpoint_every is not None and torch.is_grad_enabled():
            # memory for T / k chunk states instead of T steps; only spikes and the state come back
            out = alif_sequence_checkpointed(*args, every=self.checkpoint_every, impl=impl)
        else:
            out = alif_sequence(*args, impl)
        # The returned state continues the simulation; gradients stop at call boundaries (truncated
        # BPTT, as the official code feeds the last final state back as a constant). Run the whole
        # sequence in one call to backpropagate through all of it.
        return out, RecurrentState(out.state, out.pending).detach()

    def forward(
        self, x: torch.Tensor, state: RecurrentState | None = None
    ) -> tuple[torch.Tensor, RecurrentState]:
        """Spikes ``[T, B, N]`` (differentiable) and the final state (detached)."""
        out, state = self._run(x, state, self.impl, checkpointed=True)
        return out.z, state

    def trace(
        self, x: torch.Tensor, state: RecurrentState | None = None
    ) -> tuple[SpikeTrace, RecurrentState]:
        """Spikes, voltages and adaptive thresholds ``[T, B, N]`` and the final state (detached).

        With gradients enabled this runs the eager reference, so that losses on ``v`` or ``a`` get
        their gradients (the fast paths differentiate the spikes only); under ``torch.no_grad()`` it
        uses the layer's fast path."""
        out, state = self._run(x, state, "reference" if torch.is_grad_enabled() else self.impl)
        return SpikeTrace(out.z, out.v, out.a), state

    def extra_repr(self) -> str:
        return (
            f"n_in={self.n_in}, n_lif={self.n_lif}, n_alif={self.n_alif}, n_refractory={self.n_refractory}, "
            f"n_delay={self.n_delay}, dt={self.dt}, surrogate={self.surrogate}, "
            f"dale={self.rec_sign is not None}"
        )
