"""deep-r recipe through the real CLI on tiny configs (the --quick numbers over 3 seeds: docs/rewiring.md)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from neuromorph.cli import main
from neuromorph.recipes import deep_r

TINY = [
    "--set", "n_hidden1=20", "--set", "n_hidden2=10", "--set", "epochs=2", "--set", "train_size=100",
    "--set", "test_size=100", "--set", "log_every=2", "--set", "eval_every=4", "--set", "checkpoint_every=3",
]  # fmt: skip


def _metrics(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k != "time"} for x in lines]


def _run(args):
    return main(["run", "deep-r", "--quick", "--no-progress", *args])


def test_tiny_run_writes_results_plots_and_report(tmp_path):
    out = tmp_path / "run"
    assert _run([*TINY, "--out", str(out)]) == 0
    r = json.loads((out / "results.json").read_text())
    for key in ("deep_r_accuracy", "static_mask_accuracy", "soft_deep_r_accuracy", "dense_accuracy"):
        assert 0.0 <= r[key] <= 1.0, key
    assert r["budget_violations"] == 0
    conn = r["connectivity"]
    assert conn["dense"]["global"] == 1.0
    # DEEP R keeps exactly the budget of the fixed mask, in total (connections move between layers)
    assert (
        conn["deep_r"]["global"]
        == pytest.approx(conn["static_mask"]["global"])
        == pytest.approx(conn["target"])
    )
    assert conn["static_mask"]["per_layer"] == pytest.approx(conn["target_per_layer"], rel=0.05)
    assert r["iterations"] == 20 and r["budget"] == "global"
    for name in (
        "accuracy.png",
        "connectivity_deep_r.png",
        "connectivity_soft_deep_r.png",
        "test_accuracy.png",
    ):
        assert (out / name).stat().st_size > 0, name
    assert "data:image/png;base64" in (out / "report.html").read_text()
    steps = [m["step"] for m in _metrics(out)]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) == 4 * 10  # 10 logs per variant


def test_per_tensor_budget_keeps_every_layer_at_its_count(tmp_path):
    out = tmp_path / "run"
    assert _run([*TINY, "--set", "budget=per-tensor", "--set", "variants=[deep_r]", "--out", str(out)]) == 0
    r = json.loads((out / "results.json").read_text())
    assert r["budget_violations"] == 0
    assert r["connectivity"]["deep_r"]["per_layer"] == pytest.approx(r["connectivity"]["target_per_layer"])
    assert r["static_mask_accuracy"] is None  # variant not run


def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    args = [*TINY, "--set", "epochs=6", "--set", "checkpoint_every=1", "--seed", "4"]
    ref = tmp_path / "ref"
    assert _run([*args, "--out", str(ref)]) == 0
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "neuromorph.cli", "run", "deep-r", "--quick", "--no-progress", *args]
    proc = subprocess.Popen(
        [*cmd, "--out", str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    ckpt = killed / "checkpoint.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:
            meta = json.loads(ckpt.read_text())
            if meta["step"] >= 12:  # inside the first variant (30 logs each), DEEP R state in the checkpoint
                break
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "results.json").exists()
    assert main(["run", "--resume", str(killed), "--no-progress"]) == 0
    assert _metrics(ref) == _metrics(killed)
    r1, r2 = (json.loads((d / "results.json").read_text()) for d in (ref, killed))
    for key in (
        "deep_r_accuracy",
        "static_mask_accuracy",
        "soft_deep_r_accuracy",
        "dense_accuracy",
        "connectivity",
    ):
        assert r1[key] == r2[key], key


@pytest.mark.parametrize("stop_at", [25, 26])  # between two logs (log_every=2) and on one
def test_stop_at_any_iteration_then_resume_equals_uninterrupted(tmp_path, monkeypatch, stop_at):
    """A stop lands between two logs as often as on one: the running loss sums travel in the checkpoint.

    Deterministic twin of the SIGKILL test (whose kill point depends on timing): the stop flag is raised
    when the progress bar reaches ``stop_at`` iterations of the first variant.
    """
    args = [*TINY, "--set", "epochs=6", "--set", "checkpoint_every=7", "--set", "variants=[deep_r]"]
    ref = tmp_path / "ref"
    assert _run([*args, "--out", str(ref)]) == 0
    real_bar = deep_r.progress_bar

    def stopping_bar(ctx, **kw):
        bar = real_bar(ctx, **kw)
        update, done = bar.update, [kw.get("initial", 0)]

        def counted(n=1):
            update(n)
            done[0] += n  # a disabled tqdm bar does not count
            if done[0] >= stop_at:
                ctx.stop.requested = True

        bar.update = counted
        return bar

    monkeypatch.setattr(deep_r, "progress_bar", stopping_bar)
    stopped = tmp_path / "stopped"
    _run([*args, "--out", str(stopped)])
    meta = json.loads((stopped / "checkpoint.json").read_text())["meta"]
    assert meta["iteration"] == stop_at and not (stopped / "results.json").exists()
    monkeypatch.setattr(deep_r, "progress_bar", real_bar)
    assert main(["run", "--resume", str(stopped), "--no-progress"]) == 0
    assert _metrics(ref) == _metrics(stopped)
    r1, r2 = (json.loads((d / "results.json").read_text()) for d in (ref, stopped))
    assert r1["deep_r_accuracy"] == r2["deep_r_accuracy"]


def test_fashion_mnist_from_debian(tmp_path):
    if not Path(deep_r.FASHION_DIR).is_dir():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    out = tmp_path / "run"
    assert _run([*TINY, "--set", "data=fashion", "--set", "variants=[deep_r]", "--out", str(out)]) == 0
    r = json.loads((out / "results.json").read_text())
    assert r["data"].startswith("fashion") and 0.0 <= r["deep_r_accuracy"] <= 1.0


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--set", "data=fashion", "--set", "data_root=/nonexistent/fmnist"], "dataset-fashion-mnist"),
        (["--set", "data=cifar"], "data must be one of"),
        (["--set", "connectivity1=0"], "connectivity1 must be in (0, 1]"),
        (["--set", "connectivity3=1.5"], "connectivity3 must be in (0, 1]"),
        (["--set", "budget=layer"], "budget must be one of"),
        (["--set", "noise=-1"], "noise must be >= 0"),
        (["--set", "variants=[deep_r,foo]"], "variants"),
        (["--set", "batch_size=0"], "batch_size must be >= 1"),
    ],
)
def test_bad_input_is_a_clear_error(args, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "deep-r", *args]) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_defaults_are_the_official_script():
    cfg = deep_r.Config()
    assert (cfg.n_hidden1, cfg.n_hidden2, cfg.batch_size, cfg.epochs, cfg.lr, cfg.lr_decay) == (
        300,
        100,
        10,
        10,
        0.5,
        0.8,
    )
    assert cfg.connectivity == (0.01, 0.03, 0.3) and (cfg.l1, cfg.noise) == (1e-5, 1e-5)
    q = deep_r.quick(cfg)
    assert q.epochs == 5 and q.train_size == 4000 and q.l1 == 2e-4


@pytest.mark.slow
def test_trains_under_torchrun_ddp_with_the_same_metrics(tmp_path):
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    args = [*TINY, "--set", "variants=[deep_r,static_mask]", "--seed", "1"]
    assert _run([*args, "--out", str(single)]) == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "neuromorph.cli", "run", "deep-r", "--quick", "--no-progress", *args,
           "--out", str(ddp)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r1, r2 = (json.loads((d / "results.json").read_text()) for d in (single, ddp))
    assert r2["processes"] == 2 and r2["budget_violations"] == 0
    # each rank takes half of every batch of 10; DDP averages the gradients: the same training up to
    # float summation order
    assert r2["deep_r_accuracy"] == pytest.approx(r1["deep_r_accuracy"], abs=0.03)
    assert r2["connectivity"]["deep_r"]["global"] == r1["connectivity"]["deep_r"]["global"]
