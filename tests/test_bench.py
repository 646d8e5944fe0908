"""Smoke tests of the benchmark harness at tiny sizes: record fields, the gradient check of ``neuromorph``
against ``eager``, peers that are not importable, results file and CLI. No timing assertions; the peers
need not be installed."""

from __future__ import annotations

import json
import sys

import pytest
import torch

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


# -- peers against their reference twins ------------------------------------------------------------------
PEER_CASES = [
    ("a", "snntorch"),
    ("a", "norse"),
    ("a", "spikingjelly"),
    ("b", "snntorch"),
    ("b", "norse"),
    ("c", "snntorch"),
    ("c", "norse"),
]
SMALL = 0.1  # big enough that every case spikes (2-5 % of neurons per step), small enough to run in ~0.1 s


def _require(peer: str) -> None:
    why = bench._why_unavailable(peer)
    if why is not None:
        pytest.skip(why)


def _built(case: str, peer: str):
    c = bench.CASES[case].scaled(SMALL)
    x, r = bench._inputs(c, 0)
    work = bench._build(c, peer, 0, x, r)
    z = work.step()
    assert 0 < float(z.mean()) < 0.2  # the case spikes, so spikes and reset take part in the check
    return work, z


@pytest.mark.parametrize(("case", "peer"), PEER_CASES)
def test_peer_agrees_with_its_twin(case, peer):
    _require(peer)
    rec = bench.measure(case, peer, scale=SMALL, repeats=1, warmup=0, memory=False)
    assert rec["grad_ok"] is True
    assert rec["grad_max_abs_err"] is not None
    assert "gradient checked against" in rec["note"] and "spikes differ in 0 entries" in rec["note"]
    assert "FAILED" not in rec["note"]


@pytest.mark.parametrize(("case", "peer"), PEER_CASES)
def test_check_fails_against_a_twin_with_another_threshold(case, peer):
    _require(peer)
    work, z = _built(case, peer)
    assert bench.gradient_check(z, work.grads(), *work.twin())[1] is True
    err, ok, detail = bench.gradient_check(z, work.grads(), *work.twin(threshold=1.1 * bench.THRESHOLD))
    assert ok is False
    assert err > 0 and not detail.startswith("0 entries")  # spikes flip and gradients move


@pytest.mark.parametrize(
    ("peer", "surrogate"),
    [("snntorch", "_ATan"), ("norse", "_SuperSpike"), ("spikingjelly", "Sigmoid")],
)
def test_check_sees_a_wrong_surrogate_with_the_same_spikes(monkeypatch, capsys, peer, surrogate):
    """Twice the peer's pseudo-derivative in the twin: same spikes, gradients off -> grad_ok False,
    visible in the note and on stderr."""
    _require(peer)
    cls = getattr(bench, surrogate)
    right = cls.derivative
    monkeypatch.setattr(cls, "derivative", lambda self, x: 2.0 * right(self, x))
    rec = bench.measure("a", peer, scale=SMALL, repeats=1, warmup=0, memory=False)
    assert rec["grad_ok"] is False
    assert "spikes differ in 0 entries" in rec["note"] and rec["note"].startswith("GRADIENT CHECK FAILED")
    assert "gradient check FAILED" in capsys.readouterr().err


def test_gradient_check_by_hand():
    z = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    g_ref = {"w_in": torch.tensor([[2.0, -4.0]]), "w_rec": torch.tensor([[1.0]])}
    close = {"w_in": torch.tensor([[2.0, -4.0002]]), "w_rec": torch.tensor([[1.0]])}  # 2e-4 <= 1e-4 * 4
    assert bench.gradient_check(z, close, z, g_ref)[:2] == (pytest.approx(2e-4, rel=1e-2), True)
    far = {"w_in": torch.tensor([[2.0, -4.001]]), "w_rec": torch.tensor([[1.0]])}
    assert bench.gradient_check(z, far, z, g_ref)[1] is False
    flipped = z.clone()
    flipped[0, 0] = 1.0
    err, ok, detail = bench.gradient_check(flipped, g_ref, z, g_ref)
    assert (err, ok, detail) == (0.0, False, "1 entries; largest gradient entry 4")
    with pytest.raises(ValueError, match="do not match"):
        bench.gradient_check(z, {"w_in": g_ref["w_in"]}, z, g_ref)
