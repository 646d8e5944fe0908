"""2-D navigation to a hidden goal, batched over trials: the meta-RL task of the LSNN paper.

Bellec, Salaj, Subramoney, Legenstein, Maass (NeurIPS 2018), "Long short-term memory and
learning-to-learn in networks of spiking neurons", meta-reinforcement learning: an agent moves in a
2-D arena towards a goal it cannot see; the goal is fixed within a *trial* of ``n_episodes`` episodes
and new in every trial, so an agent that remembers can explore in episode 1 and go straight to the goal
afterwards. (The paper's exact arena, goal size and reward are unverified; these are ours.)

Dynamics (one step, agent ``b``, action ``a`` in {0: +x, 1: -x, 2: +y, 3: -y}):

    p <- clip(p + step_size * e_a, -arena, arena)
    reward = 1 if |p - g| <= goal_radius (the episode ends: the agent waits there until the slot ends)

Every episode occupies a slot of ``max_steps`` steps, so that all trials of a batch stay in lockstep
(a trial is ``n_episodes * max_steps`` steps); an agent that reached the goal is *done* for the rest
of the slot (its actions are ignored, reward 0) and the next episode restarts it at the start position
(the arena's centre, or a uniform draw with ``random_start``). ``steps_to_goal`` of an episode is the
number of moves it took (``max_steps`` if the goal was not reached). The goal centre is uniform over the
positions at least ``goal_min_distance`` from the centre and inside the arena.

API in the gymnasium style, but functional and batched: ``reset(params, batch, generator) -> (obs,
state)`` starts new trials, ``step(params, state, action, generator) -> StepResult``; randomness only
through the explicit ``torch.Generator``. Observations: place-cell activities of the position
(Gaussian tuning on a ``place_cells x place_cells`` grid), the reward of the last step, and whether the
agent is done in this episode.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch

from .. import _validate

__all__ = [
    "N_ACTIONS",
    "NavigationParams",
    "NavigationState",
    "StepResult",
    "navigation_params",
    "observation_size",
    "observe",
    "reset",
    "step",
]

N_ACTIONS = 4
_MOVES = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])


class NavigationParams(NamedTuple):
    """Arena half-width, goal radius, move length, steps per episode, episodes per trial, where the
    goal may lie (minimum distance from the centre), start rule, place-cell grid and width."""

    arena: float = 1.0
    goal_radius: float = 0.3
    step_size: float = 0.25
    max_steps: int = 30
    n_episodes: int = 4
    goal_min_distance: float = 0.5
    random_start: bool = False
    place_cells: int = 5
    place_width: float = 0.35


class NavigationState(NamedTuple):
    """``position [B, 2]``, ``goal [B, 2]``, ``t`` (step within the episode slot), ``episode`` (index),
    ``done [B]`` (goal reached in this episode), ``steps [B, n_episodes]`` (moves per episode so far),
    ``reward [B]`` (of the last step)."""

    position: torch.Tensor
    goal: torch.Tensor
    t: int
    episode: int
    done: torch.Tensor
    steps: torch.Tensor
    reward: torch.Tensor


class StepResult(NamedTuple):
    """What :func:`step` returns: next observation, reward, whether the agent was still acting this step
    (``active``: the policy-gradient mask), the new state, whether the trial is over, and where the
    move ended (``moved_to [B, 2]``, before the reset to the start when an episode slot ends)."""

    obs: torch.Tensor
    reward: torch.Tensor
    active: torch.Tensor
    state: NavigationState
    trial_over: bool
    moved_to: torch.Tensor


def navigation_params(**kwargs) -> NavigationParams:
    """:class:`NavigationParams` with its values checked (``ValueError`` naming the field)."""
    p = NavigationParams(**kwargs)
    for name in ("arena", "goal_radius", "step_size", "place_width"):
        _validate.positive(name, getattr(p, name))
    _validate.positive("goal_min_distance", p.goal_min_distance, allow_zero=True)
    for name in ("max_steps", "n_episodes", "place_cells"):
        _validate.positive_int(name, getattr(p, name))
    if p.goal_radius >= p.arena:
        raise ValueError(f"goal_radius must be < arena ({p.arena}), got {p.goal_radius}")
    # The goal centre lies in [-L, L]^2, L = arena - goal_radius, at least goal_min_distance from the
    # centre; with goal_min_distance <= L at least 1 - pi/4 (21%) of that square is allowed.
    if p.goal_min_distance > p.arena - p.goal_radius:
        raise ValueError(
            f"goal_min_distance must be <= arena - goal_radius ({p.arena - p.goal_radius:g}), "
            f"got {p.goal_min_distance}"
        )
    if not isinstance(p.random_start, bool):
        raise ValueError(f"random_start must be a bool, got {p.random_start!r}")
    return p


def observation_size(params: NavigationParams) -> int:
    """Length of an observation: place cells + last reward + done flag."""
    return params.place_cells**2 + 2


@functools.lru_cache(maxsize=16)
def _place_centres_cpu(arena: float, n: int) -> torch.Tensor:
    g = torch.linspace(-arena, arena, n)
    return torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)


def _place_centres(params: NavigationParams, device) -> torch.Tensor:
    return _place_centres_cpu(float(params.arena), int(params.place_cells)).to(device)


def observe(params: NavigationParams, state: NavigationState) -> torch.Tensor:
    """``[B, observation_size]``: exp(-|p - c|^2 / (2 w^2)) per place cell, last reward, done flag."""
    centres = _place_centres(params, state.position.device)
    d2 = ((state.position[:, None, :] - centres[None]) ** 2).sum(-1)
    cells = torch.exp(-d2 / (2 * params.place_width**2))
    return torch.cat([cells, state.reward[:, None], state.done[:, None].to(cells.dtype)], -1)


def _uniform(batch: int, generator: torch.Generator, device) -> torch.Tensor:
    return torch.rand(batch, 2, generator=generator).to(device)


def _start(params: NavigationParams, batch: int, generator: torch.Generator, device) -> torch.Tensor:
    if params.random_start:
        return (_uniform(batch, generator, device) * 2 - 1) * params.arena
    return torch.zeros(batch, 2, device=device)


def _goals(params: NavigationParams, batch: int, generator: torch.Generator, device) -> torch.Tensor:
    """Rejection sampling of goal centres (>= 21% accepted per round, see ``navigation_params``)."""
    lim = params.arena - params.goal_radius
    goal = (_uniform(batch, generator, device) * 2 - 1) * lim
    bad = goal.norm(dim=-1) < params.goal_min_distance
    while bool(bad.any()):
        fresh = (_uniform(batch, generator, device) * 2 - 1) * lim
        goal = torch.where(bad[:, None], fresh, goal)
        bad = goal.norm(dim=-1) < params.goal_min_distance
    return goal


def reset(
    params: NavigationParams, batch: int, generator: torch.Generator, device="cpu"
) -> tuple[torch.Tensor, NavigationState]:
    """Start ``batch`` new trials (new hidden goals); returns ``(obs, state)``."""
    _validate.positive_int("batch", batch)
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    state = NavigationState(
        position=_start(params, batch, generator, device),
        goal=_goals(params, batch, generator, device),
        t=0,
        episode=0,
        done=torch.zeros(batch, dtype=torch.bool, device=device),
        steps=torch.zeros(batch, params.n_episodes, dtype=torch.long, device=device),
        reward=torch.zeros(batch, device=device),
    )
    return observe(params, state), state


def step(
    params: NavigationParams, state: NavigationState, action: torch.Tensor, generator: torch.Generator
) -> StepResult:
    """Apply ``action [B]`` (ints in ``[0, 4)``); at the end of an episode slot the next one begins."""
    if state.episode >= params.n_episodes:
        raise ValueError(f"the trial is over ({params.n_episodes} episodes); call reset")
    if action.shape != state.done.shape or action.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"action must be an integer tensor of shape {tuple(state.done.shape)}, got {action}")
    if bool(((action < 0) | (action >= N_ACTIONS)).any()):
        raise ValueError(f"action must be in [0, {N_ACTIONS}), got {action.tolist()}")
    active = ~state.done
    move = _MOVES.to(state.position.device)[action] * params.step_size
    position = torch.where(
        active[:, None], (state.position + move).clamp(-params.arena, params.arena), state.position
    )
    reached = active & ((position - state.goal).norm(dim=-1) <= params.goal_radius)
    steps = state.steps.clone()
    steps[:, state.episode] += active.long()
    reward = reached.to(position.dtype)
    done = state.done | reached
    moved_to = position
    t, episode = state.t + 1, state.episode
    if t == params.max_steps:  # the slot ends: the next episode starts from the start position
        t, episode = 0, episode + 1
        position = _start(params, position.shape[0], generator, position.device)
        done = torch.zeros_like(done)
    new = NavigationState(position, state.goal, t, episode, done, steps, reward)
    return StepResult(observe(params, new), reward, active, new, episode == params.n_episodes, moved_to)
