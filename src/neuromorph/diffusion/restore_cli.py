"""``neuromorph restore IMAGE... -o DIR --checkpoint RUN``: restore photographs with a trained model.

WeatherDiff (Özdenizci & Legenstein, TPAMI 2023, arXiv:2207.14626): the weather run's EMA network
(``model_ema.safetensors`` of a ``neuromorph run weather`` directory) restores each image at its own
size with the overlapping-patch sampler (:func:`neuromorph.diffusion.sampler.restore`); the paper's
resizing to multiples of 16 is not needed, as the grid covers any size.

Each output keeps its input's name, format, bit depth and channels (grey stays grey, alpha is passed
through untouched) and is written atomically; a file that already exists is not overwritten unless
``--overwrite``. The lead wires :func:`add_parser` / :func:`run` into ``neuromorph.cli``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

__all__ = ["add_parser", "run", "load_restoration_model"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``restore`` sub-command to an ``argparse`` sub-parsers object; returns its parser."""
    p = subparsers.add_parser(
        "restore",
        help="remove snow, rain, fog and raindrops from photographs with a trained weather model",
        description="Restore images (PNG/JPEG/TIFF/BMP/WebP; grey, RGB, RGBA; 8/16 bit; up to 4096 x 4096) "
        "with the EMA network of a `neuromorph run weather` run. Outputs keep the input's name, format, "
        "bit depth and channels.",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files to restore")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="directory for the restored images")
    p.add_argument(
        "--checkpoint", required=True, metavar="RUN", help="run directory of `neuromorph run weather`"
    )
    p.add_argument(
        "--steps", type=int, default=None, help="sampler steps (default: the run's, 25 in the paper)"
    )
    p.add_argument("--stride", type=int, default=None, help="patch stride r <= p (default: the run's; p/4)")
    p.add_argument("--sampler", choices=("ddim", "dpm"), default=None, help="DDIM (default) or DPM-Solver++")
    p.add_argument(
        "--blend",
        choices=("uniform", "hann"),
        default=None,
        help="how overlapping patch estimates are averaged: uniform (the paper's mean) or hann (windowed, "
        "no seams at small strides); default: the run's",
    )
    p.add_argument("--seed", type=int, default=61, help="seed of the initial noise (default 61, the paper's)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--memory-mb", type=int, default=None, help="activation memory per network call")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def load_restoration_model(run_dir: str | Path, device: str = "cpu"):
    """(network, recipe config) of a weather run; ``ValueError`` naming the checkpoint when it is missing,
    not a weather run, or does not fit the network its config describes."""
    import torch
    import yaml
    from safetensors.torch import load_file

    from ..recipes._common import config_from_dict
    from ..recipes.weather import MODEL_FILE, Config
    from .model import build_model

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"--checkpoint {str(run_dir)!r} does not exist or is not a directory")
    cfg_file, weights = run_dir / "config.yaml", run_dir / MODEL_FILE
    try:
        info = yaml.safe_load(cfg_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"--checkpoint {str(run_dir)!r} has no config.yaml: not a neuromorph run") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ValueError(f"--checkpoint {str(run_dir)!r}: config.yaml is unreadable ({err})") from None
    if not isinstance(info, dict) or info.get("recipe") != "weather":
        recipe = info.get("recipe") if isinstance(info, dict) else None
        raise ValueError(f"--checkpoint {str(run_dir)!r} is a {recipe!r} run, not a weather run")
    try:
        cfg = config_from_dict(Config, info.get("config") or {})
        cfg.validate()
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"--checkpoint {str(run_dir)!r}: its config does not describe a model ({err})"
        ) from None
    if not weights.is_file():
        raise ValueError(
            f"--checkpoint {str(run_dir)!r} has no {MODEL_FILE}: the run has not finished training "
            "(continue it with `neuromorph run --resume`)"
        )
    try:
        tensors = load_file(str(weights))
    except Exception as err:  # safetensors raises its own error types
        raise ValueError(f"--checkpoint {str(run_dir)!r}: {MODEL_FILE} is corrupt ({err})") from None
    net = build_model(cfg.model, cfg.seed)
    try:
        net.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise ValueError(
            f"--checkpoint {str(run_dir)!r}: {MODEL_FILE} does not fit the network of its config ({first})"
        ) from None
    return net.to(torch.device(device)).eval(), cfg


