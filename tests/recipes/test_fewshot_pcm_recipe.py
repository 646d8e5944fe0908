"""fewshot-pcm through the real CLI on a tiny config (the --quick numbers: docs/l2l.md)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from neuromorph.cli import main
from neuromorph.meta import FewShotTask, InnerLoop, anil_query, params_of
from neuromorph.recipes._common import seeded_generator
from neuromorph.recipes.fewshot_pcm import ENTRIES, FewShotCNN, software_accuracies

TINY = [
    "--set", "channels=4", "--set", "meta_batch=2", "--set", "iterations=4", "--set", "test_tasks=3",
    "--set", "range_tasks=1", "--set", "data.train_characters=12", "--set", "data.drawers=10",
    "--set", "checkpoint_every=2",
]  # fmt: skip


def _run(args):
    return main(["run", "fewshot-pcm", "--quick", "--no-progress", *TINY, *args])


def _metrics(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k != "time"} for x in lines]


RESUMABLE = ["--set", "iterations=6", "--set", "checkpoint_every=1", "--seed", "2"]


@pytest.fixture(scope="module")
def ref_run(tmp_path_factory):
    """One uninterrupted tiny run, shared by the output checks and the resume reference."""
    out = tmp_path_factory.mktemp("fewshot") / "ref"
    assert _run([*RESUMABLE, "--out", str(out)]) == 0
    return out


def test_tiny_run_writes_results_report_and_plots(ref_run):
    out = ref_run
    r = json.loads((out / "results.json").read_text())
    for key in (*ENTRIES, "ci95", "device_writes_per_task", "accuracy_by_step", "pcm_minus_software"):
        assert key in r, key
    for key in ENTRIES:
        assert 0.0 <= r[key] <= 1.0 and r["ci95"][key] >= 0.0
    assert set(r["device_writes_per_task"]) == {"pcm", "pcm_4bit"}
    # at most every readout device re-programmed at each of the 4 inner steps
    for writes in r["device_writes_per_task"].values():
        assert 0 <= writes <= 4 * r["readout_devices"]
    assert r["readout_devices"] == 2 * 4 * 5  # 4 channels x 5 classes, two devices per weight
    assert len(r["accuracy_by_step"]["software"]) == 5
    assert r["accuracy_by_step"]["software"][0] == r["accuracy_0_steps"]
    for name in (
        "meta_training.png",
        "accuracy.png",
        "accuracy_by_step.png",
        "report.html",
        "model.safetensors",
    ):
        assert (out / name).stat().st_size > 0, name
    assert [m["step"] for m in _metrics(out)] == [1, 2, 3, 4, 5, 6]


class _Crash(Exception):
    pass


def test_crash_then_resume_equals_uninterrupted(tmp_path, monkeypatch, ref_run):
    """In-process: the run dies right after logging iteration 4 (checkpoint of iteration 3 on disk)."""
    from neuromorph.runs import Run

    args, ref = RESUMABLE, ref_run
    crashed = tmp_path / "crashed"
    log = Run.log

    def dying_log(self, step, **metrics):
        log(self, step, **metrics)
        if step == 4:
            raise _Crash

    monkeypatch.setattr(Run, "log", dying_log)
    with pytest.raises(_Crash):
        _run([*args, "--out", str(crashed)])
    monkeypatch.setattr(Run, "log", log)
    assert json.loads((crashed / "checkpoint.json").read_text())["step"] == 3
    assert main(["run", "--resume", str(crashed), "--no-progress"]) == 0
    a, b = load_file(str(ref / "model.safetensors")), load_file(str(crashed / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _metrics(ref) == _metrics(crashed)
    r1, r2 = (json.loads((d / "results.json").read_text()) for d in (ref, crashed))
    for key in (*ENTRIES, "device_writes_per_task", "ci95", "accuracy_by_step"):
        assert r1[key] == r2[key], key


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    args = ["--set", "iterations=8", "--set", "checkpoint_every=1", "--seed", "3"]
    ref = tmp_path / "ref"
    assert _run([*args, "--out", str(ref)]) == 0
    killed = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "neuromorph.cli",
        "run",
        "fewshot-pcm",
        "--quick",
        "--no-progress",
        *TINY,
        *args,
    ]
    proc = subprocess.Popen([*cmd, "--out", str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt = killed / "checkpoint.json"
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        try:
            if json.loads(ckpt.read_text())["step"] >= 3:
                break
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.communicate()[1][-2000:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "results.json").exists()
    assert main(["run", "--resume", str(killed), "--no-progress"]) == 0
    a, b = load_file(str(ref / "model.safetensors")), load_file(str(killed / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _metrics(ref) == _metrics(killed)
    r1, r2 = (json.loads((d / "results.json").read_text()) for d in (ref, killed))
    for key in (*ENTRIES, "device_writes_per_task", "ci95"):
        assert r1[key] == r2[key], key


def test_software_test_steps_equal_anil_inner_loop():
    net = FewShotCNN(6, 3, seeded_generator(0, 0))
    g = torch.Generator().manual_seed(0)
    labels_s, labels_q = torch.arange(3).repeat_interleave(2), torch.arange(3).repeat_interleave(3)
    task = FewShotTask(
        torch.rand(6, 1, 28, 28, generator=g), labels_s, torch.rand(9, 1, 28, 28, generator=g), labels_q
    )
    accs = software_accuracies(net, task, InnerLoop(3, 0.5))
    for steps in range(4):
        out = anil_query(net, params_of(net), task, F.cross_entropy, InnerLoop(steps, 0.5), "readout").output
        assert accs[steps] == pytest.approx(float((out.argmax(-1) == task.query_y).float().mean()))


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--set", "inner_steps=-1"], "inner_steps must be a non-negative int"),
        (
            ["--set", "k_shot=15", "--set", "q_query=10"],
            "k_shot + q_query = 25 is larger than the 10 examples",
        ),
        (["--set", "n_way=100000"], "n_way = 100000 is larger than"),
        (["--set", "q_query=0"], "q_query must be a positive int"),
        (["--set", "data.name=omniglot"], "needs data.root"),
        (["--set", "data.name=omniglot", "--set", "data.root=/nonexistent"], "Omniglot not found"),
        (["--set", "weight_bits=20"], "weight_bits must be in 1..16"),
    ],
)
def test_bad_input_fails_before_writing(tmp_path, capsys, args, needle):
    out = tmp_path / "run"
    assert _run([*args, "--out", str(out)]) != 0
    assert needle in capsys.readouterr().err
    assert not out.exists()


def test_quick_is_the_documented_setting():
    from neuromorph.recipes.fewshot_pcm import Config, quick

    cfg = quick(Config())
    assert (cfg.n_way, cfg.k_shot, cfg.inner_steps, cfg.inner_lr, cfg.channels) == (5, 5, 4, 0.1, 56)
    assert np.isclose(cfg.outer_lr, 1e-3) and cfg.test_tasks == 100
