"""The ``neuromorph`` command: list recipes, run one, rebuild a report.

    neuromorph list
    neuromorph run RECIPE [--quick] [--set key=value ...] [--seed N] [--out DIR] [--device cpu|cuda]
    neuromorph run --resume RUN
    neuromorph report RUN

Under ``torchrun`` the same command trains with DistributedDataParallel; rank 0 writes the run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

import torch

from . import __version__


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


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "list":
            return _cmd_list()
        if args.command == "run":
            return _cmd_run(args)
        return _cmd_report(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"neuromorph: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
