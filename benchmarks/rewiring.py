"""Cost of DEEP R and of the sparse compute path on CPU.

    .venv/bin/python benchmarks/rewiring.py [--repeats 300] [--big-repeats 7] [--batch 64] [--crossover]

1. The DEEP R MLP (784-300-100-10, 1% / 3% / 30% = 3,552 connections, global budget, official L1 and
   noise): ``DeepR.step()`` vs the same optimizer's ``step()`` on the dense network (update only,
   gradients preset), and a whole training iteration (zero_grad + forward + backward + step, batch 10),
   for SGD (lr 0.5) and Adam (lr 1e-3). Target: DEEP R at most 1.2x the dense step. DEEP R runs in both
   implementations, ``impl="native"`` (the default where the C library builds) and ``impl="numpy"``,
   after a check that both give the same weights for 50 steps.
2. A 4096x4096 layer at 1% connectivity, batch ``--batch``: forward + backward (gradients for the
   input and the weights) of ``sparse_linear(impl="sparse")`` (CSR) vs the masked dense product
   ``x @ (W * M)^T`` (and the layer's own dense path, scatter + matmul). Target: sparse faster.
3. ``--crossover``: the sparse/dense ratio over sizes, densities and batches (sets the constants of
   ``neuromorph.sparse.sparse_linear``).

Every comparison is interleaved (A, B, A, B, ...) in one process and reports medians after warm-up, so
that other load on a shared machine hits both sides alike. One thread (``--threads``). Results:
``benchmarks/results/rewiring-<machine>.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from neuromorph.bench import machine_info, machine_slug
from neuromorph.sparse import DeepR, sparse_linear


def interleaved(fns: dict, repeats: int, warmup: int) -> dict[str, dict[str, float]]:
    """Median seconds of each callable, called in turn ``repeats`` times after ``warmup`` rounds: process
    CPU time (``cpu``; what the code costs, blind to time spent waiting for a shared core) and wall
    time (``wall``)."""
    times: dict[str, dict[str, list[float]]] = {k: {"cpu": [], "wall": []} for k in fns}
    for r in range(warmup + repeats):
        for name, fn in fns.items():
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            if r >= warmup:
                times[name]["cpu"].append(time.process_time() - c0)
                times[name]["wall"].append(time.perf_counter() - w0)
    return {k: {m: statistics.median(v) for m, v in d.items()} for k, d in times.items()}


# -- 1. the DEEP R step on the MLP ------------------------------------------------------------------


class MLP(nn.Module):
    def __init__(self, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.ws = nn.ParameterList(
            nn.Parameter(torch.randn(o, i, generator=g) / math.sqrt(i))
            for i, o in ((784, 300), (300, 100), (100, 10))
        )

    def forward(self, x):
        for k, w in enumerate(self.ws):
            x = F.linear(x, w)
            x = F.relu(x) if k < 2 else x
        return x


def bench_mlp_step(repeats: int, warmup: int) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    # a pool of random batches with random labels: the nets cannot fit them, so the softmax never
    # saturates (repeating one batch drives the gradients into denormal numbers, which are very slow)
    pool = [(torch.rand(10, 784, generator=g), torch.randint(0, 10, (10,), generator=g)) for _ in range(64)]
    x, y = pool[0]
    records = []
    for name, make, lr in (("SGD", torch.optim.SGD, 0.5), ("Adam", torch.optim.Adam, 1e-3)):

        def fresh(impl, name=name, make=make, lr=lr):
            dense, sparse = MLP(0), MLP(0)
            opt_d, opt_s = make(dense.parameters(), lr=lr), make(sparse.parameters(), lr=lr)
            rewiring = DeepR(
                opt_s, list(sparse.ws), connectivity=[0.01, 0.03, 0.3], budget="global", l1=1e-5,
                temperature=lr * 1e-10 / 2, seed=0, impl=impl,
            )  # fmt: skip
            return dense, opt_d, sparse, rewiring

        # the two implementations compute the same steps (checked before anything is timed)
        nets = {impl: fresh(impl)[2:] for impl in ("native", "numpy")}
        for k in range(50):
            xb, yb = pool[k % len(pool)]
            for sparse, rewiring in nets.values():
                rewiring.zero_grad()
                F.cross_entropy(sparse(xb), yb).backward()
                rewiring.step()
        same = all(torch.equal(a, b) for a, b in zip(nets["native"][0].ws, nets["numpy"][0].ws, strict=True))
        if not same:
            raise RuntimeError(f"{name}: the native and numpy DEEP R steps differ")

        # update only: gradients of the initial nets on the pool's batches, assigned before each step
        dense, opt_d, sparse, rewiring = fresh("native")
        _, _, sparse_np, rewiring_np = fresh("numpy")
        sides = {"dense": dense, "deep_r": sparse, "deep_r_numpy": sparse_np}
        grads = {key: [] for key in sides}
        for xb, yb in pool[:16]:
            for key, model in sides.items():
                model.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                grads[key].append([w.grad.clone() for w in model.ws])
        count = dict.fromkeys(sides, 0)

        def update(key, model, stepper, grads=grads, count=count):
            def run():
                gs = grads[key][count[key] % 16]
                count[key] += 1
                for w, gr in zip(model.ws, gs, strict=True):
                    w.grad = gr
                stepper.step()

            return run

        def iteration(model, stepper):
            seen = [0]

            def run():
                xb, yb = pool[seen[0] % len(pool)]
                seen[0] += 1
                stepper.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                stepper.step()

            return run

        # the gradient assignment is inside every timed call (a few microseconds, the same on all sides)
        upd = interleaved(
            {
                "dense": update("dense", dense, opt_d),
                "deep_r": update("deep_r", sparse, rewiring),
                "deep_r_numpy": update("deep_r_numpy", sparse_np, rewiring_np),
            },
            repeats,
            warmup,
        )
        dense, opt_d, sparse, rewiring = fresh("native")
        _, _, sparse_np, rewiring_np = fresh("numpy")
        it = interleaved(
            {
                "dense": iteration(dense, opt_d),
                "deep_r": iteration(sparse, rewiring),
                "deep_r_numpy": iteration(sparse_np, rewiring_np),
            },
            max(repeats // 3, 20),
            warmup,
        )
        active = sum(int(torch.count_nonzero(w)) for w in sparse.ws)
        for what, t in (("update", upd), ("training iteration", it)):
            records.append(
                {
                    "benchmark": "deep_r_mlp_step",
                    "optimizer": name,
                    "what": what,
                    "impl": "native" if rewiring._native else "numpy",
                    "dense_us": round(t["dense"]["cpu"] * 1e6, 1),
                    "deep_r_us": round(t["deep_r"]["cpu"] * 1e6, 1),
                    "ratio": round(t["deep_r"]["cpu"] / t["dense"]["cpu"], 3),
                    "deep_r_numpy_us": round(t["deep_r_numpy"]["cpu"] * 1e6, 1),
                    "numpy_ratio": round(t["deep_r_numpy"]["cpu"] / t["dense"]["cpu"], 3),
                    "wall_dense_us": round(t["dense"]["wall"] * 1e6, 1),
                    "wall_deep_r_us": round(t["deep_r"]["wall"] * 1e6, 1),
                    "wall_ratio": round(t["deep_r"]["wall"] / t["dense"]["wall"], 3),
                    "target_ratio": 1.2,
                    "active": active,
                    "budget": rewiring.budget_total,
                    "same_as_numpy_50_steps": same,
                }
            )
    return records


# -- 2. sparse vs masked dense on a big layer ---------------------------------------------------------


def bench_big_layer(n: int, density: float, batch: int, repeats: int, warmup: int) -> dict:
    g = torch.Generator().manual_seed(2)
    k = int(round(density * n * n))
    index = torch.randperm(n * n, generator=g)[:k].sort().values
    values = torch.randn(k, generator=g).requires_grad_(True)
    mask = torch.zeros(n * n)
    mask[index] = 1.0
    mask = mask.view(n, n)
    weight = torch.zeros(n * n)
    weight[index] = values.detach()
    weight = weight.view(n, n).requires_grad_(True)
    x = torch.randn(batch, n, generator=g).requires_grad_(True)
    gy = torch.randn(batch, n, generator=g)

    def masked_dense():
        x.grad = weight.grad = None
        (x @ (weight * mask).t()).backward(gy)

    def path(impl):
        def run():
            x.grad = values.grad = None
            sparse_linear(x, values, index, (n, n), impl=impl).backward(gy)

        return run

    with torch.no_grad():  # the three compute the same function
        ref = x @ (weight * mask).t()
        err = max(
            float((sparse_linear(x, values, index, (n, n), impl=i) - ref).abs().max())
            for i in ("sparse", "dense")
        )
    t = interleaved(
        {"masked_dense": masked_dense, "sparse": path("sparse"), "layer_dense": path("dense")},
        repeats,
        warmup,
    )
    return {
        "benchmark": "sparse_vs_masked_dense",
        "n": n,
        "density": density,
        "connections": k,
        "batch": batch,
        "masked_dense_ms": round(t["masked_dense"]["cpu"] * 1e3, 2),
        "sparse_ms": round(t["sparse"]["cpu"] * 1e3, 2),
        "layer_dense_ms": round(t["layer_dense"]["cpu"] * 1e3, 2),
        "speedup": round(t["masked_dense"]["cpu"] / t["sparse"]["cpu"], 2),
        "wall_masked_dense_ms": round(t["masked_dense"]["wall"] * 1e3, 2),
        "wall_sparse_ms": round(t["sparse"]["wall"] * 1e3, 2),
        "wall_speedup": round(t["masked_dense"]["wall"] / t["sparse"]["wall"], 2),
        "max_abs_diff": err,
    }


def bench_crossover(repeats: int) -> list[dict]:
    out = []
    for n in (256, 512, 1024, 2048):
        for batch in (10, 128):
            for density in (0.01, 0.02, 0.05, 0.1):
                g = torch.Generator().manual_seed(3)
                k = max(1, int(density * n * n))
                index = torch.randperm(n * n, generator=g)[:k]
                values = torch.randn(k, generator=g).requires_grad_(True)
                x = torch.randn(batch, n, generator=g).requires_grad_(True)

                def run(impl, x=x, values=values, index=index, n=n):
                    sparse_linear(x, values, index, (n, n), impl=impl).sum().backward()

                t = interleaved({"dense": lambda: run("dense"), "sparse": lambda: run("sparse")}, repeats, 2)
                d, sp = t["dense"]["cpu"], t["sparse"]["cpu"]
                rec = {
                    "benchmark": "crossover",
                    "n": n,
                    "batch": batch,
                    "density": density,
                    "dense_ms": round(d * 1e3, 3),
                    "sparse_ms": round(sp * 1e3, 3),
                    "speedup": round(d / sp, 2),
                }
                print(
                    f"  crossover n={n} batch={batch} density={density}: {rec['speedup']}x", file=sys.stderr
                )
                out.append(rec)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=300, help="DEEP R step repeats")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--big-repeats", type=int, default=7, help="4096x4096 repeats")
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--density", type=float, default=0.01)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--crossover", action="store_true", help="also measure the sparse/dense crossover grid"
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    info = machine_info()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(f"machine {info['machine']} ({info['cpu']}, {info['cores']} cores), torch {info['torch']}, "
          f"{args.threads} thread(s), load {load}", file=sys.stderr)  # fmt: skip
    records = bench_mlp_step(args.repeats, args.warmup)
    records.append(bench_big_layer(args.n, args.density, args.batch, args.big_repeats, 2))
    if args.crossover:
        records += bench_crossover(5)
    print(
        "| DEEP R MLP (CPU time, median) | optimizer | dense us | DEEP R us | ratio (<= 1.2?) | wall ratio "
        "| numpy step us (ratio) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in records:
        if r["benchmark"] == "deep_r_mlp_step":
            numpy_side = f"{r['deep_r_numpy_us']} ({r['numpy_ratio']})"
            print(f"| {r['what']} | {r['optimizer']} | {r['dense_us']} | {r['deep_r_us']} ({r['impl']}) "
                  f"| {r['ratio']} | {r['wall_ratio']} | {numpy_side} |")  # fmt: skip
    big = next(r for r in records if r["benchmark"] == "sparse_vs_masked_dense")
    print(
        f"\n| {big['n']}x{big['n']} at {big['density']:.0%}, batch {big['batch']} | fwd+bwd ms (CPU time) |"
    )
    print("|---|---:|")
    print(f"| masked dense x @ (W*M)^T | {big['masked_dense_ms']} |")
    print(f"| SparseLinear dense path (scatter + matmul) | {big['layer_dense_ms']} |")
    speed = f"speed-up {big['speedup']}x; wall {big['wall_speedup']}x"
    print(f"| sparse path (CSR) | {big['sparse_ms']} ({speed}) |")
    payload = {"machine": info, "threads": args.threads, "load_avg_1m_before": load, "records": records}
    path = args.json or Path("benchmarks") / "results" / f"rewiring-{machine_slug()}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)
    print(f"results: {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
