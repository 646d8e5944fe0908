"""Interoperability through NIR, the Neuromorphic Intermediate Representation.

Pedersen, Abreu, Jobst, Lenz, Fra, Bauer, Muir, Zhou, Vogginger, Heckel, Urgese, Shankar, Stewart,
Sheik, Eshraghian (Nature Communications 15:8122, 2024), package ``nir`` (1.0.x): a graph of nodes
(``Affine``, ``Linear``, ``Conv2d``, ``SumPool2d``, ``Flatten``, ``LIF``, ``IF``, ``LI``, ``Delay``, ...)
whose neurons are ODEs in SI units (time constants in seconds), several edges into a node adding up.

    export(model, sample_input) -> nir.NIRGraph      neuromorph -> NIR
    load(graph) -> SpikingGraph                      NIR -> neuromorph
    save(graph, path); read(path)                    ``.nir`` files (HDF5, nir's own writer/reader)

Unit mapping (neuromorph keeps ms; NIR seconds):

    LIF (LSNN layers)   v(t) = a v(t-1) + (1 - a) I(t), a = exp(-dt/tau_mem)
                        -> LIF(tau = tau_mem / 1000 s, r = 1, v_leak = 0, v_threshold = thr, v_reset = 0):
                        exactly the NIR ODE  tau dv/dt = -v + r I  over one step with I held constant.
    LeakyReadout        y(t) = k y(t-1) + (1 - k) z(t), out = y W   -> LI(tau_out / 1000 s, r = 1) -> Affine
    IF (hard reset)     u = v + I, z = H(u - thr), v = (1 - z) u  -> IF(r = 1, v_threshold = thr, v_reset = 0)
    weights             neuromorph [in, out]  ->  NIR [out, in]; zeros (rewired, Dale-masked) stay zeros
    delays              d steps  ->  Delay(d * dt / 1000 s) after the weights of that delay

What NIR 1.0 cannot say is not dropped silently: the LSNN conventions of ``FeedForwardSpikingLayer``
and ``RecurrentSpikingLayer`` (spike from the previous voltage, threshold subtracted one step after
the spike, spikes of height 1/dt, refractory period) and soft resets are written into the nodes'
``metadata`` (keys ``neuromorph_*``), which :func:`load` honours; ``export`` warns
(:class:`NIRConventionWarning`), and with ``strict=True`` refuses. Adaptive (ALIF) neurons are refused:
their threshold reset ``A(t) z(t)`` multiplies two state variables, which NIR's linear nodes cannot.
"""

from __future__ import annotations

import io
import os

import nir  # the NIR package (absolute import; this package is neuromorph.nir)

from ..runs import atomic_write_bytes
from ._export import export
from ._load import load
from ._units import SUPPORTED_NODES, NIRConventionWarning

__all__ = ["NIRConventionWarning", "export", "load", "save", "read", "SUPPORTED_NODES"]


# -- files -----------------------------------------------------------------------------------------


def save(graph: nir.NIRGraph, path: str | os.PathLike) -> None:
    """Write ``graph`` to ``path`` (``.nir``, HDF5) with nir's own writer, atomically."""
    if not isinstance(graph, nir.NIRGraph):
        raise ValueError(f"graph must be a nir.NIRGraph, got {type(graph).__name__}")
    buffer = io.BytesIO()
    nir.write(buffer, graph)
    atomic_write_bytes(path, buffer.getvalue())


def read(path: str | os.PathLike) -> nir.NIRGraph:
    """Read a ``.nir`` file with nir's own reader."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no NIR file at {os.fspath(path)!r}")
    try:
        return nir.read(path)
    except (OSError, KeyError, AssertionError, TypeError, ValueError) as err:
        unknown = _unknown_types(path)
        if unknown:
            key, kind = unknown[0]
            raise ValueError(
                f"{os.fspath(path)!r}: node {key!r} has type {kind!r}, which nir {nir.version} does not know"
            ) from err
        raise ValueError(f"{os.fspath(path)!r} is not a readable NIR file: {err!r}") from err


def _unknown_types(path) -> list[tuple[str, str]]:
    """``(node, type)`` for every node of a .nir file whose type nir cannot build (nir.read only asserts)."""
    import h5py

    known = set(getattr(nir.ir, "__all_ir", nir.ir.__all__))
    found: list[tuple[str, str]] = []

    def walk(group, prefix: str) -> None:
        for key, child in group.get("nodes", {}).items():
            kind = child["type"][()] if "type" in child else b"?"
            kind = kind.decode() if isinstance(kind, bytes) else str(kind)
            if kind not in known:
                found.append((prefix + key, kind))
            elif kind == "NIRGraph":
                walk(child, f"{prefix}{key}.")

    try:
        with h5py.File(path, "r") as f:
            if "node" in f:
                walk(f["node"], "")
    except OSError:
        return []
    return found
