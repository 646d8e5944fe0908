"""Learning rules and regularisers (BPTT utilities, firing-rate regulariser; e-prop later)."""

from .regularizers import firing_rate_loss

__all__ = ["firing_rate_loss"]
