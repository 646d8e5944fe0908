"""``nn.Module`` wrappers over the step functions; explicit state, time-major ``[T, B, ...]``."""

from .delay import DelayLayer, DelayState
from .feedforward import FeedForwardSpikingLayer
from .graph import SpikingGraph
from .integrate_fire import IntegrateFireLayer
from .lif_box import LIBoxLayer, LIFBoxLayer
from .pointwise import Scale, Threshold
from .readout import LeakyReadout
from .recurrent import RecurrentSpikingLayer, RecurrentState, SpikeTrace
from .sequential import SpikingSequential

__all__ = [
    "DelayLayer",
    "DelayState",
    "FeedForwardSpikingLayer",
    "IntegrateFireLayer",
    "LIBoxLayer",
    "LIFBoxLayer",
    "LeakyReadout",
    "RecurrentSpikingLayer",
    "RecurrentState",
    "Scale",
    "SpikeTrace",
    "SpikingGraph",
    "SpikingSequential",
    "Threshold",
]
