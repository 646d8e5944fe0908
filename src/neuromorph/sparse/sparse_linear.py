"""Sparse linear layer: y = x W^T + b with W [out, in] holding only K connections, sparse or dense compute.

Context: DEEP R (Bellec, Kappel, Maass, Legenstein, ICLR 2018) trains networks whose weight matrices
keep about 1% of their entries; the official code has a variant with TensorFlow sparse matrices
("speed up x8", ``script_mnist_deep_rewiring_with_sparse_matrices.py``). Here the weight is stored
compactly: ``values [K]`` at flat row-major positions ``index [K]`` (distinct) of the ``[out, in]``
matrix. Two implementations of the same function, with the same gradients:

- ``"dense"`` (masked dense): W = scatter(values at index) into zeros, then ``F.linear``; the
  gradient of ``values`` is dL/dW gathered at ``index`` (= the masked dense gradient).
- ``"sparse"`` (CSR): y^T = W_csr x^T; dL/dx = (W^T)_csr (dL/dy)^T; dL/dvalues_k = sum_b dL/dy[b, r_k]
  x[b, c_k] (``torch.sparse.sampled_addmm``): O(K B) work and memory, no dense [out, in] tensor at all.

``impl="auto"`` takes the sparse path when the matrix has at least ``SPARSE_MIN_ENTRIES`` (2^20)
entries and its density K / (out in) is at most :func:`sparse_max_density` = 1% * sqrt(entries / 2^18)
(2% at 1024x1024, 4% at 2048x2048, 8% at 4096x4096; float32/float64 only). Both come from
``benchmarks/rewiring.py --crossover`` (2-core AMD EPYC, shared; torch 2.13 CPU, one thread; forward +
backward, CPU time, 2026-11-27): the CSR / masked-dense speed-up at 1% / 2% / 5% / 10% density was
3.8 / 2.2 / 0.9 / 0.7x (batch 10) and 4.4 / 2.4 / 1.4 / 0.9x (batch 128) at 2048x2048, 1.9 / 0.9 / 0.8 /
0.6x and 2.6 / 1.7 / 1.5 / 0.9x at 1024x1024, and at most 1.1x at any density on 512x512 and below,
where building the CSR indices (int32 sorts) costs more than a small dense product. A sorted
``index`` skips the forward sort.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .. import _validate
from ..families import BIASES, WEIGHTS

__all__ = ["SparseLinear", "sparse_linear", "uses_sparse_path", "sparse_max_density", "SPARSE_MIN_ENTRIES"]

IMPLS = ("auto", "dense", "sparse")
SPARSE_MIN_ENTRIES = 2**20  # measured crossover (see the module docstring)
_SPARSE_DTYPES = (torch.float32, torch.float64)


def sparse_max_density(entries: int) -> float:
    """Highest density at which the sparse path is taken for a matrix of ``entries`` entries (measured)."""
    return 0.01 * math.sqrt(entries / 2**18)


def uses_sparse_path(
    shape: tuple[int, int], n_connections: int, dtype: torch.dtype, impl: str = "auto"
) -> bool:
    """Whether :func:`sparse_linear` with ``impl`` computes through CSR for this matrix."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl != "auto":
        return impl == "sparse"
    entries = shape[0] * shape[1]
    return (
        dtype in _SPARSE_DTYPES
        and entries >= SPARSE_MIN_ENTRIES
        and n_connections <= sparse_max_density(entries) * entries
    )


def _csr(index: torch.Tensor, values: torch.Tensor, n_rows: int, n_cols: int):
    """CSR matrix of ``values`` at flat positions ``index`` of an [n_rows, n_cols] matrix, and the
    permutation that sorts ``index`` (row-major order = CSR order)."""
    if index.numel() < 2 or bool((index[1:] > index[:-1]).all()):  # already sorted: no sort (cheap check)
        order = torch.arange(index.numel(), device=index.device)
        idx = index
    else:
        # int32 keys sort faster than int64 on CPU; the sort is most of the sparse path's cost
        keys = index.to(torch.int32) if n_rows * n_cols < 2**31 else index
        order = torch.argsort(keys)
        idx = index[order]
    rows = torch.div(idx, n_cols, rounding_mode="floor")
    cols = idx - rows * n_cols
    return _csr_from_rows(rows, cols, values[order], n_rows, n_cols), order, rows, cols


def _csr_from_rows(rows, cols, values, n_rows: int, n_cols: int):
    crow = torch.zeros(n_rows + 1, dtype=torch.long, device=rows.device)
    crow[1:] = torch.bincount(rows, minlength=n_rows).cumsum(0)
    with warnings.catch_warnings():  # torch flags its CSR support as "beta" on first use
        warnings.filterwarnings("ignore", message=".*[Ss]parse.*", category=UserWarning)
        return torch.sparse_csr_tensor(crow, cols, values, (n_rows, n_cols))


