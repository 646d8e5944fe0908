"""Shared pieces of the NIR bridge: units (NIR uses seconds, neuromorph ms), tensor <-> array
conversions, the ``neuromorph_*`` node metadata, and the warning for what NIR 1.0 cannot express.
See :mod:`neuromorph.nir` for the mapping."""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict

import numpy as np
import torch

from ..spikes import SURROGATES, Surrogate

MS = 1e-3  # seconds per millisecond
SUPPORTED_NODES = (
    "Input", "Output", "Affine", "Linear", "Scale", "Conv1d", "Conv2d", "SumPool2d", "AvgPool2d",
    "Flatten", "Delay", "Threshold", "IF", "LIF", "LI", "CubaLIF", "CubaLI", "NIRGraph",
)  # fmt: skip
LSNN_LAYERS = ("FeedForwardSpikingLayer", "RecurrentSpikingLayer", "LeakyReadout")


class NIRConventionWarning(UserWarning):
    """A layer's exact behaviour is outside NIR 1.0; it travels in the node metadata only."""


# -- small conversions ------------------------------------------------------------------------------


def np_array(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().copy()


def seconds(ms: torch.Tensor) -> np.ndarray:
    return ms.detach().cpu().double().numpy() / 1000.0


def from_seconds(seconds, dtype: torch.dtype) -> torch.Tensor:
    """Seconds -> ms, undoing :func:`seconds` exactly where the float64 product rounds off by an ulp."""
    s = np.asarray(seconds, dtype=np.float64)
    best = s * 1000.0
    for cand in (np.nextafter(best, -np.inf), np.nextafter(best, np.inf)):
        fix = (best / 1000.0 != s) & (cand / 1000.0 == s)
        best = np.where(fix, cand, best)
    return torch.from_numpy(np.array(best)).to(dtype)


def torch_dtype(a: np.ndarray) -> torch.dtype:
    return torch.float64 if np.asarray(a).dtype == np.float64 else torch.float32


def to_tensor(a, dtype=None) -> torch.Tensor:
    a = np.array(a)
    return torch.from_numpy(a).to(dtype or torch_dtype(a))


def surrogate_meta(s: Surrogate) -> dict:
    names = [k for k, cls in SURROGATES.items() if type(s) is cls]
    if not names:
        return {}
    return {"neuromorph_surrogate": names[0], "neuromorph_surrogate_args": json.dumps(asdict(s))}


def surrogate_from_meta(meta: dict, default: Surrogate) -> Surrogate:
    name = meta.get("neuromorph_surrogate")
    if name is None:
        return default
    return SURROGATES[str(name)](**json.loads(str(meta.get("neuromorph_surrogate_args", "{}"))))


def tag(layer: str, name: str, role: str, **extra) -> dict:
    meta = {"neuromorph_layer": layer, "neuromorph_name": name, "neuromorph_role": role}
    meta.update({f"neuromorph_{k}": v for k, v in extra.items()})
    return meta


def not_nir(name: str, what: str, strict: bool) -> None:
    if strict:
        raise ValueError(
            f"layer {name!r}: {what}; NIR 1.0 cannot express this (export with strict=False keeps it in "
            "the node metadata, which only neuromorph reads)"
        )
    warnings.warn(
        f"layer {name!r}: {what}. The NIR node holds NIR's nearest primitive; the exact behaviour is in "
        "its metadata (neuromorph_* keys), which neuromorph.nir.load honours and other NIR tools ignore",
        NIRConventionWarning,
        stacklevel=4,
    )


def node_meta(node) -> dict:
    return {str(k): v for k, v in (getattr(node, "metadata", None) or {}).items()}


def as_str(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
