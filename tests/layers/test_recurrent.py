"""RecurrentSpikingLayer (LSNN): delays, autapses, Dale's law, mixed population, state continuation,
validation."""

from __future__ import annotations

import math

import pytest
import torch

from neuromorph.layers import RecurrentSpikingLayer, RecurrentState
from neuromorph.neurons.alif import ALIFState

F64 = torch.float64
# "auto" is what users get: the fastest path available for the inputs (not the reference without state grad)
IMPLS = ["reference", "fused", "auto"]


def _layer(n_in=3, n_lif=2, n_alif=2, *, seed=0, **kwargs) -> RecurrentSpikingLayer:
    gen = torch.Generator().manual_seed(seed)
    return RecurrentSpikingLayer(n_in, n_lif, n_alif, generator=gen, **kwargs).double()


def _spikes(steps, batch, n, p=0.3, seed=0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(steps, batch, n, generator=gen, dtype=F64) < p).to(F64)


# -- delays -------------------------------------------------------------------------------------------
IN_DELAY = torch.tensor([[0, 1, 2, 3], [4, 0, 1, 2], [3, 4, 0, 1]])


@pytest.mark.parametrize("impl", ["reference", "auto"])
def test_input_spike_arrives_after_its_synaptic_delay(impl):
    layer = _layer(n_in=3, n_lif=2, n_alif=2, n_delay=5, impl=impl)
    with torch.no_grad():
        layer.w_in.copy_(1.0 + torch.arange(12, dtype=F64).view(3, 4))
        layer.in_delay.copy_(IN_DELAY)
    steps = 8
    x = torch.zeros(steps, 2, 3, dtype=F64)
    events = [(2, 0, 1), (5, 1, 2), (7, 1, 0)]  # (t0, batch, input channel); t0 = 7 spills past the chunk
    for t0, b, i in events:
        x[t0, b, i] = 1.0
    current = layer.external_current(x)
    want = torch.zeros(steps + 5, 2, 4, dtype=F64)
    for t0, b, i in events:
        for j in range(4):
            want[t0 + int(IN_DELAY[i, j]), b, j] += 1.0 + 4 * i + j
    assert current.shape == (steps + 5, 2, 4)
    torch.testing.assert_close(current, want, rtol=0, atol=1e-14)


def test_external_current_without_delays():
    layer = _layer(n_in=3, n_delay=1)
    x = torch.randn(6, 2, 3, dtype=F64)
    current = layer.external_current(x)
    torch.testing.assert_close(current[:6], x @ layer.w_in.detach(), rtol=0, atol=1e-14)
    assert not current[6:].any()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("delay", [0, 1, 3])
def test_recurrent_spike_reaches_voltage_after_one_plus_delay(impl, delay):
    # neuron 0 (LIF) is kicked by the input at step 2 and spikes at step 3 (from v(2)); its only outgoing
    # synapse goes to neuron 1 with weight 1 and delay d; nothing else has any input.
    layer = _layer(
        n_in=1, n_lif=1, n_alif=2, n_delay=4, tau_mem=10.0, threshold=0.5, n_refractory=3, impl=impl
    )
    with torch.no_grad():
        layer.w_in.zero_()
        layer.w_in[0, 0] = 20.0
        layer.in_delay.zero_()
        layer.w_rec.zero_()
        layer.w_rec[0, 1] = 1.0
        layer.rec_delay.fill_(3 - delay)  # all other (zero) synapses get some other delay
        layer.rec_delay[0, 1] = delay
    x = torch.zeros(14, 1, 1, dtype=F64)
    x[2, 0, 0] = 1.0
    trace, _ = layer.trace(x)
    z0 = trace.z[:, 0, 0]
    t_spike = int(torch.nonzero(z0)[0])
    assert t_spike == 3
    v1 = trace.v[:, 0, 1]
    first = t_spike + 1 + delay
    assert not v1[:first].any()
    assert v1[first].item() == pytest.approx(1 - math.exp(-0.1), rel=1e-12)
    assert not trace.v[:, 0, 2].any()
    assert not trace.z[:, 0, 1:].any()


