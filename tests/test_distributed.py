"""Tests for neuromorph.distributed: single-process behaviour and a real 2-process torchrun (gloo, CPU)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch

from neuromorph.distributed import (
    DistInfo,
    all_reduce_mean,
    barrier,
    broadcast_object,
    init_distributed,
    shutdown,
    wrap_ddp,
)

SRC = pathlib.Path(__file__).resolve().parents[1] / "src"
TORCHRUN_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def single(monkeypatch):
    for name in TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)
    return init_distributed("cpu")


def test_single_process(single):
    assert single == DistInfo(0, 1, 0, True, torch.device("cpu"))
    model = torch.nn.Linear(2, 1)
    assert wrap_ddp(model, single) is model
    assert all_reduce_mean(2.5, single) == 2.5
    assert all_reduce_mean(torch.tensor([3.0], requires_grad=True), single) == 3.0
    assert broadcast_object({"dir": "runs/x"}, single) == {"dir": "runs/x"}
    barrier(single)
    shutdown(single)
    shutdown(single)


def test_world_size_one_env(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    assert init_distributed().world_size == 1


@pytest.mark.parametrize("device", ["tpu", "", 3, "cpux"])
def test_bad_device(single, device):
    with pytest.raises(ValueError, match="device"):
        init_distributed(device)


def test_cuda_unavailable(single):
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(ValueError, match="CUDA is not available"):
        init_distributed("cuda")


def test_bad_env(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        init_distributed()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(ValueError, match="RANK"):
        init_distributed()


def test_bad_arguments(single):
    with pytest.raises(ValueError, match="info"):
        all_reduce_mean(1.0, (0, 1))
    with pytest.raises(ValueError, match="x must be"):
        all_reduce_mean(torch.ones(2), single)
    with pytest.raises(ValueError, match="x must be"):
        all_reduce_mean("1", single)
    with pytest.raises(ValueError, match="module"):
        wrap_ddp("model", single)
    with pytest.raises(ValueError, match="src"):
        broadcast_object(1, single, src=1)
    fake = DistInfo(0, 2, 0, True, torch.device("cpu"))  # claims 2 ranks but no process group
    with pytest.raises(ValueError, match="init_distributed"):
        wrap_ddp(torch.nn.Linear(1, 1), fake)


WORKER = r"""
import json, os, sys, torch
from neuromorph.distributed import all_reduce_grads, all_reduce_mean, barrier, broadcast_object
from neuromorph.distributed import init_distributed, shutdown, wrap_ddp
from neuromorph.runs import Run

out = sys.argv[1]
info = init_distributed("cpu")
assert info.world_size == 2 and info.device == torch.device("cpu")
torch.manual_seed(0)  # same initial parameters on every rank (DDP also broadcasts rank 0's)
model = wrap_ddp(torch.nn.Linear(4, 3), info)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
g = torch.Generator().manual_seed(1)
for it in range(5):
    x = torch.randn(8, 4, generator=g)
    y = torch.randn(8, 3, generator=g)
    shard = slice(info.rank * 4, (info.rank + 1) * 4)
    loss = torch.nn.functional.mse_loss(model(x[shard]), y[shard])
    opt.zero_grad()
    loss.backward()
    opt.step()
# gradients set by hand (as e-prop does, no backward through DDP), averaged by all_reduce_grads
torch.manual_seed(0)
manual = torch.nn.Linear(4, 3)
opt2 = torch.optim.SGD(manual.parameters(), lr=0.1)
g = torch.Generator().manual_seed(1)
for it in range(5):
    x = torch.randn(8, 4, generator=g)
    y = torch.randn(8, 3, generator=g)
    shard = slice(info.rank * 4, (info.rank + 1) * 4)
    loss = torch.nn.functional.mse_loss(manual(x[shard]), y[shard])
    grads = torch.autograd.grad(loss, list(manual.parameters()))
    for p, gr in zip(manual.parameters(), grads):
        p.grad = gr
    all_reduce_grads(manual, info)
    opt2.step()
mean_rank = all_reduce_mean(float(info.rank), info)
run_dir = broadcast_object(out + "/run" if info.is_main else None, info)
run = Run.create("ddp-toy", {"world": info.world_size}, out=run_dir, is_writer=info.is_main)
run.log(0, rank_mean=mean_rank)
run.close()
barrier(info)
params = {k: v.tolist() for k, v in model.module.state_dict().items()}
manual_params = {k: v.tolist() for k, v in manual.state_dict().items()}
with open(os.path.join(out, f"rank{info.rank}.json"), "w") as fh:
    json.dump({"params": params, "manual": manual_params, "mean_rank": mean_rank,
               "is_main": info.is_main, "run_dir": run_dir}, fh)
shutdown(info)
"""


def single_process_reference() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        x = torch.randn(8, 4, generator=g)
        y = torch.randn(8, 3, generator=g)
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.state_dict()


def test_torchrun_two_processes_match_single_process(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--standalone",
        str(script),
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, capture_output=True, env=env, timeout=180, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout.decode()[-3000:] + proc.stderr.decode()[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["is_main"] for r in ranks] == [True, False]
    assert ranks[0]["params"] == ranks[1]["params"]  # bit-identical on both ranks
    assert ranks[0]["mean_rank"] == ranks[1]["mean_rank"] == 0.5
    ref = single_process_reference()
    for name, value in ranks[0]["params"].items():
        torch.testing.assert_close(torch.tensor(value), ref[name], rtol=1e-5, atol=1e-6)
    assert ranks[0]["manual"] == ranks[1]["manual"]  # all_reduce_grads: the same update on every rank
    for name, value in ranks[0]["manual"].items():
        torch.testing.assert_close(torch.tensor(value), ref[name], rtol=1e-5, atol=1e-6)
    # only rank 0 wrote the run, into the directory it broadcast
    assert ranks[0]["run_dir"] == ranks[1]["run_dir"] == str(tmp_path / "run")
    run_files = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert run_files == ["config.yaml", "metrics.jsonl", "tb"]
    assert [json.loads(line)["rank_mean"] for line in (tmp_path / "run" / "metrics.jsonl").open()] == [0.5]
