"""`neuromorph export RUN -o model.nir` and `neuromorph run smnist --set model.from_nir=PATH` on tiny runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import neuromorph.nir as nmnir
from neuromorph.cli import main
from neuromorph.recipes import smnist
from neuromorph.recipes._common import config_from_dict
from neuromorph.runs import Run

TINY = ["--set", "n_lif=6", "--set", "iterations=2", "--set", "batch_size=4", "--set", "test_size=8",
        "--set", "eval_every=2", "--set", "n_delay=2"]  # fmt: skip


@pytest.fixture(scope="module")
def lif_run(tmp_path_factory):
    """A finished smnist run with LIF neurons only (exportable)."""
    out = tmp_path_factory.mktemp("export") / "lif-run"
    assert (
        main(["run", "smnist", "--quick", "--no-progress", *TINY, "--set", "n_alif=0", "--out", str(out)])
        == 0
    )
    return out


def test_export_writes_the_runs_network(lif_run, tmp_path, capsys):
    path = tmp_path / "model.nir"
    assert main(["export", str(lif_run), "-o", str(path)]) == 0
    captured = capsys.readouterr()
    assert str(path) in captured.out
    assert "note: layer 'rsnn': RecurrentSpikingLayer uses the LSNN conventions" in captured.err
    graph = nmnir.read(path)
    assert {"rsnn.lif", "readout.li", "readout.weight"} <= set(graph.nodes)
    run = Run.open(lif_run, is_writer=False)
    model, _ = smnist.export_model(config_from_dict(smnist.Config, run.config), run)
    x = (torch.rand(60, 2, 80, generator=torch.Generator().manual_seed(0)) < 0.2).float()
    with torch.no_grad():
        want, got = model(x)[0], nmnir.load(graph)(x)[0]
    assert torch.equal(got, want)


def test_strict_export_refuses_what_nir_cannot_say(lif_run, tmp_path, capsys):
    path = tmp_path / "strict.nir"
    assert main(["export", str(lif_run), "-o", str(path), "--strict"]) == 2
    assert "layer 'rsnn'" in capsys.readouterr().err
    assert not path.exists()


def test_from_nir_runs_the_exported_network(lif_run, tmp_path):
    """With lr = 0 the imported network is evaluated as it is: the test accuracy of the run it came from."""
    path = tmp_path / "model.nir"
    assert main(["export", str(lif_run), "-o", str(path)]) == 0
    out = tmp_path / "again"
    args = ["run", "smnist", "--quick", "--no-progress", *TINY, "--set", "n_alif=0", "--set", "lr=0"]
    assert main([*args, "--set", f"model.from_nir={path}", "--out", str(out)]) == 0
    first = json.loads((lif_run / "results.json").read_text())
    again = json.loads((out / "results.json").read_text())
    assert again["from_nir"] == str(path)
    assert again["test_accuracy"] == first["test_accuracy"]
    assert main(["export", str(out), "-o", str(tmp_path / "again.nir")]) == 0  # the very same network
    a, b = nmnir.read(path), nmnir.read(tmp_path / "again.nir")
    for key, node in a.nodes.items():
        for field in ("weight", "bias", "tau", "v_threshold", "delay"):
            if hasattr(node, field):
                assert np.array_equal(getattr(b.nodes[key], field), getattr(node, field)), (key, field)


def test_from_nir_with_the_wrong_sizes_fails_before_writing(lif_run, tmp_path, capsys):
    path = tmp_path / "model.nir"
    assert main(["export", str(lif_run), "-o", str(path)]) == 0
    out = tmp_path / "bad"
    args = ["run", "smnist", "--quick", "--no-progress", "--set", "n_lif=9", "--set", "n_alif=0"]
    assert main([*args, "--set", f"model.from_nir={path}", "--out", str(out)]) == 2
    assert "holds 6 LIF neurons; set --set n_lif=6 --set n_alif=0" in capsys.readouterr().err
    assert not out.exists()
    assert main(["run", "smnist", "--quick", "--set", f"model.from_nir={path}", "--out", str(out)]) == 2
    assert "model.from_nir needs n_alif=0" in capsys.readouterr().err


def test_export_of_an_alif_run_names_the_layer(tmp_path, capsys):
    out = tmp_path / "lsnn"
    args = ["run", "smnist", "--quick", "--no-progress", *TINY, "--set", "n_alif=2", "--set", "iterations=1"]
    assert main([*args, "--set", "eval_every=1", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["export", str(out), "-o", str(tmp_path / "m.nir")]) == 2
    err = capsys.readouterr().err
    assert "layer 'rsnn' (RecurrentSpikingLayer) has 2 adaptive (ALIF) neurons" in err
    assert "--set n_alif=0" in err
    assert not (tmp_path / "m.nir").exists()


def test_export_errors(lif_run, tmp_path, capsys, monkeypatch):
    assert main(["export", str(tmp_path / "nothing"), "-o", str(tmp_path / "m.nir")]) == 2
    assert "export" in capsys.readouterr().err
    monkeypatch.delattr(smnist, "export_model")
    assert main(["export", str(lif_run), "-o", str(tmp_path / "m.nir")]) == 2
    assert "recipe 'smnist' has no NIR export" in capsys.readouterr().err


TINY_STORE_RECALL = ["--set", "n_in=8", "--set", "n_lif=3", "--set", "n_alif=3", "--set", "n_chars=4",
                     "--set", "char_ms=20", "--set", "batch_size=4", "--set", "iterations=4",
                     "--set", "test_batches=1", "--set", "n_delay=3"]  # fmt: skip


def test_store_recall_exports_its_lif_variant(tmp_path, capsys):
    from neuromorph.recipes import store_recall

    out = tmp_path / "sr"
    assert (
        main(["run", "store-recall", "--quick", "--no-progress", *TINY_STORE_RECALL, "--out", str(out)]) == 0
    )
    assert main(["export", str(out), "-o", str(tmp_path / "m.nir")]) == 0
    graph = nmnir.read(tmp_path / "m.nir")
    model = nmnir.load(graph)
    x = (torch.rand(30, 2, 8, generator=torch.Generator().manual_seed(0)) < 0.3).float()
    run = Run.open(out, is_writer=False)
    net, _ = store_recall.export_model(config_from_dict(store_recall.Config, run.config), run)
    want, _ = net(x)
    got, _ = model(x)
    assert torch.equal(got, want)
    capsys.readouterr()
    assert main(["run", "store-recall", "--quick", "--no-progress", *TINY_STORE_RECALL,
                 "--set", "variants=[lsnn]", "--out", str(tmp_path / "sr2")]) == 0  # fmt: skip
    assert main(["export", str(tmp_path / "sr2"), "-o", str(tmp_path / "m2.nir")]) == 2
    assert "ALIF" in capsys.readouterr().err
