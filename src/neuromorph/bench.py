"""Benchmark harness (issue 3): forward + backward time, peak memory and a gradient check of spiking
layers in neuromorph and in peer libraries, on the same inputs and weights.

Cases (time-major input ``[T, B, n_in]`` of Poisson spikes, density 3 %, from a fixed seed; weights the
layers' default initialisation times a per-case gain so that 2-5 % of the neurons spike per step):

``a``  Linear 512 -> 512 + LIF, batch 32, T = 200 (feed-forward)
``b``  recurrent LSNN, 100 LIF + 100 ALIF, 80 inputs, batch 64, T = 1000
``c``  recurrent 1024 LIF neurons, 1024 inputs, batch 32, T = 500

Frameworks: ``neuromorph`` (the layer with ``impl="auto"``, what users get), ``eager`` (the same layer with
``impl="reference"``: an autograd loop over ``unbind(0)`` of the input current, written as a careful user
would), and the peers ``snntorch`` (Leaky / RLeaky), ``norse`` (LIFBoxCell loop / LSNNRecurrentCell /
LIFRecurrentCell) and ``spikingjelly`` (multi-step ``LIFNode`` with its default backend, case a only; on
CPU, SpikingJelly 2.0.0 has no compiled kernel: its ``sj_lif`` op binds a torch reference loop, and
under autograd that loop itself) when they are importable. A peer that is not importable gives a
record with a ``note`` and no numbers; the harness never fails because of it.

What is measured, per (case, framework):

``fwd_bwd_ms_median``
    Median wall time (``time.perf_counter``) of ``zero grads; forward over the whole sequence;
    loss = sum(z * R); loss.backward()``, with ``R`` a fixed random ``[T, B, N]`` tensor, over
    ``repeats`` runs after ``warmup`` runs, in this process, torch's default thread count.
``peak_mem_mb``
    Growth of the process's peak resident set (``VmHWM`` in ``/proc/self/status``, reset through
    ``/proc/self/clear_refs``) during one forward + backward, over the resident set just before it, in a
    fresh subprocess per (case, framework): its first run at full size (after a warm-up on a tiny copy of
    the case, which initialises the libraries), with glibc's ``MALLOC_MMAP_THRESHOLD_`` fixed at 64 KiB
    so that large freed tensors go back to the OS.
    It counts everything the run allocates (saved activations, gradients, temporaries), not the model,
    the input or the loaded libraries. ``None`` when not measured (``memory=False``, or no ``/proc``).
``grad_max_abs_err``, ``grad_ok``
    Before timing: the largest absolute difference of the weight gradients (input and recurrent
    weights) from those of a reference run on the same weights and inputs; ``grad_ok`` when it is at
    most ``GRAD_TOLERANCE`` times the reference's largest gradient entry and no spike differs. The
    reference of ``neuromorph`` and ``eager`` is the ``eager`` layer. The peers compute other models
    (their neuron conventions differ from ours, ``note``), so each is checked against its *reference
    twin*: the peer's own update equations, reset, spike comparison and surrogate gradient written as a
    plain eager autograd loop over ``unbind(0)`` (``_snntorch_twin``, ``_norse_recurrent_twin``,
    ``_spikingjelly_twin``), or neuromorph's ``LIFBoxLayer`` where that expresses the peer exactly
    (Norse's ``LIFBoxCell``: Euler leak, hard reset, with Norse's SuperSpike pseudo-derivative). A failed
    check is kept in the record (``grad_ok: false``, note starting ``GRADIENT CHECK FAILED``) and
    printed to stderr; the peer is still timed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch

from .spikes import Sigmoid, Surrogate, spike

__all__ = [
    "CASES",
    "FRAMEWORKS",
    "Case",
    "available_frameworks",
    "gradient_check",
    "machine_slug",
    "markdown_table",
    "measure",
    "run_benchmark",
    "write_results",
]

FRAMEWORKS = ("neuromorph", "eager", "snntorch", "norse", "spikingjelly")
_PEER_MODULES = {
    "snntorch": "snntorch",
    "norse": "norse.torch",
    "spikingjelly": "spikingjelly.activation_based",
}
INPUT_DENSITY = 0.03
TAU_MEM = 20.0  # ms, dt = 1 ms
THRESHOLD = 0.01
GRAD_TOLERANCE = 1e-4  # of grad_max_abs_err relative to the largest gradient entry, for `grad_ok`


@dataclasses.dataclass(frozen=True)
class Case:
    """One workload: ``n_in`` inputs into ``n_lif + n_alif`` neurons, ``batch`` sequences of ``steps``."""

    name: str
    recurrent: bool
    n_in: int
    n_lif: int
    n_alif: int
    batch: int
    steps: int
    description: str
    weight_gain: float = 1.0

    @property
    def n(self) -> int:
        return self.n_lif + self.n_alif

    def scaled(self, scale: float) -> Case:
        """The same case with every size multiplied by ``scale`` (at least 1; ``n_alif`` stays 0 if 0)."""
        if isinstance(scale, bool) or not (isinstance(scale, (int, float)) and 0 < scale <= 1):
            raise ValueError(f"scale must be a number in (0, 1], got {scale!r}")
        if scale == 1:
            return self

        def s(v: int) -> int:
            return max(1, round(v * scale)) if v else 0

        return dataclasses.replace(
            self,
            n_in=s(self.n_in),
            n_lif=s(self.n_lif),
            n_alif=s(self.n_alif),
            batch=s(self.batch),
            steps=s(self.steps),
        )


# weight_gain scales the layers' default initialisation (randn / sqrt(fan_in)) so that about 2-5 % of the
# neurons spike per step (measured with seed 0: a 3.2 %, b 2.4 %, c 3.3 %), the regime of trained LSNNs;
# at gain 1 the rates are 9-40 %.
CASES = {
    "a": Case("a", False, 512, 512, 0, 32, 200, "Linear 512->512 + LIF, batch 32, T=200", 0.4),
    "b": Case(
        "b",
        True,
        80,
        100,
        100,
        64,
        1000,
        "recurrent LSNN 100 LIF + 100 ALIF, 80 inputs, batch 64, T=1000",
        0.3,
    ),
    "c": Case("c", True, 1024, 1024, 0, 32, 500, "recurrent 1024 LIF, 1024 inputs, batch 32, T=500", 0.25),
}


def _check_choice(name: str, value: str, allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def _why_unavailable(framework: str) -> str | None:
    """``None`` when ``framework`` can run here, else why not (a peer that does not import)."""
    import importlib

    if framework not in _PEER_MODULES:
        return None
    try:
        importlib.import_module(_PEER_MODULES[framework])
    except Exception as err:  # any import failure: skip this peer
        return f"{framework} is not importable ({type(err).__name__}: {err}); install with `make bench-deps`"
    return None


def available_frameworks() -> dict[str, str | None]:
    """``{framework: None}`` when it can run here, else ``{framework: why not}``."""
    return {fw: _why_unavailable(fw) for fw in FRAMEWORKS}


# -- workloads ------------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Workload:
    """A built model: ``step()`` runs zero-grad + forward + loss + backward and returns the spikes;
    ``grads()`` the weight gradients of the last ``step()`` in neuromorph's layout (``[n_in, N]``,
    ``[N, N]``)."""

    step: Callable[[], torch.Tensor]
    grads: Callable[[], dict[str, torch.Tensor]]
    note: str = ""
    comparable: bool = False  # computes our model: checked against neuromorph's eager reference
    # A peer: ``twin(threshold=THRESHOLD)`` runs its reference twin on the same weights and inputs and
    # returns ``(spikes, weight gradients)`` (neuromorph layout); ``twin_name`` says what the twin is.
    twin: Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]] | None = None
    twin_name: str = ""


def _inputs(case: Case, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed + 1)
    x = (torch.rand(case.steps, case.batch, case.n_in, generator=g) < INPUT_DENSITY).float()
    r = torch.randn(case.steps, case.batch, case.n, generator=g) / math.sqrt(case.batch * case.n)
    return x, r


def _reference_layer(case: Case, seed: int, impl: str):
    from .layers import FeedForwardSpikingLayer, RecurrentSpikingLayer

    g = torch.Generator().manual_seed(seed)
    if case.recurrent:
        layer = RecurrentSpikingLayer(
            case.n_in, case.n_lif, case.n_alif, tau_mem=TAU_MEM, threshold=THRESHOLD, impl=impl, generator=g
        )
    else:
        layer = FeedForwardSpikingLayer(
            case.n_in, case.n, tau_mem=TAU_MEM, threshold=THRESHOLD, impl=impl, generator=g
        )
    with torch.no_grad():
        for w in layer.parameters():
            w.mul_(case.weight_gain)
    return layer


def _neuromorph(case: Case, seed: int, x: torch.Tensor, r: torch.Tensor, impl: str) -> _Workload:
    layer = _reference_layer(case, seed, impl).to(x.device)

    def step() -> torch.Tensor:
        layer.zero_grad(set_to_none=True)
        z, _ = layer(x)
        (z * r).sum().backward()
        return z.detach()

    def grads() -> dict[str, torch.Tensor]:
        if case.recurrent:
            return {"w_in": layer.w_in.grad, "w_rec": layer.w_rec.grad}
        return {"w_in": layer.weight.grad}

    note = ""
    if impl == "auto" and x.is_cuda:
        from .kernels import triton_lif

        triton_ok = triton_lif.usable(x)
        if case.recurrent:
            note = "Triton step kernels around cuBLAS" if triton_ok else "fused PyTorch path (cuBLAS)"
        else:
            note = "Triton kernels fused over time" if triton_ok else "fused PyTorch path"
    elif impl == "auto" and not case.recurrent:
        from .kernels import cpu_native

        note = "native C loops" if cpu_native.available() else "fused PyTorch path"
    elif impl == "auto":
        from .kernels import cpu_native
        from .kernels.alif_sequence import NATIVE_MAX_NEURONS

        native = cpu_native.available() and case.n_lif + case.n_alif <= NATIVE_MAX_NEURONS
        note = "native C path (event-driven)" if native else "fused PyTorch path (BLAS)"
    else:
        note = "eager autograd loop over unbind(0)"
    return _Workload(step, grads, note, comparable=True)


def _weights(case: Case, seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The reference layer's weights ``[n_in, N]`` and effective recurrent weights ``[N, N]``."""
    layer = _reference_layer(case, seed, "reference")
    if case.recurrent:
        return layer.w_in.detach().clone(), layer.effective_w_rec().detach().clone()
    return layer.weight.detach().clone(), None


