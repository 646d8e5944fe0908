import json

from neuromorph.cli import main

TINY = ["--set", "n_lif=4", "--set", "n_alif=4", "--set", "iterations=3", "--set", "batch_size=4",
        "--set", "test_size=8", "--set", "eval_every=2", "--set", "n_delay=2"]  # fmt: skip


def test_quick_smnist_writes_test_accuracy(tmp_path):
    out = tmp_path / "run"
    assert main(["run", "smnist", "--quick", "--no-progress", *TINY, "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["iterations"] == 3 and 0.0 <= results["test_accuracy"] <= 1.0
    assert results["test_images"] == 8
    for name in ("learning_curve.png", "raster.png", "report.html"):
        assert (out / name).exists()


def test_default_smnist_is_the_paper_configuration():
    from neuromorph.recipes import smnist

    cfg = smnist.Config()
    assert (cfg.n_lif, cfg.n_alif, cfg.iterations, cfg.batch_size) == (120, 100, 36000, 256)
    assert (cfg.tau_adapt, cfg.beta, cfg.n_refractory, cfg.n_delay) == (700.0, 1.8, 5, 10)


def test_missing_data_root_is_a_clear_error(tmp_path, capsys):
    args = ["run", "smnist", "--quick", "--no-progress", *TINY, "--set", f"data.root={tmp_path / 'nomnist'}"]
    assert main([*args, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "nomnist" in err and "images-idx3-ubyte" in err
    assert not (tmp_path / "run").exists()  # nothing written


def test_learning_eprop_trains_smnist(tmp_path, capsys):
    out = tmp_path / "run"
    args = [*TINY, "--set", "learning=eprop", "--set", "n_delay=1"]
    assert main(["run", "smnist", "--quick", "--no-progress", *args, "--out", str(out)]) == 0
    r = json.loads((out / "results.json").read_text())
    assert r["learning"] == "eprop" and 0.0 <= r["test_accuracy"] <= 1.0
    assert main(["run", "smnist", "--quick", "--no-progress", *TINY, "--set", "learning=eprop"]) == 2
    assert "n_delay=1" in capsys.readouterr().err
