"""Learning-to-learn in the dynamics of an LSNN: supervised regression of new functions from few examples.

Bellec, Salaj, Subramoney, Legenstein, Maass (NeurIPS 2018), "Long short-term memory and
learning-to-learn in networks of spiking neurons", supervised L2L: an LSNN (LIF + ALIF, neuron model
of ``neurons/alif.py``) is meta-trained by BPTT over a family of nonlinear functions, each defined by a
random small 2-layer target network (:mod:`neuromorph.tasks.function_family`). In one episode the
network sees examples ``k = 1, 2, ...`` of one new function, each for ``example_ms`` ms as input currents
(followed by ``gap_ms`` ms of silence, 0 by default)

    input_k = input_scale * [x_k, y_{k-1}, 1]       (y_0 = 0; the constant channel acts as a bias)

(``code="population"`` instead gives each value as Gaussian tuning curves, see :func:`encode`) and
predicts ``y_k = f(x_k)``: the prediction is the leaky readout averaged over the last
``read_ms`` ms of the example's window (the spikes reach the readout multiplied by ``readout_scale``).
Outer loss (meta-training): mean over examples and functions of ``(pred_k - y_k)^2`` plus the
firing-rate regulariser (Adam, BPTT through the whole episode). Every episode starts from the zero
state, so whatever the network knows about the current function it has learned within the episode, in
its membrane potentials, adaptive thresholds and recurrent activity.

At test the weights are frozen and new functions are drawn; ``lsnn_mse_by_shots[k-1]`` is the MSE of
the prediction on example ``k + 1`` after ``k`` labelled examples (``mse_0_shots`` is the first
example, seen with no label). The same protocol with a LIF-only network of the same size
(``beta = 0`` for all neurons) gives ``lif_mse_by_shots``; the claim is that the LSNN's error falls
with the shots and ends below the LIF-only network's. ``mean_predictor_mse_by_shots`` is a reference
learner that predicts the mean of the targets seen so far (it learns only the offset of a function).
Sizes, time constants and episode lengths of the paper are unverified; the defaults are ours.
``--quick`` separates the examples by 150 ms of silence: what the network has learned of a function must
then be held across gaps far longer than the membrane time constant (20 ms), in the ALIF thresholds
(tau_a 500 ms) or in self-sustained recurrent activity: the reason adaptive neurons should help
(docs/l2l.md has the measured result, and why shorter gaps were not enough).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from ..distributed import all_reduce_mean, wrap_ddp
from ..layers import LeakyReadout, RecurrentSpikingLayer
from ..learning import firing_rate_loss
from ..report import build_report, plot_bars, plot_curves, plot_raster
from ..runs import atomic_write_bytes
from ..spikes import Triangle
from ..tasks.function_family import FunctionEpisodes, sample_episodes
from ._common import (
    Context,
    load_module_tensors,
    load_optimizer,
    module_tensors,
    optimizer_tensors,
    progress_bar,
    seeded_generator,
)

NAME = "l2l-regression"
PAPER = "Bellec et al. 2018, Long short-term memory and learning-to-learn in networks of spiking neurons"
SUMMARY = "LSNN meta-trained over random 2-layer target networks learns a new function from few examples"
VARIANTS = ("lsnn", "lif")
CODES = ("current", "population")
TEST_ROLE = 100  # data role of the meta-test functions: the same functions for every variant


@dataclass(frozen=True)
class Config:
    """Defaults (paper scale, our choice where the paper is unverified): 100 LIF + 100 ALIF neurons,
    2-input target networks, 20 examples of 20 ms per episode. ``--quick``: 1-input target networks,
    50 + 50 neurons, 10 examples of 10 ms each followed by 150 ms of silence, 800 iterations."""

    seed: int = 0
    n_inputs: int = 2
    n_hidden: int = 10
    w_scale: float = 2.0
    out_scale: float = 2.0
    offset_scale: float = 0.5
    centred: bool = False  # offset of each function = N(0, offset_scale^2) exactly (function_family)
    n_examples: int = 20
    example_ms: int = 20
    gap_ms: int = 0  # silence after each example: the network must hold what it learned across it
    read_ms: int = 5
    input_scale: float = 0.05
    code: str = "current"  # "current": x, y as scalar currents; "population": Gaussian tuning curves
    n_pop: int = 10  # population code: channels per scalar (x_i and y)
    y_range: float = 3.0  # population code: y channels centred on [-y_range, y_range]
    readout_scale: float = 1.0
    n_lif: int = 100
    n_alif: int = 100
    beta: float = 1.7
    tau_adapt: float = 500.0
    tau_mem: float = 20.0
    tau_out: float = 5.0
    threshold: float = 0.01
    n_refractory: int = 2
    n_delay: int = 1
    gamma: float = 0.3
    batch_size: int = 128
    iterations: int = 5000
    lr: float = 3e-3
    lif_lr: float = 0.0  # the LIF-only network's own Adam rate (0 = lr): each network at its best rate
    lr_decay: float = 0.5
    lr_decay_every: int = 1500
    reg: float = 0.1
    reg_rate_hz: float = 20.0
    test_batches: int = 8
    checkpoint_every: int = 50
    variants: tuple[str, ...] = VARIANTS
    impl: str = "auto"

    def validate(self) -> None:
        for name in ("n_inputs", "n_hidden", "n_examples", "example_ms", "read_ms", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("iterations", "test_batches", "checkpoint_every", "lr_decay_every", "n_delay"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_examples < 2:
            raise ValueError(
                f"n_examples must be >= 2 (shots need a labelled example), got {self.n_examples}"
            )
        if self.code not in CODES:
            raise ValueError(f"code must be one of {CODES}, got {self.code!r}")
        if self.n_pop < 2:
            raise ValueError(f"n_pop must be >= 2 (tuning curves need two centres), got {self.n_pop}")
        if self.gap_ms < 0:
            raise ValueError(f"gap_ms must be >= 0, got {self.gap_ms}")
        if self.read_ms > self.example_ms:
            raise ValueError(f"read_ms must be <= example_ms ({self.example_ms}), got {self.read_ms}")
        if self.n_lif < 0 or self.n_alif < 0 or self.n_lif + self.n_alif < 1:
            raise ValueError(f"n_lif + n_alif must be >= 1 (each >= 0), got {self.n_lif} + {self.n_alif}")
        positive = (
            "w_scale",
            "out_scale",
            "input_scale",
            "readout_scale",
            "y_range",
            "lr",
            "tau_adapt",
            "tau_mem",
            "tau_out",
        )
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("offset_scale", "beta", "reg", "reg_rate_hz", "lif_lr"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 < self.lr_decay <= 1:
            raise ValueError(f"lr_decay must be in (0, 1], got {self.lr_decay}")
        bad = [v for v in self.variants if v not in VARIANTS] or (not self.variants and ["(empty)"])
        if bad or len(set(self.variants)) != len(self.variants):
            raise ValueError(f"variants must be a non-empty subset of {VARIANTS}, got {self.variants!r}")


def quick(cfg: Config) -> Config:
    """CPU-minutes version: 1-input target networks, 50 LIF + 50 ALIF, batch 64, 800 iterations at
    Adam 3e-3 for both networks; 10 examples, each shown for 10 ms and followed by 150 ms of silence
    (>> tau_m 20 ms, < tau_a / 2), so that what the network learned of the function must be held across
    the gaps in its adaptive thresholds or in self-sustained activity; tested on 2,048 new functions
    (the last-quarter error is the mean of two examples: 512 functions left it too noisy to read a 20 %
    fall). docs/l2l.md: why, the pilots, and the learning-rate checks of the LIF-only network."""
    return replace(
        cfg,
        n_inputs=1,
        n_lif=50,
        n_alif=50,
        n_examples=10,
        example_ms=10,
        read_ms=8,
        gap_ms=150,
        batch_size=64,
        iterations=800,
        lr=3e-3,
        lr_decay_every=400,
        test_batches=32,
    )


def check(cfg: Config) -> None:
    """Field ranges and the constructors' own checks, before a run directory is made."""
    cfg.validate()
    for variant in cfg.variants:
        RegressionLSNN(cfg, variant, torch.Generator())