# -- weights -----------------------------------------------------------------------------------------
def test_no_autapses_even_after_an_optimizer_step():
    layer = _layer(n_in=4, n_lif=3, n_alif=3, n_delay=2, threshold=0.3, impl="fused")
    with torch.no_grad():
        layer.w_rec.add_(torch.eye(6, dtype=F64))  # the raw diagonal is non-zero
    assert layer.w_rec.diagonal().abs().min() > 0
    assert not layer.effective_w_rec().diagonal().any()
    opt = torch.optim.SGD(layer.parameters(), lr=0.5, weight_decay=0.1)
    w_before = layer.w_rec.detach().clone()
    x = _spikes(30, 2, 4, p=0.5)
    z, _ = layer(x)
    (z * torch.linspace(-1, 1, 6, dtype=F64)).sum().backward()
    assert layer.w_rec.grad.abs().sum() > 0
    assert not layer.w_rec.grad.diagonal().any()
    opt.step()
    assert not torch.equal(layer.w_rec.detach(), w_before)
    assert not layer.effective_w_rec().diagonal().any()


def test_own_spike_never_reaches_own_voltage():
    layer = _layer(n_in=1, n_lif=1, n_alif=1, n_delay=1, threshold=0.5, impl="reference")
    with torch.no_grad():
        layer.w_in.copy_(torch.tensor([[20.0, 0.0]], dtype=F64))
        layer.w_rec.fill_(0.0)
        layer.w_rec[0, 0] = 100.0  # autapse: masked
    x = torch.zeros(6, 1, 1, dtype=F64)
    x[0] = 1.0
    trace, _ = layer.trace(x)
    assert trace.z[:, 0, 0].sum() > 0
    ref = layer.trace(x)[0]  # sanity: deterministic
    with torch.no_grad():
        layer.w_rec[0, 0] = 0.0
    torch.testing.assert_close(layer.trace(x)[0].v, ref.v, rtol=0, atol=0)


@pytest.mark.parametrize("dale, n_exc", [(0.8, 8), (1.0, 10), (0.0, 0), (0.25, 2)])
def test_dale_rows_take_their_neuron_sign(dale, n_exc):
    layer = _layer(n_in=2, n_lif=4, n_alif=6, dale=dale)
    sign = layer.rec_sign
    assert int((sign > 0).sum()) == n_exc and int((sign < 0).sum()) == 10 - n_exc
    off_diagonal = ~torch.eye(10, dtype=torch.bool)

    def check():
        w = layer.effective_w_rec().detach()
        for k in range(10):
            row = w[k][off_diagonal[k]]
            assert (torch.sign(row) == sign[k]).all(), k
        assert not w.diagonal().any()

    check()
    opt = torch.optim.SGD(layer.parameters(), lr=10.0)  # a large step pushes raw weights across zero
    z, _ = layer(_spikes(20, 2, 2, p=0.5))
    (z.sum() + layer.effective_w_rec().sum() * 3).backward()
    opt.step()
    check()


def test_no_dale_keeps_raw_weights():
    layer = _layer(n_in=2, n_lif=2, n_alif=2)
    assert layer.rec_sign is None
    torch.testing.assert_close(layer.effective_w_rec(), layer.w_rec * (1 - torch.eye(4, dtype=F64)))


