"""GPU check of the LSNN stack (run on a CUDA machine; not part of the test suite).

1. The fused ALIF BPTT on CUDA equals the eager reference (float64, spikes and gradients).
2. Forward+backward time of one training iteration at the paper's sizes (median of repeated runs after
   warm-up, gradients checked first): store-recall (B 128, T 2400, 20 neurons) and sMNIST (B 256,
   T 840, 220 neurons, 80 inputs), reference vs fused.

    python benchmarks/device_check.py --out check.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from neuromorph.kernels.alif_sequence import alif_sequence_fused, alif_sequence_reference
from neuromorph.layers import LeakyReadout, RecurrentSpikingLayer
from neuromorph.neurons.alif import ALIFParameters, ALIFState


def equality(device: torch.device) -> dict:
    g = torch.Generator().manual_seed(0)
    t, b, n, d = 60, 3, 7, 4
    ext = (torch.randn(t + d, b, n, generator=g, dtype=torch.float64) * 0.5).to(device)
    w = (torch.randn(d, n, n, generator=g, dtype=torch.float64) * 0.05).to(device)
    z0 = torch.zeros(b, n, dtype=torch.float64, device=device)
    state = ALIFState(z0.clone(), z0.clone(), z0.clone(), z0.clone())
    p = ALIFParameters(
        beta=torch.tensor([0.0, 0, 0, 1.7, 1.7, 1.7, 1.7], dtype=torch.float64, device=device),
        tau_adapt=200.0,
        n_refractory=2,
    )
    pending = torch.zeros(b, d, n, dtype=torch.float64, device=device)
    out = {}
    for name, fn in (("reference", alif_sequence_reference), ("fused", alif_sequence_fused)):
        e, ww = ext.clone().requires_grad_(), w.clone().requires_grad_()
        res = fn(e, ww, state, pending, p)
        (res.z * torch.arange(res.z.numel(), device=device).view_as(res.z).sin()).sum().backward()
        out[name] = (res.z, e.grad, ww.grad)
    r, f = out["reference"], out["fused"]
    return {
        "spikes": int(r[0].sum()),
        "spikes_equal": bool(torch.equal(r[0], f[0])),
        "max_abs_diff_grad_external": float((r[1] - f[1]).abs().max()),
        "max_abs_diff_grad_w_rec": float((r[2] - f[2]).abs().max()),
    }


def time_iteration(device, *, steps, batch, n_in, n_lif, n_alif, n_out, impl, rate, repeats=5):
    torch.manual_seed(0)
    layer = RecurrentSpikingLayer(n_in, n_lif, n_alif, n_refractory=3, n_delay=10, impl=impl).to(device)
    readout = LeakyReadout(n_lif + n_alif, n_out).to(device)
    x = (torch.rand(steps, batch, n_in, device=device) < rate).float()

    def once():
        layer.zero_grad(set_to_none=True)
        z, _ = layer(x)
        out, _ = readout(z)
        (out.square().mean() + z.mean()).backward()
        return layer.w_rec.grad

    grad = once()
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, "no gradient"
    once()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        once()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="device_check.json")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    report = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "equality": equality(device),
    }
    print(json.dumps(report), flush=True)
    sizes = {
        "store_recall_b128": dict(steps=2400, batch=128, n_in=100, n_lif=10, n_alif=10, n_out=2, rate=0.025),
        "smnist_b256": dict(steps=840, batch=256, n_in=80, n_lif=120, n_alif=100, n_out=10, rate=0.02),
    }
    for name, kw in sizes.items():
        for impl in ("fused", "reference"):
            key = f"{name}_{impl}_s"
            report[key] = time_iteration(device, impl=impl, repeats=5 if impl == "fused" else 2, **kw)
            print(key, report[key], flush=True)
    with open(args.out, "w") as fh:
        json.dump(report, fh, indent=2)


if __name__ == "__main__":
    main()