class RegressionLSNN(nn.Module):
    """Recurrent spiking layer + leaky readout to one value; ``forward(inputs) -> (out, z)``.

    ``variant="lif"`` turns every neuron into a LIF neuron (the same count, ``beta = 0``)."""

    def __init__(self, cfg: Config, variant: str, generator: torch.Generator) -> None:
        super().__init__()
        n_lif, n_alif = (cfg.n_lif, cfg.n_alif) if variant == "lsnn" else (cfg.n_lif + cfg.n_alif, 0)
        self.rsnn = RecurrentSpikingLayer(
            n_channels(cfg),
            n_lif,
            n_alif,
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
        self.readout = LeakyReadout(n_lif + n_alif, 1, tau_out=cfg.tau_out, bias=True, generator=generator)
        self.readout_scale = cfg.readout_scale

    def forward(self, inputs: torch.Tensor):
        z, _ = self.rsnn(inputs)
        out, _ = self.readout(z * self.readout_scale)
        return out[..., 0], z


def n_channels(cfg: Config) -> int:
    """Input channels of the network: ``n_inputs + 2`` scalar currents, or ``n_pop`` tuning curves per
    input, ``n_pop`` for the previous target and the constant channel (population code)."""
    return cfg.n_inputs + 2 if cfg.code == "current" else (cfg.n_inputs + 1) * cfg.n_pop + 1


def population(v: torch.Tensor, lo: float, hi: float, n: int) -> torch.Tensor:
    """Gaussian tuning curves ``exp(-(v - c_i)^2 / (2 s^2))``, ``n`` centres ``c_i`` evenly in
    ``[lo, hi]``, width ``s`` = the spacing of the centres: ``[...] -> [..., n]`` in ``(0, 1]``."""
    centres = torch.linspace(lo, hi, n, dtype=v.dtype, device=v.device)
    width = (hi - lo) / (n - 1)
    return torch.exp(-((v[..., None] - centres) ** 2) / (2 * width**2))


def encode(episodes: FunctionEpisodes, cfg: Config) -> torch.Tensor:
    """Input currents ``[K * (example_ms + gap_ms), B, n_channels(cfg)]``: ``[x_k, y_{k-1}, 1]`` held
    for ``example_ms`` ms, then ``gap_ms`` ms of no input; all scaled by ``input_scale``.

    ``code="current"``: the values themselves (``y_0 = 0``). ``code="population"``: each ``x_k,i`` as
    ``n_pop`` Gaussian tuning curves on ``[-1, 1]``, ``y_{k-1}`` as ``n_pop`` on
    ``[-y_range, y_range]`` (all zero for the first example: no label yet), then the constant."""
    x, y = episodes.x, episodes.y
    prev = torch.cat([torch.zeros_like(y[:1]), y[:-1]], 0)
    one = torch.ones_like(prev)[..., None]
    if cfg.code == "current":
        per_example = torch.cat([x, prev[..., None], one], -1)
    else:
        label = population(prev, -cfg.y_range, cfg.y_range, cfg.n_pop)
        label[0] = 0.0  # no label before the first example (a population cannot say "none" otherwise)
        per_example = torch.cat([population(x, -1.0, 1.0, cfg.n_pop).flatten(-2), label, one], -1)
    held = (per_example * cfg.input_scale)[:, None].expand(-1, cfg.example_ms, -1, -1)
    silence = per_example.new_zeros(per_example.shape[0], cfg.gap_ms, *per_example.shape[1:])
    return torch.cat([held, silence], 1).flatten(0, 1)


def predictions(out: torch.Tensor, cfg: Config) -> torch.Tensor:
    """Readout ``[K * (example_ms + gap_ms), B]`` -> one prediction per example ``[K, B]``: the mean
    over the last ``read_ms`` ms of the example's input window."""
    window = cfg.example_ms + cfg.gap_ms
    k = out.shape[0] // window
    return out.reshape(k, window, -1)[:, cfg.example_ms - cfg.read_ms : cfg.example_ms].mean(1)


def mean_predictor(y: torch.Tensor) -> torch.Tensor:
    """Reference learner: predict ``y_k`` by the mean of ``y_1 .. y_{k-1}`` (0 before any label)."""
    csum = torch.cumsum(y, 0)
    counts = torch.arange(1, y.shape[0] + 1, dtype=y.dtype, device=y.device)[:, None]
    mean = csum / counts
    return torch.cat([torch.zeros_like(y[:1]), mean[:-1]], 0)


def _episodes(cfg: Config, role: int, iteration: int, rank: int, batch: int, device) -> FunctionEpisodes:
    # Every draw is a function of (seed, role, iteration, rank): a resumed run sees the same functions.
    rng = np.random.default_rng([cfg.seed, role, iteration, rank])
    ep = sample_episodes(
        batch,
        cfg.n_examples,
        rng,
        n_inputs=cfg.n_inputs,
        n_hidden=cfg.n_hidden,
        w_scale=cfg.w_scale,
        out_scale=cfg.out_scale,
        offset_scale=cfg.offset_scale,
        centred=cfg.centred,
    )
    return FunctionEpisodes(ep.x.to(device), ep.y.to(device))


def _lr(cfg: Config, iteration: int, variant: str = "lsnn") -> float:
    base = cfg.lif_lr if variant == "lif" and cfg.lif_lr > 0 else cfg.lr
    return base * cfg.lr_decay ** (iteration // cfg.lr_decay_every)


def _tail(cfg: Config) -> int:
    """How many shots "the end of an episode" averages: the last quarter (at least one)."""
    return max(1, (cfg.n_examples - 1) // 4)


@torch.no_grad()
def _test(net: nn.Module, cfg: Config, ctx: Context, local_batch: int) -> dict:
    """Per-example MSE on ``test_batches`` batches of new functions, frozen weights; all ranks agree.
    ``final_by_function``: this rank's functions' last-quarter MSE, one value per function (the
    functions are the same for every variant, so two variants' values pair up)."""
    sq_net, sq_mean, per_function = [], [], []
    for k in range(cfg.test_batches):
        ep = _episodes(cfg, TEST_ROLE, k, ctx.dist.rank, local_batch, ctx.device)
        out, _ = net(encode(ep, cfg))
        sq = (predictions(out, cfg) - ep.y) ** 2  # [examples, functions]
        sq_net.append(sq.mean(1))
        per_function.append(sq[-_tail(cfg) :].mean(0))
        sq_mean.append(((mean_predictor(ep.y) - ep.y) ** 2).mean(1))
    by_example = torch.stack(sq_net).mean(0)
    ref = torch.stack(sq_mean).mean(0)
    return {
        "by_example": [all_reduce_mean(float(v), ctx.dist) for v in by_example],
        "mean_predictor": [all_reduce_mean(float(v), ctx.dist) for v in ref],
        "final_by_function": torch.cat(per_function).cpu(),
    }


def _paired(finals: dict[str, torch.Tensor], ctx: Context) -> tuple[float, float]:
    """Mean over the test functions of (LSNN - LIF-only) last-quarter MSE, and its standard error."""
    d = (finals["lsnn"] - finals["lif"]).double()
    mean = all_reduce_mean(float(d.mean()), ctx.dist)
    mean_sq = all_reduce_mean(float((d * d).mean()), ctx.dist)
    n = d.numel() * ctx.dist.world_size
    return mean, math.sqrt(max(mean_sq - mean * mean, 0.0) / max(n - 1, 1))


def run(cfg: Config, ctx: Context) -> dict:
    cfg.validate()
    world = ctx.dist.world_size
    if cfg.batch_size % world:
        raise ValueError(
            f"batch_size ({cfg.batch_size}) must be divisible by the number of processes ({world})"
        )
    local_batch = cfg.batch_size // world
    done: dict[str, dict] = {}
    finals: dict[str, torch.Tensor] = {}  # per-function last-quarter MSE of the variants tested here
    start_variant, start_iter, seconds_before, step = 0, 0, 0.0, 0
    tensors, meta = ctx.resume if ctx.resume is not None else ({}, {})
    if meta:
        start_variant, start_iter = meta["variant_index"], meta["iteration"]
        seconds_before, step, done = meta["seconds"], meta["step"], meta["done"]
        ctx.run.truncate_metrics(step)
    t_start = time.perf_counter()

    def elapsed() -> float:
        return seconds_before + time.perf_counter() - t_start

    for vi in range(start_variant, len(cfg.variants)):
        variant = cfg.variants[vi]
        vid = VARIANTS.index(variant)
        net = RegressionLSNN(cfg, variant, seeded_generator(cfg.seed, vid)).to(ctx.device)
        model = wrap_ddp(net, ctx.dist)
        opt = torch.optim.Adam(net.parameters(), lr=_lr(cfg, 0, variant))
        first = start_iter if vi == start_variant else 0
        if vi == start_variant and meta.get("optimizer"):  # resumed in the middle of this variant
            load_module_tensors("net.", net, tensors)
            load_optimizer("opt.", opt, tensors, meta["optimizer"])

        def checkpoint(next_iter: int, step: int, vi=vi, net=net, opt=opt) -> None:
            opt_t, opt_meta = optimizer_tensors("opt.", opt)
            ctx.run.save_checkpoint(
                {**module_tensors("net.", net), **opt_t},
                {
                    "step": step,
                    "variant_index": vi,
                    "iteration": next_iter,
                    "seconds": elapsed(),
                    "done": done,
                    "optimizer": opt_meta,
                },
            )

        bar = progress_bar(ctx, total=cfg.iterations, initial=first, desc=variant)
        it = first
        while it < cfg.iterations:
            for group in opt.param_groups:
                group["lr"] = _lr(cfg, it, variant)
            ep = _episodes(cfg, vid, it, ctx.dist.rank, local_batch, ctx.device)
            out, z = model(encode(ep, cfg))
            mse = ((predictions(out, cfg) - ep.y) ** 2).mean()
            loss = mse + firing_rate_loss(z, target_hz=cfg.reg_rate_hz, coefficient=cfg.reg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            mse_v = all_reduce_mean(mse.detach(), ctx.dist)
            rate = all_reduce_mean(z.detach().mean() * 1000.0, ctx.dist)
            it += 1
            step += 1
            ctx.run.log(step, **{f"{variant}/mse": mse_v, f"{variant}/rate_hz": rate}, iteration=it)
            bar.update(1)
            bar.set_postfix(mse=f"{mse_v:.4f}", rate=f"{rate:.0f}Hz")
            if ctx.stop.requested:
                checkpoint(it, step)
                bar.close()
                return {"stopped": True, "step": step}
            if it % cfg.checkpoint_every == 0:
                checkpoint(it, step)
        bar.close()
        test = _test(net, cfg, ctx, local_batch)
        finals[variant] = test["final_by_function"]
        done[variant] = {
            "mse_by_example": test["by_example"],
            "mean_predictor_by_example": test["mean_predictor"],
            "iterations": it,
            "seconds": elapsed(),
        }
        if ctx.dist.is_main:
            from safetensors.torch import save

            atomic_write_bytes(ctx.run.path(f"{variant}.safetensors"), save(module_tensors("", net)))
        # Commit point of a finished variant: the next one starts fresh after a resume.
        ctx.run.save_checkpoint(
            {"done": torch.zeros(1)},
            {
                "step": step,
                "variant_index": vi + 1,
                "iteration": 0,
                "seconds": elapsed(),
                "done": done,
                "optimizer": {},
            },
        )
        if ctx.stop.requested:
            return {"stopped": True, "step": step}

    for variant in done.keys() - finals.keys():  # finished before a resume: test its saved weights again
        from safetensors.torch import load_file

        net = RegressionLSNN(cfg, variant, torch.Generator()).to(ctx.device)
        load_module_tensors("", net, load_file(str(ctx.run.path(f"{variant}.safetensors"))))
        finals[variant] = _test(net, cfg, ctx, local_batch)["final_by_function"]
    results = _results(cfg, done, world, ctx, elapsed())
    if "lsnn" in finals and "lif" in finals:
        diff, se = _paired(finals, ctx)
        results["paired_final_difference"] = diff  # LSNN - LIF, mean over the same test functions
        results["paired_final_se"] = se
        # ends lower: the paired difference is below zero by more than two standard errors
        results["lsnn_below_lif"] = bool(diff + 2 * se < 0)
        results["claim_holds"] = bool(results["lsnn_error_falls"] and results["lsnn_below_lif"])
    if ctx.dist.is_main:
        ctx.run.write_results(results)
        _plots(cfg, ctx, done)
        build_report(ctx.run.dir)
    return results


def _results(cfg: Config, done: dict, world: int, ctx: Context, seconds: float) -> dict:
    def shots(variant: str) -> list[float]:
        return done[variant]["mse_by_example"][1:] if variant in done else []

    any_variant = next(iter(done.values()))
    results = {
        "lsnn_mse_by_shots": shots("lsnn"),
        "lif_mse_by_shots": shots("lif"),
        "mean_predictor_mse_by_shots": any_variant["mean_predictor_by_example"][1:],
        "lsnn_mse_0_shots": done["lsnn"]["mse_by_example"][0] if "lsnn" in done else math.nan,
        "lif_mse_0_shots": done["lif"]["mse_by_example"][0] if "lif" in done else math.nan,
        "target_variance": any_variant["mean_predictor_by_example"][0],  # E[y^2], predicting 0
        "test_functions": cfg.test_batches * cfg.batch_size,
        "iterations": cfg.iterations,
        "seconds": seconds,
        "seed": cfg.seed,
        "processes": world,
        "device": str(ctx.device),
    }
    tail = _tail(cfg)  # "ends": the mean over the last quarter of the shots
    for v in ("lsnn", "lif"):
        if v in done:
            by_shot = results[f"{v}_mse_by_shots"]
            results[f"{v}_final_mse"] = float(np.mean(by_shot[-tail:]))
            # falls: the end of the episode is >= 20% below the error after one labelled example
            results[f"{v}_error_falls"] = bool(results[f"{v}_final_mse"] < 0.8 * by_shot[0])
    return results


def _plots(cfg: Config, ctx: Context, done: dict) -> None:
    metrics = ctx.run.metrics()
    curves = [{"step": m["iteration"], **{k: v for k, v in m.items() if k.endswith("/mse")}} for m in metrics]
    plot_curves(
        curves,
        [f"{v}/mse" for v in done],
        ctx.run.path("meta_training_curve.png"),
        title="Meta-training: MSE over an episode (new functions every iteration)",
        xlabel="iteration",
        logy=True,
    )
    any_variant = next(iter(done.values()))
    by_shot = [
        {
            "step": k,
            **{f"{v}": d["mse_by_example"][k] for v, d in done.items()},
            "mean of seen targets": any_variant["mean_predictor_by_example"][k],
        }
        for k in range(cfg.n_examples)
    ]
    plot_curves(
        by_shot,
        [*done, "mean of seen targets"],
        ctx.run.path("mse_by_shots.png"),
        title="Frozen weights, new functions: MSE on example k+1 after k examples",
        xlabel="labelled examples seen (shots)",
        logy=True,
    )
    tail = _tail(cfg)
    plot_bars(
        {v: float(np.mean(d["mse_by_example"][-tail:])) for v, d in done.items()},
        ctx.run.path("final_mse.png"),
        ylabel=f"test MSE, last {tail} examples",
        title="LSNN vs LIF-only after meta-training",
    )
    if "lsnn" in done:
        from safetensors.torch import load_file

        net = RegressionLSNN(cfg, "lsnn", torch.Generator())
        load_module_tensors("", net, load_file(str(ctx.run.path("lsnn.safetensors"))))
        ep = _episodes(cfg, TEST_ROLE + 1, 0, 0, 1, "cpu")
        with torch.no_grad():
            trace, _ = net.rsnn.trace(encode(ep, cfg))
        a = trace.a[:, 0, net.rsnn.n_lif :]
        pick = torch.argsort(a.var(0), descending=True)[:3]
        plot_raster(
            trace.z[:, 0].numpy(),
            ctx.run.path("raster.png"),
            thresholds=a[:, pick].numpy(),
            threshold_labels=[f"ALIF {net.rsnn.n_lif + int(i)}" for i in pick],
            title="LSNN on one episode of a new function: spikes, adaptive thresholds",
        )
