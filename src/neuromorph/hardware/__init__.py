"""Simulated neuromorphic and in-memory-computing hardware.

- :mod:`.pcm`: statistical phase-change-memory device model (IBM aihwkit's PCM-like inference model:
  programming noise, drift with per-device exponents, 1/f read noise, global drift compensation, weight
  quantisation), pure functions over ``PCMParameters`` / ``PCMState``.
- :mod:`.analog`: analog layers on PCM crossbars (``AnalogLinear``, ``AnalogConv2d``, spiking-layer weights),
  ``deploy`` / ``age`` / ``configure``, on-chip updates with write counting (``program_update``).
- :mod:`.aware`: hardware-aware training (weight-noise injection and clipping during training).
- :mod:`.substrate`: BrainScaleS-like analog substrate: per-synapse and per-neuron (gain, threshold)
  fixed-pattern mismatch frozen per chip seed, limited weight resolution, trial-to-trial noise.
- :mod:`.in_the_loop`: in-the-loop training (forward on the chip, backward through the ideal model at
  the recorded activity; sign-only updates).
- :mod:`.strategies`: the other two strategies on a mismatched substrate: a homeostatic auxiliary
  population and an ensemble (population-coding) architecture.
"""

from .analog import (
    AnalogConv2d,
    AnalogLinear,
    PCMArray,
    age,
    analog_arrays,
    configure,
    deploy,
    hardware_weights,
    program_update,
)
from .aware import HWAParameters, clip_weights, inject_weight_noise, perturbed_weights
from .in_the_loop import InTheLoopNetwork, SignDescent, clip_to_range_, in_the_loop_forward
from .pcm import IDEAL, PCMParameters, PCMState
from .strategies import ensemble_network, ensemble_readout, homeostatic_compensation
from .substrate import (
    Chip,
    ChipLayer,
    RateNetwork,
    SubstrateParams,
    deployment_scales,
    make_chip,
    quantize_weights,
    substrate_forward,
)

__all__ = [
    "AnalogConv2d",
    "AnalogLinear",
    "Chip",
    "ChipLayer",
    "HWAParameters",
    "IDEAL",
    "InTheLoopNetwork",
    "PCMArray",
    "PCMParameters",
    "PCMState",
    "RateNetwork",
    "SignDescent",
    "SubstrateParams",
    "age",
    "analog_arrays",
    "clip_to_range_",
    "clip_weights",
    "configure",
    "deploy",
    "deployment_scales",
    "ensemble_network",
    "ensemble_readout",
    "hardware_weights",
    "homeostatic_compensation",
    "in_the_loop_forward",
    "inject_weight_noise",
    "make_chip",
    "perturbed_weights",
    "program_update",
    "quantize_weights",
    "substrate_forward",
]