# -- population ----------------------------------------------------------------------------------------
def test_mixed_population_lif_first():
    layer = _layer(n_in=5, n_lif=3, n_alif=4, beta=1.7, tau_adapt=300.0, threshold=0.02, n_delay=3)
    # buffers are created in float32 (as nn.Module parameters are) and then converted by .double()
    assert layer.beta.tolist() == pytest.approx([0.0, 0.0, 0.0, 1.7, 1.7, 1.7, 1.7], rel=1e-7)
    assert layer.beta[:3].tolist() == [0.0, 0.0, 0.0]
    assert layer.tau_adapt[3:].tolist() == [300.0] * 4
    b0 = layer.threshold[0].item()
    assert b0 == pytest.approx(0.02, rel=1e-7) and (layer.threshold == b0).all()
    with torch.no_grad():
        layer.w_in.abs_()
    trace, _ = layer.trace(_spikes(40, 2, 5, p=0.4))
    assert trace.z[..., :3].sum() > 0 and trace.z[..., 3:].sum() > 0
    assert (trace.a[..., :3] == b0).all()  # regular neurons: constant threshold b0
    assert trace.a[..., 3:].max() > b0 + 1e-3  # adaptive neurons raise theirs after spiking
    assert (trace.a[..., 3:] >= b0).all()


def test_per_neuron_tau_adapt_and_beta():
    layer = _layer(
        n_in=2,
        n_lif=2,
        n_alif=3,
        tau_adapt=torch.tensor([100.0, 200.0, 300.0]),
        beta=torch.tensor([0.0, 1.0, 2.0]),
        tau_mem=torch.tensor([5.0, 10.0, 15.0, 20.0, 25.0]),
    )
    assert layer.tau_adapt[2:].tolist() == [100.0, 200.0, 300.0]
    assert layer.beta.tolist() == [0.0, 0.0, 0.0, 1.0, 2.0]
    assert layer.tau_mem.tolist() == [5.0, 10.0, 15.0, 20.0, 25.0]


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(tau_adapt=torch.tensor([100.0, 200.0])), "tau_adapt"),
        (dict(beta=torch.tensor([1.0, 1.0, 1.0, 1.0])), "beta"),
        (dict(tau_mem=torch.tensor([20.0, 20.0])), "tau_mem"),
    ],
)
def test_per_neuron_wrong_length(kwargs, name):
    with pytest.raises(ValueError, match=name):
        RecurrentSpikingLayer(2, 2, 3, **kwargs)


