"""Neuron models as pure step functions ``step(current, state, params) -> (z, state)``."""

from .alif import ALIFParameters, ALIFState, adaptive_threshold, alif_initial_state, alif_step
from .integrate_fire import IFParameters, IFState, if_initial_state, if_step
from .lif import LIFParameters, LIFState, lif_initial_state, lif_step

__all__ = [
    "ALIFParameters",
    "ALIFState",
    "adaptive_threshold",
    "alif_initial_state",
    "alif_step",
    "IFParameters",
    "IFState",
    "if_initial_state",
    "if_step",
    "LIFParameters",
    "LIFState",
    "lif_initial_state",
    "lif_step",
]
