"""Sparse networks that rewire themselves (optimizer-level; they act on any module's weights).

- :class:`DeepR` (``deep_r.py``): DEEP R, Bellec et al., ICLR 2018: a hard budget of K active
  connections (per tensor or global), fixed signs, L1 + Langevin noise, random reconnection; wraps any
  ``torch.optim`` optimizer.
- :class:`SoftDeepR` (``soft_deep_r.py``): soft-DEEP R: noise on every theta, clip at theta_min, no hard
  budget.
- :class:`SparseLinear` / :func:`sparse_linear` (``sparse_linear.py``): a linear map with K stored
  connections, computed through CSR when the density is low enough to pay (measured), masked dense
  otherwise.
- :class:`RewiringTarget` / :func:`rewiring_targets` (``targets.py``): which tensors to rewire, with
  their signs (Dale's law) and allowed connections (no autapses).
- :class:`SynapticSampling` (``synaptic_sampling.py``): Kappel et al. 2015, Langevin sampling of synaptic
  parameters with a Gaussian prior, temperature and an exp/linear weight map with retraction
  (theta <= 0), as a ``torch.optim.Optimizer``.
"""

from .deep_r import BUDGETS, DeepR
from .soft_deep_r import SoftDeepR, soft_theta_min
from .sparse_linear import (
    SPARSE_MIN_ENTRIES,
    SparseLinear,
    sparse_linear,
    sparse_max_density,
    uses_sparse_path,
)
from .synaptic_sampling import SynapticSampling, retracted_probability, stationary_normal
from .targets import RewiringTarget, rewiring_targets

__all__ = [
    "BUDGETS",
    "DeepR",
    "SoftDeepR",
    "soft_theta_min",
    "SparseLinear",
    "sparse_linear",
    "uses_sparse_path",
    "sparse_max_density",
    "SPARSE_MIN_ENTRIES",
    "RewiringTarget",
    "rewiring_targets",
    "SynapticSampling",
    "retracted_probability",
    "stationary_normal",
]
