"""Arm kinematics, integration, target trajectories, losses and encodings against hand computation."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from neuromorph.tasks.arm import (
    PlanarArm,
    ScorbotArm,
    Trajectories,
    brownian_trajectories,
    clock_input,
    encode_positions,
    integrate_velocities,
    make_arm,
    position_error,
    trajectory_loss,
)

D = torch.float64


def test_planar_kinematics_by_hand():
    arm = PlanarArm(lengths=(0.5, 0.3))
    q = torch.tensor(
        [[0.0, 0.0], [math.pi / 2, 0.0], [0.0, math.pi / 2], [math.pi / 2, math.pi / 2]], dtype=D
    )
    want = torch.tensor([[0.8, 0.0], [0.0, 0.8], [0.5, 0.3], [-0.3, 0.5]], dtype=D)
    torch.testing.assert_close(arm.forward(q), want, atol=1e-12, rtol=0)


def test_scorbot_kinematics_by_hand():
    arm = ScorbotArm(links=(0.36, 0.05, 0.3, 0.35, 0.22), offset=-0.03)
    reach = 0.05 + 0.3 + 0.35 + 0.22
    q = torch.tensor(
        [[0.0, 0.0, 0.0], [math.pi / 2, 0.0, 0.0], [0.0, math.pi / 2, 0.0], [0.0, 0.0, -math.pi / 2]], dtype=D
    )
    want = torch.tensor(
        [
            [reach, -0.03, 0.36],
            [0.03, reach, 0.36],  # base turned by 90 degrees: x = -offset, y = reach
            [0.05, -0.03, 0.36 + 0.3 + 0.35 + 0.22],  # upper arm and forearm straight up
            [0.05 + 0.3, -0.03, 0.36 - 0.57],  # elbow bent down by 90 degrees
        ],
        dtype=D,
    )
    torch.testing.assert_close(arm.forward(q), want, atol=1e-12, rtol=0)


@settings(max_examples=40, deadline=None)
@given(st.floats(0.05, 2.0), st.floats(0.05, 2.0), st.floats(-math.pi, math.pi), st.floats(-math.pi, math.pi))
def test_planar_reach_is_bounded_by_the_links(l1, l2, q1, q2):
    p = PlanarArm(lengths=(l1, l2)).forward(torch.tensor([q1, q2], dtype=D))
    r = float(p.norm())
    assert abs(l1 - l2) - 1e-9 <= r <= l1 + l2 + 1e-9
    assert r == pytest.approx(
        math.sqrt(l1**2 + l2**2 + 2 * l1 * l2 * math.cos(q2)), abs=1e-9
    )  # law of cosines


def test_integration_is_start_plus_step_cumsum():
    arm = PlanarArm()
    omega = torch.tensor([[[1.0, -2.0]], [[3.0, 0.5]]], dtype=D)
    q = integrate_velocities(omega, arm)
    want = torch.tensor([[[0.01, math.pi / 2 - 0.02]], [[0.04, math.pi / 2 - 0.015]]], dtype=D)
    torch.testing.assert_close(q, want, atol=1e-12, rtol=0)


def test_brownian_trajectories_are_smooth_reproducible_and_consistent():
    for arm in (make_arm("planar"), make_arm("scorbot")):
        a = brownian_trajectories(arm, 4, 200, np.random.default_rng(3), window=50, dtype=D)
        b = brownian_trajectories(arm, 4, 200, np.random.default_rng(3), window=50, dtype=D)
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
        assert a.omega.shape == (200, 4, arm.n_joints) and a.positions.shape == (200, 4, arm.n_cartesian)
        assert a.omega.abs().max() <= math.pi
        torch.testing.assert_close(a.positions, arm.forward(a.angles))
        low = torch.tensor([lim[0] for lim in arm.limits], dtype=D)
        high = torch.tensor([lim[1] for lim in arm.limits], dtype=D)
        assert ((a.angles >= low - 1e-12) & (a.angles <= high + 1e-12)).all()
        # smoothed: step-to-step changes far below those of the raw walk (std delta * sqrt(0.01) = 0.1)
        assert a.omega.diff(dim=0).abs().max() < 0.1
        assert a.omega.std() > 0.05  # but it moves
    c = brownian_trajectories(make_arm("planar"), 4, 200, np.random.default_rng(4), window=50)
    assert not torch.equal(
        c.omega, brownian_trajectories(make_arm("planar"), 4, 200, np.random.default_rng(3), window=50).omega
    )


def test_loss_by_hand_and_zero_at_the_target():
    arm = PlanarArm()
    omega = torch.zeros(3, 1, 2, dtype=D)
    q = integrate_velocities(omega, arm)
    target = Trajectories(omega.clone(), q, arm.forward(q))
    assert trajectory_loss(omega, target, arm).item() == 0.0
    shifted = Trajectories(omega + 1.0, q, arm.forward(q) + torch.tensor([0.1, 0.0], dtype=D))
    # 0.5 * MSE(omega) = 0.5 * 1; 0.5 * MSE(pos) = 0.5 * mean over (x, y) of (0.01, 0) = 0.0025
    assert trajectory_loss(omega, shifted, arm).item() == pytest.approx(0.5 + 0.0025)
    torch.testing.assert_close(position_error(omega, shifted, arm), torch.tensor([0.01], dtype=D))


def test_encode_positions_by_hand():
    p = torch.tensor([[[0.0, -1.0, 1.0]]])
    code = encode_positions(p, bits=4).view(3, 4)
    assert code[0].tolist() == [0, 0, 0, 1]  # int(1 * 8) = 8, least significant digit first
    assert code[1].tolist() == [0, 0, 0, 0]
    assert code[2].tolist() == [1, 1, 1, 1]  # 16 clipped to 15
    assert encode_positions(torch.zeros(5, 2, 3), bits=16).shape == (5, 2, 48)


def test_clock_input_segments():
    x = clock_input(10, 3, every=2)
    assert x.shape == (10, 3)
    assert x[:, 0].nonzero().flatten().tolist() == [0, 2]  # segment of 4 steps: 0..3
    assert x[:, 1].nonzero().flatten().tolist() == [4, 6]
    assert x[:, 2].nonzero().flatten().tolist() == [8]
    assert (x.sum(1) <= 1).all()


def test_bad_input_errors():
    with pytest.raises(ValueError, match=r"lengths\[1\].*> 0"):
        PlanarArm(lengths=(0.5, 0.0))
    with pytest.raises(ValueError, match=r"lengths\[0\].*> 0"):
        PlanarArm(lengths=(-1.0, 0.5))
    with pytest.raises(ValueError, match=r"links\[2\].*> 0"):
        ScorbotArm(links=(0.3, 0.05, -0.3, 0.35, 0.22))
    with pytest.raises(ValueError, match="arm must be one of"):
        make_arm("scara")
    arm = PlanarArm()
    with pytest.raises(ValueError, match="2 joints"):
        arm.forward(torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"omega .*\[T >= 1, B, 2\]"):
        integrate_velocities(torch.zeros(5, 2, 3), arm)
    omega = torch.zeros(5, 2, 2)
    q = integrate_velocities(omega, arm)
    bad = Trajectories(omega, q, torch.zeros(5, 2, 3))  # 3-D positions for a planar arm
    with pytest.raises(ValueError, match=r"target positions must have shape \(5, 2, 2\)"):
        trajectory_loss(omega, bad, arm)
    with pytest.raises(ValueError, match="target omega has shape"):
        trajectory_loss(omega, Trajectories(torch.zeros(4, 2, 2), q, arm.forward(q)), arm)
    with pytest.raises(ValueError, match="positions must have shape"):
        encode_positions(torch.zeros(5, 3))
