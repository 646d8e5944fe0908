"""Batched 2-D navigation with a hidden goal (LSNN paper, meta-RL): moves, walls, goal, episodes, trials."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from neuromorph.tasks import navigation as nav


def _state(params, position, goal):
    b = len(position)
    return nav.NavigationState(
        position=torch.tensor(position),
        goal=torch.tensor(goal),
        t=0,
        episode=0,
        done=torch.zeros(b, dtype=torch.bool),
        steps=torch.zeros(b, params.n_episodes, dtype=torch.long),
        reward=torch.zeros(b),
    )


def test_moves_and_walls():
    p = nav.navigation_params(step_size=0.25, max_steps=10, n_episodes=2)
    s = _state(p, [[0.0, 0.0], [0.9, 0.0], [0.0, -0.9], [0.0, 0.0]], [[-0.8, 0.8]] * 4)
    res = nav.step(p, s, torch.tensor([0, 0, 3, 2]), torch.Generator())
    want = torch.tensor([[0.25, 0.0], [1.0, 0.0], [0.0, -1.0], [0.0, 0.25]])  # clipped at the walls
    assert torch.allclose(res.state.position, want)
    assert torch.equal(res.reward, torch.zeros(4)) and res.active.all()
    assert res.state.steps[:, 0].tolist() == [1, 1, 1, 1] and res.state.t == 1


def test_goal_reward_then_done_until_the_slot_ends_then_next_episode():
    p = nav.navigation_params(step_size=0.25, goal_radius=0.3, max_steps=3, n_episodes=2)
    g = torch.Generator()
    s = _state(p, [[0.0, 0.0], [0.0, 0.0]], [[0.5, 0.0], [-0.8, -0.8]])
    r1 = nav.step(p, s, torch.tensor([0, 0]), g)  # agent 0 at 0.25: 0.25 from the goal -> reached
    assert r1.reward.tolist() == [1.0, 0.0] and r1.state.done.tolist() == [True, False]
    r2 = nav.step(p, r1.state, torch.tensor([1, 1]), g)  # agent 0 is done: does not move, no reward
    assert r2.active.tolist() == [False, True] and r2.reward.tolist() == [0.0, 0.0]
    assert torch.allclose(r2.state.position[0], torch.tensor([0.25, 0.0]))
    assert r2.obs[0, -1] == 1.0 and r2.obs[0, -2] == 0.0  # done flag, reward of the last step
    r3 = nav.step(p, r2.state, torch.tensor([2, 2]), g)  # slot of 3 steps ends: episode 2 from the centre
    assert r3.state.episode == 1 and r3.state.t == 0 and not r3.trial_over
    assert torch.equal(r3.state.position, torch.zeros(2, 2)) and not r3.state.done.any()
    assert torch.allclose(r3.moved_to[1], torch.tensor([0.0, 0.25]))  # +x, -x, +y from the origin
    assert r3.state.steps[:, 0].tolist() == [1, 3]  # steps to goal (3 = not reached, the cap)
    s = r3.state
    for _ in range(3):
        res = nav.step(p, s, torch.tensor([0, 0]), g)
        s = res.state
    assert res.trial_over and s.steps[:, 1].tolist() == [1, 3]
    with pytest.raises(ValueError, match="trial is over"):
        nav.step(p, s, torch.tensor([0, 0]), g)


def test_observation_place_cells():
    p = nav.navigation_params(place_cells=3, place_width=0.5)
    s = _state(p, [[-1.0, -1.0]], [[0.8, 0.8]])
    obs = nav.observe(p, s)
    assert obs.shape == (1, nav.observation_size(p)) == (1, 11)
    assert obs[0, 0] == pytest.approx(1.0)  # the corner cell sits at (-1, -1)
    assert obs[0, 1] == pytest.approx(torch.exp(torch.tensor(-1.0 / (2 * 0.25))).item())  # cell (-1, 0)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), min_d=st.floats(0.0, 1.0), radius=st.floats(0.05, 0.4))
def test_goals_inside_the_arena_and_away_from_the_start(seed, min_d, radius):
    min_d = min(min_d, 1.0 - radius)  # the largest distance navigation_params allows
    _check_goals(seed, min_d, radius)


def _check_goals(seed, min_d, radius):
    p = nav.navigation_params(goal_radius=radius, goal_min_distance=min_d)
    obs, s = nav.reset(p, 64, torch.Generator().manual_seed(seed))
    assert (s.goal.abs() <= p.arena - p.goal_radius + 1e-6).all()
    assert (s.goal.norm(dim=-1) >= min_d - 1e-6).all()
    assert torch.equal(s.position, torch.zeros(64, 2)) and obs.shape == (64, nav.observation_size(p))


def test_reset_is_a_function_of_the_generator():
    p = nav.navigation_params(random_start=True)
    _, a = nav.reset(p, 8, torch.Generator().manual_seed(1))
    _, b = nav.reset(p, 8, torch.Generator().manual_seed(1))
    _, c = nav.reset(p, 8, torch.Generator().manual_seed(2))
    assert torch.equal(a.goal, b.goal) and torch.equal(a.position, b.position)
    assert not torch.equal(a.goal, c.goal)


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"goal_radius": 0.0}, "goal_radius"),
        ({"goal_radius": 1.5}, "goal_radius must be < arena"),
        ({"max_steps": 0}, "max_steps"),
        ({"n_episodes": 0}, "n_episodes"),
        ({"goal_min_distance": 0.8, "goal_radius": 0.3}, "goal_min_distance must be <= arena - goal_radius"),
        ({"step_size": -0.1}, "step_size"),
        ({"random_start": 1}, "random_start"),
    ],
)
def test_bad_parameters(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        nav.navigation_params(**kwargs)


def test_bad_actions_and_batch():
    p = nav.navigation_params()
    _, s = nav.reset(p, 2, torch.Generator())
    with pytest.raises(ValueError, match="action must be in"):
        nav.step(p, s, torch.tensor([0, 4]), torch.Generator())
    with pytest.raises(ValueError, match="action must be an integer tensor"):
        nav.step(p, s, torch.tensor([0.0, 1.0]), torch.Generator())
    with pytest.raises(ValueError, match="batch"):
        nav.reset(p, 0, torch.Generator())
    with pytest.raises(ValueError, match="generator"):
        nav.reset(p, 2, 0)
