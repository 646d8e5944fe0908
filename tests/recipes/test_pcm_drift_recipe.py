"""pcm-drift recipe through the real CLI on tiny configs (the --quick numbers: docs/hardware.md)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from neuromorph.cli import main

TINY = ["--set", "channels1=2", "--set", "channels2=2", "--set", "iterations=6", "--set", "batch_size=8",
        "--set", "deployments=1", "--set", "test_size=40", "--set", "eval_batch=20",
        "--set", "checkpoint_every=2"]  # fmt: skip
TIMES = ["1", "3600", "86400", "2592000", "31536000"]


def _metrics(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k != "time"} for x in lines]


def _run(args):
    return main(["run", "pcm-drift", "--quick", "--no-progress", *args])


def test_quick_writes_the_accuracy_table_plots_and_report(tmp_path):
    out = tmp_path / "run"
    assert _run([*TINY, "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    table = results["accuracy"]
    assert sorted(table) == ["hardware_aware", "plain", "software"]
    for variant in table.values():
        assert sorted(variant) == ["compensated", "uncompensated"]
        for column in variant.values():
            assert sorted(column, key=int) == TIMES
            assert all(0.0 <= a <= 1.0 for a in column.values())
    assert results["times_s"] == [int(t) for t in TIMES]
    claims = results["claims"]
    assert isinstance(claims["hardware_aware_beats_plain_at_1_day"], bool)
    assert isinstance(claims["compensation_recovers_at_1_year"], bool)
    assert results["deployments"] == 1 and results["test_images"] == 40 and results["iterations"] == 6
    for name in ("accuracy_vs_time.png", "learning_curve.png", "report.html", "config.yaml"):
        assert (out / name).stat().st_size > 0, name
    assert "data:image/png;base64" in (out / "report.html").read_text()
    steps = [m["step"] for m in _metrics(out)]
    assert steps == list(range(1, 12 + 5 + 1))  # 6 + 6 training iterations, then one record per time


def test_seed_reproduces_the_numbers(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert _run([*TINY, "--seed", "3", "--out", str(a)]) == 0
    assert _run([*TINY, "--seed", "3", "--out", str(b)]) == 0
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (a, b))
    assert ra["accuracy"] == rb["accuracy"]
    assert _metrics(a) == _metrics(b)


def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    args = [*TINY, "--set", "iterations=80", "--set", "checkpoint_every=10", "--seed", "1"]
    ref = tmp_path / "ref"
    assert _run([*args, "--out", str(ref)]) == 0

    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "neuromorph.cli", "run", "pcm-drift", "--quick", "--no-progress", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [*cmd, "--out", str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
    )
    ckpt = killed / "checkpoint.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:
            if json.loads(ckpt.read_text())["step"] >= 30:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.02)
    if proc.poll() is not None:
        pytest.skip("the run finished before it could be killed (machine too fast for this test)")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "results.json").exists()

    assert main(["run", "--resume", str(killed), "--no-progress"]) == 0
    r1, r2 = (json.loads((d / "results.json").read_text()) for d in (ref, killed))
    assert r1["accuracy"] == r2["accuracy"] and r1["software_accuracy"] == r2["software_accuracy"]
    assert _metrics(ref) == _metrics(killed)


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    out = tmp_path / "run"
    args = [*TINY, "--set", "iterations=5000", "--set", "checkpoint_every=10000"]
    cmd = [sys.executable, "-m", "neuromorph.cli", "run", "pcm-drift", "--quick", "--no-progress", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [*cmd, "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
    )
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "metrics.jsonl").exists():
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "--resume" in err
    assert json.loads((out / "checkpoint.json").read_text())["step"] >= 1


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--set", "weight_bits=17"], "weight_bits"),
        (["--set", "weight_bits=0"], "weight_bits"),
        (["--set", "g_max=0"], "g_max"),
        (["--set", "g_max=-5"], "g_max"),
        (["--set", "hwa_noise=gaussian"], "hwa_noise"),
        (["--set", "deployments=0"], "deployments"),
        (["--set", "hwa_clip_sigma=-1"], "clip_sigma"),
    ],
)
def test_bad_input_is_a_clear_error(args, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "pcm-drift", "--quick", *args]) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # nothing written


def test_weight_bits_null_means_analog_devices():
    from neuromorph.recipes import pcm_drift
    from neuromorph.recipes._common import apply_overrides

    cfg = apply_overrides(pcm_drift.quick(pcm_drift.Config()), ["weight_bits=null"])
    assert cfg.weight_bits is None and pcm_drift.device_model(cfg).weight_bits is None


@pytest.mark.slow
def test_trains_under_torchrun_ddp(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "neuromorph.cli", "run", "pcm-drift", "--quick", "--no-progress", *TINY,
           "--out", str(out)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["processes"] == 2 and results["iterations"] == 6
    assert sorted(results["accuracy"]) == ["hardware_aware", "plain", "software"]
