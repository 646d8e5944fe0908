"""Store-recall with an LSNN vs a LIF-only network: the adaptation ablation of the LSNN paper.

Bellec, Salaj, Subramoney, Legenstein, Maass (NeurIPS 2018), "Long short-term memory and
learning-to-learn in networks of spiking neurons"; task and settings of the official tutorial
``bin/tutorial_storerecall_with_LSNN.py`` (IGITUGraz/LSNN-official).

Claim reproduced: 10 LIF + 10 ALIF neurons (beta 1.7, tau_a 1200 ms) learn to hold a bit over
seconds and reach a recall error below 5%; the same network with 20 LIF neurons (beta = 0) cannot,
because its only memory, the membrane (tau_m = 20 ms), forgets within tens of ms.

Protocol (as the tutorial): every iteration draws a fresh batch, so the recall error of the batch,
measured before the update, is a validation error; the iteration at which its mean over the last
``stop_window`` iterations first drops below ``stop_error`` is recorded (``iterations_to_criterion``).
The tutorial stops there (``stop_early=true``); by default training goes on for all ``iterations``, so
that the test error is measured on a converged network rather than one that just crossed 5%. The
final network state is carried over to the next batch. Loss: cross-entropy of the readout averaged
over each 200 ms character, at recall characters only, plus the firing-rate regulariser (10 Hz). Adam,
lr 1e-2, x0.3 every 100 iterations. The test error is measured on ``test_batches`` new batches afterwards.

``rewiring=deep-r`` trains the recurrent layer's input and recurrent weights under a global budget of
``rewiring_connectivity`` of their entries (autapses excluded) with DEEP R around Adam, as the LSNN
code's ``rewiring_optimizer_wrapper`` (Bellec et al., ICLR 2018; the sMNIST tutorial uses connectivity
0.12, L1 1e-2, temperature 0). The active count is checked from the weights after every step
(``budget_violations``, 0 expected); the readout stays dense.

``learning=eprop`` (with ``n_delay=1``) trains the recurrent layer with e-prop instead of BPTT
(Bellec et al., Nat. Commun. 2020; ``learning/eprop.py``): see :func:`eprop_step`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from ..data.store_recall import StoreRecallBatch, per_char_mean, recall_error, recall_loss, store_recall_batch
from ..distributed import all_reduce_grads, all_reduce_mean, wrap_ddp
from ..layers import LeakyReadout, RecurrentSpikingLayer, RecurrentState
from ..learning import eprop_from_loss, firing_rate_loss
from ..neurons.alif import ALIFState
from ..report import build_report, plot_bars, plot_curves, plot_raster
from ..runs import atomic_write_bytes
from ..sparse import DeepR, rewiring_targets
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

NAME = "store-recall"
PAPER = "Bellec et al. 2018, Long short-term memory and learning-to-learn in networks of spiking neurons"
SUMMARY = "LSNN (10 LIF + 10 ALIF) solves store-recall over seconds; 20 LIF neurons do not"
VARIANTS = ("lsnn", "lif")
REWIRING = ("none", "deep-r")
LEARNING = ("bptt", "eprop")


@dataclass(frozen=True)
class Config:
    """Defaults: the official store-recall tutorial (batch 128). ``--quick`` uses batch 64."""

    seed: int = 0
    n_in: int = 100
    n_lif: int = 10
    n_alif: int = 10
    beta: float = 1.7
    tau_adapt: float = 1200.0
    tau_mem: float = 20.0
    tau_out: float = 20.0
    threshold: float = 0.01
    n_refractory: int = 3
    n_delay: int = 10
    gamma: float = 0.3
    n_chars: int = 12
    char_ms: int = 200
    rate_hz: float = 50.0
    seq_delay: int = 6
    batch_size: int = 128
    iterations: int = 400
    lr: float = 0.01
    lr_decay: float = 0.3
    lr_decay_every: int = 100
    reg: float = 0.01
    reg_rate_hz: float = 10.0
    stop_error: float = 0.05
    stop_window: int = 20
    stop_early: bool = False
    test_batches: int = 16
    checkpoint_every: int = 25
    variants: tuple[str, ...] = VARIANTS
    impl: str = "auto"
    rewiring: str = "none"  # "deep-r": DEEP R on the recurrent layer's w_in and w_rec (global budget)
    rewiring_connectivity: float = 0.2
    rewiring_l1: float = 1e-2
    rewiring_temperature: float = 0.0
    # "eprop": online e-prop (symmetric feedback) instead of BPTT; needs n_delay=1 (learning/eprop.py)
    learning: str = "bptt"

    def validate(self) -> None:
        for name in ("n_in", "batch_size", "iterations", "n_chars", "char_ms", "test_batches", "stop_window"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_lif + self.n_alif < 1:
            raise ValueError(f"n_lif + n_alif must be >= 1, got {self.n_lif} + {self.n_alif}")
        if self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1, got {self.checkpoint_every}")
        bad = [v for v in self.variants if v not in VARIANTS] or (not self.variants and ["(empty)"])
        if bad:
            raise ValueError(f"variants must be a non-empty subset of {VARIANTS}, got {self.variants!r}")
        if not 0 < self.stop_error < 1:
            raise ValueError(f"stop_error must be in (0, 1), got {self.stop_error}")
        if self.rewiring not in REWIRING:
            raise ValueError(f"rewiring must be one of {REWIRING}, got {self.rewiring!r}")
        if not 0 < self.rewiring_connectivity <= 1:
            raise ValueError(f"rewiring_connectivity must be in (0, 1], got {self.rewiring_connectivity}")
        for name in ("rewiring_l1", "rewiring_temperature"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.learning not in LEARNING:
            raise ValueError(f"learning must be one of {LEARNING}, got {self.learning!r}")
        if self.learning == "eprop" and self.n_delay != 1:
            raise ValueError(
                f"learning=eprop needs n_delay=1 (e-prop keeps one trace per synapse, not per delay), "
                f"got n_delay={self.n_delay}: add --set n_delay=1"
            )


def quick(cfg: Config) -> Config:
    """CPU-minutes version: batch 64; everything else as the tutorial."""
    return replace(cfg, batch_size=64)


def check(cfg: Config) -> None:
    """Everything that can be wrong with ``cfg``, before a run directory is made: field ranges and
    every constructor's own checks (the networks are cheap to build)."""
    cfg.validate()
    for variant in cfg.variants:
        net = StoreRecallNetwork(cfg, variant, torch.Generator())
        _rewiring(cfg, net, torch.optim.Adam(net.parameters(), lr=cfg.lr), 0)


