"""BPTT over T = 10,000 steps: peak memory and time of one forward+backward, per implementation.

Case (b) of ``neuromorph bench`` (LSNN 100 LIF + 100 ALIF, 80 inputs, batch 64, its weights, inputs and
spike rate) at T = 10,000. Each
configuration runs in its own process under a memory budget (on CPU an address-space limit of the
process's size after warm-up plus ``--budget-gb``; on CUDA the allocator's peak is reported and the
budget is compared against it), so that one that runs out of memory fails alone and says so:

    python benchmarks/long_sequence.py [--steps 10000] [--budget-gb 6] [--device cpu|cuda]
        [--json benchmarks/results/long-sequence-<machine>.json]

Configurations: ``eager`` (autograd through the reference loop), ``eager+ckpt`` (the same in
checkpointed chunks of ``--every`` steps), ``fused``, ``fused+ckpt``, ``auto`` (what a user gets:
native C on CPU). The gradient of each is checked against ``fused`` on a short prefix first.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import time

CONFIGS = {
    "eager": ("reference", None),
    "eager+ckpt": ("reference", "every"),
    "fused": ("fused", None),
    "fused+ckpt": ("fused", "every"),
    "auto": ("auto", None),
}


def _vm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _child(args) -> dict:
    import dataclasses

    import torch

    from neuromorph.bench import CASES, TAU_MEM, THRESHOLD, _inputs
    from neuromorph.layers import RecurrentSpikingLayer

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    impl, ckpt = CONFIGS[args.config]
    device = torch.device(args.device)
    case = dataclasses.replace(CASES["b"], steps=args.steps)

    def make(impl, every):
        layer = RecurrentSpikingLayer(
            case.n_in, case.n_lif, case.n_alif, tau_mem=TAU_MEM, threshold=THRESHOLD, impl=impl,
            checkpoint_every=every, generator=torch.Generator().manual_seed(0),
        )  # fmt: skip
        with torch.no_grad():
            for w in layer.parameters():
                w.mul_(case.weight_gain)
        return layer.to(device)

    layer = make(impl, args.every if ckpt else None)
    x, r = (t.to(device) for t in _inputs(case, 0))

    def step(xs, rs):
        layer.zero_grad(set_to_none=True)
        z, _ = layer(xs)
        (z * rs).sum().backward()
        return z.detach().mean().item(), layer.w_rec.grad.clone()

    # correctness first, on a short prefix, against the fused path
    ref = make("fused", None)
    z_ref, _ = ref(x[:300])
    (z_ref * r[:300]).sum().backward()
    _, g_short = step(x[:300], r[:300])
    grad_err = (g_short - ref.w_rec.grad).abs().max().item()
    del ref, z_ref

    if device.type == "cpu":
        limit = _vm_bytes() + int(args.budget_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    else:
        torch.cuda.reset_peak_memory_stats()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    try:
        rate, _ = step(x, r)
        if device.type == "cuda":
            torch.cuda.synchronize()
    except (MemoryError, RuntimeError) as exc:
        if "memory" not in str(exc).lower() and not isinstance(exc, MemoryError):
            raise
        return {
            "config": args.config,
            "status": "out of memory",
            "error": str(exc)[:200],
            "grad_max_abs_err": grad_err,
        }
    seconds = time.perf_counter() - t0
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:  # the process's high-water mark; the part before the run is the data, the model and torch
        peak = max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before) / 2**20
    return {
        "config": args.config,
        "status": "ok",
        "seconds": round(seconds, 2),
        "peak_extra_mb": round(peak),
        "spike_rate": round(rate, 4),
        "grad_max_abs_err": grad_err,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=10_000)
    ap.add_argument("--every", type=int, default=100, help="steps per checkpointed chunk")
    ap.add_argument("--budget-gb", type=float, default=6.0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS))
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        args.config = args.child
        print(json.dumps(_child(args)))
        return
    rows = []
    for config in args.configs:
        cmd = [sys.executable, __file__, "--child", config, "--steps", str(args.steps),
               "--every", str(args.every), "--budget-gb", str(args.budget_gb),
               "--device", args.device]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if lines:
            row = json.loads(lines[-1])
        else:  # killed (e.g. by the kernel's OOM killer) or crashed
            row = {
                "config": config,
                "status": f"failed (exit {proc.returncode})",
                "error": proc.stderr[-300:],
            }
        rows.append(row)
        print(json.dumps(row), flush=True)
    meta = {"steps": args.steps, "every": args.every, "budget_gb": args.budget_gb, "device": args.device}
    if args.json:
        path = pathlib.Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
        os.replace(tmp, path)


if __name__ == "__main__":
    main()
