"""Tests for neuromorph.runs: atomic writes, run directories, checkpoints, resume, metrics, graceful stop."""

from __future__ import annotations

import json
import math
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from neuromorph import runs
from neuromorph.runs import (
    Run,
    StopRequested,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    graceful_stop,
    read_metrics,
)

SRC = pathlib.Path(__file__).resolve().parents[1] / "src"


def snapshot(directory: pathlib.Path) -> dict[str, tuple[bytes, int]]:
    """Bytes and mtime of every file below ``directory``."""
    return {
        str(p.relative_to(directory)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def tmp_files(directory: pathlib.Path) -> list[str]:
    return [p.name for p in directory.rglob("*") if p.name.endswith(".tmp")]


def make_run(tmp_path: pathlib.Path, name: str = "run", **config) -> Run:
    return Run.create("toy", {"seed": 1, "model": {"hidden": 4}, **config}, out=tmp_path / name)


def sample_tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 4, generator=g)
    return {
        "w": base,
        "w_t_view": base.t(),  # non-contiguous view sharing storage with "w"
        "half": torch.randn(3, generator=g).half(),
        "bf16": torch.randn(2, 2, generator=g).bfloat16(),
        "ints": torch.arange(5, dtype=torch.int64),
        "mask": torch.tensor([True, False, True]),
        "scalar": torch.tensor(3.5, dtype=torch.float64),
        "grad": torch.ones(2, requires_grad=True) * 2,
    }


# ---- atomic writes ---------------------------------------------------------------------------------


def test_atomic_writes_roundtrip_and_leave_no_temp_files(tmp_path):
    atomic_write_bytes(tmp_path / "a.bin", b"\x00\x01")
    atomic_write_bytes(tmp_path / "a.bin", b"new")
    atomic_write_text(tmp_path / "b.txt", "héllo\n")
    atomic_write_json(tmp_path / "c.json", {"b": 1, "a": [1.5, float("nan"), float("inf")], "t": (1, 2)})
    assert (tmp_path / "a.bin").read_bytes() == b"new"
    assert (tmp_path / "b.txt").read_text(encoding="utf-8") == "héllo\n"
    text = (tmp_path / "c.json").read_text()
    assert json.loads(text) == {"a": [1.5, None, None], "b": 1, "t": [1, 2]}
    assert text.index('"a"') < text.index('"b"')  # sorted keys
    assert "NaN" not in text and "Infinity" not in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.txt", "c.json"]


def test_atomic_write_failure_keeps_old_file_and_removes_temp(tmp_path):
    target = tmp_path / "c.json"
    atomic_write_json(target, {"x": 1})
    before = target.read_bytes()
    with pytest.raises(ValueError, match="obj"):
        atomic_write_json(target, {"x": object()})
    with pytest.raises(ValueError, match="data"):
        atomic_write_bytes(target, "not bytes")
    with pytest.raises(ValueError, match="does not exist"):
        atomic_write_bytes(tmp_path / "missing" / "x", b"")
    assert target.read_bytes() == before
    assert tmp_files(tmp_path) == []


def test_atomic_write_respects_umask(tmp_path):
    if os.name != "posix":
        pytest.skip("POSIX permissions")
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "f.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o644


# ---- create ----------------------------------------------------------------------------------------


def test_create_default_name_and_suffixes(tmp_path, monkeypatch):
    import datetime as real_dt
    import types

    class Fixed(real_dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return real_dt.datetime(2024, 5, 6, 7, 8, 9)

    monkeypatch.setattr(runs, "_dt", types.SimpleNamespace(datetime=Fixed))
    monkeypatch.chdir(tmp_path)
    first = Run.create("store-recall", {"a": 1})
    second = Run.create("store-recall", {"a": 1}, root="runs")
    third = Run.create("store-recall", {"a": 1}, root=tmp_path / "runs")
    assert first.dir == pathlib.Path("runs/store-recall-20240506-070809")
    assert second.dir == pathlib.Path("runs/store-recall-20240506-070809-2")
    assert third.dir == tmp_path / "runs/store-recall-20240506-070809-3"
    for run in (first, second, third):
        assert (run.dir / "config.yaml").exists()


def test_create_writes_config_yaml(tmp_path):
    run = Run.create("toy", {"lr": 0.1, "sizes": (3, 4), "nested": {"tau": 20.0}}, out=tmp_path / "r")
    info = yaml.safe_load((run.dir / "config.yaml").read_text())
    assert info["recipe"] == "toy"
    assert info["config"] == {"lr": 0.1, "sizes": [3, 4], "nested": {"tau": 20.0}}
    for key in ("created", "neuromorph_version", "torch_version", "host"):
        assert info[key]
    assert info["torch_version"] == torch.__version__
    assert run.recipe == "toy" and run.config["nested"] == {"tau": 20.0}
    assert tmp_files(run.dir) == []


def test_create_into_existing_empty_dir_ok(tmp_path):
    (tmp_path / "empty").mkdir()
    run = Run.create("toy", {}, out=tmp_path / "empty")
    assert (run.dir / "config.yaml").exists()


@pytest.mark.parametrize("marker", ["config.yaml", "checkpoint.json"])
def test_create_refuses_existing_run(tmp_path, marker):
    out = tmp_path / "r"
    out.mkdir()
    (out / marker).write_text("old")
    before = snapshot(out)
    with pytest.raises(ValueError, match=r"already holds a run; use --resume .* or choose another --out"):
        Run.create("toy", {"a": 1}, out=out)
    assert snapshot(out) == before


def test_create_refuses_run_with_checkpoint(tmp_path):
    run = make_run(tmp_path)
    run.save_checkpoint({"w": torch.ones(2)}, {"step": 1})
    before = snapshot(run.dir)
    with pytest.raises(ValueError, match="--out"):
        Run.create("toy", {}, out=run.dir)
    assert snapshot(run.dir) == before


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"recipe": "", "config": {}}, "recipe"),
        ({"recipe": "a/b", "config": {}}, "recipe"),
        ({"recipe": "toy", "config": [1]}, "config"),
        ({"recipe": "toy", "config": {"f": object()}}, "config"),
        ({"recipe": "toy", "config": {1: 2}}, "keys must be str"),
    ],
)
def test_create_validates(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        Run.create(**kwargs, out=tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_create_out_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        Run.create("toy", {}, out=tmp_path / "f")


def test_non_writer_writes_nothing(tmp_path):
    run = Run.create("toy", {"a": 1}, out=tmp_path / "r", is_writer=False)
    run.log(0, loss=1.0)
    run.save_checkpoint({"w": torch.ones(1)}, {"step": 0})
    run.write_results({"acc": 1.0})
    run.truncate_metrics(0)
    run.close()
    assert not (tmp_path / "r").exists()
    assert run.metrics() == [] and run.load_checkpoint() is None
    Run.create("toy", {}, root=tmp_path / "runs", is_writer=False)
    assert not (tmp_path / "runs").exists()


def test_non_writer_reads_what_writer_wrote(tmp_path):
    writer = make_run(tmp_path)
    writer.log(0, loss=2.0)
    writer.save_checkpoint({"w": torch.full((2,), 7.0)}, {"step": 0})
    writer.close()
    reader = Run.open(writer.dir, is_writer=False)
    tensors, meta = reader.load_checkpoint()
    assert torch.equal(tensors["w"], torch.full((2,), 7.0)) and meta == {"step": 0}
    assert reader.metrics()[0]["loss"] == 2.0


def test_path_stays_inside(tmp_path):
    run = make_run(tmp_path)
    assert run.path("curves.png") == run.dir / "curves.png"
    for bad in ("", "../x", "/etc/passwd"):
        with pytest.raises(ValueError, match="name"):
            run.path(bad)


# ---- checkpoints -----------------------------------------------------------------------------------


def test_checkpoint_roundtrip_exact(tmp_path):
    run = make_run(tmp_path)
    assert run.load_checkpoint() is None
    tensors = sample_tensors()
    meta = {"step": 12, "best": 0.25, "nan": float("nan"), "tags": ("a", "b"), "nested": {"k": [1, 2]}}
    run.save_checkpoint(tensors, meta)
    loaded, loaded_meta = run.load_checkpoint()
    assert set(loaded) == set(tensors)
    for key, value in tensors.items():
        assert loaded[key].dtype == value.dtype, key
        assert loaded[key].shape == value.shape, key
        assert torch.equal(loaded[key], value.detach()), key
        assert loaded[key].is_contiguous() and loaded[key].device.type == "cpu"
    assert loaded_meta == {"step": 12, "best": 0.25, "nan": None, "tags": ["a", "b"], "nested": {"k": [1, 2]}}
    assert tmp_files(run.dir) == []


def test_checkpoint_is_a_copy(tmp_path):
    run = make_run(tmp_path)
    w = torch.zeros(3)
    run.save_checkpoint({"w": w}, {"step": 0})
    w += 5
    assert torch.equal(run.load_checkpoint()[0]["w"], torch.zeros(3))


def test_checkpoint_replaces_older_tensor_files(tmp_path):
    run = make_run(tmp_path)
    for step in range(4):
        run.save_checkpoint({"w": torch.full((3,), float(step))}, {"step": step})
    files = sorted(p.name for p in run.dir.glob("checkpoint-*.safetensors"))
    assert len(files) == 1 and files[0].startswith("checkpoint-3-")
    tensors, meta = run.load_checkpoint()
    assert meta["step"] == 3 and torch.equal(tensors["w"], torch.full((3,), 3.0))
    # the same step saved twice with different values (e.g. a stop right after a periodic save)
    run.save_checkpoint({"w": torch.full((3,), -1.0)}, {"step": 3})
    assert torch.equal(run.load_checkpoint()[0]["w"], torch.full((3,), -1.0))
    assert len(list(run.dir.glob("checkpoint-*.safetensors"))) == 1


@pytest.mark.parametrize(
    ("tensors", "meta", "match"),
    [
        ([1], {"step": 0}, "tensors"),
        ({"w": [1.0]}, {"step": 0}, r"tensors\['w'\]"),
        ({1: torch.ones(1)}, {"step": 0}, "keys"),
        ({"w": torch.ones(1)}, {}, "step"),
        ({"w": torch.ones(1)}, {"step": -1}, "step"),
        ({"w": torch.ones(1)}, {"step": 1.5}, "step"),
        ({"w": torch.ones(1)}, {"step": 1, "x": object()}, "meta"),
    ],
)
def test_save_checkpoint_validates(tmp_path, tensors, meta, match):
    run = make_run(tmp_path)
    with pytest.raises(ValueError, match=match):
        run.save_checkpoint(tensors, meta)
    assert run.load_checkpoint() is None


def test_crash_between_tensor_file_and_json_keeps_previous(tmp_path, monkeypatch):
    run = make_run(tmp_path)
    run.save_checkpoint({"w": torch.ones(2)}, {"step": 1})

    def boom(path, obj):
        raise KeyboardInterrupt

    monkeypatch.setattr(runs, "atomic_write_json", boom)
    with pytest.raises(KeyboardInterrupt):
        run.save_checkpoint({"w": torch.zeros(2)}, {"step": 2})
    monkeypatch.undo()
    assert len(list(run.dir.glob("checkpoint-*.safetensors"))) == 2  # orphan of step 2 is left
    reopened = Run.open(run.dir)
    tensors, meta = reopened.load_checkpoint()
    assert meta["step"] == 1 and torch.equal(tensors["w"], torch.ones(2))
    reopened.save_checkpoint({"w": torch.full((2,), 3.0)}, {"step": 2})  # cleans the orphan
    assert len(list(run.dir.glob("checkpoint-*.safetensors"))) == 1


# ---- open (--resume) -------------------------------------------------------------------------------


def good_run(tmp_path) -> Run:
    run = make_run(tmp_path)
    run.log(0, loss=1.0)
    run.save_checkpoint({"w": torch.arange(1000, dtype=torch.float32)}, {"step": 0})
    run.close()
    return run


def tensor_file(run: Run) -> pathlib.Path:
    (path,) = run.dir.glob("checkpoint-*.safetensors")
    return path


def corrupt_missing_config(run):
    (run.dir / "config.yaml").unlink()
    return "config.yaml is missing"


def corrupt_config_yaml(run):
    (run.dir / "config.yaml").write_text("recipe: [unclosed\n")
    return "config.yaml is unreadable or corrupt"


def corrupt_config_no_recipe(run):
    (run.dir / "config.yaml").write_text("config: {}\n")
    return "does not name a recipe"


def corrupt_missing_checkpoint(run):
    (run.dir / "checkpoint.json").unlink()
    return "no checkpoint"


def corrupt_json(run):
    (run.dir / "checkpoint.json").write_text('{"format": "neuromorph-checkpoint", "st')
    return "checkpoint.json is unreadable or corrupt"


def corrupt_json_fields(run):
    (run.dir / "checkpoint.json").write_text('{"format": "neuromorph-checkpoint"}')
    return "checkpoint.json is corrupt"


def corrupt_missing_tensors(run):
    tensor_file(run).unlink()
    return "missing"


def corrupt_truncated_tensors(run):
    path = tensor_file(run)
    path.write_bytes(path.read_bytes()[:-100])
    return "truncated or corrupt"


def corrupt_sha(run):
    path = tensor_file(run)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # same size, different content
    path.write_bytes(bytes(data))
    return "sha256 mismatch"


def corrupt_header(run):
    # a tensor file with a consistent sha in checkpoint.json but not valid safetensors
    path = tensor_file(run)
    garbage = b"\xff" * 64
    path.write_bytes(garbage)
    record = json.loads((run.dir / "checkpoint.json").read_text())
    import hashlib

    record.update(sha256=hashlib.sha256(garbage).hexdigest(), size=len(garbage))
    (run.dir / "checkpoint.json").write_text(json.dumps(record))
    return "not valid safetensors"


@pytest.mark.parametrize(
    "corrupt",
    [
        corrupt_missing_config,
        corrupt_config_yaml,
        corrupt_config_no_recipe,
        corrupt_missing_checkpoint,
        corrupt_json,
        corrupt_json_fields,
        corrupt_missing_tensors,
        corrupt_truncated_tensors,
        corrupt_sha,
        corrupt_header,
    ],
)
def test_open_rejects_damaged_runs_without_changing_them(tmp_path, corrupt):
    run = good_run(tmp_path)
    problem = corrupt(run)
    before = snapshot(run.dir)
    with pytest.raises(ValueError) as err:
        Run.open(run.dir)
    message = str(err.value)
    assert message.startswith(f"--resume {run.dir}:"), message
    assert problem in message, message
    assert snapshot(run.dir) == before


def test_open_nonexistent_and_file(tmp_path):
    with pytest.raises(ValueError, match=r"--resume .*nope: no such directory"):
        Run.open(tmp_path / "nope")
    assert not (tmp_path / "nope").exists()
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="--resume .*not a directory"):
        Run.open(tmp_path / "f")


def test_load_checkpoint_detects_corruption(tmp_path):
    run = good_run(tmp_path)
    corrupt_sha(run)
    with pytest.raises(ValueError, match="sha256"):
        run.load_checkpoint()


def test_open_good_run(tmp_path):
    run = good_run(tmp_path)
    before = snapshot(run.dir)
    again = Run.open(run.dir)
    assert again.recipe == "toy" and again.config == {"seed": 1, "model": {"hidden": 4}}
    assert again.load_checkpoint()[1] == {"step": 0}
    assert snapshot(run.dir) == before


# ---- metrics ---------------------------------------------------------------------------------------


def test_log_and_metrics(tmp_path):
    run = make_run(tmp_path)
    assert run.metrics() == []
    run.log(0, loss=1.5, acc=torch.tensor(0.25))
    run.log(1, loss=float("nan"))
    records = run.metrics()  # readable while the run is still open (flushed per line)
    assert [r["step"] for r in records] == [0, 1]
    assert records[0]["loss"] == 1.5 and records[0]["acc"] == 0.25
    assert records[1]["loss"] is None  # NaN -> null
    assert all(isinstance(r["time"], float) for r in records)
    run.close()
    assert any((run.dir / "tb").iterdir())


@pytest.mark.parametrize(
    ("step", "metrics", "match"),
    [
        (-1, {"loss": 1.0}, "step"),
        (1.0, {"loss": 1.0}, "step"),
        (1, {"loss": "high"}, "loss"),
        (1, {"loss": torch.ones(2)}, "loss"),
        (1, {"time": 1.0}, "reserved"),
    ],
)
def test_log_validates(tmp_path, step, metrics, match):
    run = make_run(tmp_path)
    with pytest.raises(ValueError, match=match):
        run.log(step, **metrics)
    assert run.metrics() == []


def test_metrics_skip_torn_last_line_and_repair(tmp_path):
    run = make_run(tmp_path)
    run.log(0, loss=1.0)
    run.log(1, loss=0.5)
    run.close()
    path = run.dir / "metrics.jsonl"
    with open(path, "ab") as fh:
        fh.write(b'{"step": 2, "lo')  # a write torn by a kill
    assert [r["step"] for r in read_metrics(path)] == [0, 1]
    run.log(2, loss=0.25)  # appending repairs the torn line first
    run.close()
    assert [r["step"] for r in read_metrics(path)] == [0, 1, 2]
    assert path.read_bytes().endswith(b"\n")


def test_metrics_complete_last_line_without_newline_is_kept(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"step": 0, "loss": 1}\n{"step": 1, "loss": 2}')
    assert [r["step"] for r in read_metrics(path)] == [0, 1]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    values=st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=8),
    cut=st.floats(min_value=0.0, max_value=1.0),
)
def test_metrics_any_truncation_reads_a_prefix(tmp_path, values, cut):
    """Whatever byte a kill cuts the log at, the reader returns the complete records before it."""
    records = [{"step": i, "v": v} for i, v in enumerate(values)]
    raw = "".join(json.dumps(r) + "\n" for r in records).encode()
    k = int(cut * len(raw))
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(raw[:k])
    got = read_metrics(path)
    complete = raw[:k].count(b"\n")
    assert got == records[: len(got)]
    assert complete <= len(got) <= complete + 1


