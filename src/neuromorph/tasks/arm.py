"""Simulated robot arms for motor-command learning: kinematics, smoothed-Brownian target trajectories, losses.

Ortner, Petschenig, Vasilopoulos, Renner, Brglez, Limbacher, Pinero, Linares Barranco, Pantazi,
Legenstein (Nat. Commun. 2025), "Rapid learning with phase-change memory-based in-memory computing
through learning-to-learn" (robot-arm experiment; ``reference/papers.md`` section 4.4). A network emits
joint angular velocities ``omega(t)`` (rad/s), integrated into joint angles

    q(t) = q0 + step * sum_{s <= t} omega(s)                                 (step = 0.01, as the L2L code)

and mapped to the end effector by direct kinematics:

- planar two-joint arm (links l1, l2; q1 at the base, q2 relative to the first link)
      x = l1 cos q1 + l2 cos(q1 + q2),   y = l1 sin q1 + l2 sin(q1 + q2)
- Scorbot-like three-joint arm (base yaw q1, shoulder pitch q2, elbow pitch q3 relative to the upper
  arm; wrist held straight so the tool link continues the forearm): with the horizontal reach
      r = a1 + a2 cos q2 + (a3 + a4) cos(q2 + q3),   h = d1 + a2 sin q2 + (a3 + a4) sin(q2 + q3)
      x = r cos q1 - d sin q1,   y = r sin q1 + d cos q1,   z = h
  (d1 base height, a1 shoulder offset, a2 upper arm, a3 forearm, a4 tool, d lateral offset; the Scorbot
  ER-VII lengths of the L2L code's ``module/scorbot.py``, written here in this plain form).

Targets are smoothed Brownian motions of the angular velocities (random walk ``omega(t) = omega(t-1) +
N(0, delta^2 step)``, convolved with a normalised Hann window, clipped to +-pi), integrated as above
(joint angles clipped to the arm's limits). The loss is the L2L code's

    L = 0.5 * MSE(omega, omega*) + 0.5 * MSE(p(q), p*)                      p: end-effector position

Tensors are time-major ``[T, B, ...]``; one step is 1 ms of network time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from .. import _validate

__all__ = [
    "PlanarArm",
    "ScorbotArm",
    "Arm",
    "make_arm",
    "Trajectories",
    "integrate_velocities",
    "brownian_trajectories",
    "trajectory_loss",
    "position_error",
    "encode_positions",
    "clock_input",
]

STEP = 0.01  # the L2L code integrates q = q0 + 0.01 * cumsum(omega)


def _check_lengths(name: str, values: tuple[float, ...]) -> None:
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise ValueError(f"{name}[{i}] (a link length) must be a finite number > 0, got {v!r}")


def _check_angles(angles: torch.Tensor, n_joints: int, arm: str) -> None:
    if not isinstance(angles, torch.Tensor):
        raise ValueError(f"angles must be a torch.Tensor, got {type(angles).__name__}")
    if angles.dim() < 1 or angles.shape[-1] != n_joints:
        raise ValueError(
            f"angles for the {arm} must have {n_joints} joints in the last dimension, "
            f"got shape {tuple(angles.shape)}"
        )


@dataclass(frozen=True)
class PlanarArm:
    """Planar arm with two revolute joints; ``lengths`` (l1, l2) > 0, ``start`` the angles q0 (rad)."""

    lengths: tuple[float, float] = (0.5, 0.5)
    start: tuple[float, float] = (0.0, math.pi / 2)
    limits: tuple[tuple[float, float], ...] = ((-math.pi, math.pi), (-math.pi, math.pi))
    n_joints: int = 2
    n_cartesian: int = 2
    name: str = "planar"

    def __post_init__(self) -> None:
        if len(self.lengths) != 2:
            raise ValueError(f"lengths of the planar arm must be (l1, l2), got {self.lengths!r}")
        _check_lengths("lengths", self.lengths)
        if len(self.start) != 2 or len(self.limits) != 2:
            raise ValueError(
                f"start and limits need one entry per joint (2), got {self.start!r}, {self.limits!r}"
            )

    def forward(self, angles: torch.Tensor) -> torch.Tensor:
        """End-effector ``(x, y)`` of joint angles ``[..., 2]`` -> ``[..., 2]``."""
        _check_angles(angles, 2, "planar arm")
        l1, l2 = self.lengths
        q1, q12 = angles[..., 0], angles[..., 0] + angles[..., 1]
        return torch.stack(
            [l1 * torch.cos(q1) + l2 * torch.cos(q12), l1 * torch.sin(q1) + l2 * torch.sin(q12)], -1
        )


@dataclass(frozen=True)
class ScorbotArm:
    """Scorbot-like arm: base yaw, shoulder and elbow pitch (wrist straight); lengths in metres.

    ``links`` = (d1, a1, a2, a3, a4): base height, shoulder offset, upper arm, forearm, tool (all > 0);
    ``offset`` the lateral offset of the arm plane from the base axis (any sign)."""

    links: tuple[float, float, float, float, float] = (0.3585, 0.05, 0.30, 0.35, 0.22)
    offset: float = -0.033
    start: tuple[float, float, float] = (0.0, 0.4, -0.9)
    # joint limits (rad): base and shoulder as the L2L code's Scorbot "save space" (+-130, +-70 deg)
    limits: tuple[tuple[float, float], ...] = (
        (-130 * math.pi / 180, 130 * math.pi / 180),
        (-70 * math.pi / 180, 70 * math.pi / 180),
        (-math.pi, math.pi),
    )
    n_joints: int = 3
    n_cartesian: int = 3
    name: str = "scorbot"

    def __post_init__(self) -> None:
        if len(self.links) != 5:
            raise ValueError(f"links of the Scorbot arm must be (d1, a1, a2, a3, a4), got {self.links!r}")
        _check_lengths("links", self.links)
        if not math.isfinite(self.offset):
            raise ValueError(f"offset must be finite, got {self.offset!r}")
        if len(self.start) != 3 or len(self.limits) != 3:
            raise ValueError(
                f"start and limits need one entry per joint (3), got {self.start!r}, {self.limits!r}"
            )

    def forward(self, angles: torch.Tensor) -> torch.Tensor:
        """End-effector ``(x, y, z)`` of joint angles ``[..., 3]`` -> ``[..., 3]``."""
        _check_angles(angles, 3, "Scorbot arm")
        d1, a1, a2, a3, a4 = self.links
        q1, q2, q23 = angles[..., 0], angles[..., 1], angles[..., 1] + angles[..., 2]
        r = a1 + a2 * torch.cos(q2) + (a3 + a4) * torch.cos(q23)
        h = d1 + a2 * torch.sin(q2) + (a3 + a4) * torch.sin(q23)
        d = self.offset
        return torch.stack(
            [r * torch.cos(q1) - d * torch.sin(q1), r * torch.sin(q1) + d * torch.cos(q1), h], -1
        )


Arm = PlanarArm | ScorbotArm
ARMS = ("planar", "scorbot")


def make_arm(name: str) -> Arm:
    """``"planar"`` (two joints, 2-D) or ``"scorbot"`` (three joints, 3-D) with the default geometry."""
    if name == "planar":
        return PlanarArm()
    if name == "scorbot":
        return ScorbotArm()
    raise ValueError(f"arm must be one of {ARMS}, got {name!r}")


class Trajectories(NamedTuple):
    """A batch of movements: angular velocities, joint angles ``[T, B, J]``, end-effector ``[T, B, D]``."""

    omega: torch.Tensor
    angles: torch.Tensor
    positions: torch.Tensor


def _check_omega(omega: torch.Tensor, arm: Arm) -> None:
    if not isinstance(omega, torch.Tensor):
        raise ValueError(f"omega must be a torch.Tensor, got {type(omega).__name__}")
    if omega.dim() != 3 or omega.shape[-1] != arm.n_joints or omega.shape[0] == 0:
        raise ValueError(
            f"omega (angular velocities) must have shape [T >= 1, B, {arm.n_joints}] for the {arm.name} arm, "
            f"got {tuple(omega.shape)}"
        )


def integrate_velocities(omega: torch.Tensor, arm: Arm, *, step: float = STEP) -> torch.Tensor:
    """Joint angles ``q(t) = q0 + step * cumsum(omega)`` of ``omega`` ``[T, B, J]`` (differentiable)."""
    _check_omega(omega, arm)
    _validate.positive("step", step)
    q0 = torch.tensor(arm.start, dtype=omega.dtype, device=omega.device)
    return q0 + step * torch.cumsum(omega, dim=0)


def _hann(length: int) -> np.ndarray:
    w = np.hanning(length + 1)[:-1] if length > 1 else np.ones(1)  # periodic, as tf.signal.hann_window
    return w / w.sum()


def brownian_trajectories(
    arm: Arm,
    batch_size: int,
    n_steps: int,
    rng: np.random.Generator,
    *,
    window: int = 120,
    delta: float = 1.0,
    step: float = STEP,
    dtype: torch.dtype = torch.float32,
) -> Trajectories:
    """Random target movements: Brownian angular velocities smoothed by a normalised Hann window of
    ``window`` steps (the L2L defaults: window 120, delta 1.0 planar / 0.65 Scorbot), clipped to +-pi,
    integrated to angles (clipped to the joint limits) and mapped to the end effector."""
    _validate.positive_int("batch_size", batch_size)
    _validate.positive_int("n_steps", n_steps)
    _validate.positive_int("window", window)
    _validate.positive("delta", delta)
    _validate.positive("step", step)
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    j = arm.n_joints
    walk = np.cumsum(rng.normal(0.0, delta * math.sqrt(step), size=(n_steps, batch_size, j)), axis=0)
    # zero padding before (the walk starts at rest), mirrored padding after, as the L2L code
    pad = np.concatenate([np.zeros((window - 1, batch_size, j)), walk, walk[::-1][: window - 1]], axis=0)
    kernel = _hann(window)
    smooth = np.stack(
        [
            np.stack([np.convolve(pad[:, b, k], kernel, mode="valid") for k in range(j)], -1)
            for b in range(batch_size)
        ],
        1,
    )
    start = window // 2
    omega = np.clip(smooth[start : start + n_steps], -math.pi, math.pi)
    if omega.shape[0] < n_steps:  # window longer than the sequence: the valid part is shorter
        omega = np.concatenate([omega, np.repeat(omega[-1:], n_steps - omega.shape[0], 0)], 0)
    omega_t = torch.as_tensor(omega, dtype=dtype)
    angles = integrate_velocities(omega_t, arm, step=step)
    low = torch.tensor([lim[0] for lim in arm.limits], dtype=dtype)
    high = torch.tensor([lim[1] for lim in arm.limits], dtype=dtype)
    angles = torch.maximum(torch.minimum(angles, high), low)
    return Trajectories(omega_t, angles, arm.forward(angles))


def _check_target(target: Trajectories, arm: Arm, omega: torch.Tensor) -> None:
    if not isinstance(target, Trajectories):
        raise ValueError(f"target must be Trajectories, got {type(target).__name__}")
    if tuple(target.omega.shape) != tuple(omega.shape):
        raise ValueError(
            f"target omega has shape {tuple(target.omega.shape)} but the produced omega {tuple(omega.shape)}"
        )
    want = (*omega.shape[:2], arm.n_cartesian)
    if tuple(target.positions.shape) != want:
        raise ValueError(
            f"target positions must have shape {want} ([T, B, {arm.n_cartesian}] for the {arm.name} arm), "
            f"got {tuple(target.positions.shape)}"
        )


def trajectory_loss(
    omega: torch.Tensor, target: Trajectories, arm: Arm, *, step: float = STEP
) -> torch.Tensor:
    """``0.5 MSE(omega, omega*) + 0.5 MSE(p, p*)`` with ``p`` the end effector of the integrated ``omega``."""
    _check_omega(omega, arm)
    _check_target(target, arm, omega)
    positions = arm.forward(integrate_velocities(omega, arm, step=step))
    return 0.5 * (omega - target.omega).square().mean() + 0.5 * (positions - target.positions).square().mean()


def position_error(
    omega: torch.Tensor, target: Trajectories, arm: Arm, *, step: float = STEP
) -> torch.Tensor:
    """Mean squared end-effector distance per task ``[B]`` (the trajectory error)."""
    _check_omega(omega, arm)
    _check_target(target, arm, omega)
    positions = arm.forward(integrate_velocities(omega, arm, step=step))
    return (positions - target.positions).square().sum(-1).mean(0)


def encode_positions(positions: torch.Tensor, bits: int = 16) -> torch.Tensor:
    """Binary code of end-effector coordinates (the L2L code's target input): each coordinate ``c`` in
    [-1, 1] becomes the ``bits`` binary digits of ``int((c + 1) 2^(bits-1))`` (clipped to the range).
    ``[T, B, D]`` -> ``[T, B, D * bits]`` of 0/1, least significant digit first."""
    _validate.positive_int("bits", bits)
    if bits > 30:
        raise ValueError(f"bits must be at most 30, got {bits}")
    if not isinstance(positions, torch.Tensor) or positions.dim() != 3:
        shape = tuple(positions.shape) if isinstance(positions, torch.Tensor) else type(positions).__name__
        raise ValueError(f"positions must have shape [T, B, D], got {shape}")
    code = ((positions.detach().double() + 1.0) * 2 ** (bits - 1)).floor().clamp(0, 2**bits - 1).long()
    digits = (code.unsqueeze(-1) >> torch.arange(bits)) & 1
    return digits.flatten(-2).to(positions.dtype)


def clock_input(
    n_steps: int, n_clock: int, *, every: int = 2, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Clock input ``[T, n_clock]``: neuron k spikes every ``every`` steps during the k-th of ``n_clock``
    equal segments of the sequence (a fixed, task-independent time code)."""
    _validate.positive_int("n_steps", n_steps)
    _validate.positive_int("n_clock", n_clock)
    _validate.positive_int("every", every)
    x = torch.zeros(n_steps, n_clock, dtype=dtype)
    seg = math.ceil(n_steps / n_clock)
    t = torch.arange(n_steps)
    x[t, (t // seg).clamp(max=n_clock - 1)] = ((t % seg) % every == 0).to(dtype)
    return x
