"""Shape helpers of the element-wise neuron layers (IF, LIF box, LI box, delay): a population has a
feature shape (``(N,)`` after a dense layer, ``(C, H, W)`` after a convolution) and takes time-major
input ``[T, B, *shape]``."""

from __future__ import annotations

import torch

from .. import _validate

__all__ = ["feature_shape", "check_sequence", "per_element"]


def feature_shape(name: str, value) -> tuple[int, ...]:
    """``value`` (an int or a sequence of ints) as a non-empty tuple of positive ints."""
    items = (value,) if isinstance(value, int) and not isinstance(value, bool) else value
    try:
        shape = tuple(items)
    except TypeError:
        raise ValueError(
            f"{name} must be a positive int or a tuple of positive ints, got {value!r}"
        ) from None
    if not shape or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape):
        raise ValueError(f"{name} must be a positive int or a tuple of positive ints, got {value!r}")
    return shape


def check_sequence(name: str, x: torch.Tensor, shape: tuple[int, ...]) -> None:
    """``x`` must be a finite time-major tensor ``[T, B, *shape]``."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    want = ("T", "B", *shape)
    if x.dim() != 2 + len(shape) or tuple(x.shape[2:]) != shape:
        raise ValueError(f"{name} must have shape [{', '.join(map(str, want))}], got {tuple(x.shape)}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} must have at least one time step and one sample, got {tuple(x.shape)}")
    _validate.finite_tensor(name, x)


def per_element(name: str, value, shape: tuple[int, ...], *, positive: bool = False) -> torch.Tensor:
    """A number or tensor broadcast to a tensor of ``shape`` (a copy; float32, or float64 when given
    float64), checked finite (and > 0 with ``positive``)."""
    t = torch.as_tensor(value)
    t = t.to(torch.float64 if t.dtype == torch.float64 else torch.float32)
    try:
        t = torch.broadcast_to(t, shape).clone()
    except RuntimeError:
        raise ValueError(
            f"{name} must be a number or broadcastable to {shape}, got shape {tuple(t.shape)}"
        ) from None
    if positive:
        _validate.positive(name, t)
    elif not bool(torch.isfinite(t).all()):
        raise ValueError(
            f"{name} must be finite, got a tensor containing {t[~torch.isfinite(t)][0].item()!r}"
        )
    return t