def test_metrics_corrupt_middle_line_raises(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"step": 0}\n{garbage\n{"step": 1}\n')
    with pytest.raises(ValueError, match="line 2"):
        read_metrics(path)


def test_truncate_metrics(tmp_path):
    run = make_run(tmp_path)
    for step in range(6):
        run.log(step, loss=float(step))
    run.truncate_metrics(3)
    assert [r["step"] for r in run.metrics()] == [0, 1, 2, 3]
    run.log(4, loss=40.0)  # appending after a truncation goes to the new file
    run.close()
    assert [(r["step"], r["loss"]) for r in run.metrics()] == [
        (0, 0.0),
        (1, 1.0),
        (2, 2.0),
        (3, 3.0),
        (4, 40.0),
    ]
    assert tmp_files(run.dir) == []
    fresh = make_run(tmp_path, "fresh")
    fresh.truncate_metrics(0)  # no log yet: nothing created
    assert not (fresh.dir / "metrics.jsonl").exists()


def test_resume_log_equals_uninterrupted(tmp_path):
    def train(run: Run, start: int, stop: int, state: torch.Tensor) -> torch.Tensor:
        for step in range(start, stop):
            state = state * 0.9 + step  # deterministic "training"
            run.log(step, value=float(state.sum()))
            if step % 3 == 2:
                run.save_checkpoint({"state": state}, {"step": step})
        return state

    ref = make_run(tmp_path, "ref")
    train(ref, 0, 10, torch.ones(3))
    ref.close()

    run = make_run(tmp_path, "interrupted")
    train(run, 0, 7, torch.ones(3))  # last checkpoint at step 5, metrics up to 6
    run.close()
    resumed = Run.open(run.dir)
    tensors, meta = resumed.load_checkpoint()
    resumed.truncate_metrics(meta["step"])
    train(resumed, meta["step"] + 1, 10, tensors["state"])
    resumed.close()

    def strip(records):
        return [{k: v for k, v in r.items() if k != "time"} for r in records]

    assert strip(resumed.metrics()) == strip(ref.metrics())
    assert torch.equal(resumed.load_checkpoint()[0]["state"], ref.load_checkpoint()[0]["state"])


def test_write_results(tmp_path):
    run = make_run(tmp_path)
    run.write_results({"error": 0.05, "diverged": float("inf"), "per_task": {"a": 1}})
    assert json.loads((run.dir / "results.json").read_text()) == {
        "error": 0.05,
        "diverged": None,
        "per_task": {"a": 1},
    }
    with pytest.raises(ValueError, match="results"):
        run.write_results([1, 2])


def test_context_manager_closes(tmp_path):
    with make_run(tmp_path) as run:
        run.log(0, x=1.0)
    assert run._tb is None and run._metrics_fh is None


# ---- kill while checkpointing ----------------------------------------------------------------------

KILL_SCRIPT = r"""
import sys, torch
from neuromorph.runs import Run
out = sys.argv[1]
run = Run.create("toy", {"n": 1}, out=out)
step = 0
while True:
    w = torch.full((256, 1024), float(step))  # 1 MiB per checkpoint
    run.log(step, value=float(step))
    run.save_checkpoint({"w": w, "b": torch.full((7,), float(step), dtype=torch.float64)}, {"step": step})
    if step == 0:
        print("ready", flush=True)
    step += 1
"""


def test_sigkill_while_checkpointing_leaves_consistent_run(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(KILL_SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    delays = [0.05, 0.13, 0.31]  # kill at different points of the save loop
    outs = [tmp_path / f"run{i}" for i in range(len(delays))]
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
        )
        for out in outs
    ]
    try:
        for proc in procs:  # all writers run concurrently; each says "ready" after its first checkpoint
            line = proc.stdout.readline()
            assert line.strip() == b"ready", proc.stderr.read().decode()
        start = time.monotonic()
        for proc, delay in zip(procs, delays, strict=True):
            time.sleep(max(0.0, start + delay - time.monotonic()))
            proc.kill()
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    for proc, out in zip(procs, outs, strict=True):
        assert proc.returncode == -signal.SIGKILL if os.name == "posix" else proc.returncode != 0
        run = Run.open(out)
        tensors, meta = run.load_checkpoint()
        step = meta["step"]
        assert torch.equal(tensors["w"], torch.full((256, 1024), float(step)))
        assert torch.equal(tensors["b"], torch.full((7,), float(step), dtype=torch.float64))
        steps = [r["step"] for r in run.metrics()]
        assert steps == list(range(len(steps))) and steps[-1] >= step
        # resuming: truncate, save again -> leftovers (orphan tensor file, temp files) are cleaned
        run.truncate_metrics(step)
        run.save_checkpoint(tensors, {"step": step})
        run.close()
        assert len(list(out.glob("checkpoint-*.safetensors"))) == 1
        assert tmp_files(out) == []


# ---- graceful stop ---------------------------------------------------------------------------------


def wait_for(flag, timeout=2.0):
    deadline = time.monotonic() + timeout
    while not flag.requested and time.monotonic() < deadline:
        time.sleep(0.005)


@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or os.name != "posix", reason="POSIX signals")
def test_graceful_stop_sigterm(tmp_path):
    before_term = signal.getsignal(signal.SIGTERM)
    before_int = signal.getsignal(signal.SIGINT)
    with graceful_stop() as stop:
        assert not stop.requested
        stop.check()  # no stop requested: nothing happens
        os.kill(os.getpid(), signal.SIGTERM)
        wait_for(stop)
        assert stop.requested and stop.signal == signal.SIGTERM
        with pytest.raises(StopRequested):
            stop.check()
    assert signal.getsignal(signal.SIGTERM) == before_term
    assert signal.getsignal(signal.SIGINT) == before_int