def _restore_one(net, cfg, pixels: np.ndarray, args, device, progress) -> np.ndarray:
    import torch

    from ..data.images import merge_alpha, split_alpha
    from .model import activation_bytes_per_patch, autocast_for
    from .sampler import patches_per_batch, restore
    from .train import from_model_range, to_model_range

    rgb, alpha = split_alpha(pixels)
    cond = to_model_range(rgb[None]).to(device)
    budget = patches_per_batch(activation_bytes_per_patch(cfg.model), args.memory_mb * 2**20)

    @torch.no_grad()
    def eps_fn(c, x, t):
        with autocast_for(device, cfg.amp):
            return net(c, x, t).float()

    out = restore(
        eps_fn,
        cond,
        patch=cfg.model.patch,
        stride=args.stride,
        steps=args.steps,
        sampler=args.sampler,
        generator=torch.Generator().manual_seed(args.seed),
        batch_patches=budget,
        progress=progress,
        blend=args.blend,
    )
    return merge_alpha(from_model_range(out)[0], alpha, pixels.shape[2])


def run(args: argparse.Namespace) -> int:
    """Restore every image of ``args.images`` into ``args.output``; returns the exit status (0 = all
    restored). Bad arguments raise ``ValueError`` before any image is written; an image that cannot be
    read is reported and skipped (status 1 at the end)."""
    import torch
    from tqdm.auto import tqdm

    from ..data.images import encode_image, read_image
    from ..runs import atomic_write_bytes
    from .sampler import patch_grid

    device_name = args.device
    if device_name not in ("cpu", "cuda") and not device_name.startswith("cuda:"):
        raise ValueError(f"--device must be cpu, cuda or cuda:N, got {device_name!r}")
    if device_name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device_name}: CUDA is not available on this machine (use --device cpu)")
    device = torch.device(device_name)
    out_dir = Path(args.output)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"-o {str(out_dir)!r} exists and is not a directory")
    inputs = [Path(p) for p in args.images]
    missing = [str(p) for p in inputs if not p.is_file()]
    if missing:
        raise ValueError(f"no such image file(s): {', '.join(missing)}")
    names = [p.name for p in inputs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"several inputs would be written to the same output name: {', '.join(dupes)}")
    if out_dir.resolve() in {p.resolve().parent for p in inputs}:
        raise ValueError(
            f"-o {str(out_dir)!r} holds input images, which would be replaced: choose another directory"
        )
    net, cfg = load_restoration_model(args.checkpoint, device_name)
    args.steps = cfg.steps if args.steps is None else args.steps
    args.stride = cfg.stride if args.stride is None else args.stride
    args.sampler = cfg.sampler if args.sampler is None else args.sampler
    args.blend = cfg.blend if args.blend is None else args.blend
    args.memory_mb = cfg.memory_mb if args.memory_mb is None else args.memory_mb
    if not 1 <= args.steps <= 1000:
        raise ValueError(f"--steps must be in [1, 1000], got {args.steps}")
    if not 1 <= args.stride <= cfg.model.patch:
        raise ValueError(
            f"--stride must be in [1, {cfg.model.patch}] (the model's patch size), got {args.stride}"
        )
    if args.memory_mb < 1:
        raise ValueError(f"--memory-mb must be >= 1, got {args.memory_mb}")
    if not args.overwrite:
        existing = [str(out_dir / n) for n in names if (out_dir / n).exists()]
        if existing:
            raise ValueError(f"output file(s) exist (use --overwrite): {', '.join(existing)}")
    out_dir.mkdir(parents=True, exist_ok=True)

    status = 0
    for path in inputs:
        try:
            pixels, info = read_image(path)
        except ValueError as err:
            print(f"neuromorph restore: skipped: {err}", file=sys.stderr)
            status = 1
            continue
        h, w = max(info.height, cfg.model.patch), max(info.width, cfg.model.patch)
        patches = patch_grid(h, w, cfg.model.patch, args.stride).count
        bar = tqdm(
            total=args.steps,
            desc=f"{path.name} ({info.width}x{info.height}, {patches} patches)",
            disable=args.no_progress,
            file=sys.stderr,
            dynamic_ncols=True,
        )

        def progress(done: int, total: int, bar=bar) -> None:
            bar.update(done - bar.n)

        t0 = time.perf_counter()
        restored = _restore_one(net, cfg, pixels, args, device, progress)
        bar.close()
        target = out_dir / path.name
        atomic_write_bytes(target, encode_image(restored, info.format, info.bit_depth))
        print(f"{target}  ({time.perf_counter() - t0:.1f} s)")
    return status
