"""Smoke tests of the benchmark harness at tiny sizes: record fields, the gradient check of ``neuromorph``
against ``eager``, peers that are not importable, results file and CLI. No timing assertions; the peers
need not be installed."""

from __future__ import annotations

import json
import sys

import pytest

from neuromorph import bench
from neuromorph.cli import main

FIELDS = {"case", "framework", "device", "fwd_bwd_ms_median", "peak_mem_mb", "grad_max_abs_err", "note"}
TINY = 0.05


@pytest.mark.parametrize("case", ["a", "b", "c"])
@pytest.mark.parametrize("framework", ["neuromorph", "eager"])
def test_records_and_gradient_check(case, framework):
    rec = bench.measure(case, framework, scale=TINY, repeats=1, warmup=0, memory=False)
    assert FIELDS <= rec.keys()
    assert (rec["case"], rec["framework"], rec["device"]) == (case, framework, "cpu")
    assert rec["fwd_bwd_ms_median"] > 0
    assert rec["peak_mem_mb"] is None  # memory=False
    assert rec["grad_ok"] is True
    assert rec["grad_max_abs_err"] is not None and rec["grad_max_abs_err"] < 1e-4
    assert "spikes differ from eager in 0 entries" in rec["note"]
    assert rec["n"] == bench.CASES[case].scaled(TINY).n
    json.dumps(rec)  # serialisable


@pytest.mark.parametrize("peer", ["snntorch", "norse", "spikingjelly"])
def test_missing_peer_is_skipped_with_a_note(monkeypatch, peer):
    monkeypatch.setitem(sys.modules, bench._PEER_MODULES[peer], None)  # makes the import fail
    rec = bench.measure("a", peer, scale=TINY, repeats=1, warmup=0, memory=False)
    assert FIELDS <= rec.keys()
    assert rec["note"].startswith("skipped:") and "not importable" in rec["note"]
    assert rec["fwd_bwd_ms_median"] is None and rec["grad_max_abs_err"] is None


def test_peak_memory_subprocess():
    case = bench.CASES["b"].scaled(TINY)
    peak = bench._memory_subprocess(case, "eager", seed=0, timeout=60)
    assert peak is None or peak >= 0.0


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="case"):
        bench.measure("d", "eager")
    with pytest.raises(ValueError, match="framework"):
        bench.measure("a", "brian2")
    with pytest.raises(ValueError, match="scale"):
        bench.measure("a", "eager", scale=0)
    with pytest.raises(ValueError, match="repeats"):
        bench.measure("a", "eager", repeats=0)
    with pytest.raises(ValueError, match="framework"):
        bench.run_benchmark(["a"], ["eager", "tf"])


def test_write_results_and_table(tmp_path):
    recs = [
        bench._record(bench.CASES["a"], "eager", fwd_bwd_ms_median=10.0, grad_max_abs_err=0.0, note="x|y"),
        bench._record(bench.CASES["a"], "neuromorph", fwd_bwd_ms_median=5.0, grad_max_abs_err=1e-7),
    ]
    path = bench.write_results(recs, tmp_path / "sub" / "m.json")
    assert json.loads(path.read_text()) == recs
    assert [p.name for p in path.parent.iterdir()] == ["m.json"]  # no temporary left behind
    table = bench.markdown_table(recs)
    assert table.splitlines()[0].startswith("| case | framework |")
    assert "| a | neuromorph | 5.0 | 2.00x |" in table and "x/y" in table
    assert bench.machine_slug().endswith("c")


def test_cli_bench(tmp_path, capsys):
    out = tmp_path / "r.json"
    argv = ["bench", "--case", "a", "--scale", str(TINY), "--repeats", "1", "--warmup", "0", "--no-memory"]
    assert main([*argv, "--frameworks", "neuromorph", "eager", "--json", str(out)]) == 0
    recs = json.loads(out.read_text())
    assert [(r["case"], r["framework"]) for r in recs] == [("a", "neuromorph"), ("a", "eager")]
    assert "| a | eager |" in capsys.readouterr().out
    assert main(["bench", "--case", "x", "--json", str(out)]) == 2
    assert "--case must be one of" in capsys.readouterr().err