# -- reference twins of the peers -----------------------------------------------------------------------
# A twin is a peer's model written as a plain eager autograd loop over ``unbind(0)``: the peer's own update
# order, reset (and whether it is detached), spike comparison and surrogate, read from the installed
# sources (snnTorch 1.0.0 ``_neurons/{leaky,rleaky,neurons}.py`` + ``surrogate.py``; Norse 1.1.0
# ``torch/functional/{lif_box,lif,lsnn,superspike,reset}.py`` + ``torch/module/snn.py``; SpikingJelly
# 2.0.0 ``_ops/lif/{reference,cpu}.py`` + ``_ops/surrogate.py``). It runs on copies of the peer's weights
# (peer layout ``[out, in]``) and the same inputs, and returns its spikes and its weight gradients in
# neuromorph's layout, so that ``measure`` checks the peer exactly as it checks ``neuromorph``.


@dataclasses.dataclass(frozen=True)
class _ATan(Surrogate):
    """snnTorch's default ``surrogate.atan(alpha=2)``: ``(alpha / 2) / (1 + (pi / 2 * alpha * x)**2)``."""

    alpha: float = 2.0

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        return self.alpha / 2 / (1 + (math.pi / 2 * self.alpha * x) ** 2)


@dataclasses.dataclass(frozen=True)
class _SuperSpike(Surrogate):
    """Norse's ``method="super"``: ``1 / (|x| + 1)**2`` (Norse's ``alpha`` is not used by its backward)."""

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        return 1.0 / (x.abs() + 1.0) ** 2


