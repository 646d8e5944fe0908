"""Patch-diffusion sampler benchmark (WeatherDiff, Özdenizci & Legenstein, TPAMI 2023, arXiv:2207.14626).

    .venv/bin/python benchmarks/diffusion.py [--checkpoint RUN] [--repeats 3] [--paper-size]    (make bench)

1. Speed, same network, same steps, same image and noise: the batched overlapping-patch sampler
   (``restore``: patches gathered with one index, evaluated in batches, scattered back with index_add)
   against the official one-patch-at-a-time loop (``restore_patch_loop``); timed interleaved
   (loop, batched, loop, batched, ...; median) so that other load on the machine hits both alike, and
   the outputs compared (max abs difference). Cases: the run's network on a 128 x 128 held-out image
   at the run's stride; with ``--paper-size`` also a WeatherDiff64-size UNet (random weights;
   ``--paper-stride``, ``--paper-steps``). ``--device cuda`` runs everything on the GPU (times taken
   after synchronising).
2. Quality: PSNR_Y of DPM-Solver++ with 10 steps against DDIM with 25 steps on the run's held-out test
   set, same network, stride and initial noise (x_T of image i from ``(eval_seed, i)``, as the recipe
   draws it, so the DDIM figure equals the run's ``psnr_restored``).

The checkpoint defaults to the newest finished ``runs/weather*`` run (``neuromorph run weather --quick``);
without one the quick-size network is used with its initial (untrained) weights and part 2 is skipped.
Targets (issue 9): speed-up >= 10 with max |diff| < 1e-5; |PSNR_Y(DPM++ 10) - PSNR_Y(DDIM 25)| <= 0.3 dB
(reported as ``pass_*``; the script does not fail on a miss). Writes
``benchmarks/results/diffusion-<machine>.json`` (atomically).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from neuromorph.bench import machine_info, machine_slug
from neuromorph.data.weather import add_weather, natural_images
from neuromorph.diffusion.metrics import psnr_y, ssim_y
from neuromorph.diffusion.model import PAPER_64, activation_bytes_per_patch, autocast_for, build_model
from neuromorph.diffusion.restore_cli import load_restoration_model
from neuromorph.diffusion.sampler import patch_grid, patches_per_batch, restore, restore_patch_loop
from neuromorph.diffusion.train import from_model_range, to_model_range
from neuromorph.recipes import weather
from neuromorph.recipes._common import seeded_generator
from neuromorph.runs import atomic_write_json


def _eps_fn(net, amp: bool = False):
    @torch.no_grad()
    def eps_fn(c, x, t):
        with autocast_for(c.device, amp):
            return net(c, x, t).float()

    return eps_fn


def _sync(device: torch.device) -> None:
    """Wait for the device's queued work, so that a wall-clock time covers it (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def speed_case(name, net, patch, cond, stride, steps, repeats, memory_mb, sampler="ddim", amp=False) -> dict:
    eps_fn = _eps_fn(net, amp)
    # One untimed restoration of each kind first: CUDA/cuDNN pick their kernels on the first calls.
    warm_kw = dict(patch=patch, stride=stride, steps=1, sampler=sampler)
    restore_patch_loop(eps_fn, cond, generator=torch.Generator().manual_seed(61), **warm_kw)
    restore(eps_fn, cond, generator=torch.Generator().manual_seed(61), batch_patches=8, **warm_kw)
    batch = patches_per_batch(activation_bytes_per_patch(net.cfg), memory_mb * 2**20)
    kw = dict(patch=patch, stride=stride, steps=steps, sampler=sampler)
    times = {"loop": [], "batched": []}
    outs = {}
    for _ in range(repeats):
        for kind in ("loop", "batched"):
            gen = torch.Generator().manual_seed(61)
            _sync(cond.device)
            t0 = time.perf_counter()
            if kind == "loop":
                out = restore_patch_loop(eps_fn, cond, generator=gen, **kw)
            else:
                out = restore(eps_fn, cond, generator=gen, batch_patches=batch, **kw)
            _sync(cond.device)
            times[kind].append(time.perf_counter() - t0)
            outs[kind] = out
    h, w = cond.shape[-2:]
    loop_s, batched_s = statistics.median(times["loop"]), statistics.median(times["batched"])
    record = {
        "case": name,
        "device": str(cond.device),
        "image": [h, w],
        "patch": patch,
        "stride": stride,
        "patches": patch_grid(max(h, patch), max(w, patch), patch, stride).count,
        "steps": steps,
        "sampler": sampler,
        "amp_bf16": amp,
        "batch_patches": batch,
        "parameters": sum(p.numel() for p in net.parameters()),
        "loop_s": loop_s,
        "batched_s": batched_s,
        "speedup": loop_s / batched_s,
        "max_abs_diff": float((outs["loop"] - outs["batched"]).abs().max()),
        "pass_10x_identical": bool(
            loop_s / batched_s >= 10 and float((outs["loop"] - outs["batched"]).abs().max()) < 1e-5
        ),
        "loop_runs_s": times["loop"],
        "batched_runs_s": times["batched"],
    }
    print(
        f"{name}: {record['patches']} patches x {steps} steps: loop {loop_s:.2f} s, "
        f"batched {batched_s:.2f} s, x{record['speedup']:.1f}, max |diff| {record['max_abs_diff']:.2e}",
        file=sys.stderr,
    )
    return record