# -- state ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("split", [1, 13, 29])
def test_two_chunks_equal_one_piece(impl, split):
    layer = _layer(n_in=6, n_lif=4, n_alif=4, n_delay=5, n_refractory=2, threshold=0.05, impl=impl)
    x = _spikes(30, 3, 6, p=0.3, seed=4)
    whole, end = layer.trace(x)
    first, mid = layer.trace(x[:split])
    second, end2 = layer.trace(x[split:], mid)
    assert whole.z.sum() > 20
    assert torch.equal(torch.cat([first.z, second.z]), whole.z)
    torch.testing.assert_close(torch.cat([first.v, second.v]), whole.v, rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.cat([first.a, second.a]), whole.a, rtol=0, atol=1e-12)
    for a, b in zip(end2.neurons, end.neurons, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    torch.testing.assert_close(end2.pending, end.pending, rtol=0, atol=1e-12)
    assert mid.pending.abs().sum() > 0  # the buffer carried something across the boundary


def test_pending_matters_for_continuation():
    layer = _layer(n_in=6, n_lif=4, n_alif=4, n_delay=5, threshold=0.05, impl="reference")
    x = _spikes(30, 3, 6, p=0.3, seed=4)
    whole, _ = layer.trace(x)
    _, mid = layer.trace(x[:13])
    dropped = RecurrentState(mid.neurons, torch.zeros_like(mid.pending))
    second, _ = layer.trace(x[13:], dropped)
    assert not torch.allclose(second.v, whole.v[13:])


@pytest.mark.parametrize("impl", IMPLS)
def test_impls_agree(impl):
    layer = _layer(n_in=6, n_lif=4, n_alif=4, n_delay=5, n_refractory=2, threshold=0.05, impl=impl)
    x = _spikes(25, 2, 6, p=0.3, seed=8)
    ref_layer = _layer(n_in=6, n_lif=4, n_alif=4, n_delay=5, n_refractory=2, threshold=0.05, impl="reference")
    got, want = layer.trace(x)[0], ref_layer.trace(x)[0]
    assert torch.equal(got.z, want.z)
    torch.testing.assert_close(got.v, want.v, rtol=0, atol=1e-12)


@pytest.mark.parametrize("impl", ["reference", "fused", "auto"])
def test_returned_state_is_detached_for_every_impl(impl):
    # Gradients stop at call boundaries whatever the implementation (truncated BPTT, as the official code).
    layer = _layer(n_in=3, n_delay=3, impl=impl)
    x = _spikes(10, 2, 3, p=0.5).requires_grad_()
    z, state = layer(x)
    assert z.requires_grad
    for t in (*state.neurons, state.pending):
        assert not t.requires_grad
    detached = state.detach()
    assert isinstance(detached, RecurrentState) and isinstance(detached.neurons, ALIFState)
    for a, b in zip((*detached.neurons, detached.pending), (*state.neurons, state.pending), strict=True):
        assert torch.equal(a, b)
    z, _ = layer(x, detached)  # usable as the next chunk's state
    assert z.shape == (10, 2, 4)


def test_gradient_reaches_an_initial_state_that_requires_grad():
    layer = _layer(n_in=3, n_delay=3, impl="auto")
    x = _spikes(10, 2, 3, p=0.5)
    state = layer.initial_state(2, dtype=torch.float64)
    v0 = (torch.rand(2, 4, dtype=torch.float64) * 0.05).requires_grad_()
    z, _ = layer(x, RecurrentState(state.neurons._replace(v=v0), state.pending))
    (z * torch.arange(40, dtype=torch.float64).view(10, 1, 4)).sum().backward()
    assert v0.grad is not None and v0.grad.abs().sum() > 0


def test_trace_voltages_carry_gradients_in_grad_mode():
    layer = _layer(n_in=3, n_delay=2, impl="auto")
    x = _spikes(10, 2, 3, p=0.5)
    trace, _ = layer.trace(x)
    trace.v.sum().backward()
    assert layer.w_in.grad is not None and layer.w_in.grad.abs().sum() > 0
    with torch.no_grad():
        fast, _ = layer.trace(x)
    assert torch.equal(fast.z, trace.z)


def test_initial_state_shapes():
    layer = _layer(n_in=3, n_lif=1, n_alif=2, n_delay=4)
    state = layer.initial_state(5, dtype=F64)
    for t in state.neurons:
        assert t.shape == (5, 3) and t.dtype == F64 and not t.any()
    assert state.pending.shape == (5, 4, 3)


# -- validation ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args, kwargs, name",
    [
        ((3, 2, 2), dict(tau_mem=0.0), "tau_mem"),
        ((3, 2, 2), dict(tau_mem=-20.0), "tau_mem"),
        ((3, 2, 2), dict(tau_mem=torch.tensor([20.0, 20.0, -1.0, 20.0])), "tau_mem"),
        ((3, 2, 2), dict(tau_adapt=0.0), "tau_adapt"),
        ((3, 2, 2), dict(tau_adapt=-100.0), "tau_adapt"),
        ((3, 2, 2), dict(beta=-1.0), "beta"),
        ((3, 2, 2), dict(threshold=0.0), "threshold"),
        ((3, 2, 2), dict(n_delay=0), "n_delay"),
        ((3, 2, 2), dict(n_refractory=-1), "n_refractory"),
        ((3, 2, 2), dict(dt=0.0), "dt"),
        ((3, 0, 0), {}, "n_lif"),
        ((0, 2, 2), {}, "n_in"),
        ((3, 2, 2), dict(impl="gpu"), "impl"),
        ((3, 2, 2), dict(dale=1.5), "dale"),
        ((3, 2, 2), dict(dale=-0.1), "dale"),
        ((3, 2, 2), dict(surrogate="triangle"), "surrogate"),
    ],
)
def test_constructor_rejects_bad_arguments(args, kwargs, name):
    with pytest.raises(ValueError, match=name):
        RecurrentSpikingLayer(*args, **kwargs)


def test_lif_only_and_alif_only_are_fine():
    assert RecurrentSpikingLayer(2, 3, 0).n == 3
    assert RecurrentSpikingLayer(2, 0, 3).n == 3