class _SpikeAtOrAbove(torch.autograd.Function):
    """SpikingJelly's spike ``H(x) = 1[x >= 0]`` (ours is ``x > 0``) with a neuromorph pseudo-derivative."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, surrogate: Surrogate) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.surrogate = surrogate
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        return grad * ctx.surrogate.derivative(x), None


_TwinModel = Callable[[torch.Tensor, dict[str, torch.Tensor]], torch.Tensor]


def _run_twin(
    x: torch.Tensor,
    r: torch.Tensor,
    weights: dict[str, torch.Tensor],
    model: _TwinModel,
    *,
    zero_rec_diagonal: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Spikes and weight gradients (neuromorph layout ``[in, out]``) of ``model(x, leaf copies of
    weights)`` under the benchmark's loss ``sum(z * r)``. ``zero_rec_diagonal``: the peer zeroes the
    gradient of the self-connections (Norse's ``autapses=False`` hook)."""
    leaves = {k: w.detach().clone().requires_grad_(True) for k, w in weights.items()}
    z = model(x, leaves)
    (z * r).sum().backward()
    grads = {k: leaves[k].grad for k in leaves}
    if zero_rec_diagonal and "w_rec" in grads:
        grads["w_rec"] = grads["w_rec"].clone().fill_diagonal_(0.0)
    return z.detach(), {k: g.T for k, g in grads.items()}


def _snntorch_twin(
    beta: float, threshold: float, recurrent: bool, rec_bias: torch.Tensor | None = None
) -> _TwinModel:
    """snnTorch ``Leaky`` / ``RLeaky`` (``reset_mechanism="subtract"``, ``reset_delay=True``, ATan)::

    reset(t) = H(U(t-1) - thr), detached          (``mem_reset``: the last step's spike, recomputed)
    U(t) = beta U(t-1) + I(t) [+ W_rec S(t-1) + b] - reset(t) thr
    S(t) = H(U(t) - thr)  (x > 0), ATan pseudo-derivative on U(t) - thr
    """
    surrogate = _ATan(2.0)

    def model(x: torch.Tensor, w: dict[str, torch.Tensor]) -> torch.Tensor:
        cur = torch.nn.functional.linear(x, w["w_in"])
        mem = torch.zeros_like(cur[0])
        spk = torch.zeros_like(cur[0])
        zs = []
        for c in cur.unbind(0):
            reset = (mem.detach() - threshold > 0).to(mem.dtype)
            if recurrent:
                from_rec = torch.nn.functional.linear(spk, w["w_rec"], rec_bias)
                mem = beta * mem + c + from_rec - reset * threshold
            else:
                mem = beta * mem + c - reset * threshold
            spk = spike(mem - threshold, surrogate)
            zs.append(spk)
        return torch.stack(zs)

    return model


