"""The native C kernels (``neuromorph.kernels.cpu_native``) against the eager reference and the dense
delayed input (hypothesis, float64), against the fused path (bit-for-bit spikes in float32 at the
store-recall size), dispatch, and the build."""

from __future__ import annotations

import importlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_cases import random_case, run_with_grads

from neuromorph.kernels import alif_sequence, alif_sequence_fused, alif_sequence_reference, cpu_native
from neuromorph.layers import LeakyReadout, RecurrentSpikingLayer
from neuromorph.neurons.alif import ALIFState
from neuromorph.spikes import Exponential, Sigmoid, Triangle

pytestmark = pytest.mark.skipif(
    not cpu_native.available(), reason=f"native CPU kernels unavailable: {cpu_native.unavailable_reason()}"
)


F64 = torch.float64
TOL = dict(rtol=1e-10, atol=1e-10)
seq_module = importlib.import_module("neuromorph.kernels.alif_sequence")


class _GenericTriangle(Triangle):
    """A Triangle the kernel does not recognise: its derivative goes through the Python path."""


SURROGATES = [
    Triangle(0.3),
    Triangle(0.5, width=2.0),
    _GenericTriangle(0.3),
    Exponential(0.3, 2.0),
    Sigmoid(3.0),
]


def _assert_close_outputs(out, ref, **tol):
    assert torch.equal(out.z, ref.z)
    for name in ("v", "a", "pending"):
        torch.testing.assert_close(getattr(out, name), getattr(ref, name), **tol, msg=name)
    for name in ALIFState._fields:
        torch.testing.assert_close(
            getattr(out.state, name), getattr(ref.state, name), **tol, msg=f"state.{name}"
        )


@st.composite
def _sizes(draw):
    return dict(
        steps=draw(st.integers(1, 40)),  # also shorter than the delay range (the fused backward fails there)
        batch=draw(st.integers(1, 4)),
        n=draw(st.integers(1, 6)),
        n_delay=draw(st.sampled_from([1, 2, 3, 5])),
        n_ref=draw(st.sampled_from([0, 1, 3])),
        dt=draw(st.sampled_from([1.0, 0.5])),
        seed=draw(st.integers(0, 2**31 - 1)),
        surrogate=draw(st.sampled_from(SURROGATES)),
    )


# -- ALIF sequence -------------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(sizes=_sizes())
def test_native_equals_reference(sizes):
    case = random_case(**sizes)
    ref, g_ext_ref, g_w_ref = run_with_grads(alif_sequence_reference, *case)
    nat, g_ext, g_w = run_with_grads(seq_module.alif_sequence_native, *case)
    assert nat.z.shape == (sizes["steps"], sizes["batch"], sizes["n"])
    assert nat.pending.shape == (sizes["batch"], sizes["n_delay"], sizes["n"])
    _assert_close_outputs(nat, ref, **TOL)
    torch.testing.assert_close(g_ext, g_ext_ref, **TOL)
    torch.testing.assert_close(g_w, g_w_ref, **TOL)


@settings(max_examples=25, deadline=None)
@given(sizes=_sizes())
def test_native_matches_fused(sizes):
    # Not bitwise in general: where several spikes reach one current in one step, the sum's order is
    # MKL's (it depends on the sizes and dtype). The store-recall float32 case is bitwise, below.
    case = random_case(**sizes)
    external, w_rec, state, pending, p, _ = case
    nat = seq_module.alif_sequence_native(external, w_rec, state, pending, p)
    fus = alif_sequence_fused(external, w_rec, state, pending, p)
    _assert_close_outputs(nat, fus, rtol=0, atol=1e-12)
    if sizes["steps"] >= sizes["n_delay"]:  # the fused backward needs T >= D
        _, g_ext_f, g_w_f = run_with_grads(alif_sequence_fused, *case)
        _, g_ext_n, g_w_n = run_with_grads(seq_module.alif_sequence_native, *case)
        torch.testing.assert_close(g_ext_n, g_ext_f, **TOL)
        torch.testing.assert_close(g_w_n, g_w_f, **TOL)


