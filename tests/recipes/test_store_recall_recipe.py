"""Store-recall recipe through the real CLI on tiny configs (the --quick numbers: docs/lsnn.md)."""

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
from safetensors.torch import load_file

from neuromorph.cli import main


def _metrics(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k != "time"} for x in lines]


def _run(args):
    return main(["run", "store-recall", "--quick", "--no-progress", *args])


def test_quick_writes_results_plots_and_report(tmp_path, tiny_store_recall, capsys):
    out = tmp_path / "run"
    assert _run([*tiny_store_recall, "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    for key in ("lsnn_recall_error", "lif_recall_error", "iterations", "seconds"):
        assert key in results
    assert 0.0 <= results["lsnn_recall_error"] <= 1.0 and 0.0 <= results["lif_recall_error"] <= 1.0
    assert results["iterations"] == 6 and results["seconds"] > 0
    for name in ("learning_curve.png", "raster.png", "recall_error.png", "report.html", "config.yaml"):
        assert (out / name).stat().st_size > 0, name
    assert "data:image/png;base64" in (out / "report.html").read_text()
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == list(range(1, 13))  # 6 LSNN + 6 LIF iterations
    assert any(p.name.startswith("events") for p in (out / "tb").rglob("*"))  # TensorBoard


def test_seed_fixes_every_draw(tmp_path, tiny_store_recall):
    a, b = tmp_path / "a", tmp_path / "b"
    assert _run([*tiny_store_recall, "--seed", "3", "--out", str(a)]) == 0
    assert _run([*tiny_store_recall, "--seed", "3", "--out", str(b)]) == 0
    for name in ("lsnn.safetensors", "lif.safetensors"):
        ta, tb = load_file(str(a / name)), load_file(str(b / name))
        assert all((ta[k] == tb[k]).all() for k in ta)
    assert _metrics(a) == _metrics(b)


def test_sigkill_then_resume_equals_uninterrupted(tmp_path, tiny_store_recall):
    args = [*tiny_store_recall, "--set", "iterations=12", "--set", "checkpoint_every=1", "--seed", "5"]
    ref = tmp_path / "ref"
    assert _run([*args, "--out", str(ref)]) == 0

    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "neuromorph.cli", "run", "store-recall", "--quick", "--no-progress", *args]
    proc = subprocess.Popen(
        [*cmd, "--out", str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    ckpt = killed / "checkpoint.json"
    deadline = time.time() + 120
    while time.time() < deadline:
        if ckpt.exists():
            try:
                if json.loads(ckpt.read_text())["step"] >= 5:
                    break
            except (json.JSONDecodeError, KeyError):
                pass
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.communicate()[1][-2000:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "results.json").exists()

    assert main(["run", "--resume", str(killed), "--no-progress"]) == 0
    for name in ("lsnn.safetensors", "lif.safetensors"):
        ta, tb = load_file(str(ref / name)), load_file(str(killed / name))
        assert ta.keys() == tb.keys()
        for k in ta:
            assert (ta[k] == tb[k]).all(), f"{name}:{k} differs after resume"
    assert _metrics(ref) == _metrics(killed)
    r1, r2 = json.loads((ref / "results.json").read_text()), json.loads((killed / "results.json").read_text())
    assert (
        r1["lsnn_recall_error"] == r2["lsnn_recall_error"]
        and r1["lif_recall_error"] == r2["lif_recall_error"]
    )


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path, tiny_store_recall):
    out = tmp_path / "run"
    args = [*tiny_store_recall, "--set", "iterations=400", "--set", "checkpoint_every=1000"]
    cmd = [sys.executable, "-m", "neuromorph.cli", "run", "store-recall", "--quick", "--no-progress", *args]
    proc = subprocess.Popen(
        [*cmd, "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 60
    while time.time() < deadline and not (out / "metrics.jsonl").exists():
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "--resume" in err
    assert json.loads((out / "checkpoint.json").read_text())["step"] >= 1


@pytest.mark.parametrize(
    "args, needle",
    [
        (["run", "no-such-recipe"], "known recipes: "),
        (["run", "store-recall", "--set", "no_such_key=1"], "valid keys:"),
        (["run", "store-recall", "--set", "iterations=abc"], "iterations"),
        (["run", "store-recall", "--set", "iterations=0"], "iterations must be >= 1"),
        (["run", "store-recall", "--set", "variants=[lsnn,xyz]"], "variants"),
        (["run", "store-recall", "--device", "tpu"], "--device"),
        (["run", "store-recall", "--set", "tau_mem=-5"], "tau_mem"),
        (["run", "store-recall", "--set", "impl=fast"], "impl"),
        (
            ["run", "store-recall", "--set", "lr=1e-3", "--set", "n_lif=0", "--set", "n_alif=0"],
            "n_lif + n_alif",
        ),
        (["run"], "RECIPE"),
    ],
)
def test_bad_input_is_a_clear_error(args, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # nothing written


def test_resume_of_missing_or_corrupt_run_changes_nothing(tmp_path, capsys, tiny_store_recall):
    assert main(["run", "--resume", str(tmp_path / "nope")]) == 2
    assert "--resume" in capsys.readouterr().err
    out = tmp_path / "run"
    assert _run([*tiny_store_recall, "--out", str(out)]) == 0
    ckpt = out / "checkpoint.json"
    ckpt.write_text("{ corrupt")
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert main(["run", "--resume", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert before == {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    # An existing run is never overwritten by --out either.
    assert _run([*tiny_store_recall, "--out", str(out)]) == 2
    assert before == {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}


def test_report_command_rebuilds_the_report(tmp_path, tiny_store_recall, capsys):
    out = tmp_path / "run"
    assert _run([*tiny_store_recall, "--out", str(out)]) == 0
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.html").exists()


@pytest.mark.slow
def test_trains_under_torchrun_ddp(tmp_path, tiny_store_recall):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "neuromorph.cli", "run", "store-recall", "--quick", "--no-progress", *tiny_store_recall,
           "--out", str(out)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["processes"] == 2 and results["iterations"] == 6


def test_package_entry_point_is_installed():
    exe = Path(sys.executable).parent / "neuromorph"
    proc = subprocess.run([str(exe), "list"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "store-recall" in proc.stdout and "smnist" in proc.stdout


def test_rewiring_deep_r_trains_under_a_connection_budget(tmp_path, tiny_store_recall):
    out = tmp_path / "run"
    args = [*tiny_store_recall, "--set", "rewiring=deep-r", "--set", "rewiring_connectivity=0.25"]
    assert _run([*args, "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["rewiring"] == "deep-r" and results["budget_violations"] == 0
    for variant in ("lsnn", "lif"):
        w = load_file(str(out / f"{variant}.safetensors"))
        n_in, n = w["rsnn.w_in"].shape
        budget = round(0.25 * n_in * n) + round(0.25 * (n * n - n))  # autapses are not allowed connections
        assert int((w["rsnn.w_in"] != 0).sum() + (w["rsnn.w_rec"] != 0).sum()) == budget
        assert int((w["rsnn.w_rec"].diagonal() != 0).sum()) == 0
        assert results["variants"][variant]["connectivity"] == budget / (n_in * n + n * n)


def test_rewiring_sigkill_then_resume_equals_uninterrupted(tmp_path, tiny_store_recall):
    args = [*tiny_store_recall, "--set", "rewiring=deep-r", "--set", "rewiring_temperature=1e-4",
            "--set", "variants=[lsnn]", "--set", "iterations=12", "--set", "checkpoint_every=1",
            "--seed", "2"]  # fmt: skip
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    assert _run([*args, "--out", str(ref)]) == 0
    cmd = [sys.executable, "-m", "neuromorph.cli", "run", "store-recall", "--quick", "--no-progress", *args]
    proc = subprocess.Popen(
        [*cmd, "--out", str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:
            if json.loads((killed / "checkpoint.json").read_text())["step"] >= 5:
                break
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert main(["run", "--resume", str(killed), "--no-progress"]) == 0
    ta, tb = load_file(str(ref / "lsnn.safetensors")), load_file(str(killed / "lsnn.safetensors"))
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    assert _metrics(ref) == _metrics(killed)
    r1, r2 = (json.loads((d / "results.json").read_text()) for d in (ref, killed))
    assert r1["lsnn_recall_error"] == r2["lsnn_recall_error"] and r2["budget_violations"] == 0


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--set", "rewiring=deepr"], "rewiring must be one of"),
        (
            ["--set", "rewiring=deep-r", "--set", "rewiring_connectivity=0"],
            "rewiring_connectivity must be in (0, 1]",
        ),
        (
            ["--set", "rewiring=deep-r", "--set", "rewiring_temperature=-1"],
            "rewiring_temperature must be >= 0",
        ),
    ],
)
def test_rewiring_bad_input(args, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "store-recall", *args]) == 2
    assert needle in capsys.readouterr().err


# -- learning=eprop -------------------------------------------------------------------------------


def test_eprop_step_equals_bptt_through_the_truncated_network():
    """The recipe's e-prop gradients (readout, input and recurrent weights, with the rate regulariser)
    equal autograd through the network e-prop differentiates exactly, in float64."""
    from neuromorph.learning import truncated_bptt_reference
    from neuromorph.recipes import store_recall as sr

    cfg = sr.Config(n_in=12, n_lif=4, n_alif=4, n_chars=3, char_ms=15, n_delay=1, learning="eprop", reg=0.5)
    torch.set_default_dtype(torch.float64)
    try:
        net = sr.StoreRecallNetwork(cfg, "lsnn", torch.Generator().manual_seed(3))
        with torch.no_grad():  # strong enough input that the neurons spike
            net.rsnn.w_in.mul_(8.0)
        batch = sr.store_recall_batch(
            5, np.random.default_rng(0), n_chars=3, char_ms=15, n_in=12, rate_hz=200.0, p_store_recall=0.5
        )
        batch = batch.to("cpu")
        batch = type(batch)(*(t.double() if t.is_floating_point() else t for t in batch))
        sr.eprop_step(net, batch, None, cfg)
        got = {n: p.grad.clone() for n, p in net.named_parameters()}
        net.zero_grad(set_to_none=True)
        z = truncated_bptt_reference(net.rsnn, batch.spikes)
        out, _ = net.readout(z)
        loss = sr.recall_loss(sr.per_char_mean(out, 3), batch)
        loss = loss + sr.firing_rate_loss(z, target_hz=cfg.reg_rate_hz, coefficient=cfg.reg)
        loss.backward()
        assert z.sum() > 0
        for name, param in net.named_parameters():
            assert param.grad is not None and param.grad.abs().max() > 0, name
            torch.testing.assert_close(got[name], param.grad, rtol=1e-9, atol=1e-12, msg=name)
    finally:
        torch.set_default_dtype(torch.float32)


def test_learning_eprop_trains_and_resumes(tmp_path, tiny_store_recall):
    args = [*tiny_store_recall, "--set", "learning=eprop", "--set", "n_delay=1", "--set", "variants=[lsnn]"]
    out = tmp_path / "run"
    assert _run([*args, "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["learning"] == "eprop" and 0.0 <= results["lsnn_recall_error"] <= 1.0
    losses = [m["lsnn/loss"] for m in _metrics(out)]
    assert len(losses) == 6 and all(np.isfinite(losses))
    # the same run again gives the same numbers (every draw seeded)
    again = tmp_path / "again"
    assert _run([*args, "--out", str(again)]) == 0
    assert _metrics(again) == _metrics(out)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--set", "learning=eprop"], "n_delay=1"),
        (["--set", "learning=rtrl"], "learning must be one of"),
    ],
)
def test_learning_bad_input(args, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "store-recall", *args]) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_learning_eprop_under_torchrun(tmp_path, tiny_store_recall):
    """e-prop sets the gradients without backward(); the recipe averages them over ranks itself
    (all_reduce_grads, checked against one process in tests/test_distributed.py)."""
    args = [*tiny_store_recall, "--set", "learning=eprop", "--set", "n_delay=1", "--set", "variants=[lsnn]"]
    ddp = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "neuromorph.cli", "run", "store-recall", "--quick", "--no-progress", *args,
           "--out", str(ddp)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((ddp / "results.json").read_text())
    assert results["processes"] == 2 and results["learning"] == "eprop" and results["iterations"] == 6
