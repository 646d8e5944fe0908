"""l2l-regression through the real CLI on tiny configs, plus its encoding and reference learner by hand
(the --quick numbers: docs/l2l.md)."""

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from neuromorph import runs
from neuromorph.cli import main
from neuromorph.distributed import DistInfo
from neuromorph.recipes import l2l_regression as rec
from neuromorph.runs import StopFlag
from neuromorph.tasks.function_family import FunctionEpisodes

TINY = [
    "--set", "n_lif=3", "--set", "n_alif=3", "--set", "n_examples=4", "--set", "example_ms=3",
    "--set", "read_ms=1", "--set", "batch_size=4", "--set", "iterations=6", "--set", "test_batches=1",
    "--set", "checkpoint_every=2", "--set", "n_hidden=3", "--set", "gap_ms=2",
]  # fmt: skip


def _metrics(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k != "time"} for x in lines]


def _run(args):
    return main(["run", "l2l-regression", "--quick", "--no-progress", *args])


def test_encoding_predictions_and_mean_learner_by_hand():
    cfg = rec.Config(n_inputs=1, n_examples=3, example_ms=2, read_ms=1, input_scale=0.5)
    ep = FunctionEpisodes(
        x=torch.tensor([[[0.2]], [[-0.4]], [[1.0]]]), y=torch.tensor([[1.0], [3.0], [-1.0]])
    )
    inp = rec.encode(ep, cfg)
    assert inp.shape == (6, 1, 3)
    want = 0.5 * torch.tensor([[0.2, 0.0, 1.0]] * 2 + [[-0.4, 1.0, 1.0]] * 2 + [[1.0, 3.0, 1.0]] * 2)
    assert torch.allclose(inp[:, 0], want)  # x_k with the previous target y_{k-1} and a constant
    out = torch.arange(6.0)[:, None]
    assert rec.predictions(out, cfg)[:, 0].tolist() == [1.0, 3.0, 5.0]  # last read_ms ms of each example
    assert rec.mean_predictor(ep.y)[:, 0].tolist() == [0.0, 1.0, 2.0]  # mean of the targets seen so far


def test_gap_of_silence_after_each_example():
    cfg = rec.Config(n_inputs=1, n_examples=2, example_ms=2, read_ms=1, gap_ms=3, input_scale=1.0)
    ep = FunctionEpisodes(x=torch.tensor([[[0.5]], [[-1.0]]]), y=torch.tensor([[2.0], [4.0]]))
    inp = rec.encode(ep, cfg)[:, 0]
    assert inp.shape == (10, 3)
    assert torch.equal(inp[:2], torch.tensor([[0.5, 0.0, 1.0]] * 2)) and (inp[2:5] == 0).all()
    assert torch.equal(inp[5:7], torch.tensor([[-1.0, 2.0, 1.0]] * 2)) and (inp[7:] == 0).all()
    out = torch.arange(10.0)[:, None]
    assert rec.predictions(out, cfg)[:, 0].tolist() == [1.0, 6.0]  # read inside the input window


def test_population_code_by_hand():
    cfg = rec.Config(
        n_inputs=1, n_examples=2, example_ms=1, read_ms=1, code="population", n_pop=3, y_range=2.0,
        input_scale=0.5,
    )  # fmt: skip
    ep = FunctionEpisodes(x=torch.tensor([[[0.0]], [[1.0]]]), y=torch.tensor([[2.0], [-1.0]]))
    inp = rec.encode(ep, cfg)[:, 0]
    assert inp.shape == (2, rec.n_channels(cfg)) == (2, 3 + 3 + 1)
    g = math.exp(-0.5)  # one width (the spacing of the centres) away from a centre
    e2 = math.exp(-2.0)  # two widths away
    want = 0.5 * torch.tensor(
        [
            [g, 1.0, g, 0.0, 0.0, 0.0, 1.0],  # x = 0 on centres -1, 0, 1; no label yet; constant
            [e2, g, 1.0, e2, g, 1.0, 1.0],  # x = 1; previous target y_1 = 2 on centres -2, 0, 2
        ]
    )
    assert torch.allclose(inp, want)
    net = rec.RegressionLSNN(cfg, "lsnn", torch.Generator().manual_seed(0))
    assert net.rsnn.n_in == rec.n_channels(cfg)