def test_native_two_chunks_equal_one_piece():
    external, w_rec, state, pending, p, _ = random_case(
        seed=3, steps=25, batch=3, n=5, n_delay=3, n_ref=1, dt=1.0, surrogate=Triangle()
    )
    native = seq_module.alif_sequence_native
    whole = native(external, w_rec, state, pending, p)
    first = native(torch.cat([external[:11], torch.zeros_like(external[:3])]), w_rec, state, pending, p)
    second = native(external[11:], w_rec, first.state, first.pending, p)
    assert torch.equal(torch.cat([first.z, second.z]), whole.z)
    torch.testing.assert_close(torch.cat([first.v, second.v]), whole.v, rtol=0, atol=1e-12)
    torch.testing.assert_close(second.pending, whole.pending, rtol=0, atol=1e-12)


def test_native_accepts_a_strided_external_current():
    external, w_rec, state, pending, p, _ = random_case(
        seed=4, steps=9, batch=3, n=4, n_delay=2, n_ref=0, dt=1.0, surrogate=Triangle()
    )
    batch_major = external.transpose(0, 1).contiguous().transpose(0, 1)  # same values, other strides
    a = seq_module.alif_sequence_native(external, w_rec, state, pending, p)
    b = seq_module.alif_sequence_native(batch_major, w_rec, state, pending, p)
    _assert_close_outputs(a, b, rtol=0, atol=0)


# -- delayed input -------------------------------------------------------------------------------------
def _layer(n_in, n_lif, n_alif, n_delay, seed, impl, **kw):
    g = torch.Generator().manual_seed(seed)
    return RecurrentSpikingLayer(n_in, n_lif, n_alif, n_delay=n_delay, impl=impl, generator=g, **kw).double()


