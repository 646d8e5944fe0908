"""l2l-navigation through the real CLI on tiny configs, plus the A2C pieces by hand and BPTT across the
episodes of a trial (the --quick numbers: docs/l2l.md)."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from neuromorph import runs
from neuromorph.cli import main
from neuromorph.recipes import l2l_navigation as rec
from neuromorph.runs import StopFlag

TINY = [
    "--set", "n_lif=3", "--set", "n_alif=3", "--set", "max_steps=3", "--set", "n_episodes=2",
    "--set", "step_ms=1", "--set", "batch_size=4", "--set", "iterations=6", "--set", "test_trials=4",
    "--set", "checkpoint_every=2", "--set", "place_cells=2",
]  # fmt: skip


def _metrics(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k != "time"} for x in lines]


def _run(args):
    return main(["run", "l2l-navigation", "--quick", "--no-progress", *args])


def test_discounted_returns_by_hand():
    reward = torch.tensor([[0.0], [1.0], [0.0], [1.0]])
    got = rec.discounted_returns(reward, 0.5)[:, 0].tolist()
    assert got == pytest.approx([0.625, 1.25, 0.5, 1.0])


def test_a2c_loss_by_hand():
    cfg = rec.Config(discount=0.0, value_coef=0.5)
    roll = {
        "reward": torch.tensor([[1.0], [0.0]]),
        "active": torch.tensor([[1.0], [0.0]]),  # the second step does not count (agent done)
        "value": torch.tensor([[0.25], [9.0]]),
        "logp": torch.tensor([[-2.0], [-5.0]]),
        "entropy": torch.tensor([[1.0], [7.0]]),
    }
    loss, parts = rec.a2c_loss(roll, cfg, entropy_coef=0.1)
    # advantage 1 - 0.25 = 0.75: policy 2 * 0.75, value 0.75^2, entropy 1
    assert parts["policy"].item() == pytest.approx(1.5)
    assert parts["value"].item() == pytest.approx(0.5625)
    assert loss.item() == pytest.approx(1.5 + 0.5 * 0.5625 - 0.1)


def test_state_carries_gradient_across_episodes():
    """BPTT through a whole trial: the value at the last step of episode 2 depends on (and has a
    gradient to) the observation of episode 1's first step, through the network state alone."""
    cfg = rec.Config(n_lif=4, n_alif=4, max_steps=3, n_episodes=2, step_ms=2, place_cells=2, tau_adapt=50.0)
    agent = rec.NavigationAgent(cfg, torch.Generator().manual_seed(0))
    n_obs = agent.rsnn.n_in
    obs0 = torch.full((2, n_obs), 5.0, requires_grad=True)
    state = agent.initial_state(2, "cpu")
    _, value, _, state = agent(obs0, state)
    for _ in range(2 * cfg.max_steps - 1):
        _, value, _, state = agent(torch.full((2, n_obs), 5.0), state)
    (grad,) = torch.autograd.grad(value.sum(), obs0)
    assert grad.abs().sum() > 0


def test_random_policy_counts_steps_within_the_cap():
    cfg = rec.Config(max_steps=5, n_episodes=3)
    roll = rec.rollout(None, cfg, torch.Generator().manual_seed(0), 32, "cpu")
    steps = roll["steps"]
    assert steps.shape == (32, 3) and steps.min() >= 1 and steps.max() <= 5
    assert roll["active"].sum(0).tolist() == steps.sum(1).float().tolist()  # one active step per move
    assert roll["reward"].sum().item() == (steps < 5).sum().item() + ((steps == 5) & _hit_last(roll, 5)).sum()


def _hit_last(roll, max_steps):
    # an episode that used all max_steps moves may still have reached the goal on its last move
    r = roll["reward"].T.reshape(roll["reward"].shape[1], -1, max_steps)
    return r[:, :, -1] > 0


def _check_outputs(out: Path) -> None:
    """results.json keys, plots, report and metrics of a finished tiny run."""
    r = json.loads((out / "results.json").read_text())
    for key in ("steps_to_goal_by_episode", "random_steps_to_goal_by_episode"):
        assert len(r[key]) == 2 and all(1 <= v <= 3 for v in r[key]), key
    for key in ("later_episodes_mean_steps", "first_episode_steps", "random_mean_steps", "claim_holds"):
        assert key in r
    assert r["iterations"] == 6 and r["test_trials"] == 4 and r["seconds"] > 0
    for name in ("meta_training_curve.png", "steps_by_episode.png", "trajectories.png", "report.html"):
        assert (out / name).stat().st_size > 0, name
    assert [m["step"] for m in _metrics(out)] == list(range(1, 7))


