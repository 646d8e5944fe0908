"""Memory of one gradient computation, e-prop vs BPTT, as the sequence grows (T = 1,000 ... 10,000).

A pattern-generation network (100 Poisson inputs, 100 LIF + 100 ALIF neurons, 3 leaky-readout outputs,
batch 1, MSE on every step), in a fresh process per (method, T): the growth of the process's peak
resident set (``VmHWM`` after ``/proc/self/clear_refs``) during one gradient computation:

``eprop``  ``learning.eprop_gradients`` (online; traces ``[B, n_pre, N]``)
``bptt``   autograd through the layer (``impl="auto"``) and the readout

    python benchmarks/eprop_memory.py [--steps 1000 2000 5000 10000] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import subprocess
import sys
import time


def _kb(field: str) -> int:
    m = re.search(rf"^{field}:\s+(\d+) kB", pathlib.Path("/proc/self/status").read_text(), re.MULTILINE)
    return int(m.group(1))


def _child(method: str, steps: int) -> dict:
    import torch

    from neuromorph.layers import LeakyReadout, RecurrentSpikingLayer
    from neuromorph.learning import eprop_gradients

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    layer = RecurrentSpikingLayer(100, 100, 100, tau_adapt=500.0, generator=g)
    readout = LeakyReadout(200, 3, generator=g)
    x = (torch.rand(steps, 1, 100, generator=g) < 0.02).float()
    t = torch.arange(steps, dtype=torch.float32).view(-1, 1, 1)
    target = torch.sin(2 * torch.pi * t / torch.tensor([250.0, 400.0, 1000.0]))
    # warm-up on a short sequence: library initialisation is not the method's memory
    for warm in (True, False):
        xs, ts = (x[:50], target[:50]) if warm else (x, target)
        pathlib.Path("/proc/self/clear_refs").write_text("5")
        before = _kb("VmRSS")
        t0 = time.perf_counter()
        if method == "eprop":
            eprop_gradients(layer, readout, xs, lambda i, out, ts=ts: out - ts[i])
        else:
            layer.zero_grad()
            readout.zero_grad()
            z, _ = layer(xs)
            out, _ = readout(z)
            (0.5 * (out - ts).square().sum()).backward()
        seconds = time.perf_counter() - t0
        peak = _kb("VmHWM")
    return {
        "method": method,
        "steps": steps,
        "peak_extra_mb": round((peak - before) / 1024, 1),
        "seconds": round(seconds, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, nargs="+", default=[1000, 2000, 5000, 10000])
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(args.child[0], int(args.child[1]))))
        return
    rows = []
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    for steps in args.steps:
        for method in ("eprop", "bptt"):
            cmd = [sys.executable, __file__, "--child", method, str(steps)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                raise SystemExit(proc.stderr[-2000:])
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    if args.json:
        path = pathlib.Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(rows, indent=1))
        os.replace(tmp, path)


if __name__ == "__main__":
    main()
