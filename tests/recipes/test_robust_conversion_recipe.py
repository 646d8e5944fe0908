"""robust-conversion recipe through the real CLI on a tiny config (the --quick numbers: docs/robustness.md):
results.json keys for every model, ensemble <= every single attack, report, resume after SIGKILL,
bad input."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from neuromorph import runs
from neuromorph.cli import main
from neuromorph.recipes.robust_conversion import SCALE_GRID, _at_most
from neuromorph.runs import StopFlag

MODELS = ("ann_robust", "ann_plain", "snn_converted_plain", "snn_converted_robust", "snn_finetuned")
TINY = [
    "--set", "data.train_size=128", "--set", "data.test_size=16", "--set", "model.features=[4,A,4,A]",
    "--set", "model.hidden=[]", "--set", "ann.epochs=1", "--set", "ann.plain_epochs=1",
    "--set", "ann.steps=1", "--set", "finetune.epochs=1", "--set", "conversion.calibration_batches=1",
    "--set", "conversion.calibration_steps=1", "--set", "conversion.steps=2",
    "--set", "conversion.check_steps=4",
    "--set", "conversion.check_test_size=16", "--set", "eval.batch_size=8", "--set", "eval.pgd_steps=1",
    "--set", "eval.apgd_steps=2", "--set", "eval.square_queries=3",
    "--set", "eval.gradients=[bptt-pcw-1,ann-twin]", "--set", "eval.apgd_gradients=[bptr]",
]  # fmt: skip


def _run(args) -> int:
    return main(["run", "robust-conversion", "--quick", "--no-progress", *TINY, *args])


def _metrics(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k != "time"} for x in lines]


def _model_numbers(results: dict) -> dict:
    return {m: {k: results[m][k] for k in ("clean", "attacks", "ensemble")} for m in MODELS}


def test_tiny_run_writes_every_model_table_and_report(tmp_path):
    out = tmp_path / "run"
    assert _run(["--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    for model in MODELS:
        entry = results[model]
        assert {"clean", "attacks", "ensemble"} <= set(entry), model
        assert 0.0 <= entry["ensemble"] <= entry["clean"] <= 1.0
        assert entry["n"] == 16
        # the test: the per-sample worst case is at most the weakest single attack, for every model
        assert entry["ensemble"] <= min(entry["attacks"].values()), model
    ann_attacks = set(results["ann_robust"]["attacks"])
    assert ann_attacks == {"FGSM", "RFGSM", "PGD", "APGD-CE", "APGD-DLR", "Square"}
    snn_attacks = set(results["snn_finetuned"]["attacks"])
    assert {"PGD[bptt-pcw-1]", "PGD[ann-twin]", "FGSM[ann-twin]", "APGD-CE[bptr]", "Square"} <= snn_attacks
    assert not any(a.startswith("APGD-CE[bptt") for a in snn_attacks)  # APGD runs on apgd_gradients only
    assert set(results["snn_finetuned"]["thresholds"]) and set(results["snn_finetuned"]["firing_rates"])
    claims = {"finetuned_within_3pt_of_robust_ann", "finetuned_20pt_above_converted_plain",
              "ensemble_le_min_single_attack", "conversion_T4_within_1pt"}  # fmt: skip
    assert claims <= set(results["claims"])
    assert all(results["claims"]["ensemble_le_min_single_attack"].values())
    assert results["conversion_check"]["T"] == 4 and results["cpu_seconds"] > 0
    assert results["conversion_scale"]["snn_converted_robust"] == {"scale": 0.3}  # --quick: the paper's
    for name in ("robustness_table.png", "ensemble_robust_accuracy.png", "finetuned_snn_per_attack.png",
                 "training_loss.png", "report.html", "config.yaml"):  # fmt: skip
        assert (out / name).stat().st_size > 0, name
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64") >= 4 and "snn_finetuned" in html


def test_scale_search_keeps_the_most_accurate_conversion(tmp_path):
    """Also runs the finetuning with examples built through two gradient paths in turn."""
    out = tmp_path / "run"
    grid = "conversion.scale_search=[" + ",".join(SCALE_GRID) + "]"
    paths = "finetune.attack_gradients=[bptt-pcw-1,ann-twin]"
    assert _run(["--set", grid, "--set", paths, "--set", "eval.attacks=[fgsm]", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    for name in ("snn_converted_plain", "snn_converted_robust"):
        chosen = results["conversion_scale"][name]
        by_scale = chosen["accuracy_by_scale"]
        assert list(by_scale) == list(SCALE_GRID) and chosen["selection_images"] == 128 - 64
        first_best = next(k for k, v in by_scale.items() if v == max(by_scale.values()))
        assert chosen["scale"] == float(first_best)


def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    args = ["--set", "checkpoint_every=1", "--set", "data.train_size=256", "--seed", "3"]
    # both runs in a subprocess with one thread: the float reductions (and so the logged losses) of the
    # uninterrupted run must not depend on the test process's thread count
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    base = [sys.executable, "-m", "neuromorph.cli", "run", "robust-conversion", "--quick", "--no-progress",
            *TINY, *args]  # fmt: skip
    ref = tmp_path / "ref"
    done = subprocess.run([*base, "--out", str(ref)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]

    killed = tmp_path / "killed"
    cmd = [*base, "--out", str(killed)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    ckpt = killed / "checkpoint.json"
    deadline = time.time() + 180
    while time.time() < deadline:  # kill inside the robust ANN's training (step 4 + 2 of 4 + 4 + 4 ...)
        if ckpt.exists():
            try:
                if json.loads(ckpt.read_text())["step"] >= 6:
                    break
            except (json.JSONDecodeError, KeyError):
                pass
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "results.json").exists()
    resumed = subprocess.run(
        [sys.executable, "-m", "neuromorph.cli", "run", "--resume", str(killed), "--no-progress"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    r1 = json.loads((ref / "results.json").read_text())
    r2 = json.loads((killed / "results.json").read_text())
    assert _model_numbers(r1) == _model_numbers(r2)
    assert r1["conversion_check"] == r2["conversion_check"]
    assert _metrics(ref) == _metrics(killed)


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


def test_weight_average_is_evaluated_and_survives_a_stop_in_the_finetuning(tmp_path, monkeypatch):
    """finetune.ema_decay: the stop lands in the finetuning (2 checks per ANN stage's 2 iterations plus
    one after each stage: 7 before it), the checkpoint holds the average, and the resumed run equals
    the uninterrupted one; the evaluated SNN is the average, not the last iterate."""
    base = ["--set", "finetune.epochs=2", "--set", "checkpoint_every=1", "--set", "eval.attacks=[fgsm]"]
    args = [*base, "--set", "finetune.ema_decay=0.5"]
    ref, stopped = tmp_path / "ref", tmp_path / "stopped"
    assert _run([*args, "--out", str(ref)]) == 0
    with monkeypatch.context() as m:
        m.setattr(runs, "graceful_stop", lambda: contextlib.nullcontext(_StopAfter(8)))
        assert _run([*args, "--out", str(stopped)]) == 130
    meta = json.loads((stopped / "checkpoint.json").read_text())["meta"]
    assert meta["stage"] == "snn_finetuned" and meta["iteration"] == 2
    saved = load_file(str(next(stopped.glob("checkpoint-*.safetensors"))))
    assert any(k.startswith("ema.") for k in saved)
    assert main(["run", "--resume", str(stopped), "--no-progress"]) == 0
    r1, r2 = (json.loads((d / "results.json").read_text()) for d in (ref, stopped))
    assert _model_numbers(r1) == _model_numbers(r2) and r1["finetune"] == r2["finetune"]
    assert _metrics(ref) == _metrics(stopped)
    assert r1["finetune"]["ema_decay"] == 0.5 and 0 <= r1["finetune"]["last_iterate_clean"] <= 1
    # the average is what was evaluated: the thresholds differ from those of the last iterate
    final = load_file(str(next(ref.glob("checkpoint-*.safetensors"))))
    no_avg = tmp_path / "no_avg"
    assert _run([*base, "--set", "finetune.ema_decay=0", "--out", str(no_avg)]) == 0
    last = load_file(str(next(no_avg.glob("checkpoint-*.safetensors"))))
    assert not all((final[k] == last[k]).all() for k in final if k.startswith("snn_finetuned."))
    assert all((final[k] == last[k]).all() for k in final if k.startswith("snn_converted_robust."))


def test_claims_compare_image_counts_not_float_noise():
    """15 images of 500 below is exactly 3 points (0.030000000000000027 in floats): within; 16 is not."""
    assert 436 / 500 - 421 / 500 > 0.03  # the float noise the comparison must absorb
    assert _at_most(abs(421 / 500 - 436 / 500), 0.03)
    assert not _at_most(abs(420 / 500 - 436 / 500), 0.03)
    assert _at_most(0.20, 0.95 - 0.75) and not _at_most(0.20, 0.948 - 0.75)


@pytest.mark.parametrize(
    "sets, needle",
    [
        (["eval.eps=-0.1"], "eval.eps must be >= 0"),
        (["ann.eps=-1"], "ann.eps must be >= 0"),
        (["conversion.steps=0"], "conversion.steps (T)"),
        (["conversion.percentile=0"], "percentile must be a number in (0, 100]"),
        (["conversion.percentile=100.5"], "percentile"),
        (["conversion.reset=zero"], "conversion.reset"),
        (["data.name=imagenet"], "data.name must be one of"),
        (["data.name=cifar10"], "needs data.root"),
        (["data.name=svhn", "data.root=/nonexistent"], "not a directory"),
        (["eval.gradients=[bptt-foo]"], "eval.gradients"),
        (["eval.attacks=[pgd,cw]"], "eval.attacks"),
        (["model.features=[8,M]"], "model.features"),
        (["finetune.surrogate=magic"], "finetune.surrogate"),
        (["finetune.attack_gradients=[bptt-foo]"], "finetune.attack_gradients"),
        (["conversion.scale_search=[0.5,-1]"], "conversion.scale_search entries must be numbers > 0"),
        (["conversion.scale_search=[abc]"], "conversion.scale_search"),
        (["conversion.scale_search_images=0"], "conversion.scale_search_images"),
        (["ann.method=fgsm"], "ann.method"),
        (["finetune.ema_decay=1"], "finetune.ema_decay must be in [0, 1)"),
        (["finetune.ema_decay=-0.1"], "finetune.ema_decay"),
    ],
)
def test_bad_input_is_a_clear_error(sets, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["run", "robust-conversion", "--quick"]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # nothing written


@pytest.mark.slow
def test_trains_under_torchrun_ddp(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "neuromorph.cli", "run", "robust-conversion", "--quick", "--no-progress", *TINY,
           "--out", str(out)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["processes"] == 2
    for model in MODELS:
        entry = results[model]
        assert entry["n"] == 16 and entry["ensemble"] <= min(entry["attacks"].values()), model