def test_episodes_follow_the_config_family():
    """The recipe draws its functions from function_family with the config's law (centred too) and the
    (seed, role, iteration, rank) stream; the quick setting's gaps outlast the membrane time constant
    (the membrane forgets) but not the adaptation's (an ALIF threshold keeps >= e^-0.5 of what it held
    across one gap), the regime where adaptive neurons should help."""
    from neuromorph.tasks.function_family import sample_episodes

    cfg = rec.Config(n_inputs=1, n_examples=5, centred=True, out_scale=5.0, offset_scale=0.0, seed=7)
    ep = rec._episodes(cfg, 3, 11, 0, 6, "cpu")
    want = sample_episodes(
        6, 5, np.random.default_rng([7, 3, 11, 0]), n_inputs=1, out_scale=5.0, offset_scale=0.0, centred=True
    )
    assert torch.equal(ep.x, want.x) and torch.equal(ep.y, want.y)
    q = rec.quick(rec.Config())
    assert q.gap_ms >= 4 * q.tau_mem and q.gap_ms <= q.tau_adapt / 2


def _check_outputs(out: Path) -> None:
    """results.json keys, plots, report and metrics of a finished tiny run."""
    r = json.loads((out / "results.json").read_text())
    for key in ("lsnn_mse_by_shots", "lif_mse_by_shots", "mean_predictor_mse_by_shots"):
        assert len(r[key]) == 3 and all(v >= 0 for v in r[key]), key  # after 1, 2, 3 examples
    for key in ("lsnn_mse_0_shots", "lif_mse_0_shots", "lsnn_final_mse", "lif_final_mse", "claim_holds"):
        assert key in r
    assert r["iterations"] == 6 and r["test_functions"] == 4 and r["seconds"] > 0
    # the mean of per-function differences over the same functions is the difference of the means
    assert r["paired_final_difference"] == pytest.approx(r["lsnn_final_mse"] - r["lif_final_mse"], abs=1e-6)
    assert r["paired_final_se"] >= 0
    below = r["paired_final_difference"] + 2 * r["paired_final_se"] < 0
    assert r["lsnn_below_lif"] == below and r["claim_holds"] == (r["lsnn_error_falls"] and below)
    names = ("meta_training_curve.png", "mse_by_shots.png", "final_mse.png", "raster.png", "report.html")
    for name in names:
        assert (out / name).stat().st_size > 0, name
    assert [m["step"] for m in _metrics(out)] == list(range(1, 13))  # 6 LSNN + 6 LIF iterations
    lsnn, lif = load_file(str(out / "lsnn.safetensors")), load_file(str(out / "lif.safetensors"))
    assert (lsnn["rsnn.beta"] > 0).sum() == 3 and (lif["rsnn.beta"] == 0).all()  # same size, LIF only


