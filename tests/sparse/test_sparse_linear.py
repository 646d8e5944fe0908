"""Sparse linear map: the CSR path equals the masked dense one (forward and backward, hypothesis); the
automatic choice; the layer's checks."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from neuromorph.sparse import (
    SPARSE_MIN_ENTRIES,
    SparseLinear,
    sparse_linear,
    sparse_max_density,
    uses_sparse_path,
)


@settings(max_examples=60, deadline=None)
@given(
    n_out=st.integers(1, 24),
    n_in=st.integers(1, 24),
    fraction=st.floats(0.01, 1.0),
    lead=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    bias=st.booleans(),
    shuffled=st.booleans(),
    seed=st.integers(0, 10_000),
)
def test_sparse_path_equals_masked_dense_forward_and_backward(
    n_out, n_in, fraction, lead, bias, shuffled, seed
):
    g = torch.Generator().manual_seed(seed)
    k = max(1, int(fraction * n_out * n_in))
    index = torch.randperm(n_out * n_in, generator=g)[:k]
    if not shuffled:
        index = index.sort().values
    values = torch.randn(k, generator=g, dtype=torch.float64)
    x = torch.randn(*lead, n_in, generator=g, dtype=torch.float64)
    b = torch.randn(n_out, generator=g, dtype=torch.float64) if bias else None
    gy = torch.randn(*lead, n_out, generator=g, dtype=torch.float64)
    # the reference: a dense matrix times a 0/1 mask
    mask = torch.zeros(n_out * n_in, dtype=torch.float64)
    mask[index] = 1.0
    dense_w = torch.zeros(n_out * n_in, dtype=torch.float64)
    dense_w[index] = values
    dense_w = dense_w.view(n_out, n_in).requires_grad_(True)
    x_ref = x.clone().requires_grad_(True)
    y_ref = x_ref @ (dense_w * mask.view(n_out, n_in)).t() + (b if b is not None else 0.0)
    gx_ref, gw_ref = torch.autograd.grad(y_ref, (x_ref, dense_w), gy)
    for impl in ("sparse", "dense"):
        v = values.clone().requires_grad_(True)
        xi = x.clone().requires_grad_(True)
        bi = b.clone().requires_grad_(True) if b is not None else None
        y = sparse_linear(xi, v, index, (n_out, n_in), bi, impl=impl)
        inputs = (xi, v) if bi is None else (xi, v, bi)
        grads = torch.autograd.grad(y, inputs, gy)
        torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(grads[0], gx_ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(grads[1], gw_ref.reshape(-1)[index], rtol=1e-12, atol=1e-12)
        if bi is not None:
            torch.testing.assert_close(grads[2], gy.reshape(-1, n_out).sum(0), rtol=1e-12, atol=1e-12)
        # nothing outside the mask gets a gradient: the masked dense gradient is zero there
        assert float(gw_ref.reshape(-1)[mask == 0].abs().sum()) == 0.0


def test_automatic_choice_follows_the_measured_crossover():
    big = (1024, 1024)
    assert SPARSE_MIN_ENTRIES == big[0] * big[1]
    assert sparse_max_density(1024 * 1024) == pytest.approx(0.02)
    assert sparse_max_density(4096 * 4096) == pytest.approx(0.08)
    assert uses_sparse_path(big, int(0.01 * big[0] * big[1]), torch.float32)
    assert uses_sparse_path(big, int(0.02 * big[0] * big[1]), torch.float32)
    assert not uses_sparse_path(big, int(0.03 * big[0] * big[1]), torch.float32)
    assert uses_sparse_path((2048, 2048), int(0.03 * 2048 * 2048), torch.float32)
    assert not uses_sparse_path((512, 512), 100, torch.float32)  # too small to pay
    assert not uses_sparse_path((16, 16), 2, torch.float32)
    assert not uses_sparse_path(big, 10, torch.float16)  # CSR products need float32/64
    assert uses_sparse_path((16, 16), 200, torch.float32, impl="sparse")
    assert not uses_sparse_path(big, 10, torch.float32, impl="dense")
    with pytest.raises(ValueError, match="impl must be one of"):
        uses_sparse_path(big, 10, torch.float32, impl="csr")


def test_layer_forward_matches_its_dense_weight():
    layer = SparseLinear(30, 12, connectivity=0.1, bias=True, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        layer.bias.normal_()
    assert layer.values.numel() == 36 and layer.index.unique().numel() == 36
    x = torch.randn(2, 5, 30)
    torch.testing.assert_close(layer(x), x @ layer.dense_weight().t() + layer.bias)
    assert "connections=36 (10.00%)" in repr(layer)


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"connectivity": 0.0}, "connectivity must be in (0, 1], got 0.0"),
        ({"connectivity": 1.01}, "connectivity must be in (0, 1], got 1.01"),
        ({"connections": 41}, "connections=41 is larger than the 5x8 matrix (40)"),
        ({"connections": 0}, "connections must be a positive int, got 0"),
        ({}, "exactly one of connectivity"),
        ({"connectivity": 0.5, "connections": 3}, "exactly one of connectivity"),
        ({"connections": 3, "impl": "csr"}, "impl must be one of"),
    ],
)
def test_layer_bad_input(kwargs, needle):
    with pytest.raises(ValueError) as err:
        SparseLinear(8, 5, **kwargs)
    assert needle in str(err.value)


def test_bad_call_input():
    v, idx = torch.randn(3), torch.tensor([0, 4, 7])
    with pytest.raises(ValueError, match="4 features in its last dimension"):
        sparse_linear(torch.randn(2, 5), v, idx, (3, 4))
    with pytest.raises(ValueError, match="1-D of equal length"):
        sparse_linear(torch.randn(2, 4), v, idx[:2], (3, 4))
    with pytest.raises(ValueError, match="index must be int64"):
        sparse_linear(torch.randn(2, 4), v, idx.int(), (3, 4))
    with pytest.raises(ValueError, match='impl="sparse" needs float32 or float64'):
        sparse_linear(torch.randn(2, 4).half(), v.half(), idx, (3, 4), impl="sparse")
    layer = SparseLinear(4, 3, connections=3)
    with pytest.raises(ValueError, match="NaN or inf"):
        layer(torch.tensor([[0.0, float("nan"), 0.0, 0.0]]))
