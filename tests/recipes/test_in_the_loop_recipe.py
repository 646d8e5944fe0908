"""in-the-loop recipe through the real CLI on a tiny config (the --quick numbers: docs/in-the-loop.md)."""

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import neuromorph.runs
from neuromorph.cli import main

TINY = ["--set", "n_hidden=8", "--set", "epochs=2", "--set", "n_chips=2", "--set", "iterations=3",
        "--set", "homeostasis_iterations=2", "--set", "ensemble_copies=2", "--set", "checkpoint_every=1",
        "--set", "batch_size=256"]  # fmt: skip
STRATEGIES = {"none", "auxiliary", "robust_architecture", "in_the_loop"}


def _run(args):
    return main(["run", "in-the-loop", "--quick", "--no-progress", *TINY, *args])


def _metrics(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k != "time"} for x in lines]


def _results(run_dir: Path) -> dict:
    return {k: v for k, v in json.loads((run_dir / "results.json").read_text()).items() if k != "seconds"}


def test_quick_writes_results_plots_and_report(tmp_path):
    out = tmp_path / "run"
    assert _run(["--out", str(out)]) == 0
    r = json.loads((out / "results.json").read_text())
    keys = (
        "software_accuracy",
        "deployed_accuracy",
        "in_the_loop_accuracy",
        "iterations",
        "sign_only_accuracy",
    )
    for key in (*keys, "strategy_accuracy", "iterations_to_within", "curves", "claim_holds"):
        assert key in r, key
    assert set(r["strategy_accuracy"]) == STRATEGIES
    assert r["iterations"] == 3 and r["n_chips"] == 2 and set(r["chips"]) == {"0", "1"}
    assert len(r["curves"]["in_the_loop"]) == len(r["curves"]["sign_only"]) == 4  # deployed + 3 iterations
    assert r["curves"]["in_the_loop"][0] == r["curves"]["sign_only"][0] == r["deployed_accuracy"]
    assert r["strategy_accuracy"]["in_the_loop"] == r["in_the_loop_accuracy"]
    for value in (r["software_accuracy"], r["deployed_accuracy"], *r["strategy_accuracy"].values()):
        assert 0.0 <= value <= 1.0
    for name in ("accuracy_per_iteration.png", "strategies.png", "software_training.png", "report.html"):
        assert (out / name).stat().st_size > 0, name
    assert "data:image/png;base64" in (out / "report.html").read_text()
    steps = [m["step"] for m in _metrics(out)]
    assert steps == list(
        range(1, 2 + 2 * (3 + 3 + 1) + 1)
    )  # 2 epochs, per chip 3 + 3 iterations + strategies


class _StopAfter:
    """A stop flag that turns on at its ``n``-th read (and stays on): a SIGTERM at a chosen point."""

    def __init__(self, n: int) -> None:
        self.n, self.signal = n, 15

    @property
    def requested(self) -> bool:
        self.n -= 1
        return self.n < 0


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    ref = tmp_path_factory.mktemp("ref") / "run"
    assert _run(["--seed", "4", "--out", str(ref)]) == 0
    return ref


# Reads of the flag (tiny config): epoch 1 -> reads 1-2, end of training 3; chip 0 in-the-loop
# iterations 4-5, 6-7, 8, end 9; sign-only 10-11, 12-13, 14, end 15; strategies 16; chip 1: 17-18, ...
# Stopping at read n + 1 lands after epoch 1 (n=1), at the end of training (2), inside chip 0's
# in-the-loop run (5), at its last iteration (7), at its end (8), inside its sign-only run (11), after
# its strategies (15) and inside chip 1's run (18).
@pytest.mark.parametrize(
    "reads, stage, position",
    [(1, 0, 1), (2, 1, 0), (5, 1, 2), (7, 2, 0), (8, 2, 0), (11, 2, 2), (15, 4, 0), (18, 4, 2)],
)
def test_stop_then_resume_equals_uninterrupted(tmp_path, monkeypatch, reads, stage, position, reference_run):
    ref = reference_run
    stopped = tmp_path / "stopped"
    with monkeypatch.context() as m:
        m.setattr(neuromorph.runs, "graceful_stop", lambda: contextlib.nullcontext(_StopAfter(reads)))
        assert _run(["--seed", "4", "--out", str(stopped)]) == 130
    assert not (stopped / "results.json").exists()
    meta = json.loads((stopped / "checkpoint.json").read_text())["meta"]
    assert (meta["stage"], meta["position"]) == (stage, position)
    assert main(["run", "--resume", str(stopped), "--no-progress"]) == 0
    assert _results(ref) == _results(stopped)
    assert _metrics(ref) == _metrics(stopped)


def test_mnist_subset_runs(tmp_path):
    out = tmp_path / "run"
    assert _run(["--set", "dataset=mnist", "--set", "n_chips=1", "--out", str(out)]) == 0
    r = json.loads((out / "results.json").read_text())
    assert r["dataset"] == "mnist" and set(r["strategy_accuracy"]) == STRATEGIES


def test_quick_is_the_default_with_fewer_chips():
    from neuromorph.recipes import in_the_loop

    cfg, q = in_the_loop.Config(), in_the_loop.quick(in_the_loop.Config())
    assert q.n_chips == 5 and cfg.n_chips == 20 and q.iterations == cfg.iterations == 50
    assert cfg.weight_bits == 6


@pytest.mark.parametrize(
    "sets, needle",
    [
        (["dataset=cifar"], "dataset must be one of"),
        (["weight_bits=17"], "weight_bits must be None or an int in 1..16, got 17"),
        (["weight_bits=0"], "weight_bits"),
        (["synapse_mismatch=-0.5"], "synapse_mismatch"),
        (["noise=.nan"], "noise"),
        (["n_chips=0"], "n_chips must be >= 1"),
        (["loop_lr=0"], "loop_lr must be a positive number"),
        (["loop_batch_size=-1"], "loop_batch_size"),
        (["dataset=mnist", "data_root=/no/such/mnist"], "/no/such/mnist"),
    ],
)
def test_bad_input_is_a_clear_error(sets, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["run", "in-the-loop", "--quick"] + [x for s in sets for x in ("--set", s)]
    assert main(args) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # nothing written


@pytest.mark.slow
def test_trains_under_torchrun_ddp(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "neuromorph.cli", "run", "in-the-loop", "--quick", "--no-progress", *TINY,
           "--out", str(out)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["processes"] == 2 and set(results["strategy_accuracy"]) == STRATEGIES
