"""Time forward + backward of an LSNN layer + leaky readout on store-recall-sized input, per ALIF path.

    .venv/bin/python benchmarks/alif_cpu.py [--steps 2400] [--batch 64] [--repeats 5] [--impls fused native]

``RecurrentSpikingLayer(100, 10, 10, n_refractory=3, n_delay=10)`` + ``LeakyReadout(20, 2)`` on
``(torch.rand(T, B, 100) < 0.025).float()``, single thread; the median of ``--repeats`` runs after two
warm-ups. ``reference`` runs on ``--reference-steps`` steps only (it is slow). Before timing, the
gradients of ``fused`` and ``native`` are checked to agree.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from neuromorph.kernels import cpu_native
from neuromorph.layers import LeakyReadout, RecurrentSpikingLayer


def build(impl: str, seed: int) -> tuple[RecurrentSpikingLayer, LeakyReadout]:
    g = torch.Generator().manual_seed(seed)
    layer = RecurrentSpikingLayer(100, 10, 10, n_refractory=3, n_delay=10, impl=impl, generator=g)
    return layer, LeakyReadout(20, 2, generator=g)


def step(layer: RecurrentSpikingLayer, readout: LeakyReadout, x: torch.Tensor) -> torch.Tensor:
    layer.zero_grad(set_to_none=True)
    readout.zero_grad(set_to_none=True)
    z, _ = layer(x)
    out, _ = readout(z)
    loss = (out**2).mean() + 1e-3 * z.mean()
    loss.backward()
    return z.detach()


def grads(layer: RecurrentSpikingLayer, readout: LeakyReadout) -> dict[str, torch.Tensor]:
    return {"w_in": layer.w_in.grad, "w_rec": layer.w_rec.grad, "readout": readout.weight.grad}


def check_agreement(x: torch.Tensor, seed: int) -> None:
    runs = {}
    for impl in ("fused", "native"):
        layer, readout = build(impl, seed)
        z = step(layer, readout, x)
        runs[impl] = (z, grads(layer, readout))
    (z_f, g_f), (z_n, g_n) = runs["fused"], runs["native"]
    flips = int((z_f != z_n).sum())
    print(f"check: spikes fused vs native differ in {flips} of {z_f.numel()} entries")
    for name, gf in g_f.items():
        rel = float((g_n[name] - gf).norm() / gf.norm().clamp_min(1e-30))
        print(f"check: grad {name:8s} relative difference {rel:.2e}")
        if rel > 1e-4:
            raise SystemExit(f"gradients of fused and native disagree ({name}: {rel:.2e})")


def time_impl(impl: str, x: torch.Tensor, repeats: int, seed: int) -> list[float]:
    layer, readout = build(impl, seed)
    for _ in range(2):
        step(layer, readout, x)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step(layer, readout, x)
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=2400)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--reference-steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--impls", nargs="+", default=["reference", "fused", "native"])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    x = (torch.rand(args.steps, args.batch, 100) < 0.025).float()
    native = cpu_native.available()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, native: {native}", end="")
    print(f" ({cpu_native.library_path()})" if native else f" ({cpu_native.unavailable_reason()})")
    impls = [i for i in args.impls if i != "native" or native]
    if native and "fused" in impls and "native" in impls:
        check_agreement(x, args.seed)
    for impl in impls:
        xi = x[: args.reference_steps] if impl == "reference" else x
        times = time_impl(impl, xi, args.repeats, args.seed)
        med = statistics.median(times)
        print(
            f"{impl:9s} T={xi.shape[0]:5d} B={args.batch}: median {med * 1e3:8.1f} ms "
            f"(min {min(times) * 1e3:.1f}, max {max(times) * 1e3:.1f}; {med / xi.shape[0] * 1e6:.1f} us/step)"
        )


if __name__ == "__main__":
    main()