def _norse_box_twin(n: int, threshold: float) -> _TwinModel:
    """Norse ``LIFBoxCell`` (Euler leak ``v + dt/tau (I + v_leak - v)``, spike ``H(v - v_th)`` from the
    updated voltage, reset to 0 *through* the gradient, SuperSpike) is neuromorph's ``LIFBoxLayer`` with
    ``integration="euler"``, ``reset="hard"`` and Norse's pseudo-derivative: the twin is that layer.
    With tau 20 ms, dt 1 ms both compute the same float32 leak factor (0.05 + 7.5e-10)."""
    from .layers import LIFBoxLayer

    layer = LIFBoxLayer(
        (n,),
        tau_mem=TAU_MEM,
        threshold=threshold,
        reset="hard",
        integration="euler",
        dt=1.0,
        surrogate=_SuperSpike(),
    )

    def model(x: torch.Tensor, w: dict[str, torch.Tensor]) -> torch.Tensor:
        z, _ = layer.to(x.device)(torch.nn.functional.linear(x, w["w_in"]))
        return z

    return model


def _norse_recurrent_twin(p: dict[str, torch.Tensor], dt: float, adaptive: bool) -> _TwinModel:
    """Norse ``LIFRecurrentCell`` (``lif_step``) or ``LSNNRecurrentCell`` (``lsnn_step``), Euler, reset to
    ``v_reset`` with the spike detached, SuperSpike on ``v - threshold``::

    LIF:  i' = i + W_in x(t) + W_rec z(t-1);  v' = v + dt/tau_m ((v_leak - v) + i');  i = i' - dt/tau_s i'
          z(t) = H(v' - v_th);  v = (1 - z) v' + z v_reset
    LSNN: v' = v + dt/tau_m ((v_leak - v) + i);  i'' = i - dt/tau_s i;  b' = b + dt/tau_a (v_th - b)
          z(t) = H(v' - b');  v = (1 - z) v' + z v_reset;  i = i'' + W_in x(t) + W_rec z(t-1)
          b = b' + z beta
    (the LSNN's input reaches the voltage one step later; its threshold ``b`` starts at ``v_th``)."""
    surrogate = _SuperSpike()

    def model(x: torch.Tensor, w: dict[str, torch.Tensor]) -> torch.Tensor:
        shape = (x.shape[1], w["w_in"].shape[0])
        z = torch.zeros(shape, dtype=x.dtype, device=x.device)
        v = torch.full(shape, float(p["v_leak"]), dtype=x.dtype, device=x.device)
        i = torch.zeros(shape, dtype=x.dtype, device=x.device)
        b = p["v_th"]
        zs = []
        for xt in x.unbind(0):
            from_in = torch.nn.functional.linear(xt, w["w_in"])
            from_rec = torch.nn.functional.linear(z, w["w_rec"])
            if adaptive:
                v_new = v + dt * p["tau_mem_inv"] * ((p["v_leak"] - v) + i)
                i_new = i + -dt * p["tau_syn_inv"] * i
                b_new = b + dt * p["tau_adapt_inv"] * (p["v_th"] - b)
                z_new = spike(v_new - b_new, surrogate)
                zd = z_new.detach()
                v = (1 - zd) * v_new + zd * p["v_reset"]
                i = i_new + from_in + from_rec
                b = b_new + zd * p["beta"]
            else:
                i_jump = i + from_in + from_rec
                v_new = v + dt * p["tau_mem_inv"] * ((p["v_leak"] - v) + i_jump)
                i = i_jump + -dt * p["tau_syn_inv"] * i_jump
                z_new = spike(v_new - p["v_th"], surrogate)
                zd = z_new.detach()
                v = (1 - zd) * v_new + zd * p["v_reset"]
            z = z_new
            zs.append(z)
        return torch.stack(zs)

    return model


def _spikingjelly_twin(tau: float, threshold: float) -> _TwinModel:
    """SpikingJelly multi-step ``LIFNode`` (``decay_input=True``, ``v_reset=None``, ``detach_reset=False``,
    ``surrogate.Sigmoid(alpha=4)``)::

    H(t) = V(t-1) + (X(t) - (V(t-1) - 0)) / tau;  S(t) = 1[H(t) >= thr];  V(t) = H(t) - S(t) thr
    dS/dH = alpha sigmoid(alpha (H - thr)) (1 - sigmoid(...)), the reset's gradient kept."""
    surrogate = Sigmoid(slope=4.0)

    def model(x: torch.Tensor, w: dict[str, torch.Tensor]) -> torch.Tensor:
        cur = torch.nn.functional.linear(x, w["w_in"])
        v = torch.zeros_like(cur[0])
        zs = []
        for c in cur.unbind(0):
            h = v + (c - (v - 0.0)) / tau
            s = _SpikeAtOrAbove.apply(h - threshold, surrogate)
            v = h - s * threshold
            zs.append(s)
        return torch.stack(zs)

    return model


