"""``nn.Module`` wrappers over the step functions; explicit state, time-major ``[T, B, ...]``."""

from .feedforward import FeedForwardSpikingLayer
from .readout import LeakyReadout
from .recurrent import RecurrentSpikingLayer, RecurrentState, SpikeTrace

__all__ = ["FeedForwardSpikingLayer", "LeakyReadout", "RecurrentSpikingLayer", "RecurrentState", "SpikeTrace"]