class StoreRecallNetwork(nn.Module):
    """Recurrent spiking layer + leaky readout to 2 classes; ``forward(x, state) -> (out, z, state)``."""

    def __init__(self, cfg: Config, variant: str, generator: torch.Generator) -> None:
        super().__init__()
        n_lif, n_alif = (cfg.n_lif, cfg.n_alif) if variant == "lsnn" else (cfg.n_lif + cfg.n_alif, 0)
        self.rsnn = RecurrentSpikingLayer(
            cfg.n_in,
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
        self.readout = LeakyReadout(n_lif + n_alif, 2, tau_out=cfg.tau_out, generator=generator)

    def forward(self, x: torch.Tensor, state: RecurrentState | None = None):
        z, state = self.rsnn(x, state)
        out, _ = self.readout(z)
        return out, z, state


def eprop_step(
    net: StoreRecallNetwork, batch: StoreRecallBatch, state: RecurrentState | None, cfg: Config
) -> tuple[torch.Tensor, torch.Tensor, RecurrentState]:
    """Gradients of one batch by e-prop (:func:`eprop_from_loss`: symmetric feedback, exactly BPTT with
    the recurrent and reset paths cut), written to ``.grad`` of every parameter of ``net``. Returns
    (char_logits, spikes, final state)."""
    logits: list[torch.Tensor] = []

    def loss_of_spikes(z: torch.Tensor) -> torch.Tensor:
        out, _ = net.readout(z)
        char_logits = per_char_mean(out, cfg.n_chars)
        logits[:] = [char_logits.detach()]
        reg = firing_rate_loss(z, target_hz=cfg.reg_rate_hz, coefficient=cfg.reg)
        return recall_loss(char_logits, batch) + reg

    _, z, state = eprop_from_loss(net.rsnn, batch.spikes, loss_of_spikes, state=state)
    return logits[0], z, state


def _batch(
    cfg: Config, variant_id: int, iteration: int, rank: int, batch_size: int, device
) -> StoreRecallBatch:
    # Every draw is a function of (seed, role, iteration, rank): a resumed run sees the same data.
    rng = np.random.default_rng([cfg.seed, variant_id, iteration, rank])
    batch = store_recall_batch(
        batch_size,
        rng,
        n_chars=cfg.n_chars,
        char_ms=cfg.char_ms,
        n_in=cfg.n_in,
        rate_hz=cfg.rate_hz,
        p_store_recall=1.0 / (1.0 + cfg.seq_delay),
    )
    return batch.to(device)


def _state_tensors(prefix: str, state: RecurrentState | None) -> dict[str, torch.Tensor]:
    if state is None:
        return {}
    out = {f"{prefix}{k}": v for k, v in state.neurons._asdict().items()}
    out[f"{prefix}pending"] = state.pending
    return out


def _load_state(prefix: str, tensors: dict[str, torch.Tensor], device) -> RecurrentState | None:
    if f"{prefix}pending" not in tensors:
        return None
    neurons = ALIFState(*(tensors[f"{prefix}{k}"].to(device) for k in ALIFState._fields))
    return RecurrentState(neurons, tensors[f"{prefix}pending"].to(device))


def _rewiring(
    cfg: Config, net: StoreRecallNetwork, opt: torch.optim.Optimizer, variant_id: int
) -> DeepR | None:
    """DEEP R around ``opt`` on the recurrent layer's weights (``rewiring=deep-r``), else None."""
    if cfg.rewiring == "none":
        return None
    return DeepR(
        opt,
        rewiring_targets(net.rsnn),
        connectivity=cfg.rewiring_connectivity,
        budget="global",
        l1=cfg.rewiring_l1,
        temperature=cfg.rewiring_temperature,
        seed=cfg.seed * 1000 + variant_id,
    )


def _active(net: StoreRecallNetwork) -> int:
    return int(torch.count_nonzero(net.rsnn.w_in)) + int(torch.count_nonzero(net.rsnn.w_rec))


def _lr(cfg: Config, iteration: int) -> float:
    return cfg.lr * cfg.lr_decay ** (iteration // cfg.lr_decay_every)


@torch.no_grad()
def _test(net: StoreRecallNetwork, cfg: Config, ctx: Context, variant_id: int, batch_size: int, state):
    errors = []
    for k in range(cfg.test_batches):
        batch = _batch(cfg, 100 + variant_id, k, ctx.dist.rank, batch_size, ctx.device)
        out, _, state = net(batch.spikes, state)
        errors.append(recall_error(per_char_mean(out, cfg.n_chars), batch).item())
    return all_reduce_mean(float(np.mean(errors)), ctx.dist)


def run(cfg: Config, ctx: Context) -> dict:
    cfg.validate()
    world = ctx.dist.world_size
    if cfg.batch_size % world:
        raise ValueError(
            f"batch_size ({cfg.batch_size}) must be divisible by the number of processes ({world})"
        )
    local_batch = cfg.batch_size // world
    done: dict[str, dict] = {}
    start_variant, start_iter, window, seconds_before, step, reached = 0, 0, [], 0.0, 0, None
    violations = 0
    tensors, meta = ctx.resume if ctx.resume is not None else ({}, {})
    if meta:
        start_variant, start_iter = meta["variant_index"], meta["iteration"]
        window, seconds_before, step, done = meta["window"], meta["seconds"], meta["step"], meta["done"]
        reached = meta.get("reached")
        violations = meta.get("budget_violations", 0)
        ctx.run.truncate_metrics(step)
    t_start = time.perf_counter()
    stopped = False

    def elapsed() -> float:
        return seconds_before + time.perf_counter() - t_start

    for vi in range(start_variant, len(cfg.variants)):
        variant = cfg.variants[vi]
        vid = VARIANTS.index(variant)
        net = StoreRecallNetwork(cfg, variant, seeded_generator(cfg.seed, vid)).to(ctx.device)
        model = wrap_ddp(net, ctx.dist)
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
        rewiring = _rewiring(cfg, net, opt, vid)
        stepper = rewiring or opt  # DEEP R steps the optimizer itself
        state = None
        first = start_iter if vi == start_variant else 0
        if vi == start_variant and meta.get("optimizer"):  # resumed in the middle of this variant
            load_module_tensors("net.", net, tensors)
            load_optimizer("opt.", opt, tensors, meta["optimizer"])
            if rewiring is not None:
                rewiring.load_state_tensors("rewiring.", tensors)
            state = _load_state("state.", tensors, ctx.device)
        else:
            window, reached = [], None

        def checkpoint(
            next_iter: int,
            state,
            window: list,
            step: int,
            reached,
            violations: int,
            vi=vi,
            net=net,
            opt=opt,
            rewiring=rewiring,
        ):
            opt_t, opt_meta = optimizer_tensors("opt.", opt)
            rew_t = rewiring.state_tensors("rewiring.") if rewiring is not None else {}
            ctx.run.save_checkpoint(
                {**module_tensors("net.", net), **opt_t, **rew_t, **_state_tensors("state.", state)},
                {
                    "step": step,
                    "variant_index": vi,
                    "iteration": next_iter,
                    "window": window,
                    "reached": reached,
                    "seconds": elapsed(),
                    "done": done,
                    "budget_violations": violations,
                    "optimizer": opt_meta,
                },
            )

        bar = progress_bar(ctx, total=cfg.iterations, initial=first, desc=variant)
        it = first
        while it < cfg.iterations:
            for group in opt.param_groups:
                group["lr"] = _lr(cfg, it)
            batch = _batch(cfg, vid, it, ctx.dist.rank, local_batch, ctx.device)
            stepper.zero_grad(set_to_none=True)
            if cfg.learning == "eprop":
                char_logits, z, new_state = eprop_step(net, batch, state, cfg)
                all_reduce_grads(net, ctx.dist)  # DDP averages in backward(); e-prop has none
            else:
                out, z, new_state = model(batch.spikes, state)
                char_logits = per_char_mean(out, cfg.n_chars)
            # the logged loss, recomputed from the logits and spikes (no graph for e-prop)
            with torch.set_grad_enabled(cfg.learning == "bptt"):
                loss_recall = recall_loss(char_logits, batch)
                loss_reg = firing_rate_loss(z, target_hz=cfg.reg_rate_hz, coefficient=cfg.reg)
                loss = loss_recall + loss_reg
            if cfg.learning == "bptt":
                loss.backward()
            stepper.step()
            if rewiring is not None:
                violations += int(_active(net) != rewiring.budget_total)
            state = new_state.detach()
            err = all_reduce_mean(recall_error(char_logits.detach(), batch).item(), ctx.dist)
            loss_v = all_reduce_mean(loss.item(), ctx.dist)
            rate = all_reduce_mean(z.detach().mean().item() * 1000.0, ctx.dist)
            window = (window + [err])[-cfg.stop_window :]
            it += 1
            step += 1
            ctx.run.log(
                step,
                **{f"{variant}/loss": loss_v, f"{variant}/recall_error": err, f"{variant}/rate_hz": rate},
                iteration=it,
                lr=_lr(cfg, it - 1),
            )
            bar.update(1)
            bar.set_postfix(loss=f"{loss_v:.3f}", err=f"{err:.3f}", avg=f"{np.mean(window):.3f}")
            if reached is None and len(window) == cfg.stop_window and float(np.mean(window)) < cfg.stop_error:
                reached = it
            if reached is not None and cfg.stop_early:
                break
            if ctx.stop.requested:
                stopped = True
                break
            if it % cfg.checkpoint_every == 0:
                checkpoint(it, state, window, step, reached, violations)
        bar.close()
        if stopped:
            checkpoint(it, state, window, step, reached, violations)
            return {"stopped": True, "step": step}
        test_error = _test(net, cfg, ctx, vid, local_batch, state)
        done[variant] = {
            "recall_error": test_error,
            "iterations": it,
            "iterations_to_criterion": reached,
            "train_recall_error_last_window": float(np.mean(window)),
            "seconds": elapsed(),
            "connectivity": _active(net) / (net.rsnn.w_in.numel() + net.rsnn.w_rec.numel()),
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
                "window": [],
                "seconds": elapsed(),
                "done": done,
                "budget_violations": violations,
                "optimizer": {},
            },
        )
        window = []
        if ctx.stop.requested:
            return {"stopped": True, "step": step}

    results = {
        "lsnn_recall_error": done.get("lsnn", {}).get("recall_error", math.nan),
        "lif_recall_error": done.get("lif", {}).get("recall_error", math.nan),
        "iterations": done.get("lsnn", {}).get("iterations", 0),
        "lsnn_iterations_to_criterion": done.get("lsnn", {}).get("iterations_to_criterion"),
        "lif_iterations": done.get("lif", {}).get("iterations", 0),
        "lif_iterations_to_criterion": done.get("lif", {}).get("iterations_to_criterion"),
        "seconds": elapsed(),
        "batch_size": cfg.batch_size,
        "seed": cfg.seed,
        "processes": world,
        "device": str(ctx.device),
        "variants": done,
        "rewiring": cfg.rewiring,
        "learning": cfg.learning,
    }
    if cfg.rewiring != "none":
        results["budget_violations"] = violations
    if "lsnn" in done and "lif" in done:
        results["claim_holds"] = bool(
            results["lsnn_recall_error"] < 0.05 and results["lif_recall_error"] > 0.35
        )
    if ctx.dist.is_main:
        ctx.run.write_results(results)
        _plots(cfg, ctx, done)
        build_report(ctx.run.dir)
    return results


def export_model(cfg: Config, run) -> tuple[nn.Module, torch.Tensor]:
    """The finished LIF-only network (variant ``lif``) for ``neuromorph export`` and a sample input;
    the ``lsnn`` variant has ALIF neurons, which NIR 1.0 cannot express."""
    from safetensors.torch import load_file

    from ..layers import SpikingSequential

    path = run.path("lif.safetensors")
    if "lif" not in cfg.variants or not path.is_file():
        raise ValueError(
            f"run {run.dir} has no finished 'lif' variant ({path.name}); the 'lsnn' variant has ALIF "
            "neurons, which NIR 1.0 cannot express"
        )
    net = StoreRecallNetwork(cfg, "lif", torch.Generator())
    load_module_tensors("", net, load_file(str(path)))
    return SpikingSequential({"rsnn": net.rsnn, "readout": net.readout}), torch.zeros(1, 1, cfg.n_in)


def _plots(cfg: Config, ctx: Context, done: dict) -> None:
    metrics = ctx.run.metrics()
    curves = [
        {"step": m["iteration"], **{k: v for k, v in m.items() if k.endswith("recall_error")}}
        for m in metrics
    ]
    plot_curves(
        curves,
        [f"{v}/recall_error" for v in done],
        ctx.run.path("learning_curve.png"),
        title="Recall error per iteration (fresh batches, before the update)",
        xlabel="iteration",
    )
    plot_bars(
        {v: d["recall_error"] for v, d in done.items()},
        ctx.run.path("recall_error.png"),
        ylabel="test recall error",
        title="Store-recall: LSNN vs LIF-only",
        hline=0.05,
    )
    if "lsnn" in done:
        from safetensors.torch import load_file

        net = StoreRecallNetwork(cfg, "lsnn", seeded_generator(cfg.seed, 0))
        load_module_tensors("", net, load_file(str(ctx.run.path("lsnn.safetensors"))))
        batch = _batch(cfg, 200, 0, 0, 1, "cpu")
        with torch.no_grad():
            trace, _ = net.rsnn.trace(batch.spikes)
        a = trace.a[:, 0, cfg.n_lif :]
        pick = torch.argsort(a.var(0), descending=True)[:3]
        plot_raster(
            trace.z[:, 0].numpy(),
            ctx.run.path("raster.png"),
            thresholds=a[:, pick].numpy(),
            threshold_labels=[f"ALIF {cfg.n_lif + int(i)}" for i in pick],
            input_spikes=batch.spikes[:, 0].numpy(),
            title="LSNN on one sequence: input, spikes, adaptive thresholds",
        )