@pytest.mark.parametrize(
    "x, match",
    [
        (torch.zeros(5, 3, dtype=F64), "rank 3"),
        (torch.zeros(5, 2, 4, dtype=F64), "features"),
        (torch.zeros(0, 2, 3, dtype=F64), "time step"),
        (torch.full((5, 2, 3), float("nan"), dtype=F64), "NaN"),
    ],
    ids=["2d", "features", "empty", "nan"],
)
def test_bad_input_rejected(x, match):
    layer = _layer(n_in=3)
    with pytest.raises(ValueError, match=match) as info:
        layer(x)
    assert "x" in str(info.value)


def test_bad_state_rejected():
    layer = _layer(n_in=3, n_lif=2, n_alif=2, n_delay=3)
    x = torch.zeros(5, 2, 3, dtype=F64)
    with pytest.raises(ValueError, match="state.neurons.v"):
        layer(x, layer.initial_state(3, dtype=F64))
    wrong_pending = RecurrentState(layer.initial_state(2, dtype=F64).neurons, torch.zeros(2, 1, 4, dtype=F64))
    with pytest.raises(ValueError, match="state.pending"):
        layer(x, wrong_pending)
    with pytest.raises(ValueError, match="state"):
        layer(x, layer.initial_state(2, dtype=F64).neurons)  # an ALIFState is not a RecurrentState


def test_unknown_impl_set_later_is_rejected():
    layer = _layer(n_in=3)
    layer.impl = "magic"
    with pytest.raises(ValueError, match="impl"):
        layer(torch.zeros(4, 1, 3, dtype=F64))


@pytest.mark.parametrize(
    "x, match",
    [
        (torch.zeros(5, 2, 3, dtype=torch.float32), "x is torch.float32 on cpu but w_in is torch.float64"),
        (torch.zeros(5, 2, 3, dtype=F64, device="meta"), "x is torch.float64 on meta"),
    ],
)
def test_input_on_other_device_or_dtype_rejected(x, match):
    with pytest.raises(ValueError, match=match):
        _layer(n_in=3)(x)


def test_state_of_other_dtype_rejected():
    layer = _layer(n_in=3)
    with pytest.raises(ValueError, match="state.neurons.v is torch.float32"):
        layer(torch.zeros(5, 2, 3, dtype=F64), layer.initial_state(2, dtype=torch.float32))


@pytest.mark.parametrize("impl", ["auto", "fused", "reference"])
@pytest.mark.parametrize("every", [1, 4, 9, 50])
def test_checkpointing_gives_the_same_spikes_and_gradients(impl, every):
    torch.manual_seed(0)
    x = (torch.rand(23, 2, 3, dtype=F64) < 0.4).to(F64)
    r = torch.randn(23, 2, 4, dtype=F64)
    plain = _layer(n_in=3, n_delay=3, n_refractory=1, impl=impl)
    ckpt = _layer(n_in=3, n_delay=3, n_refractory=1, impl=impl, checkpoint_every=every)
    z_plain, s_plain = plain(x)
    z_ckpt, s_ckpt = ckpt(x)
    (z_plain * r).sum().backward()
    (z_ckpt * r).sum().backward()
    assert torch.equal(z_plain, z_ckpt)
    for a, b in zip(s_plain.neurons, s_ckpt.neurons, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-13)
    for name in ("w_in", "w_rec"):
        torch.testing.assert_close(
            getattr(ckpt, name).grad, getattr(plain, name).grad, rtol=1e-10, atol=1e-12
        )


@pytest.mark.parametrize("every", [0, -3, 2.5, True])
def test_checkpoint_every_validated(every):
    with pytest.raises(ValueError, match="checkpoint_every"):
        _layer(checkpoint_every=every)


def test_checkpointing_refuses_the_native_path():
    with pytest.raises(ValueError, match="checkpoint_every needs impl"):
        _layer(impl="native", checkpoint_every=10)
