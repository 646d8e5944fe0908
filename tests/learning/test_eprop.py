"""e-prop equals BPTT through the same network with the recurrent and reset paths cut (float64)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from neuromorph.layers import LeakyReadout, RecurrentSpikingLayer
from neuromorph.learning.eprop import (
    apply_gradients,
    eprop_from_loss,
    eprop_gradients,
    eprop_with_signals,
    truncated_bptt_reference,
)

F64 = torch.float64


def _net(seed, n_in, n_lif, n_alif, n_out, n_ref=0, dale=None):
    g = torch.Generator().manual_seed(seed)
    layer = RecurrentSpikingLayer(
        n_in, n_lif, n_alif, tau_mem=torch.tensor([15.0 + 3 * i for i in range(n_lif + n_alif)]),
        tau_adapt=60.0, beta=1.2, threshold=0.3, n_refractory=n_ref, dale=dale, generator=g,
    ).double()  # fmt: skip
    readout = LeakyReadout(n_lif + n_alif, n_out, tau_out=10.0, bias=True, generator=g).double()
    return layer, readout


def _data(seed, steps, batch, n_in, n_out):
    g = torch.Generator().manual_seed(seed + 100)
    x = (torch.rand(steps, batch, n_in, generator=g, dtype=F64) < 0.3).to(F64)
    target = torch.randn(steps, batch, n_out, generator=g, dtype=F64)
    return x, target


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 1000),
    steps=st.integers(1, 25),
    batch=st.integers(1, 3),
    n_lif=st.integers(0, 3),
    n_alif=st.integers(1, 3),
    n_ref=st.sampled_from([0, 2]),
    dale=st.sampled_from([None, 0.6]),
)
def test_eprop_equals_truncated_bptt(seed, steps, batch, n_lif, n_alif, n_ref, dale):
    n_in, n_out = 3, 2
    layer, readout = _net(seed, n_in, n_lif, n_alif, n_out, n_ref, dale)
    with torch.no_grad():
        layer.w_in.mul_(3.0)
    x, target = _data(seed, steps, batch, n_in, n_out)

    z = truncated_bptt_reference(layer, x)
    out, _ = readout(z)
    loss = 0.5 * (out - target).square().sum()
    params = [layer.w_in, layer.w_rec, readout.weight, readout.bias]
    want = torch.autograd.grad(loss, params, allow_unused=True)

    res = eprop_gradients(layer, readout, x, lambda t, o: o - target[t])
    assert torch.equal(res.z, z.detach())
    torch.testing.assert_close(res.outputs, out.detach(), rtol=1e-12, atol=1e-12)
    for prm in params:
        prm.grad = None
    apply_gradients(layer, res.grads, readout)
    for prm, w in zip(params, want, strict=True):
        w = torch.zeros_like(prm) if w is None else w
        torch.testing.assert_close(prm.grad, w, rtol=1e-10, atol=1e-12)


def test_spikes_equal_the_layer_forward():
    layer, _ = _net(0, 4, 3, 3, 2, n_ref=1)
    with torch.no_grad():
        layer.w_in.mul_(3.0)
    x, _ = _data(0, 40, 2, 4, 2)
    res = eprop_with_signals(layer, x, torch.zeros(40, 2, 6, dtype=F64))
    z, state = layer(x)
    assert z.sum() > 0 and torch.equal(res.z, z.detach())
    for a, b in zip(res.state.neurons, state.neurons, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-14)


def test_given_signals_lif_is_psi_times_filtered_input():
    """Natural e-prop on LIF neurons (beta = 0): dW_ji = sum_t L_j(t) psi_j(t) xbar_i(t-1) / thr with
    xbar the presynaptic input filtered by the membrane decay (papers.md 4.4)."""
    layer = RecurrentSpikingLayer(2, 3, 0, threshold=0.3, generator=torch.Generator().manual_seed(1)).double()
    with torch.no_grad():
        layer.w_in.mul_(4.0)
    x, _ = _data(1, 30, 1, 2, 1)
    sig = torch.randn(30, 1, 3, dtype=F64, generator=torch.Generator().manual_seed(2))
    res = eprop_with_signals(layer, x, sig)
    alpha = torch.exp(-1.0 / layer.tau_mem).to(F64)
    xbar = torch.zeros(2, 3, dtype=F64)
    want = torch.zeros(2, 3, dtype=F64)
    v = torch.zeros(1, 3, dtype=F64)
    thr = layer.threshold  # 0.3 rounded to float32, then widened
    for t in range(30):
        psi = 0.3 * torch.clamp(1 - ((v - thr) / thr).abs(), min=0) / thr  # gamma max(0, 1-|s|) / thr
        want += xbar * (sig[t] * psi)  # e(t) uses xbar(t-1)
        xbar = alpha * xbar + (1 - alpha) * x[t, 0].unsqueeze(1)
        z_prev = res.z[t - 1] if t > 0 else torch.zeros(1, 3, dtype=F64)
        cur = x[t] @ layer.w_in + z_prev @ layer.effective_w_rec()
        v = alpha * v + (1 - alpha) * cur - thr * z_prev
    torch.testing.assert_close(res.grads["w_in"], want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(learning_signal=torch.zeros(5, 2, 7, dtype=F64)), "learning_signal must have shape"),
        (dict(learning_signal=torch.zeros(5, 2, 4, dtype=F64), kappa=1.5), "kappa"),
        (dict(learning_signal=lambda t, z: torch.zeros(3, dtype=F64)), "learning signal at step 0"),
    ],
)
def test_bad_signals(kwargs, match):
    layer, _ = _net(0, 3, 2, 2, 1)
    with pytest.raises(ValueError, match=match):
        eprop_with_signals(layer, torch.zeros(5, 2, 3, dtype=F64), **kwargs)


def test_bad_layer_input_and_feedback():
    layer, readout = _net(0, 3, 2, 2, 1)
    with pytest.raises(ValueError, match=r"x must have shape \[T >= 1, B, 3\]"):
        eprop_with_signals(layer, torch.zeros(5, 2, 4, dtype=F64), torch.zeros(5, 2, 4, dtype=F64))
    with pytest.raises(ValueError, match="n_delay=1"):
        eprop_with_signals(
            RecurrentSpikingLayer(3, 2, 2, n_delay=3), torch.zeros(5, 2, 3), torch.zeros(5, 2, 4)
        )
    with pytest.raises(ValueError, match="feedback must have shape"):
        eprop_gradients(
            layer, readout, torch.zeros(5, 2, 3, dtype=F64), lambda t, o: o, feedback=torch.zeros(3, 3)
        )
    with pytest.raises(ValueError, match="feedback must be"):
        eprop_gradients(layer, readout, torch.zeros(5, 2, 3, dtype=F64), lambda t, o: o, feedback="mirror")
    with pytest.raises(ValueError, match="loss_grad must return"):
        eprop_gradients(layer, readout, torch.zeros(5, 2, 3, dtype=F64), lambda t, o: o[:, :0])


def test_random_feedback_is_seeded():
    layer, readout = _net(0, 3, 2, 2, 2)
    x, target = _data(0, 20, 2, 3, 2)
    runs = [
        eprop_gradients(
            layer,
            readout,
            x,
            lambda t, o: o - target[t],
            feedback="random",
            generator=torch.Generator().manual_seed(5),
        ).grads["w_in"]  # fmt: skip
        for _ in range(2)
    ]
    assert torch.equal(runs[0], runs[1])


# -- eprop_from_loss: e-prop as a drop-in for backward() ----------------------------------------------


def _sequence_loss(readout, target):
    """A loss that needs the whole sequence (mean of the last 5 outputs, cross-entropy) plus a rate
    regulariser: not computable online step by step."""

    def loss_of_spikes(z):
        out, _ = readout(z)
        ce = torch.nn.functional.cross_entropy(out[-5:].mean(0), target)
        return ce + 0.3 * (z.mean(dim=(0, 1)) - 0.02).square().sum()

    return loss_of_spikes


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 1000), steps=st.integers(5, 30), n_alif=st.integers(1, 3))
def test_eprop_from_loss_equals_truncated_bptt(seed, steps, n_alif):
    layer, readout = _net(seed, 3, 2, n_alif, 2)
    with torch.no_grad():
        layer.w_in.mul_(3.0)
    x, _ = _data(seed, steps, 3, 3, 2)
    target = torch.tensor([0, 1, 1])
    loss_of = _sequence_loss(readout, target)
    params = [layer.w_in, layer.w_rec, readout.weight, readout.bias]
    want = torch.autograd.grad(loss_of(truncated_bptt_reference(layer, x)), params, allow_unused=True)
    for prm in params:
        prm.grad = None
    loss, z, state = eprop_from_loss(layer, x, loss_of)
    assert loss.dim() == 0 and not loss.requires_grad and z.shape == (steps, 3, layer.n)
    for prm, w in zip(params, want, strict=True):
        w = torch.zeros_like(prm) if w is None else w
        torch.testing.assert_close(prm.grad, w, rtol=1e-10, atol=1e-12)


def test_eprop_from_loss_recovers_from_a_spike_the_fast_path_flipped(monkeypatch):
    """If the layer's fast path and e-prop's loop disagree on a spike, the signals are recomputed from
    e-prop's own spikes and the readout's gradient is not counted twice."""
    layer, readout = _net(5, 3, 2, 2, 2)
    with torch.no_grad():
        layer.w_in.mul_(3.0)
    x, _ = _data(5, 20, 3, 3, 2)
    loss_of = _sequence_loss(readout, torch.tensor([1, 0, 1]))
    params = [layer.w_in, layer.w_rec, readout.weight, readout.bias]
    eprop_from_loss(layer, x, loss_of)
    want = [p.grad.clone() for p in params]
    for prm in params:
        prm.grad = None
    real = type(layer).forward

    def flipped(self, inputs, state=None):
        z, st = real(self, inputs, state)
        z = z.clone()
        z[3, 0, 0] = 1.0 - z[3, 0, 0]
        return z, st

    monkeypatch.setattr(type(layer), "forward", flipped)
    eprop_from_loss(layer, x, loss_of)
    for prm, w in zip(params, want, strict=True):
        torch.testing.assert_close(prm.grad, w, rtol=1e-12, atol=1e-14)


def test_eprop_from_loss_bad_loss():
    layer, readout = _net(0, 3, 2, 1, 2)
    x, _ = _data(0, 4, 2, 3, 2)
    with pytest.raises(ValueError, match="scalar tensor"):
        eprop_from_loss(layer, x, lambda z: readout(z)[0])
    with pytest.raises(ValueError, match="does not depend on the spikes"):
        eprop_from_loss(layer, x, lambda z: readout.weight.sum())
