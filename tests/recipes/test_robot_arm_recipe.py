"""robot-arm recipe through the real CLI on a tiny config (the --quick numbers: docs/eprop.md)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from neuromorph.cli import main

TINY = [
    "--set", "n_steps=20", "--set", "window=5", "--set", "trainee_neurons=6", "--set", "lsg_neurons=8",
    "--set", "coord_bits=4", "--set", "batch_size=2", "--set", "iterations=4", "--set", "test_tasks=2",
    "--set", "checkpoint_every=1",
]  # fmt: skip


def _metrics(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k != "time"} for x in lines]


def _run(args):
    return main(["run", "robot-arm", "--quick", "--no-progress", *TINY, *args])


def test_tiny_run_writes_results_plots_and_report(tmp_path):
    out = tmp_path / "run"
    assert _run(["--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    for key in ("error_before", "error_after_software", "error_after_pcm", "device_writes"):
        assert key in results and results[key] >= 0, key
    assert results["iterations"] == 4 and results["arm"] == "planar"
    # only the devices of weights with a non-zero update are written: at most the pair of each
    assert results["device_writes"] <= 2 * results["updated_weights_pcm"]
    assert results["updatable_devices"] == 2 * (6 * 6 + 5 * 6)  # pairs of W_rec [6, 6] and W_in [5, 6]
    for name in ("end_effector_path.png", "raster_trainee.png", "raster_lsg.png", "errors.png",
                 "meta_training.png", "report.html", "config.yaml"):  # fmt: skip
        assert (out / name).stat().st_size > 0, name
    assert "data:image/png;base64" in (out / "report.html").read_text()
    assert [m["step"] for m in _metrics(out)] == [1, 2, 3, 4]


def test_scorbot_arm_one_meta_step_and_one_chip():
    # the 3-joint arm through the recipe's pieces (no CLI: the report is covered above)
    from dataclasses import replace

    import numpy as np

    from neuromorph.recipes import robot_arm as R
    from neuromorph.tasks.arm import make_arm

    cfg = replace(R.quick(R.Config()), arm="scorbot", n_steps=20, window=5, trainee_neurons=6,
                  lsg_neurons=8, coord_bits=4, batch_size=2)  # fmt: skip
    arm = make_arm("scorbot")
    net = R.MetaLearner(cfg, arm, 0)
    target = R._targets(cfg, arm, R.ROLE_TRAIN, 0, 0, 2)
    res = net(target)
    res.loss.backward()
    assert res.after.outputs.shape == (20, 2, 3) and net.lsg.readout.weight.grad.abs().sum() > 0
    assert net.lsg.rsnn.w_in.shape[0] == 5 + 3 * 4  # clock + three coded coordinates
    one = R._targets(cfg, arm, R.ROLE_TEST, 0, 0, 1)
    before, after, writes, updated, omega = R._one_shot_pcm(net, one, chip_seed=1)
    assert np.isfinite([before, after]).all() and omega.shape == (20, 3)
    assert writes <= 2 * updated
    quiet = R.MetaLearner(replace(cfg, eta=0.0), arm, 0)
    assert R._one_shot_pcm(quiet, one, chip_seed=1)[2:4] == (0, 0)  # no update: no device written


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    args = ["--set", "iterations=10", "--seed", "4"]
    ref = tmp_path / "ref"
    assert _run([*args, "--out", str(ref)]) == 0
    killed = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "neuromorph.cli",
        "run",
        "robot-arm",
        "--quick",
        "--no-progress",
        *TINY,
        *args,
    ]
    proc = subprocess.Popen([*cmd, "--out", str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt = killed / "checkpoint.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:
            if ckpt.exists() and json.loads(ckpt.read_text())["step"] >= 3:
                break
        except (json.JSONDecodeError, KeyError):
            pass
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.communicate()[1][-2000:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "results.json").exists()
    assert main(["run", "--resume", str(killed), "--no-progress"]) == 0
    assert _metrics(killed) == _metrics(ref)
    a, b = (
        load_file(str(ref / "meta_learner.safetensors")),
        load_file(str(killed / "meta_learner.safetensors")),
    )
    assert all((a[k] == b[k]).all() for k in a)
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (ref, killed))
    for key in ("error_before", "error_after_software", "error_after_pcm", "device_writes"):
        assert ra[key] == rb[key], key


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("arm=scara", "arm must be one of"),
        ("trainee_neurons=0", "trainee_neurons must be an integer >= 1"),
        ("update_step=2.0", "update_step (2.0) must not exceed w_max"),
        ("eta=-1", "eta must be a finite number >= 0"),
        ("lsg_alif_fraction=1.5", "lsg_alif_fraction must be in"),
    ],
)
def test_bad_config_is_refused_before_anything_is_written(tmp_path, setting, message, capsys):
    out = tmp_path / "bad"
    code = main(["run", "robot-arm", "--quick", "--no-progress", "--set", setting, "--out", str(out)])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()  # nothing written