# -- peers ----------------------------------------------------------------------------------------------
def _snntorch(case: Case, seed: int, x: torch.Tensor, r: torch.Tensor) -> _Workload:
    import snntorch as snn

    w_in, w_rec = _weights(case, seed)
    alpha = math.exp(-1.0 / TAU_MEM)
    # snnTorch integrates the current unscaled: scale the weights by (1 - alpha) to match our input scale.
    fc = torch.nn.Linear(case.n_in, case.n, bias=False)
    with torch.no_grad():
        fc.weight.copy_((1 - alpha) * w_in.T)
    if case.recurrent:
        lif = snn.RLeaky(beta=alpha, threshold=THRESHOLD, linear_features=case.n, all_to_all=True)
        with torch.no_grad():
            lif.recurrent.weight.copy_((1 - alpha) * w_rec.T)
            lif.recurrent.bias.zero_()
    else:
        lif = snn.Leaky(beta=alpha, threshold=THRESHOLD)
    modules = torch.nn.ModuleList([fc, lif]).to(x.device)

    def step() -> torch.Tensor:
        modules.zero_grad(set_to_none=True)
        cur = fc(x)
        zs = []
        if case.recurrent:
            spk, mem = lif.init_rleaky()
            for c in cur.unbind(0):
                spk, mem = lif(c, spk, mem)
                zs.append(spk)
        else:
            mem = lif.init_leaky()
            for c in cur.unbind(0):
                spk, mem = lif(c, mem)
                zs.append(spk)
        z = torch.stack(zs)
        (z * r).sum().backward()
        return z.detach()

    def grads() -> dict[str, torch.Tensor]:
        if case.recurrent:
            return {"w_in": fc.weight.grad.T, "w_rec": lif.recurrent.weight.grad.T}
        return {"w_in": fc.weight.grad.T}

    def twin(threshold: float = THRESHOLD) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        weights = {"w_in": fc.weight}
        bias = None
        if case.recurrent:
            weights["w_rec"] = lif.recurrent.weight
            bias = lif.recurrent.bias.detach().clone()
        model = _snntorch_twin(float(lif.beta.clamp(0, 1)), threshold, case.recurrent, bias)
        return _run_twin(x, r, weights, model)

    kind = "RLeaky (all-to-all, every neuron LIF: snnTorch has no ALIF)" if case.recurrent else "Leaky"
    note = (
        f"{kind}; same weights and time constant, but spikes from the updated voltage, reset detached, "
        "ATan surrogate: not our model"
    )
    return _Workload(step, grads, note, twin=twin, twin_name="a torch twin of snnTorch's own equations")


def _norse(case: Case, seed: int, x: torch.Tensor, r: torch.Tensor) -> _Workload:
    import norse.torch as norse

    w_in, w_rec = _weights(case, seed)
    dt = 1e-3
    tau_mem_inv = torch.as_tensor(1.0 / (TAU_MEM * 1e-3))
    thr = torch.as_tensor(THRESHOLD)
    if not case.recurrent:
        fc = torch.nn.Linear(case.n_in, case.n, bias=False)
        with torch.no_grad():
            fc.weight.copy_(w_in.T)
        cell = norse.LIFBoxCell(norse.LIFBoxParameters(tau_mem_inv=tau_mem_inv, v_th=thr), dt=dt)
        fc.to(x.device)
        params = list(fc.parameters())

        def forward() -> torch.Tensor:
            state, zs = None, []
            for c in fc(x).unbind(0):
                z, state = cell(c, state)
                zs.append(z)
            return torch.stack(zs)

        def twin(threshold: float = THRESHOLD) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            return _run_twin(x, r, {"w_in": fc.weight}, _norse_box_twin(case.n, threshold))

        note = "LIFBoxCell loop; Euler leak, spike from the updated voltage, reset to zero"
        twin_name = "neuromorph's LIFBoxLayer (euler, hard reset) with Norse's SuperSpike surrogate"
    else:
        syn_inv = torch.as_tensor(1.0 / dt)  # synaptic current lasts one step, as in our model
        if case.n_alif:
            # Norse adapts every neuron; jump size matched to our ALIF's beta * (1 - rho).
            jump = 1.7 * (1 - math.exp(-1.0 / 1200.0))
            p = norse.LSNNParameters(
                tau_syn_inv=syn_inv,
                tau_mem_inv=tau_mem_inv,
                tau_adapt_inv=torch.as_tensor(1.0 / 1.2),
                v_th=thr,
                beta=torch.as_tensor(jump),
            )
            cls, kind = norse.LSNNRecurrentCell, "LSNNRecurrentCell (every neuron adaptive)"
        else:
            p = norse.LIFParameters(tau_syn_inv=syn_inv, tau_mem_inv=tau_mem_inv, v_th=thr)
            cls, kind = norse.LIFRecurrentCell, "LIFRecurrentCell"
        if p.method != "super":
            raise RuntimeError(f"Norse's default surrogate changed to {p.method!r}; update the twin")
        cell = cls(
            case.n_in,
            case.n,
            p=p,
            input_weights=torch.nn.Parameter(w_in.T.contiguous()),
            recurrent_weights=torch.nn.Parameter(w_rec.T.contiguous()),
            autapses=False,
            dt=dt,
        )
        cell.to(x.device)
        params = [cell.input_weights, cell.recurrent_weights]

        def forward() -> torch.Tensor:
            state, zs = None, []
            for xt in x.unbind(0):
                z, state = cell(xt, state)
                zs.append(z)
            return torch.stack(zs)

        def twin(threshold: float = THRESHOLD) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            names = ["tau_syn_inv", "tau_mem_inv", "v_leak", "v_reset"]
            names += ["tau_adapt_inv", "beta"] if case.n_alif else []
            tp = {k: torch.as_tensor(getattr(p, k)).to(x.device) for k in names}
            tp["v_th"] = torch.as_tensor(threshold, dtype=thr.dtype, device=x.device)
            model = _norse_recurrent_twin(tp, dt, adaptive=bool(case.n_alif))
            weights = {"w_in": cell.input_weights, "w_rec": cell.recurrent_weights}
            return _run_twin(x, r, weights, model, zero_rec_diagonal=True)

        note = f"{kind}; Euler steps, spike from the updated voltage, reset to zero, input weights per step"
        twin_name = "a torch twin of Norse's own equations"

    def step() -> torch.Tensor:
        for q in params:
            q.grad = None
        z = forward()
        (z * r).sum().backward()
        return z.detach()

    def grads() -> dict[str, torch.Tensor]:
        if case.recurrent:
            return {"w_in": params[0].grad.T, "w_rec": params[1].grad.T}
        return {"w_in": params[0].grad.T}

    return _Workload(step, grads, note + ": not our model", twin=twin, twin_name=twin_name)


