"""Procedural tasks (pure torch/numpy, explicit random generators).

- ``function_family``: random small 2-layer target networks (LSNN paper, supervised L2L).
- ``navigation``: batched 2-D navigation to a hidden goal, trials of several episodes (LSNN paper, meta-RL).
- ``arm``: planar 2-joint and Scorbot-like 3-joint arms, smoothed-Brownian target movements (L2L-PCM
  paper, robot-arm experiment).

One module per task family; import the module itself (``from neuromorph.tasks import navigation``).
"""

from .function_family import (
    FunctionEpisodes,
    TargetNetworks,
    evaluate,
    sample_episodes,
    sample_target_networks,
)

__all__ = ["FunctionEpisodes", "TargetNetworks", "evaluate", "sample_episodes", "sample_target_networks"]