@pytest.mark.slow
def test_seed_fixes_every_draw(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for d, seed in ((a, "3"), (b, "3"), (c, "4")):
        args = [*TINY, "--set", "variants=[lsnn]", "--set", "iterations=3", "--seed", seed]
        assert _run([*args, "--out", str(d)]) == 0
    assert _metrics(a) == _metrics(b) and _metrics(a) != _metrics(c)


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
        m.setattr(runs, "graceful_stop", lambda: contextlib.nullcontext(_StopAfter(8)))  # in the LIF variant
        assert _run([*args, "--out", str(stopped)]) == 130
    assert not (stopped / "results.json").exists()
    assert main(["run", "--resume", str(stopped), "--no-progress"]) == 0
    for name in ("lsnn.safetensors", "lif.safetensors"):
        ta, tb = load_file(str(ref / name)), load_file(str(stopped / name))
        assert all(torch.equal(ta[k], tb[k]) for k in ta), name
    assert _metrics(ref) == _metrics(stopped)
    r1, r2 = (json.loads((d / "results.json").read_text()) for d in (ref, stopped))
    assert (
        r1["lsnn_mse_by_shots"] == r2["lsnn_mse_by_shots"]
        and r1["lif_mse_by_shots"] == r2["lif_mse_by_shots"]
    )
    # the LSNN finished before the stop: its per-function errors come from its saved weights
    assert (r1["paired_final_difference"], r1["paired_final_se"]) == (
        r2["paired_final_difference"],
        r2["paired_final_se"],
    )


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    args = [*TINY, "--set", "iterations=40", "--set", "checkpoint_every=1", "--seed", "5"]
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    assert _run([*args, "--out", str(ref)]) == 0
    cmd = [sys.executable, "-m", "neuromorph.cli", "run", "l2l-regression", "--quick", "--no-progress", *args]
    proc = subprocess.Popen(
        [*cmd, "--out", str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:
            if json.loads((killed / "checkpoint.json").read_text())["step"] >= 30:  # inside variant 1 or 2
                break
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "results.json").exists()
    assert main(["run", "--resume", str(killed), "--no-progress"]) == 0
    for name in ("lsnn.safetensors", "lif.safetensors"):
        ta, tb = load_file(str(ref / name)), load_file(str(killed / name))
        assert all(torch.equal(ta[k], tb[k]) for k in ta), name
    assert _metrics(ref) == _metrics(killed)
    r1, r2 = (json.loads((d / "results.json").read_text()) for d in (ref, killed))
    assert (
        r1["lsnn_mse_by_shots"] == r2["lsnn_mse_by_shots"]
        and r1["lif_mse_by_shots"] == r2["lif_mse_by_shots"]
    )


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    out = tmp_path / "run"
    args = [*TINY, "--set", "iterations=100000", "--set", "checkpoint_every=100000"]
    cmd = [sys.executable, "-m", "neuromorph.cli", "run", "l2l-regression", "--quick", "--no-progress", *args]
    proc = subprocess.Popen(
        [*cmd, "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 60
    while time.time() < deadline and not (out / "metrics.jsonl").exists():
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "--resume" in err
    assert json.loads((out / "checkpoint.json").read_text())["step"] >= 1


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--set", "n_examples=1"], "n_examples must be >= 2"),
        (["--set", "read_ms=30"], "read_ms must be <= example_ms"),
        (["--set", "gap_ms=-1"], "gap_ms must be >= 0"),
        (["--set", "variants=[lsnn,gru]"], "variants"),
        (["--set", "n_lif=0", "--set", "n_alif=0"], "n_lif + n_alif"),
        (["--set", "input_scale=0"], "input_scale must be > 0"),
        (["--set", "tau_mem=-1"], "tau_mem"),
        (["--set", "lr_decay=1.5"], "lr_decay"),
        (["--set", "lif_lr=-0.1"], "lif_lr must be >= 0"),
        (["--set", "impl=fast"], "impl"),
        (["--set", "code=spikes"], "code must be one of"),
        (["--set", "n_pop=1"], "n_pop must be >= 2"),
    ],
)
def test_bad_input_is_a_clear_error(args, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "l2l-regression", *args]) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_each_network_at_its_own_rate():
    cfg = replace(rec.Config(), lr=1e-2, lif_lr=3e-3, lr_decay=0.5, lr_decay_every=10)
    assert rec._lr(cfg, 0, "lsnn") == 1e-2 and rec._lr(cfg, 0, "lif") == 3e-3
    assert rec._lr(cfg, 25, "lif") == pytest.approx(3e-3 / 4)
    same = replace(cfg, lif_lr=0.0)  # 0 = the shared rate
    assert rec._lr(same, 12, "lif") == rec._lr(same, 12, "lsnn") == pytest.approx(5e-3)


def test_paired_difference_by_hand():
    ctx = SimpleNamespace(dist=DistInfo(0, 1, 0, True, torch.device("cpu")))
    finals = {"lsnn": torch.tensor([0.1, 0.2, 0.3, 0.4]), "lif": torch.tensor([0.2, 0.2, 0.5, 0.4])}
    diff, se = rec._paired(finals, ctx)  # d = -0.1, 0, -0.2, 0: mean -0.075, sample sd 0.0957
    assert diff == pytest.approx(-0.075)
    assert se == pytest.approx(math.sqrt(((0.025**2 + 0.075**2 + 0.125**2 + 0.075**2) / 3) / 4))


def test_listed():
    assert "l2l-regression" in rec.NAME and np.isfinite(rec.Config().lr)
    assert main(["list"]) == 0


@pytest.mark.slow
def test_trains_under_torchrun_ddp(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "neuromorph.cli", "run", "l2l-regression", "--quick", "--no-progress", *TINY,
           "--out", str(out)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads((out / "results.json").read_text())
    assert r["processes"] == 2 and len(r["lsnn_mse_by_shots"]) == 3
