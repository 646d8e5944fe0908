"""Argument checks shared by constructors and step functions: each raises ``ValueError`` naming the
argument, the value and what is allowed (the project's convention for bad input)."""

from __future__ import annotations

import math

import torch


def positive(name: str, value, *, allow_zero: bool = False) -> None:
    """``value`` (a number or a tensor) must be finite and > 0 (or >= 0 with ``allow_zero``)."""
    bound = "non-negative" if allow_zero else "positive"
    if isinstance(value, torch.Tensor):
        bad = ~torch.isfinite(value) | ((value < 0) if allow_zero else (value <= 0))
        if bool(bad.any()):
            raise ValueError(
                f"{name} must be {bound} and finite, got a tensor containing {value[bad][0].item()!r}"
            )
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a {bound} finite number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {bound}, got {value!r}")


def non_negative_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")


def positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def finite_tensor(name: str, x: torch.Tensor) -> None:
    """Reject NaN/inf before any compute (a NaN silently poisons a whole BPTT run)."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.is_floating_point() and x.numel():
        # min and max in one pass: NaN propagates into both, inf shows at an end; no full-size temporary.
        lo, hi = torch.aminmax(x)
        if not bool(torch.isfinite(lo) & torch.isfinite(hi)):
            raise ValueError(f"{name} contains NaN or inf values; clean the input before the network")


def sequence(name: str, x: torch.Tensor, features: int) -> None:
    """A time-major input ``[T, B, features]`` with finite values."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 3:
        raise ValueError(
            f"{name} must have rank 3 [T, B, {features}] (time-major), got shape {tuple(x.shape)}"
        )
    if x.shape[-1] != features:
        raise ValueError(
            f"{name} must have {features} features in its last dimension, got shape {tuple(x.shape)}"
        )
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(
            f"{name} must have at least one time step and one sample, got shape {tuple(x.shape)}"
        )
    finite_tensor(name, x)


def same_device_dtype(name: str, x: torch.Tensor, other_name: str, other: torch.Tensor) -> None:
    """``x`` must live on ``other``'s device with its dtype (a layer's input and its weights). Checked
    before the values are (a NaN check would otherwise synchronise with, or fail on, the wrong device);
    a non-tensor ``x`` is left to :func:`sequence`."""
    if isinstance(x, torch.Tensor) and (x.device != other.device or x.dtype != other.dtype):
        raise ValueError(
            f"{name} is {x.dtype} on {x.device} but {other_name} is {other.dtype} on {other.device}; "
            f"move one of them (e.g. x.to(layer.{other_name}))"
        )