def test_graceful_stop_sigint_and_second_sigint():
    before = signal.getsignal(signal.SIGINT)
    with graceful_stop() as stop:
        signal.raise_signal(signal.SIGINT)
        wait_for(stop)
        assert stop.requested and stop.signal == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
            time.sleep(0.5)
    assert signal.getsignal(signal.SIGINT) == before


def test_graceful_stop_restores_on_exception():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(RuntimeError), graceful_stop():
        raise RuntimeError("boom")
    assert signal.getsignal(signal.SIGTERM) == before


def test_graceful_stop_in_thread_is_noop():
    result = {}
    before = signal.getsignal(signal.SIGTERM)

    def worker():
        with graceful_stop() as stop:
            result["requested"] = stop.requested
            result["handler"] = signal.getsignal(signal.SIGTERM)

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert result == {"requested": False, "handler": before}


def test_training_loop_with_graceful_stop_saves_and_resumes(tmp_path):
    """The pattern recipes follow: check the flag after each iteration, checkpoint, return."""
    if not hasattr(signal, "SIGTERM") or os.name != "posix":
        pytest.skip("POSIX signals")

    def loop(run, start, steps, w, stop_at=None):
        with graceful_stop() as stop:
            for step in range(start, steps):
                w = w + step
                run.log(step, w=float(w.sum()))
                if step == stop_at:
                    os.kill(os.getpid(), signal.SIGTERM)
                    wait_for(stop)
                if stop.requested or step == steps - 1:
                    run.save_checkpoint({"w": w}, {"step": step})
                    return w, stop.requested
        return w, False

    run = make_run(tmp_path)
    _, stopped = loop(run, 0, 10, torch.zeros(2), stop_at=4)
    assert stopped
    run.close()
    resumed = Run.open(run.dir)
    tensors, meta = resumed.load_checkpoint()
    assert meta["step"] == 4
    resumed.truncate_metrics(meta["step"])
    w, stopped = loop(resumed, meta["step"] + 1, 10, tensors["w"])
    assert not stopped and math.isclose(float(w[0]), sum(range(10)))
    assert [r["step"] for r in resumed.metrics()] == list(range(10))