@settings(max_examples=40, deadline=None)
@given(
    steps=st.integers(1, 40),
    batch=st.integers(1, 4),
    n_in=st.integers(1, 5),
    n=st.integers(1, 6),
    n_delay=st.sampled_from([1, 2, 3, 5]),
    binary=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_delayed_input_equals_dense(steps, batch, n_in, n, n_delay, binary, seed):
    layer = _layer(n_in, n, 0, n_delay, seed, impl="fused")  # "fused": the dense external_current
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.rand(steps, batch, n_in, generator=g, dtype=F64)
    x = (
        (x < 0.3).to(F64)
        if binary
        else torch.where(x < 0.5, torch.randn(x.shape, generator=g, dtype=F64), 0.0)
    )
    r = torch.randn(steps + n_delay, batch, n, generator=g, dtype=F64)

    dense = layer.external_current(x)
    (g_dense,) = torch.autograd.grad((dense * r).sum(), layer.w_in)
    native = cpu_native.NativeDelayedInput.apply(x, layer.w_in, layer.in_delay, n_delay)
    (g_native,) = torch.autograd.grad((native * r).sum(), layer.w_in)
    assert native.shape == (steps + n_delay, batch, n)
    torch.testing.assert_close(native, dense, **TOL)
    torch.testing.assert_close(g_native, g_dense, **TOL)


def test_delayed_input_rejects_delays_out_of_range():
    x = torch.ones(3, 1, 2, dtype=F64)
    with pytest.raises(ValueError, match="delay"):
        cpu_native.delayed_input_forward(x, torch.ones(2, 2, dtype=F64), torch.full((2, 2), 4), 4)
    with pytest.raises(ValueError, match="delay"):
        cpu_native.delayed_input_forward(x, torch.ones(2, 2, dtype=F64), torch.full((2, 2), -1), 4)


def test_layer_uses_dense_input_when_x_requires_grad():
    layer = _layer(3, 2, 2, 3, seed=0, impl="auto")
    x = torch.rand(6, 2, 3, dtype=F64, requires_grad=True)
    current = layer.external_current(x)
    current.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    torch.testing.assert_close(current, layer.external_current(x.detach()), **TOL)


# -- the layer: reference vs native, float64 -----------------------------------------------------------
@settings(max_examples=20, deadline=None)
@given(
    steps=st.integers(1, 40),
    batch=st.integers(1, 4),
    n_in=st.integers(1, 5),
    n_lif=st.integers(0, 3),
    n_alif=st.integers(1, 3),
    n_delay=st.sampled_from([1, 2, 3, 5]),
    n_ref=st.sampled_from([0, 1, 3]),
    dt=st.sampled_from([1.0, 0.5]),
    binary=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_layer_native_equals_reference(steps, batch, n_in, n_lif, n_alif, n_delay, n_ref, dt, binary, seed):
    kw = dict(n_refractory=n_ref, dt=dt, tau_mem=5.0, tau_adapt=50.0, threshold=0.05, dale=0.8)
    ref_layer = _layer(n_in, n_lif, n_alif, n_delay, seed, impl="reference", **kw)
    nat_layer = _layer(n_in, n_lif, n_alif, n_delay, seed, impl="native", **kw)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.rand(steps, batch, n_in, generator=g, dtype=F64)
    x = (
        (x < 0.3).to(F64) / dt
        if binary
        else torch.where(x < 0.5, 2 * torch.rand(x.shape, generator=g, dtype=F64), 0.0)
    )
    r = torch.randn(steps, batch, n_lif + n_alif, generator=g, dtype=F64)
    outs = {}
    for name, layer in (("ref", ref_layer), ("nat", nat_layer)):
        z, state = layer(x)
        loss = (z * r).sum() + 0.0 * (layer.w_in.sum() + layer.w_rec.sum())  # z(0) may not depend on them
        outs[name] = (z, state, *torch.autograd.grad(loss, (layer.w_in, layer.w_rec)))
    (z_r, s_r, gi_r, gr_r), (z_n, s_n, gi_n, gr_n) = outs["ref"], outs["nat"]
    assert torch.equal(z_n, z_r)
    torch.testing.assert_close(s_n.pending, s_r.pending, **TOL)
    torch.testing.assert_close(s_n.neurons.v, s_r.neurons.v, **TOL)
    torch.testing.assert_close(gi_n, gi_r, **TOL)
    torch.testing.assert_close(gr_n, gr_r, **TOL)


# -- float32 at store-recall size: bit-identical spikes ------------------------------------------------
@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the fused loop's thousands of tiny ops only pay for threads
    yield
    torch.set_num_threads(threads)


def test_float32_store_recall_size_matches_fused(one_thread):
    torch.manual_seed(0)
    x = (torch.rand(2400, 64, 100) < 0.025).float()
    runs = {}
    for impl in ("fused", "native"):
        g = torch.Generator().manual_seed(0)
        layer = RecurrentSpikingLayer(100, 10, 10, n_refractory=3, n_delay=10, impl=impl, generator=g)
        readout = LeakyReadout(20, 2, generator=g)
        trace, state = layer.trace(x)
        out, _ = readout(trace.z)
        ((out**2).mean() + 1e-3 * trace.z.mean()).backward()
        runs[impl] = (trace, state, layer.w_in.grad, layer.w_rec.grad)
    (t_f, s_f, gi_f, gr_f), (t_n, s_n, gi_n, gr_n) = runs["fused"], runs["native"]
    assert t_f.z.sum() > 1000  # the network is active
    assert torch.equal(t_n.z, t_f.z)
    assert torch.equal(t_n.v, t_f.v) and torch.equal(t_n.a, t_f.a)
    assert torch.equal(s_n.pending, s_f.pending) and torch.equal(s_n.neurons.v, s_f.neurons.v)
    for g_n, g_f in ((gi_n, gi_f), (gr_n, gr_f)):
        assert float((g_n - g_f).norm() / g_f.norm()) < 1e-4


# -- dispatch, switches, build -------------------------------------------------------------------------
def test_auto_dispatches_to_native_on_cpu(monkeypatch):
    calls = []
    real = seq_module.alif_sequence_native

    def spy(*args, **kwargs):
        calls.append("native")
        return real(*args, **kwargs)

    monkeypatch.setattr(seq_module, "alif_sequence_native", spy)
    external, w_rec, state, pending, p, _ = random_case(
        seed=1, steps=5, batch=1, n=3, n_delay=2, n_ref=0, dt=1.0, surrogate=Triangle()
    )
    alif_sequence(external, w_rec, state, pending, p)
    assert calls == ["native"]
    alif_sequence(external, w_rec, state, pending, p, impl="fused")
    alif_sequence(external, w_rec, state._replace(v=state.v.clone().requires_grad_()), pending, p)
    assert calls == ["native"]  # fused on request; reference when the state needs a gradient
    monkeypatch.setenv("NEUROMORPH_NATIVE", "0")
    alif_sequence(external, w_rec, state, pending, p)
    assert calls == ["native"]


def test_switch_off_by_environment(monkeypatch):
    monkeypatch.setenv("NEUROMORPH_NATIVE", "0")
    assert cpu_native.available() is False
    assert "NEUROMORPH_NATIVE" in cpu_native.unavailable_reason()
    external, w_rec, state, pending, p, _ = random_case(
        seed=2, steps=4, batch=1, n=2, n_delay=1, n_ref=0, dt=1.0, surrogate=Triangle()
    )
    with pytest.raises(RuntimeError, match="unavailable"):
        alif_sequence(external, w_rec, state, pending, p, impl="native")
    layer = _layer(3, 2, 0, 2, seed=0, impl="native")
    with pytest.raises(RuntimeError, match="unavailable"):  # an explicit request is not silently ignored
        layer(torch.rand(4, 1, 3, dtype=F64))
    assert layer.external_current(torch.rand(4, 1, 3, dtype=F64)).shape == (6, 1, 2)  # the dense input path


def test_build_is_cached_and_failures_are_reported(monkeypatch, tmp_path):
    for name in ("_lib", "_lib_path", "_tried", "_reason"):  # restored afterwards
        monkeypatch.setattr(cpu_native, name, getattr(cpu_native, name))
    # the portable build (no -march=native: scalar fallbacks instead of AVX) must give the same results
    monkeypatch.setattr(cpu_native, "_OPT_FLAGS", (("-O3",),))
    monkeypatch.setenv("NEUROMORPH_CACHE", str(tmp_path))
    lib = cpu_native._build_and_load()
    (so,) = tmp_path.glob("alif_cpu-*.so")
    mtime = so.stat().st_mtime_ns
    assert cpu_native._build_and_load() is not None
    assert so.stat().st_mtime_ns == mtime and len(list(tmp_path.iterdir())) == 1  # reused, no temp left
    case = random_case(seed=9, steps=30, batch=3, n=5, n_delay=3, n_ref=1, dt=0.5, surrogate=Triangle())
    ref, g_ext_ref, g_w_ref = run_with_grads(alif_sequence_reference, *case)
    monkeypatch.setattr(cpu_native, "_lib", lib)
    nat, g_ext, g_w = run_with_grads(seq_module.alif_sequence_native, *case)
    _assert_close_outputs(nat, ref, **TOL)
    torch.testing.assert_close(g_ext, g_ext_ref, **TOL)
    torch.testing.assert_close(g_w, g_w_ref, **TOL)

    monkeypatch.setenv("NEUROMORPH_CACHE", str(tmp_path / "broken"))
    monkeypatch.setenv("CC", "false")  # a "compiler" that always fails
    monkeypatch.setattr(cpu_native, "_tried", False)
    monkeypatch.setattr(cpu_native, "_lib", None)
    assert cpu_native.available() is False
    assert "failed" in cpu_native.unavailable_reason()
    assert not list((tmp_path / "broken").glob("*.so"))