@pytest.mark.slow
def test_seed_fixes_every_draw(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for d, seed in ((a, "3"), (b, "3"), (c, "4")):
        assert _run([*TINY, "--set", "iterations=3", "--seed", seed, "--out", str(d)]) == 0
    assert _metrics(a) == _metrics(b) and _metrics(a) != _metrics(c)
    ta, tb = load_file(str(a / "agent.safetensors")), load_file(str(b / "agent.safetensors"))
    assert all(torch.equal(ta[k], tb[k]) for k in ta)


class _StopAfter(StopFlag):
    """A stop flag that reads ``requested`` as True from its ``n``-th check on (a SIGTERM mid-run)."""

    def __init__(self, n: int) -> None:
        self._left = n
        super().__init__()

    @property
    def requested(self) -> bool:
        self._left -= 1
        return self._left < 0

    @requested.setter
    def requested(self, value: bool) -> None:
        pass


def test_stop_then_resume_equals_uninterrupted(tmp_path, monkeypatch):
    """One uninterrupted run (its outputs checked), one stopped mid-run and resumed: equal."""
    args = [*TINY, "--set", "checkpoint_every=4"]
    ref, stopped = tmp_path / "ref", tmp_path / "stopped"
    assert _run([*args, "--out", str(ref)]) == 0
    _check_outputs(ref)
    with monkeypatch.context() as m:
        m.setattr(runs, "graceful_stop", lambda: contextlib.nullcontext(_StopAfter(2)))
        assert _run([*args, "--out", str(stopped)]) == 130
    assert json.loads((stopped / "checkpoint.json").read_text())["step"] == 3
    assert main(["run", "--resume", str(stopped), "--no-progress"]) == 0
    ta, tb = load_file(str(ref / "agent.safetensors")), load_file(str(stopped / "agent.safetensors"))
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    assert _metrics(ref) == _metrics(stopped)
    r1, r2 = (json.loads((d / "results.json").read_text()) for d in (ref, stopped))
    assert r1["steps_to_goal_by_episode"] == r2["steps_to_goal_by_episode"]


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    args = [*TINY, "--set", "iterations=60", "--set", "checkpoint_every=1", "--seed", "5"]
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    assert _run([*args, "--out", str(ref)]) == 0
    cmd = [sys.executable, "-m", "neuromorph.cli", "run", "l2l-navigation", "--quick", "--no-progress", *args]
    proc = subprocess.Popen(
        [*cmd, "--out", str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:
            if json.loads((killed / "checkpoint.json").read_text())["step"] >= 20:
                break
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert main(["run", "--resume", str(killed), "--no-progress"]) == 0
    ta, tb = load_file(str(ref / "agent.safetensors")), load_file(str(killed / "agent.safetensors"))
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    assert _metrics(ref) == _metrics(killed)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--set", "goal_radius=0"], "goal_radius"),
        (["--set", "goal_radius=2"], "goal_radius must be < arena"),
        (["--set", "goal_min_distance=0.9"], "goal_min_distance must be <= arena - goal_radius"),
        (["--set", "n_episodes=0"], "n_episodes"),
        (["--set", "step_ms=0"], "step_ms must be >= 1"),
        (["--set", "discount=1.5"], "discount must be in [0, 1]"),
        (["--set", "entropy_coef=-1"], "entropy_coef must be >= 0"),
        (["--set", "n_lif=0", "--set", "n_alif=0"], "n_lif + n_alif"),
        (["--set", "tau_adapt=0"], "tau_adapt"),
    ],
)
def test_bad_input_is_a_clear_error(args, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "l2l-navigation", *args]) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_trains_under_torchrun_ddp(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "neuromorph.cli", "run", "l2l-navigation", "--quick", "--no-progress", *TINY,
           "--out", str(out)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads((out / "results.json").read_text())
    assert r["processes"] == 2 and len(r["steps_to_goal_by_episode"]) == 2
