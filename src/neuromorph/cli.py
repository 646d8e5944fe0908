"""The ``neuromorph`` command: list recipes, run one, rebuild a report.

    neuromorph list
    neuromorph run RECIPE [--quick] [--set key=value ...] [--seed N] [--out DIR] [--device cpu|cuda]
    neuromorph run --resume RUN
    neuromorph report RUN
    neuromorph export RUN -o model.nir [--strict]
    neuromorph bench [--case a|b|c ...] [--json PATH] [--repeats N] [--frameworks ...]

Under ``torchrun`` the same command trains with DistributedDataParallel; rank 0 writes the run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

import torch

from . import __version__
from .allocator import tune_allocator


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="neuromorph", description="Brain-inspired learning on neuromorphic hardware."
    )
    p.add_argument("--version", action="version", version=f"neuromorph {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="name every recipe with its paper and what it shows")
    r = sub.add_parser("run", help="run a recipe (or resume a run)")
    r.add_argument("recipe", nargs="?", help="recipe name (see `neuromorph list`)")
    r.add_argument("--quick", action="store_true", help="the CPU-minutes version")
    r.add_argument(
        "--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="override a config value"
    )
    r.add_argument("--seed", type=int, default=None, help="seed of every random draw (default 0)")
    r.add_argument("--out", default=None, help="run directory (default runs/RECIPE-YYYYmmdd-HHMMSS)")
    r.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    r.add_argument("--resume", default=None, metavar="RUN", help="continue the run in this directory")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    rep = sub.add_parser("report", help="rebuild report.html (and plots) of a run")
    rep.add_argument("run", help="run directory")
    e = sub.add_parser(
        "export",
        help="write a run's trained network as a NIR file (.nir) for other simulators and chips",
        description="Export the network of a run whose recipe supports it (smnist with n_alif=0); see "
        "docs/interop.md for the unit conventions and what NIR cannot express.",
    )
    e.add_argument("run", help="run directory")
    e.add_argument("-o", "--output", required=True, metavar="PATH", help="the .nir file to write")
    e.add_argument(
        "--strict",
        action="store_true",
        help="refuse what NIR 1.0 cannot express instead of keeping it in the nodes' metadata",
    )
    b = sub.add_parser(
        "bench",
        help="time forward+backward, peak memory and gradients vs snnTorch, Norse, SpikingJelly",
        description="Benchmark cases a (Linear 512->512 + LIF), b (LSNN 100+100, T=1000), "
        "c (recurrent 1024 LIF, T=500); see neuromorph.bench for what is measured.",
    )
    b.add_argument(
        "--case",
        dest="cases",
        nargs="+",
        action="extend",
        default=None,
        metavar="a|b|c",
        help="(default: all)",
    )
    b.add_argument("--json", default=None, metavar="PATH", help="default benchmarks/results/<machine>.json")
    b.add_argument("--repeats", type=int, default=5, help="timed runs per framework (median; default 5)")
    b.add_argument("--warmup", type=int, default=2, help="untimed runs before timing (default 2)")
    b.add_argument("--frameworks", nargs="+", default=None, help="default: neuromorph eager and every peer")
    b.add_argument("--scale", type=float, default=1.0, help="multiply every size by this (0, 1] (smoke runs)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    b.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    from .diffusion.restore_cli import add_parser as add_restore_parser

    add_restore_parser(sub)
    return p


def _device(name: str) -> torch.device:
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ValueError(f"--device must be cpu, cuda or cuda:N, got {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    return torch.device(name)


def _cmd_list() -> int:
    from .recipes import RECIPES

    for name, mod in sorted(RECIPES.items()):
        print(f"{name:14s} {mod.SUMMARY}\n{'':14s} paper: {mod.PAPER}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from .distributed import broadcast_object, init_distributed, shutdown
    from .recipes import get_recipe
    from .recipes._common import Context, apply_overrides, config_from_dict, config_to_dict
    from .runs import Run, graceful_stop

    if args.resume is not None:
        if args.recipe or args.quick or args.sets or args.seed is not None or args.out:
            raise ValueError(
                "--resume RUN takes no recipe, --quick, --set, --seed or --out: the run keeps its config"
            )
        run = Run.open(args.resume)  # validates before anything is written
        recipe = get_recipe(run.recipe)
        cfg = config_from_dict(recipe.Config, run.config)
        resume = run.load_checkpoint()
    else:
        if not args.recipe:
            raise ValueError("run needs a RECIPE (see `neuromorph list`) or --resume RUN")
        recipe = get_recipe(args.recipe)
        cfg = recipe.Config()
        if args.quick:
            cfg = recipe.quick(cfg)
        if args.seed is not None:
            cfg = dataclasses.replace(cfg, seed=args.seed)
        cfg = apply_overrides(cfg, args.sets)
        recipe.check(cfg)  # fail before anything is written
        run, resume = None, None
    device = _device(args.device)
    dist = init_distributed(args.device)
    try:
        if run is None:
            out = args.out
            if dist.world_size > 1:
                created = Run.create(recipe.NAME, config_to_dict(cfg), out=out) if dist.is_main else None
                out = broadcast_object(str(created.dir) if created else None, dist)
                run = created or Run.create(recipe.NAME, config_to_dict(cfg), out=out, is_writer=False)
            else:
                run = Run.create(recipe.NAME, config_to_dict(cfg), out=out)
        elif not dist.is_main:
            run = Run.open(run.dir, is_writer=False)
        if dist.is_main:
            print(f"run directory: {run.dir}", file=sys.stderr)
        with graceful_stop() as stop, run:
            ctx = Context(
                run=run,
                dist=dist,
                device=dist.device if dist.world_size > 1 else device,
                progress=not args.no_progress,
                stop=stop,
                resume=resume,
            )
            results = recipe.run(cfg, ctx)
        if dist.is_main:
            if results.get("stopped"):
                print(
                    f"stopped; checkpoint saved. Continue with: neuromorph run --resume {run.dir}",
                    file=sys.stderr,
                )
                return 130
            shown = {k: v for k, v in results.items() if not isinstance(v, dict)}
            print(json.dumps(shown, indent=2, default=str))
            print(f"report: {run.path('report.html')}", file=sys.stderr)
        return 0
    finally:
        shutdown(dist)


def _cmd_report(args: argparse.Namespace) -> int:
    from .report import build_report

    print(build_report(args.run))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    import warnings

    from . import nir as nmnir
    from .recipes import RECIPES, get_recipe
    from .recipes._common import config_from_dict
    from .runs import Run

    try:
        run = Run.open(args.run, is_writer=False)
    except ValueError as err:
        raise ValueError(str(err).replace("--resume", "export", 1)) from None
    recipe = get_recipe(run.recipe)
    exporter = getattr(recipe, "export_model", None)
    if exporter is None:
        able = sorted(name for name, mod in RECIPES.items() if hasattr(mod, "export_model"))
        raise ValueError(
            f"recipe {run.recipe!r} has no NIR export; recipes with one: {', '.join(able) or 'none'}"
        )
    model, sample = exporter(config_from_dict(recipe.Config, run.config), run)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", nmnir.NIRConventionWarning)
        graph = nmnir.export(model, sample, strict=args.strict)
    for w in caught:
        if issubclass(w.category, nmnir.NIRConventionWarning):
            print(f"neuromorph: note: {w.message}", file=sys.stderr)
    nmnir.save(graph, args.output)
    print(f"{args.output}: {len(graph.nodes)} NIR nodes, {len(graph.edges)} edges (run {run.dir})")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from . import bench

    cases = args.cases or list(bench.CASES)
    frameworks = args.frameworks or list(bench.FRAMEWORKS)
    for c in cases:  # fail before anything runs
        bench._check_choice("--case", c, bench.CASES)
    for fw in frameworks:
        bench._check_choice("--frameworks", fw, bench.FRAMEWORKS)
    info = bench.machine_info()
    print(
        f"machine {info['machine']} ({info['cpu']}, {info['cores']} cores), torch {info['torch']}, "
        f"{info['threads']} threads, {info['date']}",
        file=sys.stderr,
    )

    def progress(r: dict) -> None:
        t = r["fwd_bwd_ms_median"]
        shown = "skipped" if t is None else f"{t:.1f} ms"
        print(f"  {r['case']} {r['framework']:12s} {shown}  {r['note']}", file=sys.stderr)

    records = bench.run_benchmark(
        cases,
        frameworks,
        repeats=args.repeats,
        warmup=args.warmup,
        seed=args.seed,
        scale=args.scale,
        memory=not args.no_memory,
        progress=progress,
        device=str(_device(args.device)),
    )
    path = bench.write_results(records, args.json)
    print(bench.markdown_table(records))
    print(f"results: {path}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    tune_allocator()  # freed memory stays in the process: BPTT loops page-fault far less (allocator.py)
    try:
        if args.command == "list":
            return _cmd_list()
        if args.command == "run":
            return _cmd_run(args)
        if args.command == "bench":
            return _cmd_bench(args)
        if args.command == "export":
            return _cmd_export(args)
        if args.command == "restore":
            from .diffusion.restore_cli import run as restore_run

            return restore_run(args)
        return _cmd_report(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"neuromorph: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
