"""Inference cost of an AnalogLinear layer with every PCM effect on, against the digital nn.Linear.

    .venv/bin/python benchmarks/analog.py [--features 1024] [--batch 256] [--repeats 60] [--threads 1 2]

Layer ``nn.Linear(F, F)`` (bias on) and its hardware version ``AnalogLinear.from_linear`` with aihwkit's
PCM model (programming noise, drift, read noise, global drift compensation), aged to one day, inputs
``randn(B, F)``, under ``torch.no_grad()``. Each read draws fresh read noise; the read samplers ``pool``
(default), ``fresh`` and ``exact`` are timed against the same digital layer. The cases run interleaved
(digital, pool, fresh, exact, digital, ...) after ``--warmup`` rounds; the ratio is the median of the
per-round ratios to the digital time of the same round. ``age()`` (once per clock move) is timed apart.
Each ``--threads`` count is measured in turn (``torch.set_num_threads``). Writes a list of records (one per
thread count, with the 1-minute load average before timing) to ``benchmarks/results/analog-<machine>.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from neuromorph.bench import machine_info
from neuromorph.hardware import AnalogLinear, PCMParameters, age
from neuromorph.runs import atomic_write_json

SAMPLERS = ("pool", "fresh", "exact")


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(args: argparse.Namespace, threads: int) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(args.seed)
    f, b = args.features, args.batch
    digital = nn.Linear(f, f)
    x = torch.randn(b, f)
    layers = {}
    for sampler in SAMPLERS:
        g = torch.Generator().manual_seed(args.seed)
        layer = AnalogLinear.from_linear(digital, PCMParameters(read_sampler=sampler), generator=g)
        layers[sampler] = age(nn.Sequential(layer), args.t)[0]

    cases = {"digital": lambda: digital(x), **{s: (lambda layer=layers[s]: layer(x)) for s in SAMPLERS}}
    times: dict[str, list[float]] = {k: [] for k in cases}
    load = os.getloadavg()[0]
    with torch.no_grad():
        for _ in range(args.warmup):
            for fn in cases.values():
                fn()
        for _ in range(args.repeats):
            for name, fn in cases.items():
                times[name].append(_time(fn))
        age_times = [_time(lambda: age(nn.Sequential(layers["pool"]), args.t)) for _ in range(5)]
    ratios = {
        k: statistics.median(t / d for t, d in zip(v, times["digital"], strict=True))
        for k, v in times.items()
        if k != "digital"
    }
    return {
        **machine_info(),
        "features": f,
        "batch": b,
        "t_seconds": args.t,
        "repeats": args.repeats,
        "load_avg_1m_before": load,
        "median_ms": {k: 1e3 * statistics.median(v) for k, v in times.items()},
        "ratio_to_digital": ratios,
        "age_ms_median": 1e3 * statistics.median(age_times),
        "target_ratio": 1.3,
        "target_met": ratios["pool"] <= 1.3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--features", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, torch.get_num_threads()])
    parser.add_argument(
        "--t", type=float, default=86400.0, help="age of the devices in seconds (default 1 day)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="default benchmarks/results/analog-<machine>.json")
    args = parser.parse_args()

    records = []
    for threads in dict.fromkeys(args.threads):
        r = measure(args, threads)
        records.append(r)
        print(
            f"machine {r['machine']} ({r['cpu']}, {r['cores']} cores), {r['threads']} threads, torch "
            f"{r['torch']}, load {r['load_avg_1m_before']:.1f}; Linear {r['features']}x{r['features']}, "
            f"batch {r['batch']}, devices aged {args.t:g} s, {args.repeats} rounds"
        )
        print(f"  digital nn.Linear         {r['median_ms']['digital']:8.2f} ms")
        for s in SAMPLERS:
            print(
                f"  AnalogLinear ({s:5s})     {r['median_ms'][s]:8.2f} ms   "
                f"{r['ratio_to_digital'][s]:.2f}x digital"
            )
        print(f"  age() once per clock move {r['age_ms_median']:8.2f} ms")
    name = f"analog-{records[0]['machine']}.json"
    path = Path(args.json) if args.json else Path("benchmarks") / "results" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, records)
    print(f"results: {path}")


if __name__ == "__main__":
    main()
