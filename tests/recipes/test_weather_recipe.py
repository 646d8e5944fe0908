"""WeatherDiff recipe through the real CLI on a tiny config (the --quick numbers: docs/weather.md)."""

import contextlib
import json
import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file

import neuromorph.runs
from neuromorph.cli import main

TINY_WEATHER = [
    "--set", "model.patch=16", "--set", "model.channels=8", "--set", "model.channel_mult=1,2",
    "--set", "model.layers_per_block=1", "--set", "model.attention_resolutions=[]",
    "--set", "model.norm_groups=4", "--set", "iterations=6", "--set", "batch_images=2",
    "--set", "patch_n=2", "--set", "checkpoint_every=2", "--set", "log_every=1",
    "--set", "data.kinds=rain,snow", "--set", "data.train_crop=32", "--set", "data.crops_per_image=1",
    "--set", "data.short_side=64", "--set", "data.test_crop=24", "--set", "data.test_limit=3",
    "--set", "steps=2", "--set", "stride=8", "--set", "strides=16,8", "--set", "dpm_steps=2",
    "--set", "panels=2",
]  # fmt: skip


def _run(args):
    return main(["run", "weather", "--quick", "--no-progress", *TINY_WEATHER, *args])


def _metrics(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k != "time"} for x in lines]


class _StopAfter:
    """A stop flag that turns on after it has been read ``n`` times (the recipe reads it once per
    training iteration and per restored batch): a deterministic stand-in for SIGTERM."""

    def __init__(self, n):
        self.n, self.reads, self.signal = n, 0, None

    @property
    def requested(self):
        self.reads += 1
        return self.reads > self.n

    def __bool__(self):
        return self.requested


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("weather") / "run"
    assert _run(["--out", str(out)]) == 0
    return out


def test_quick_writes_results_panels_and_report(finished_run):
    out = finished_run
    results = json.loads((out / "results.json").read_text())
    for key in ("psnr_input", "psnr_restored", "ssim_input", "ssim_restored", "psnr_by_stride",
                "seam_score_by_stride", "seam_control_by_stride", "psnr_dpm2", "claim_gain_2db",
                "claim_overlap_at_least_as_good", "claim_no_seams", "seams_detected_at_r_equal_p", "by_kind",
                "claim_overlap_lower_seam_score",
                "cpu_seconds"):  # fmt: skip
        assert key in results, key
    assert set(results["psnr_by_stride"]) == {"16", "8"} == set(results["seam_score_by_stride"])
    assert results["test_images"] == 3 and results["iterations"] == 6
    assert 0 < results["psnr_input"] < 60 and -1 <= results["ssim_restored"] <= 1
    assert results["psnr_restored"] == results["psnr_by_stride"]["8"]
    # --quick blends with the Hann window and also reports the paper's plain mean at the main stride;
    # the seam scores are taken against restorations without patches as well (content cancels)
    assert results["blend"] == "hann"
    assert results["seam_reference"] == "whole-image restoration"
    for key in ("seam_whole_by_stride", "seam_whole_control_by_stride", "seam_whole_excess_by_stride"):
        assert set(results[key]) == {"16", "8"}, key
    assert {"psnr", "seam_whole", "seam_whole_control"} <= set(results["uniform_blend"])
    assert results["uniform_blend"]["psnr"] != results["psnr_restored"]
    for name in ("loss.png", "psnr_by_stride.png", "seam_score.png", "panels.png", "report.html",
                 "model_ema.safetensors"):  # fmt: skip
        assert (out / name).stat().st_size > 0, name
    assert len(list((out / "restored").glob("*.png"))) == 3
    assert (out / "report.html").read_text().count("data:image/png;base64") >= 4
    assert [m["step"] for m in _metrics(out)] == list(range(1, 7))


@pytest.mark.slow  # the resume tests below already compare two seeded runs number for number
def test_seed_fixes_every_number(tmp_path, finished_run):
    again = tmp_path / "again"
    assert _run(["--out", str(again)]) == 0
    a, b = (
        load_file(str(finished_run / "model_ema.safetensors")),
        load_file(str(again / "model_ema.safetensors")),
    )
    assert all((a[k] == b[k]).all() for k in a)
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (finished_run, again))
    assert ra["psnr_by_stride"] == rb["psnr_by_stride"] and ra["ssim_restored"] == rb["ssim_restored"]


@pytest.mark.parametrize("stop_after", [3, 8])  # during training; during restoration of the test set
def test_stop_then_resume_equals_uninterrupted(tmp_path, monkeypatch, finished_run, stop_after):
    out = tmp_path / "stopped"

    @contextlib.contextmanager
    def stopping():
        yield _StopAfter(stop_after)

    with monkeypatch.context() as m:
        m.setattr(neuromorph.runs, "graceful_stop", stopping)
        assert _run(["--out", str(out)]) == 130
    assert not (out / "results.json").exists()
    assert main(["run", "--resume", str(out), "--no-progress"]) == 0
    a, b = (
        load_file(str(finished_run / "model_ema.safetensors")),
        load_file(str(out / "model_ema.safetensors")),
    )
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert _metrics(finished_run) == _metrics(out)
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (finished_run, out))
    for key in ("psnr_input", "psnr_restored", "ssim_restored", "psnr_by_stride", "seam_score_by_stride"):
        assert ra[key] == rb[key], key


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--set", "strides=16,17"], "strides"),
        (["--set", "stride=0"], "stride"),
        (["--set", "model.channel_mult=1,x"], "channel_mult"),
        (["--set", "model.patch=17"], "patch"),
        (["--set", "data.kinds=hail"], "data.kinds"),
        (["--set", "sampler=euler"], "sampler"),
        (["--set", "blend=gauss"], "blend"),
        (["--set", "data.dataset=snow100k"], "data.root"),
        (["--set", "data.dataset=snow100k", "--set", "data.root=/nonexistent"], "does not exist"),
        (["--set", "ema_decay=1.0"], "ema_decay"),
        (["--set", "data.test_crop=5"], "test_crop"),
        (["--set", "model.skip=both"], "model.skip"),
        (["--set", "lr_schedule=linear"], "lr_schedule"),
    ],
)
def test_bad_config_is_a_clear_error_and_writes_nothing(args, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _run(args) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_trains_under_torchrun_ddp(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "neuromorph.cli", "run", "weather", "--quick", "--no-progress", *TINY_WEATHER,
           "--out", str(out)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["processes"] == 2 and results["test_images"] == 3
    assert len(list((out / "restored").glob("*.png"))) == 3
