"""Synaptic-sampling recipe through the real CLI on a tiny config (the --quick numbers:
docs/synaptic-sampling.md)."""

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

from neuromorph.cli import main
from neuromorph.runs import Run

TINY = [
    "--set", "stat_chains=2000", "--set", "stat_steps=200", "--set", "stat_bins=20",
    "--set", "n_hidden=12", "--set", "batch_size=8", "--set", "iterations=20",
    "--set", "recovery_iterations=20", "--set", "eval_every=10", "--set", "metric_window=1",
    "--set", "test_size=100", "--set", "checkpoint_every=5",
]  # fmt: skip


def _run(args) -> int:
    return main(["run", "synaptic-sampling", "--quick", "--no-progress", *TINY, *args])


def _metrics(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k != "time"} for x in lines]


def _checkpoint_tensors(run_dir: Path) -> dict:
    record = json.loads((run_dir / "checkpoint.json").read_text())
    return load_file(str(run_dir / record["tensors_file"]))


def _same_results(a: Path, b: Path) -> None:
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (a, b))
    ra.pop("seconds"), rb.pop("seconds")
    assert ra == rb


def test_tiny_run_writes_results_plots_and_report(tmp_path):
    out = tmp_path / "run"
    assert _run(["--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert len(results["ks_pvalues"]) == 3 and all(0.0 <= p <= 1.0 for p in results["ks_pvalues"])
    assert results["temperatures"] == [0.1, 1.0, 2.0]
    assert 0.0 <= results["retracted_fraction_error"] < 0.1
    assert results["recovery_ratio"] > 0.0
    for key in ("accuracy_before_lesion", "accuracy_right_after_lesion", "theta_rms_change_after_lesion",
                "turnover_per_1k_iterations_after_lesion", "regrown_fraction", "claim_holds"):  # fmt: skip
        assert key in results, key
    # the lesion removed about half of the active synapses
    assert results["active_fraction_after_lesion"] == pytest.approx(
        results["active_fraction_before_lesion"] / 2, rel=0.2
    )
    assert results["theta_rms_change_after_lesion"] > 0
    for name in ("stationary_histograms.png", "lesion_recovery.png", "learning_curve.png", "report.html"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "report.html").read_text().count("data:image/png;base64") == 3
    steps = [m["step"] for m in _metrics(out)]
    assert steps == list(range(1, 3 + 40 + 1))  # 3 temperatures, then 40 iterations


def test_seed_reproduces_every_number(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert _run(["--seed", "4", "--out", str(a)]) == 0
    assert _run(["--seed", "4", "--out", str(b)]) == 0
    assert _metrics(a) == _metrics(b)
    _same_results(a, b)


def test_sigterm_then_resume_equals_uninterrupted(tmp_path):
    args = ["--set", "iterations=200", "--set", "recovery_iterations=200", "--set", "checkpoint_every=1000"]
    ref = tmp_path / "ref"
    assert _run([*args, "--out", str(ref)]) == 0

    out = tmp_path / "stopped"
    cmd = [sys.executable, "-m", "neuromorph.cli", "run", "synaptic-sampling", "--quick", "--no-progress",
           *TINY, *args, "--out", str(out)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        metrics = out / "metrics.jsonl"
        if metrics.exists() and len(metrics.read_text().splitlines()) > 3 + 50:  # inside the network phase
            break
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before it could be stopped: {proc.communicate()[1][-2000:]}"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "--resume" in err
    assert not (out / "results.json").exists()
    assert json.loads((out / "checkpoint.json").read_text())["step"] > 3

    assert main(["run", "--resume", str(out), "--no-progress"]) == 0
    assert _metrics(ref) == _metrics(out)
    _same_results(ref, out)
    ta, tb = _checkpoint_tensors(ref), _checkpoint_tensors(out)
    assert ta.keys() == tb.keys() and all((ta[k] == tb[k]).all() for k in ta)


def test_resume_after_the_stationary_phase(tmp_path):
    """A checkpoint written between the two parts resumes into the network phase."""
    ref, out = tmp_path / "ref", tmp_path / "cut"
    assert _run(["--out", str(ref)]) == 0
    assert _run(["--out", str(out)]) == 0
    # Rewind the finished run to its state after part 1: the checkpoint of step 3 is rebuilt from results.
    record = json.loads((out / "checkpoint.json").read_text())
    meta = record["meta"]
    run = Run.open(out)
    run.save_checkpoint({"stationary": torch.zeros(1)}, {"step": 3, "stationary": meta["stationary"],
                                                         "seconds": 0.0, "optimizer": {}})  # fmt: skip
    run.close()
    (out / "results.json").unlink()
    assert main(["run", "--resume", str(out), "--no-progress"]) == 0
    assert _metrics(ref) == _metrics(out)
    _same_results(ref, out)


@pytest.mark.parametrize(
    "sets, needle",
    [
        (["temperature=-1"], "temperature must be >= 0, got -1"),
        (["stat_temperatures=[0.1,-2]"], "stat_temperatures must be a non-empty list of numbers > 0"),
        (["prior_std=0"], "prior_std must be > 0"),
        (["lr=0"], "lr must be > 0"),
        (["lesion_fraction=1.5"], "lesion_fraction must be in (0, 1]"),
        (["lesion_theta=0.5"], "lesion_theta must be <= 0"),
        (["stat_chains=0"], "stat_chains must be >= 1"),
    ],
)
def test_bad_config_is_a_clear_error_and_writes_nothing(sets, needle, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [x for s in sets for x in ("--set", s)]
    assert main(["run", "synaptic-sampling", "--quick", *args]) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_trains_under_torchrun_ddp(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "neuromorph.cli", "run", "synaptic-sampling", "--quick", "--no-progress", *TINY,
           "--out", str(out)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["processes"] == 2 and len(results["ks_pvalues"]) == 3
