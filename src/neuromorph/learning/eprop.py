"""e-prop: online gradients of a recurrent LIF/ALIF layer from eligibility traces and learning signals.

Bellec, Scherr, Subramoney, Hajek, Salaj, Legenstein, Maass (Nature Communications 2020), "A solution to
the learning dilemma for recurrent networks of spiking neurons"; the neuron is the LSNN-official ALIF of
``neurons/alif.py`` (``beta = 0`` gives LIF). The gradient factorises as

    dE/dW_ji = sum_t L_j(t) * e_ji(t)

with a learning signal ``L_j(t)`` (how the loss at time t depends on the spike ``z_j(t)``) and an
eligibility trace ``e_ji(t) = dz_j(t)/dW_ji`` that follows neuron j's own hidden state (v_j, b_j) forward
in time. The traces ignore, as e-prop does, every path through another neuron's spikes and through
the reset (``- A z_j(t-1) dt``); they keep the adaptation path z_j -> b_j. Per synapse, with
``u_i(t)`` the presynaptic signal of step t (input ``x_i(t)`` or recurrent ``z_i(t-1)``),
``psi_j(t)`` the pseudo-derivative over ``dt`` (0 while refractory), ``s = (v(t-1) - A(t)) / A(t)``:

    eb(t)  = rho_j eb(t-1) + (1 - rho_j) ez(t-1)                         adaptation eligibility
    ez(t)  = psi_j(t) * (ev(t-1) - (s_j(t) + 1) beta_j eb(t)) / A_j(t)    e_ji(t) = dz_j(t)/dW_ji
    ev(t)  = alpha_j ev(t-1) + (1 - alpha_j) u_i(t)                       filtered presynaptic input

A leaky readout ``y(t) = kappa y(t-1) + (1 - kappa) z(t)``, ``out(t) = y(t) W_out + bias`` makes the
loss at time t depend on earlier spikes too; e-prop then filters the traces with the readout's kappa,
``ez_bar(t) = kappa ez_bar(t-1) + (1 - kappa) ez(t)``, and takes ``L_j(t) = sum_k B_jk dE/dout_k(t)`` with
feedback ``B = W_out`` (symmetric e-prop), a fixed random matrix (random e-prop), or signals given from
outside (natural e-prop, where a second network emits them).

This equals BPTT through the same network with those paths cut (``truncated_bptt_reference`` below;
tested to float64 precision). Memory does not grow with T: a few ``[B, n_pre, N]`` traces.
Only ``n_delay = 1`` layers (synaptic delays would make every trace per-synapse-delay).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from ..layers.readout import LeakyReadout
from ..layers.recurrent import RecurrentSpikingLayer, RecurrentState
from ..neurons.alif import ALIFState, alif_step
from ..spikes import spike

__all__ = [
    "EligibilityTraces",
    "EPropResult",
    "eprop_gradients",
    "eprop_with_signals",
    "eprop_from_loss",
    "apply_gradients",
    "truncated_bptt_reference",
]


class EligibilityTraces(NamedTuple):
    """Per-synapse traces ``[B, n_pre, N]`` (``n_pre = n_in + N``: input synapses, then recurrent)."""

    ev: torch.Tensor
    eb: torch.Tensor
    ez: torch.Tensor
    ez_bar: torch.Tensor


class EPropResult(NamedTuple):
    """Spikes ``z`` ``[T, B, N]``, readout outputs ``[T, B, K]`` (``None`` without a readout), the
    gradients (summed over the batch and time) by parameter name, and the final layer state."""

    z: torch.Tensor
    outputs: torch.Tensor | None
    grads: dict[str, torch.Tensor]
    state: RecurrentState


def _check_layer(layer: RecurrentSpikingLayer) -> None:
    if not isinstance(layer, RecurrentSpikingLayer):
        raise ValueError(f"layer must be a RecurrentSpikingLayer, got {type(layer).__name__}")
    if layer.n_delay != 1:
        raise ValueError(f"e-prop supports layers with n_delay=1, got n_delay={layer.n_delay}")


def _constants(layer: RecurrentSpikingLayer, like: torch.Tensor):
    p = layer.parameters_for_neurons()
    alpha = torch.exp(-p.dt / p.tau_mem).to(like)
    rho = torch.exp(-p.dt / p.tau_adapt).to(like)
    return p, alpha, rho, p.beta.to(like), p.threshold.to(like)


def _initial(layer, x, state):
    batch = x.shape[1]
    if state is None:
        state = layer.initial_state(batch, device=x.device, dtype=x.dtype)
    neurons = ALIFState(*(t.detach() for t in state.neurons))
    return neurons, state.pending.detach()


def eprop_with_signals(
    layer: RecurrentSpikingLayer,
    x: torch.Tensor,
    learning_signal: torch.Tensor | Callable[[int, torch.Tensor], torch.Tensor],
    *,
    kappa: float | None = None,
    state: RecurrentState | None = None,
    on_step: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
) -> EPropResult:
    """Run ``layer`` online over ``x`` ``[T, B, n_in]`` and accumulate ``sum_t L(t) * e(t)``.

    ``learning_signal`` is a tensor ``[T, B, N]`` or a callable ``(t, z_t) -> L_t [B, N]`` called after
    step t (online). With ``kappa`` the traces are low-pass filtered first (a leaky readout's decay).
    ``on_step(t, z_t, l_t)`` is called after each update (for readout gradients). Gradients are
    returned for ``w_in`` and for the effective recurrent weights ``w_rec_effective`` (use
    :func:`apply_gradients` to reach the layer's parameters through Dale signs and the autapse mask)."""
    _check_layer(layer)
    if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[-1] != layer.n_in or x.shape[0] == 0:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must have shape [T >= 1, B, {layer.n_in}], got {shape}")
    n_steps, batch, n = x.shape[0], x.shape[1], layer.n
    if isinstance(learning_signal, torch.Tensor) and tuple(learning_signal.shape) != (n_steps, batch, n):
        raise ValueError(
            f"learning_signal must have shape {(n_steps, batch, n)} ([T, B, N]), "
            f"got {tuple(learning_signal.shape)}"
        )
    if kappa is not None and not 0.0 <= float(kappa) < 1.0:
        raise ValueError(f"kappa must be in [0, 1), got {kappa!r}")
    with torch.no_grad():
        p, alpha, rho, beta, thr = _constants(layer, x)
        neurons, pending = _initial(layer, x, state)
        w_in, w_rec = layer.w_in.detach(), layer.effective_w_rec().detach()
        n_pre = layer.n_in + n
        zeros = x.new_zeros(batch, n_pre, n)
        tr = EligibilityTraces(zeros, zeros.clone(), zeros.clone(), zeros.clone())
        g_w = x.new_zeros(n_pre, n)
        zs = x.new_empty(n_steps, batch, n)  # the only record that grows with T: the spikes themselves
        for t in range(n_steps):
            z_prev = neurons.z
            current = x[t] @ w_in + z_prev @ w_rec + pending[:, 0]
            pending = torch.zeros_like(pending)
            b = rho * neurons.b + (1.0 - rho) * z_prev
            a = thr + beta * b
            s = (neurons.v - a) / a
            psi = p.surrogate.derivative(s) / p.dt
            if p.n_refractory > 0:
                psi = psi * (neurons.refractory == 0).to(psi.dtype)
            z, neurons = alif_step(current, neurons, p)
            u = torch.cat([x[t], z_prev], dim=1)  # presynaptic signal of this step [B, n_pre]
            eb = tr.eb.mul_(rho).add_(tr.ez * (1.0 - rho))
            ez = (tr.ev - eb * ((s + 1.0) * beta).unsqueeze(1)) * (psi / a).unsqueeze(1)
            ev = tr.ev.mul_(alpha).add_(u.unsqueeze(2) * (1.0 - alpha))
            ez_bar = ez if kappa is None else tr.ez_bar.mul_(kappa).add_(ez, alpha=1.0 - kappa)
            tr = EligibilityTraces(ev, eb, ez, ez_bar)
            sig = learning_signal[t] if isinstance(learning_signal, torch.Tensor) else learning_signal(t, z)
            if tuple(sig.shape) != (batch, n):
                raise ValueError(
                    f"learning signal at step {t} must have shape {(batch, n)}, got {tuple(sig.shape)}"
                )
            g_w += torch.einsum("bj,bij->ij", sig.to(x.dtype), tr.ez_bar)
            if on_step is not None:
                on_step(t, z, sig)
            zs[t] = z
        final = RecurrentState(neurons, pending)
    grads = {"w_in": g_w[: layer.n_in], "w_rec_effective": g_w[layer.n_in :]}
    return EPropResult(zs, None, grads, final)


def eprop_gradients(
    layer: RecurrentSpikingLayer,
    readout: LeakyReadout,
    x: torch.Tensor,
    loss_grad: Callable[[int, torch.Tensor], torch.Tensor],
    *,
    feedback: str | torch.Tensor = "symmetric",
    state: RecurrentState | None = None,
    generator: torch.Generator | None = None,
) -> EPropResult:
    """e-prop with a leaky readout: ``loss_grad(t, out_t) -> dE/dout_t`` ``[B, K]`` gives the error of
    step t online (e.g. ``out_t - target_t`` for 0.5 * MSE). ``feedback``: ``"symmetric"`` (``B = W_out``),
    ``"random"`` (a fixed Gaussian matrix drawn with ``generator``) or a ``[N, K]`` tensor. Returns the
    gradients of ``w_in``, ``w_rec_effective``, ``readout.weight`` and ``readout.bias`` (exact for the
    readout)."""
    if not isinstance(readout, LeakyReadout):
        raise ValueError(f"readout must be a LeakyReadout, got {type(readout).__name__}")
    if readout.n_in != layer.n:
        raise ValueError(f"readout takes {readout.n_in} inputs but the layer has {layer.n} neurons")
    n, k = layer.n, readout.n_out
    if isinstance(feedback, torch.Tensor):
        if tuple(feedback.shape) != (n, k):
            raise ValueError(f"feedback must have shape {(n, k)} ([N, K]), got {tuple(feedback.shape)}")
        fb = feedback.detach().to(x)
    elif feedback == "symmetric":
        fb = None
    elif feedback == "random":
        fb = (torch.randn(n, k, generator=generator, dtype=torch.float64) / k**0.5).to(x)
    else:
        raise ValueError(f"feedback must be 'symmetric', 'random' or an [N, K] tensor, got {feedback!r}")
    kappa = float(torch.exp(-readout.dt / readout.tau_out))
    w_out = readout.weight.detach()
    y = x.new_zeros(x.shape[1], n)
    outputs, g_out_w, g_out_b = (
        x.new_empty(x.shape[0], x.shape[1], k),
        torch.zeros_like(w_out),
        x.new_zeros(k),
    )

    def signal(t: int, z_t: torch.Tensor) -> torch.Tensor:
        nonlocal y, g_out_w, g_out_b
        y = kappa * y + (1.0 - kappa) * z_t
        out = y @ w_out
        if readout.bias is not None:
            out = out + readout.bias.detach()
        err = loss_grad(t, out)
        if tuple(err.shape) != tuple(out.shape):
            raise ValueError(
                f"loss_grad must return dE/dout of shape {tuple(out.shape)}, got {tuple(err.shape)}"
            )
        outputs[t] = out
        g_out_w = g_out_w + y.t() @ err
        g_out_b = g_out_b + err.sum(0)
        return err @ (w_out if fb is None else fb).t()

    res = eprop_with_signals(layer, x, signal, kappa=kappa, state=state)
    grads = dict(res.grads, **{"readout.weight": g_out_w})
    if readout.bias is not None:
        grads["readout.bias"] = g_out_b
    return EPropResult(res.z, outputs, grads, res.state)


def apply_gradients(layer: RecurrentSpikingLayer, grads: dict[str, torch.Tensor], readout=None) -> None:
    """Add e-prop gradients to ``.grad`` of the parameters (any torch optimizer then steps). The
    recurrent gradient goes through ``effective_w_rec`` (Dale signs, no autapses) by autograd."""
    with torch.enable_grad():
        eff = layer.effective_w_rec()
        (g_rec,) = torch.autograd.grad(eff, layer.w_rec, grads["w_rec_effective"].to(eff))
    for param, g in ((layer.w_in, grads["w_in"]), (layer.w_rec, g_rec)):
        param.grad = g.to(param).clone() if param.grad is None else param.grad + g.to(param)
    if readout is not None:
        for name, param in (("readout.weight", readout.weight), ("readout.bias", readout.bias)):
            if param is not None and name in grads:
                g = grads[name].to(param)
                param.grad = g.clone() if param.grad is None else param.grad + g


def eprop_from_loss(
    layer: RecurrentSpikingLayer,
    x: torch.Tensor,
    loss_of_spikes: Callable[[torch.Tensor], torch.Tensor],
    *,
    state: RecurrentState | None = None,
) -> tuple[torch.Tensor, torch.Tensor, RecurrentState]:
    """e-prop as a drop-in for ``loss.backward()`` in a training loop: gradients of
    ``loss_of_spikes(z)`` for the layer's weights (e-prop) and for every parameter the loss uses
    after the spikes (readout, exact), accumulated into ``.grad``; any optimizer then steps.

    1. The layer runs without an autograd graph (its fast path); ``loss_of_spikes`` (readout + task
       loss + regularisers) is differentiated with respect to the spikes: ``L_j(t) = dE/dz_j(t)``.
    2. One online pass accumulates ``sum_t L_j(t) e_ji(t)`` with unfiltered traces (symmetric
       feedback). With a leaky readout, ``L_j(t) = sum_{t' >= t} (1 - kappa) kappa^(t'-t)
       (dE/dout(t') W_out^T)_j + dR/dz_j(t)``; exchanging the sums, ``sum_t L(t) e(t)`` equals the
       online form ``sum_t' (dE/dout(t') W_out^T) e_bar(t')`` with kappa-filtered traces, plus a rate
       regulariser's term on the unfiltered traces, as in the e-prop paper. The result is exactly BPTT
       through :func:`truncated_bptt_reference` (tested), whatever the loss.
    If the fast path and e-prop's loop round differently so that a spike flips, the signals are
    recomputed from e-prop's own spikes (rare; the second pass agrees). Parameters that the loss uses
    after the spikes get their gradients from one ``backward()`` of the final pass. Memory: the spikes and the
    ``[B, n_in + N, N]`` traces; nothing per step of the recurrent dynamics.
    Returns (loss (detached), spikes ``[T, B, N]``, final state (detached))."""
    _check_layer(layer)
    with torch.no_grad():
        z, _ = layer(x, state)
    for _ in range(2):
        z_leaf = z.detach().requires_grad_(True)
        loss = loss_of_spikes(z_leaf)
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            got = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise ValueError(f"loss_of_spikes must return a scalar tensor, got {got}")
        (signal,) = torch.autograd.grad(loss, z_leaf, retain_graph=True, allow_unused=True)
        if signal is None:
            raise ValueError("loss_of_spikes does not depend on the spikes it is given")
        res = eprop_with_signals(layer, x, signal, state=state)
        if torch.equal(res.z, z):
            break
        z = res.z  # a spike flipped between the two loops: the signals of e-prop's own spikes
    loss.backward()  # exact gradients of what acts after the spikes (readout), into .grad
    apply_gradients(layer, res.grads)
    return loss.detach(), res.z, res.state.detach()


def truncated_bptt_reference(
    layer: RecurrentSpikingLayer, x: torch.Tensor, state: RecurrentState | None = None
):
    """The network e-prop differentiates exactly: the layer's ALIF dynamics with the gradient stopped
    through the recurrent input and the reset (a check for tests, not a training path).
    Returns spikes ``[T, B, N]`` whose autograd gradients equal e-prop's."""
    _check_layer(layer)
    p, alpha, rho, beta, thr = _constants(layer, x)
    neurons, pending = _initial(layer, x, state)
    w_rec = layer.effective_w_rec()
    v, zp, b, r = neurons
    zs = []
    for t in range(x.shape[0]):
        b = rho * b + (1.0 - rho) * zp
        a = thr + beta * b
        z = spike((v - a) / a, p.surrogate)
        if p.n_refractory > 0:
            z = z * (r == 0).to(z.dtype)
            r = torch.where(z > 0, float(p.n_refractory), (r - 1).clamp(min=0))
        z = z / p.dt
        current = x[t] @ layer.w_in + zp.detach() @ w_rec + pending[:, 0]
        pending = torch.zeros_like(pending)
        v = alpha * v + (1.0 - alpha) * current - (a * zp).detach() * p.dt
        zp = z
        zs.append(z)
    return torch.stack(zs)