class _CSRLinear(torch.autograd.Function):
    """y = x W^T through CSR; see the module docstring for the three products."""

    @staticmethod
    def forward(ctx, x2d, values, index, n_out: int, n_in: int):
        w, order, rows, cols = _csr(index, values.detach(), n_out, n_in)
        y = (w @ x2d.t()).t().contiguous()
        ctx.save_for_backward(x2d, order, rows, cols, w.values())
        ctx.shape = (n_out, n_in)
        return y

    @staticmethod
    def backward(ctx, gy):
        x2d, order, rows, cols, vals = ctx.saved_tensors
        n_out, n_in = ctx.shape
        grad_x = grad_values = None
        if ctx.needs_input_grad[0]:
            wt, _, _, _ = _csr(cols * n_out + rows, vals, n_in, n_out)  # W^T in CSR
            grad_x = (wt @ gy.t()).t()
        if ctx.needs_input_grad[1]:
            pattern = _csr_from_rows(rows, cols, vals, n_out, n_in)
            sampled = torch.sparse.sampled_addmm(pattern, gy.t().contiguous(), x2d, beta=0.0)
            grad_values = torch.empty_like(vals)
            grad_values[order] = sampled.values()
        return grad_x, grad_values, None, None, None


def sparse_linear(
    x: torch.Tensor,
    values: torch.Tensor,
    index: torch.Tensor,
    shape: tuple[int, int],
    bias: torch.Tensor | None = None,
    *,
    impl: str = "auto",
) -> torch.Tensor:
    """``x [..., in] -> [..., out]``: ``y = x W^T + b`` with ``W.view(-1)[index] = values``, else 0.

    ``index`` holds distinct flat row-major positions in the ``shape = (out, in)`` matrix (int64, same
    device as ``values``). ``impl``: ``"dense"`` (masked dense), ``"sparse"`` (CSR) or ``"auto"``
    (:func:`uses_sparse_path`). Both give the same output and gradients (for ``x``, ``values``,
    ``bias``) up to float rounding."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    n_out, n_in = shape
    if x.shape[-1] != n_in:
        raise ValueError(f"x must have {n_in} features in its last dimension, got shape {tuple(x.shape)}")
    if values.dim() != 1 or index.shape != values.shape:
        raise ValueError(
            "values and index must be 1-D of equal length, got "
            f"{tuple(values.shape)} and {tuple(index.shape)}"
        )
    if index.dtype != torch.long:
        raise ValueError(f"index must be int64, got {index.dtype}")
    if uses_sparse_path(shape, values.numel(), values.dtype, impl):
        if values.dtype not in _SPARSE_DTYPES:
            raise ValueError(f'impl="sparse" needs float32 or float64 values, got {values.dtype}')
        lead = x.shape[:-1]
        y = _CSRLinear.apply(x.reshape(-1, n_in).to(values.dtype), values, index, n_out, n_in)
        y = y.reshape(*lead, n_out)
        return y if bias is None else y + bias
    w = values.new_zeros(n_out * n_in).scatter(0, index, values).view(n_out, n_in)
    return F.linear(x, w, bias)


class SparseLinear(nn.Module):
    """Linear layer with a fixed number K of connections (``values`` at ``index``), sparse compute
    when it pays (``impl="auto"``). Rewire it with :class:`~neuromorph.sparse.DeepR`.

    Exactly one of ``connectivity`` (fraction of the ``out x in`` entries, in (0, 1]) or
    ``connections`` (K) is given. Initial connections: K distinct positions drawn uniformly;
    values ``N(0, 1) / sqrt(in_features)`` (the DEEP R scripts' scale)."""

    families = {"values": WEIGHTS, "bias": BIASES}

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        connectivity: float | None = None,
        connections: int | None = None,
        bias: bool = False,
        impl: str = "auto",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        _validate.positive_int("in_features", in_features)
        _validate.positive_int("out_features", out_features)
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
        entries = in_features * out_features
        if (connectivity is None) == (connections is None):
            raise ValueError("give exactly one of connectivity (fraction in (0, 1]) or connections (count)")
        if connectivity is not None:
            if isinstance(connectivity, bool) or not isinstance(connectivity, (int, float)):
                raise ValueError(f"connectivity must be a number in (0, 1], got {connectivity!r}")
            if not 0.0 < connectivity <= 1.0:
                raise ValueError(f"connectivity must be in (0, 1], got {connectivity!r}")
            connections = max(1, int(round(connectivity * entries)))
        _validate.positive_int("connections", connections)
        if connections > entries:
            raise ValueError(
                f"connections={connections} is larger than the {out_features}x{in_features} matrix "
                f"({entries})"
            )
        self.in_features, self.out_features, self.impl = in_features, out_features, impl
        g = generator
        index = torch.randperm(entries, generator=g)[:connections].sort().values
        self.register_buffer("index", index)
        self.values = nn.Parameter(torch.randn(connections, generator=g) / math.sqrt(in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    @property
    def shape(self) -> tuple[int, int]:
        return (self.out_features, self.in_features)

    def dense_weight(self) -> torch.Tensor:
        """``[out, in]`` weight as a dense tensor (differentiable in ``values``)."""
        n = self.out_features * self.in_features
        return self.values.new_zeros(n).scatter(0, self.index, self.values).view(self.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _validate.finite_tensor("x", x)
        return sparse_linear(x, self.values, self.index, self.shape, self.bias, impl=self.impl)

    def extra_repr(self) -> str:
        k = self.values.numel()
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, connections={k} "
            f"({k / (self.in_features * self.out_features):.2%}), bias={self.bias is not None}, "
            f"impl={self.impl}"
        )