def _spikingjelly(case: Case, seed: int, x: torch.Tensor, r: torch.Tensor) -> _Workload | None:
    if case.recurrent:
        return None
    from spikingjelly.activation_based import functional as sj_functional
    from spikingjelly.activation_based import neuron

    w_in, _ = _weights(case, seed)
    alpha = math.exp(-1.0 / TAU_MEM)
    fc = torch.nn.Linear(case.n_in, case.n, bias=False)
    with torch.no_grad():
        fc.weight.copy_(w_in.T)
    # H = V + (X - V) / tau: decay 1 - 1/tau = alpha and input scale 1 - alpha, as ours.
    node = neuron.LIFNode(tau=1.0 / (1.0 - alpha), v_threshold=THRESHOLD, v_reset=None, step_mode="m")
    fc.to(x.device)
    node.to(x.device)
    sg = node.surrogate_function
    if type(sg).__name__ != "Sigmoid" or float(sg.alpha) != 4.0 or node.detach_reset or not node.decay_input:
        raise RuntimeError(f"SpikingJelly's LIFNode defaults changed ({node!r}); update the twin")

    def step() -> torch.Tensor:
        fc.zero_grad(set_to_none=True)
        sj_functional.reset_net(node)
        z = node(fc(x))
        (z * r).sum().backward()
        return z.detach()

    def grads() -> dict[str, torch.Tensor]:
        return {"w_in": fc.weight.grad.T}

    def twin(threshold: float = THRESHOLD) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return _run_twin(x, r, {"w_in": fc.weight}, _spikingjelly_twin(node.tau, threshold))

    note = (
        "multi-step LIFNode, default backend (on CPU SpikingJelly 2.0.0 runs its torch reference loop "
        "under autograd; its compiled kernels are CUDA only); same decay and input scale, soft reset, but "
        "spike from the charged voltage, Sigmoid surrogate: not our model"
    )
    return _Workload(step, grads, note, twin=twin, twin_name="a torch twin of SpikingJelly's own equations")


def _build(case: Case, framework: str, seed: int, x: torch.Tensor, r: torch.Tensor) -> _Workload | None:
    if framework == "neuromorph":
        return _neuromorph(case, seed, x, r, "auto")
    if framework == "eager":
        return _neuromorph(case, seed, x, r, "reference")
    if framework == "snntorch":
        return _snntorch(case, seed, x, r)
    if framework == "norse":
        return _norse(case, seed, x, r)
    return _spikingjelly(case, seed, x, r)


