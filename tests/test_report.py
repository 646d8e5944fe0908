"""Tests for neuromorph.report: PNG plots and the self-contained HTML report."""

from __future__ import annotations

import base64
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from neuromorph.report import build_report, plot_bars, plot_curves, plot_raster
from neuromorph.runs import Run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def is_png(path) -> bool:
    return path.read_bytes().startswith(PNG_MAGIC)


def no_tmp(directory) -> bool:
    return not [p for p in directory.iterdir() if p.name.endswith(".tmp")]


def test_plots_do_not_use_pyplot(tmp_path):
    """No global pyplot state or GUI backend: plotting works headless and never imports pyplot.
    Checked in a fresh interpreter, since another test in this process may have imported pyplot."""
    code = (
        "import sys, pathlib\n"
        "from neuromorph.report import plot_bars, build_report\n"
        "from neuromorph.runs import Run\n"
        f"out = pathlib.Path({str(tmp_path)!r})\n"
        "plot_bars({'a': 1.0}, out / 'b.png', ylabel='y')\n"
        "build_report(Run.create('toy', {}, out=out / 'r').dir)\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot was imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert is_png(tmp_path / "b.png")


def test_plot_curves(tmp_path):
    metrics = [{"step": i, "loss": 1.0 / (i + 1), "acc": i / 10} for i in range(10)]
    metrics.append({"step": 10, "loss": None})  # a NaN logged as null
    out = plot_curves(
        metrics, ["loss", "acc", "missing"], tmp_path / "curves.png", title="<b>t</b>", logy=True
    )
    assert out == tmp_path / "curves.png" and is_png(out)
    empty = plot_curves([], ["loss"], tmp_path / "empty.png")
    assert is_png(empty)
    assert no_tmp(tmp_path)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (([{"step": 0}], "loss", "x.png"), "keys"),
        (([1, 2], ["loss"], "x.png"), "metrics"),
        (([], ["loss"], "x.jpg"), r"\.png"),
    ],
)
def test_plot_curves_validates(tmp_path, args, match):
    metrics, keys, name = args
    with pytest.raises(ValueError, match=match):
        plot_curves(metrics, keys, tmp_path / name)


def test_plot_raster_all_panels(tmp_path):
    g = torch.Generator().manual_seed(0)
    spikes = (torch.rand(200, 30, generator=g) < 0.05).float()
    inputs = np.random.default_rng(0).random((200, 20)) < 0.1
    thresholds = 0.01 + torch.cumsum(torch.rand(200, 3, generator=g) * 0.01, 0)
    out = plot_raster(
        spikes,
        tmp_path / "raster.png",
        thresholds=thresholds,
        threshold_labels=["a", "b", "c"],
        input_spikes=inputs,
        dt=1.0,
        title="raster",
    )
    assert is_png(out)
    assert is_png(plot_raster(np.zeros((5, 3)), tmp_path / "plain.png", dt=0.5))
    assert no_tmp(tmp_path)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"spikes": np.zeros(5)}, "spikes must have shape"),
        ({"spikes": np.full((5, 2), np.nan)}, "NaN"),
        ({"spikes": np.zeros((0, 2))}, "at least one"),
        ({"dt": 0.0}, "dt"),
        ({"thresholds": np.zeros((4, 2))}, "thresholds must have T=5"),
        ({"input_spikes": np.zeros((6, 2))}, "input_spikes must have T=5"),
        ({"thresholds": np.zeros((5, 2)), "threshold_labels": ["a"]}, "threshold_labels"),
        ({"threshold_labels": ["a"]}, "threshold_labels"),
    ],
)
def test_plot_raster_validates(tmp_path, kwargs, match):
    kwargs = {"spikes": np.zeros((5, 3)), **kwargs}
    spikes = kwargs.pop("spikes")
    with pytest.raises(ValueError, match=match):
        plot_raster(spikes, tmp_path / "r.png", **kwargs)
    assert not (tmp_path / "r.png").exists()


