"""Fast paths with the numerics of the reference step functions; ``alif_sequence`` dispatches."""

from .alif_sequence import SequenceResult, alif_sequence, alif_sequence_fused, alif_sequence_reference
from .exp_filter import exp_filter

__all__ = ["SequenceResult", "alif_sequence", "alif_sequence_fused", "alif_sequence_reference", "exp_filter"]
