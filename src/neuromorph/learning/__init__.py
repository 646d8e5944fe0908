"""Learning rules and regularisers: the firing-rate regulariser of the LSNN tutorials and e-prop
(online eligibility propagation, ``eprop.py``) and natural e-prop with a learning-signal generator
(``natural_eprop.py``)."""

from .eprop import (
    EPropResult,
    apply_gradients,
    eprop_from_loss,
    eprop_gradients,
    eprop_with_signals,
    truncated_bptt_reference,
)
from .natural_eprop import (
    LearningSignalGenerator,
    Trainee,
    meta_loss,
    natural_eprop_update,
    trainee_run,
)
from .regularizers import firing_rate_loss

__all__ = [
    "EPropResult",
    "LearningSignalGenerator",
    "Trainee",
    "apply_gradients",
    "eprop_from_loss",
    "eprop_gradients",
    "eprop_with_signals",
    "firing_rate_loss",
    "meta_loss",
    "natural_eprop_update",
    "trainee_run",
    "truncated_bptt_reference",
]