# -- memory ---------------------------------------------------------------------------------------------
def _status_kb(field: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    m = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    return int(m.group(1)) if m else None


def _peak_growth_mb(step: Callable[[], torch.Tensor]) -> float | None:
    """Peak RSS growth during one ``step()`` (see the module docstring); ``None`` without /proc."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    except OSError:
        return None
    before = _status_kb("VmRSS")
    step()
    peak = _status_kb("VmHWM")
    if before is None or peak is None:
        return None
    return max(0.0, (peak - before) / 1024.0)


def _memory_worker(case: Case, framework: str, seed: int) -> float | None:
    # Warm up on a tiny copy of the case (lazy initialisation of libraries and thread pools is not the
    # run's memory), then measure the first run of the real size: a warm-up at full size would leave its
    # freed small blocks in the heap, and the measured run would reuse them unseen.
    tiny = case.scaled(0.05)
    xt, rt = _inputs(tiny, seed)
    work = _build(tiny, framework, seed, xt, rt)
    if work is None:
        return None
    work.step()
    del work, xt, rt
    x, r = _inputs(case, seed)
    work = _build(case, framework, seed, x, r)
    return _peak_growth_mb(work.step)


def _memory_subprocess(case: Case, framework: str, seed: int, timeout: float = 600.0) -> float | None:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    spec = json.dumps({"case": dataclasses.asdict(case), "framework": framework, "seed": seed})
    proc = subprocess.run(
        [sys.executable, "-m", "neuromorph.bench", "--memory-worker", spec],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory worker for {case.name}/{framework} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["peak_mem_mb"]


# -- measurement ----------------------------------------------------------------------------------------
def gradient_check(
    z: torch.Tensor,
    grads: dict[str, torch.Tensor],
    z_ref: torch.Tensor,
    grads_ref: dict[str, torch.Tensor],
) -> tuple[float, bool, str]:
    """``(grad_max_abs_err, grad_ok, detail)`` of a model's spikes and weight gradients against a
    reference's: ``grad_max_abs_err`` the largest absolute difference over all weight gradients,
    ``grad_ok`` when it is at most ``GRAD_TOLERANCE`` times the reference's largest gradient entry and
    no spike differs; ``detail`` e.g. ``"0 entries; largest gradient entry 0.705"``."""
    if z.shape != z_ref.shape or grads.keys() != grads_ref.keys():
        raise ValueError(
            f"gradient check: spikes {tuple(z.shape)} vs {tuple(z_ref.shape)}, gradients "
            f"{sorted(grads)} vs {sorted(grads_ref)}: the model and its reference do not match"
        )
    err = max(float((grads[k] - grads_ref[k]).abs().max()) for k in grads_ref)
    scale_ref = max(float(grads_ref[k].abs().max()) for k in grads_ref)
    flips = int((z != z_ref).sum())
    ok = err <= GRAD_TOLERANCE * max(scale_ref, 1e-30) and flips == 0
    return err, ok, f"{flips} entries; largest gradient entry {scale_ref:.3g}"


def _record(case: Case, framework: str, device: str = "cpu", **fields) -> dict:
    rec = {
        "case": case.name,
        "framework": framework,
        "device": device,
        "fwd_bwd_ms_median": None,
        "peak_mem_mb": None,
        "grad_max_abs_err": None,
        "note": "",
    }
    rec.update(fields)
    return rec


def measure(
    case: str | Case,
    framework: str,
    *,
    repeats: int = 5,
    warmup: int = 2,
    seed: int = 0,
    scale: float = 1.0,
    memory: bool = True,
    device: str = "cpu",
) -> dict:
    """One record for ``framework`` on ``case`` (a name in :data:`CASES` or a :class:`Case`).

    On ``device="cuda"`` times are taken after ``torch.cuda.synchronize()`` and the peak memory is the
    growth of ``torch.cuda.max_memory_allocated`` during one run, measured in this process.

    Order: build (same weights as the reference), gradient check (against ``eager`` for ``neuromorph``
    and ``eager``, against the peer's reference twin for a peer; :func:`gradient_check`), ``warmup``
    untimed runs, ``repeats`` timed runs; then, with ``memory``, the peak-memory
    subprocess. Extra fields: ``spike_rate`` (mean spikes per neuron and step), ``grad_ok``, ``times_ms``,
    ``repeats``, ``threads``, ``torch``, ``load_avg_1m_before`` (other load on the machine) and the
    sizes. A peer that is not importable gives a record with a ``note`` and no numbers."""
    if isinstance(case, str):
        _check_choice("case", case, CASES)
        case = CASES[case]
    _check_choice("framework", framework, FRAMEWORKS)
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive int, got {repeats!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be a non-negative int, got {warmup!r}")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: CUDA is not available on this machine")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    case = case.scaled(scale)
    sizes = {"n_in": case.n_in, "n": case.n, "batch": case.batch, "steps": case.steps}
    why_not = _why_unavailable(framework)
    if why_not is not None:
        return _record(case, framework, device, note=f"skipped: {why_not}", **sizes)

    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    x, r = (t.to(dev) for t in _inputs(case, seed))
    work = _build(case, framework, seed, x, r)
    if work is None:
        return _record(
            case,
            framework,
            device,
            note="skipped: SpikingJelly's multi-step LIF op has no recurrent form (its recurrent "
            "containers are a Python step loop); not measured",
            **sizes,
        )
    z = work.step()
    spike_rate = float(z.mean())
    err, ok = None, None
    if work.comparable:
        ref = work if framework == "eager" else _neuromorph(case, seed, x, r, "reference")
        z_ref = z if framework == "eager" else ref.step()
        err, ok, detail = gradient_check(z, work.grads(), z_ref, ref.grads())
        work.note += f"; spikes differ from eager in {detail}"
    elif work.twin is not None:
        z_ref, g_ref = work.twin()
        err, ok, detail = gradient_check(z, work.grads(), z_ref, g_ref)
        work.note += f"; gradient checked against {work.twin_name}: spikes differ in {detail}"
    if ok is False:  # kept visible: in the record, its note, and on stderr now
        print(
            f"bench: {case.name}/{framework}: gradient check FAILED ({work.note.lstrip('; ')})",
            file=sys.stderr,
        )
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        work.step()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        work.step()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    note = f"spike rate {spike_rate:.2%}; " + work.note.lstrip("; ")
    if ok is False:
        note = "GRADIENT CHECK FAILED; " + note
    peak = None
    if memory and dev.type == "cuda":
        sync()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        work.step()
        sync()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    del work
    if memory and dev.type == "cpu":
        peak = _memory_subprocess(case, framework, seed)
    return _record(
        case,
        framework,
        device,
        fwd_bwd_ms_median=round(statistics.median(times), 3),
        peak_mem_mb=None if peak is None else round(peak, 1),
        grad_max_abs_err=err,
        note=note,
        grad_ok=ok,
        spike_rate=spike_rate,
        times_ms=[round(t, 3) for t in times],
        repeats=repeats,
        threads=torch.get_num_threads(),
        torch=torch.__version__,
        load_avg_1m_before=load_before,
        **sizes,
    )


def run_benchmark(
    cases: Sequence[str] = ("a", "b", "c"),
    frameworks: Sequence[str] = FRAMEWORKS,
    *,
    repeats: int = 5,
    warmup: int = 2,
    seed: int = 0,
    scale: float = 1.0,
    memory: bool = True,
    progress: Callable[[dict], None] | None = None,
    device: str = "cpu",
) -> list[dict]:
    """Records for every (case, framework); ``progress(record)`` is called after each one."""
    for c in cases:
        _check_choice("case", c, CASES)
    for fw in frameworks:
        _check_choice("framework", fw, FRAMEWORKS)
    records = []
    for c in cases:
        for fw in frameworks:
            rec = measure(
                c, fw, repeats=repeats, warmup=warmup, seed=seed, scale=scale, memory=memory, device=device
            )
            records.append(rec)
            if progress is not None:
                progress(rec)
    return records


# -- output ---------------------------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def machine_slug() -> str:
    """Short name of this machine: CPU model + core count, e.g. ``amd-epyc-2c``."""
    model = re.sub(r"\((r|tm)\)|cpu|processor|@.*$|\d+-core", " ", _cpu_model().lower())
    words = [w for w in re.split(r"[^a-z0-9]+", model) if w][:4]
    return "-".join([*words, f"{os.cpu_count() or 1}c"])


def machine_info() -> dict:
    """What the results depend on: CPU, cores, torch version and thread count."""
    return {
        "machine": machine_slug(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def _gpu_slug() -> str:
    name = torch.cuda.get_device_name().lower() if torch.cuda.is_available() else "cuda"
    return "-".join(w for w in re.split(r"[^a-z0-9]+", name) if w)


def write_results(records: list[dict], path: str | Path | None = None) -> Path:
    """Write ``records`` as a JSON list to ``path`` (default ``benchmarks/results/<machine>.json``, with
    ``-<gpu>`` appended for CUDA records) atomically (temporary file in the same folder +
    ``os.replace``); returns the path."""
    if path is None:
        slug = machine_slug()
        if any(str(r.get("device", "cpu")).startswith("cuda") for r in records):
            slug += "-" + _gpu_slug()
        path = Path("benchmarks") / "results" / f"{slug}.json"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(records, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _fmt(v, spec: str) -> str:
    return "–" if v is None else format(v, spec)


def markdown_table(records: list[dict]) -> str:
    """Markdown table of ``records`` with each time's speed-up over ``eager`` on the same case."""
    eager = {r["case"]: r["fwd_bwd_ms_median"] for r in records if r["framework"] == "eager"}
    lines = [
        "| case | framework | fwd+bwd ms (median) | vs eager | peak mem MB | grad max abs err | note |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in records:
        t, e = r["fwd_bwd_ms_median"], eager.get(r["case"])
        speed = f"{e / t:.2f}x" if t and e else "–"
        note = str(r.get("note", "")).replace("|", "/")
        lines.append(
            f"| {r['case']} | {r['framework']} | {_fmt(t, '.1f')} | {speed} "
            f"| {_fmt(r['peak_mem_mb'], '.1f')} | {_fmt(r['grad_max_abs_err'], '.2e')} | {note} |"
        )
    return "\n".join(lines)


def _main_memory_worker(spec: str) -> None:
    d = json.loads(spec)
    case = Case(**d["case"])
    print(json.dumps({"peak_mem_mb": _memory_worker(case, d["framework"], d["seed"])}))


if __name__ == "__main__":  # the memory subprocess (use `neuromorph bench` for the benchmark)
    if len(sys.argv) == 3 and sys.argv[1] == "--memory-worker":
        _main_memory_worker(sys.argv[2])
    else:
        sys.exit("usage: neuromorph bench (this module's own entry point is the memory worker)")
