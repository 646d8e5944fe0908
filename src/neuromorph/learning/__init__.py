"""Learning rules and regularisers: the firing-rate regulariser of the LSNN tutorials and e-prop
(online eligibility propagation, ``eprop.py``)."""

from .eprop import (
    EPropResult,
    apply_gradients,
    eprop_gradients,
    eprop_with_signals,
    truncated_bptt_reference,
)
from .regularizers import firing_rate_loss

__all__ = [
    "EPropResult",
    "apply_gradients",
    "eprop_gradients",
    "eprop_with_signals",
    "firing_rate_loss",
    "truncated_bptt_reference",
]