def test_plot_bars(tmp_path):
    out = plot_bars(
        {"LSNN": 0.05, "LIF": 0.5, "broken": float("nan")}, tmp_path / "b.png", ylabel="error", hline=0.5
    )
    assert is_png(out)
    with pytest.raises(ValueError, match="values"):
        plot_bars({}, tmp_path / "c.png", ylabel="e")
    with pytest.raises(ValueError, match=r"values\['a'\]"):
        plot_bars({"a": "x"}, tmp_path / "c.png", ylabel="e")
    with pytest.raises(ValueError, match="hline"):
        plot_bars({"a": 1.0}, tmp_path / "c.png", ylabel="e", hline=float("inf"))


def images(html_text: str) -> list[bytes]:
    return [
        base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html_text)
    ]


def assert_self_contained(html_text: str) -> None:
    assert html_text.startswith("<!DOCTYPE html>")
    assert "http://" not in html_text and "https://" not in html_text
    assert "<script" not in html_text and "<link" not in html_text
    assert "@import" not in html_text and "url(" not in html_text


def test_report_partial_run(tmp_path):
    run = Run.create("store-recall", {"seed": 3, "note": "<script>alert(1)</script>"}, out=tmp_path / "r")
    out = build_report(run.dir)
    assert out == run.dir / "report.html"
    text = out.read_text(encoding="utf-8")
    assert_self_contained(text)
    assert "store-recall" in text and "No results yet" in text and "No metrics logged yet" in text
    assert "<script>alert(1)</script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert images(text) == []
    assert no_tmp(run.dir)


def test_report_full_run(tmp_path):
    run = Run.create(
        "store-recall", {"seed": 3, "model": {"n_alif": 40, "tau_a": 1200.0}}, out=tmp_path / "r"
    )
    for step in range(25):
        run.log(step, loss=1.0 / (step + 1), error=0.5 - step / 100)
    run.save_checkpoint({"w": torch.zeros(2)}, {"step": 24})
    run.close()
    plot_curves(run.metrics(), ["loss", "error"], run.path("curves.png"))
    plot_bars({"LSNN": 0.02, "LIF": 0.48}, run.path("bars.png"), ylabel="recall error")
    run.write_results({"recall_error": 0.0213, "baseline": {"lif_error": 0.48}, "diverged": None})
    text = build_report(run.dir).read_text(encoding="utf-8")
    assert_self_contained(text)
    pics = images(text)
    assert len(pics) == 2 and all(p.startswith(PNG_MAGIC) for p in pics)
    assert {p for p in pics} == {run.path("curves.png").read_bytes(), run.path("bars.png").read_bytes()}
    assert "recall_error" in text and "0.0213" in text and "baseline.lif_error" in text
    assert "model.tau_a" in text and "1200" in text
    assert "last checkpoint at step 24" in text
    # the last-metrics table holds the last 10 steps only
    assert '<td class="num">24</td>' in text and '<td class="num">14</td>' not in text
    # rebuilding overwrites (report.html is not embedded in itself; it is not a png)
    assert build_report(run.dir).read_text(encoding="utf-8").count("data:image/png") == 2


def test_report_errors(tmp_path):
    with pytest.raises(ValueError, match="run_dir"):
        build_report(tmp_path / "missing")
    with pytest.raises(ValueError, match="config.yaml"):
        build_report(tmp_path)
    run = Run.create("toy", {}, out=tmp_path / "r")
    run.path("results.json").write_text("{broken")
    with pytest.raises(ValueError, match="results.json"):
        build_report(run.dir)
    assert not run.path("report.html").exists()


def test_report_ignores_damaged_checkpoint_record(tmp_path):
    run = Run.create("toy", {}, out=tmp_path / "r")
    run.path("checkpoint.json").write_text("{torn")
    text = build_report(run.dir).read_text(encoding="utf-8")
    assert "last checkpoint" not in text and "toy" in text