def quality(net, cfg, stride: int, memory_mb: int, device: torch.device) -> dict:
    test = weather._test_set(cfg)
    eps_fn = _eps_fn(net)
    batch = patches_per_batch(activation_bytes_per_patch(cfg.model), memory_mb * 2**20)
    scores = {}
    for sampler, steps in (("ddim", 25), ("dpm", 10)):
        psnrs, ssims = [], []
        t0 = time.perf_counter()
        for i, (_, clean, degraded) in enumerate(test):
            cond = to_model_range(degraded[None]).to(device)
            gen = [seeded_generator(cfg.eval_seed, i)]
            out = from_model_range(
                restore(
                    eps_fn,
                    cond,
                    patch=cfg.model.patch,
                    stride=stride,
                    steps=steps,
                    sampler=sampler,
                    generator=gen,
                    batch_patches=batch,
                ).cpu()
            )[0]
            psnrs.append(psnr_y(out, clean))
            ssims.append(ssim_y(out, clean))
        scores[f"{sampler}{steps}"] = {
            "psnr_y": float(np.mean(psnrs)),
            "ssim_y": float(np.mean(ssims)),
            "seconds": time.perf_counter() - t0,
        }
        print(f"quality {sampler} {steps} steps: PSNR_Y {np.mean(psnrs):.3f} dB", file=sys.stderr)
    scores["psnr_input"] = float(np.mean([psnr_y(d, c) for _, c, d in test]))
    scores["dpm10_minus_ddim25_db"] = scores["dpm10"]["psnr_y"] - scores["ddim25"]["psnr_y"]
    scores["pass_within_0.3db"] = bool(abs(scores["dpm10_minus_ddim25_db"]) <= 0.3)
    scores["test_images"] = len(test)
    scores["stride"] = stride
    return scores


def newest_weather_run(root: Path = Path("runs")) -> Path | None:
    """The most recently finished ``runs/weather*`` directory (it holds the EMA weights), or None."""
    runs = [p.parent for p in root.glob(f"weather*/{weather.MODEL_FILE}")]
    return max(runs, key=lambda p: (p / weather.MODEL_FILE).stat().st_mtime) if runs else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--checkpoint",
        default=None,
        metavar="RUN",
        help="a finished `neuromorph run weather` run (default: the newest runs/weather*)",
    )
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per sampler (interleaved; median)")
    ap.add_argument("--steps", type=int, default=25, help="sampler steps of the speed case")
    ap.add_argument("--size", type=int, default=128, help="side of the square test image of the speed case")
    ap.add_argument("--paper-size", action="store_true", help="also time a WeatherDiff64-size UNet")
    ap.add_argument("--paper-stride", type=int, default=32, help="its stride (paper: 16)")
    ap.add_argument("--paper-steps", type=int, default=1, help="its sampler steps")
    ap.add_argument("--amp", action="store_true", help="CUDA: also time the --paper-size case in bfloat16")
    ap.add_argument("--memory-mb", type=int, default=512, help="activation budget per network call")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (cuda: times include synchronisation)")
    ap.add_argument("--json", default=None, help="default benchmarks/results/diffusion-<machine>.json")
    args = ap.parse_args(argv)
    try:
        device = torch.device(args.device)
    except RuntimeError as exc:
        ap.error(f"--device: {args.device!r} is not a torch device ({exc}); use cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error(f"--device: {args.device!r} asked for, but torch sees no CUDA device")
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        # float32 convolutions in full precision: with TF32 (cuDNN's default) the batched and the one-patch
        # sampler would use different algorithms and differ by ~1e-3, hiding what the comparison checks.
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    info = machine_info()
    print(
        f"machine {info['machine']} ({info['cpu']}, {info['cores']} cores), {info['threads']} threads",
        file=sys.stderr,
    )

    if args.checkpoint is None:
        args.checkpoint = newest_weather_run()
    if args.checkpoint:
        net, cfg = load_restoration_model(args.checkpoint)
        source = f"trained: {args.checkpoint}"
    else:
        cfg = weather.quick(weather.Config())
        net = build_model(cfg.model, cfg.seed).eval()
        source = "quick-size network, initial weights (no --checkpoint)"
    img = natural_images("test", short_side=256)["astronaut"]
    top = (img.shape[0] - args.size) // 2
    clean = img[top : top + args.size, top : top + args.size]
    degraded = add_weather(np.ascontiguousarray(clean), "rain", seed=0)
    net = net.to(device)
    cond = to_model_range(degraded[None]).to(device)
    records = [speed_case("run-network", net, cfg.model.patch, cond, cfg.stride, args.steps, args.repeats,
                          args.memory_mb)]  # fmt: skip
    if args.paper_size:
        big = build_model(PAPER_64, 0).eval().to(device)
        records.append(speed_case("weatherdiff64-size", big, 64, cond, args.paper_stride, args.paper_steps,
                                  max(1, args.repeats - 1), args.memory_mb))  # fmt: skip
        if args.amp and device.type == "cuda":
            records.append(speed_case("weatherdiff64-size-bf16", big, 64, cond, args.paper_stride,
                                      args.paper_steps, max(1, args.repeats - 1), args.memory_mb,
                                      amp=True))  # fmt: skip
    if device.type == "cuda":
        info = {**info, "gpu": torch.cuda.get_device_name(device), "torch": torch.__version__, "tf32": False}
    result = {"machine": info, "network": source, "speed": records}
    if args.checkpoint:
        result["quality"] = quality(net, cfg, cfg.stride, args.memory_mb, device)
    path = Path(args.json) if args.json else Path("benchmarks/results") / f"diffusion-{machine_slug()}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, result)
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))
    print(f"results: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
