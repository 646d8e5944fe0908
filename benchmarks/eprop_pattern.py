"""Pattern generation (e-prop paper, Fig. 2): a recurrent LIF/ALIF network learns to produce three
fixed target signals (sums of sinusoids) from a frozen Poisson input, with e-prop (symmetric and
random feedback) and with BPTT; the same initial network, Adam, one sequence per iteration.

    python benchmarks/eprop_pattern.py [--steps 1000] [--iterations 200] [--json PATH]

Prints the normalised MSE (MSE / variance of the target) every 20 iterations and at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import time

import torch

from neuromorph.layers import LeakyReadout, RecurrentSpikingLayer
from neuromorph.learning import apply_gradients, eprop_gradients


def make(seed: int):
    g = torch.Generator().manual_seed(seed)
    layer = RecurrentSpikingLayer(
        50, 50, 50, tau_adapt=500.0, beta=1.0, threshold=0.03, n_refractory=2, generator=g
    )
    readout = LeakyReadout(100, 3, tau_out=20.0, bias=True, generator=g)
    return layer, readout


def task(steps: int, seed: int):
    g = torch.Generator().manual_seed(seed + 1)
    x = (torch.rand(steps, 1, 50, generator=g) < 0.02).float()
    t = torch.arange(steps, dtype=torch.float32) / 1000.0
    target = torch.zeros(steps, 1, 3)
    for k in range(3):  # each output: sum of 4 sinusoids of 1, 2, 3, 5 Hz with random amplitude and phase
        amp, phase = torch.rand(4, generator=g) + 0.5, torch.rand(4, generator=g) * 2 * torch.pi
        freq = torch.tensor([1.0, 2.0, 3.0, 5.0])
        target[:, 0, k] = (amp[:, None] * torch.sin(2 * torch.pi * freq[:, None] * t + phase[:, None])).sum(0)
    return x, target / target.std()


def train(method: str, steps: int, iterations: int, seed: int) -> dict:
    torch.manual_seed(seed)
    layer, readout = make(seed)
    x, target = task(steps, seed)
    params = [layer.w_in, layer.w_rec, readout.weight, readout.bias]
    opt = torch.optim.Adam(params, lr=3e-3)
    curve, t0 = [], time.perf_counter()
    for it in range(iterations):
        opt.zero_grad()
        if method == "bptt":
            z, _ = layer(x)
            out, _ = readout(z)
            loss = 0.5 * (out - target).square().sum()
            loss.backward()
            mse = float((out - target).square().mean())
        else:
            fb = "symmetric" if method == "eprop" else "random"
            res = eprop_gradients(
                layer, readout, x, lambda t, o: o - target[t], feedback=fb,
                generator=torch.Generator().manual_seed(seed + 7),
            )  # fmt: skip
            apply_gradients(layer, res.grads, readout)
            mse = float((res.outputs - target).square().mean())
        opt.step()
        curve.append(mse)
        if it % 20 == 0 or it == iterations - 1:
            print(f"{method:14s} it {it:4d}  nmse {mse:.3f}  {time.perf_counter() - t0:.0f} s", flush=True)
    return {"method": method, "nmse_first": curve[0], "nmse_last": curve[-1], "curve": curve,
            "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--methods", nargs="+", default=["eprop", "eprop-random", "bptt"])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = [train(m, args.steps, args.iterations, args.seed) for m in args.methods]
    for r in rows:
        print(f"{r['method']:14s} nmse {r['nmse_first']:.3f} -> {r['nmse_last']:.3f} in {r['seconds']} s")
    if args.json:
        path = pathlib.Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(
            json.dumps({"steps": args.steps, "iterations": args.iterations, "rows": rows}, indent=1)
        )
        os.replace(tmp, path)


if __name__ == "__main__":
    main()
