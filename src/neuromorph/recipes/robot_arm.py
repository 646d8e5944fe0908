"""Robot arm: a spiking network learns a new movement from one natural e-prop update written on simulated PCM.

Ortner, Petschenig, Vasilopoulos, Renner, Brglez, Limbacher, Pinero, Linares Barranco, Pantazi,
Legenstein (Nat. Commun. 2025), "Rapid learning with phase-change memory-based in-memory computing
through learning-to-learn", robot-arm experiment (``reference/papers.md`` sections 4.2 and 4.4;
equations in ``learning/natural_eprop.py`` and ``tasks/arm.py``).

Meta-training (software, BPTT through one inner update): every iteration draws a batch of target movements
(smoothed Brownian angular velocities of the planar or the Scorbot-like arm); the trainee LIF network runs
on its clock input, the learning-signal generator (LSNN) sees the clock and the binary-coded target and
emits one learning signal per trainee neuron and step, the trainee's W_in and W_rec take one natural e-prop
update (rounded to the device grid with a straight-through gradient, the updated weights clipped to the
device range as on the chip), the trainee runs again, and the loss of that second run (0.5 MSE of the
angular velocities + 0.5 MSE of the end-effector positions, + firing-rate regularisers) is backpropagated
into the LSG and the trainee's initial weights (Adam). Weights are clipped to the device range after each
step.

Test, on ``test_tasks`` movements never seen in training: the same one-shot protocol (i) in software and
(ii) on a simulated PCM chip per task (``hardware.deploy``; aihwkit-like programming noise, drift, read
noise, drift compensation; fixed range ``w_max`` as the L2L code): the trainee runs on the chip, the
update computed from that run is rounded to the device grid and written on chip with
``hardware.program_update`` (only devices whose update is non-zero are re-programmed; writes counted), and
the trainee runs on the chip again. Reported: the end-effector trajectory error (mean squared distance)
before the update, after it in software and on PCM, and the device writes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from ..distributed import all_reduce_mean, wrap_ddp
from ..hardware import PCMParameters, age, deploy, program_update
from ..learning.natural_eprop import (
    LearningSignalGenerator,
    MetaLoss,
    Trainee,
    meta_loss,
    natural_eprop_update,
    trainee_run,
)
from ..report import build_report, plot_bars, plot_curves, plot_raster
from ..runs import atomic_write_bytes
from ..tasks.arm import (
    ARMS,
    Arm,
    Trajectories,
    brownian_trajectories,
    clock_input,
    encode_positions,
    integrate_velocities,
    make_arm,
    position_error,
)
from ._common import (
    Context,
    TrainingCheckpoints,
    module_tensors,
    progress_bar,
    seeded_generator,
)

NAME = "robot-arm"
PAPER = "Ortner et al. 2025, Rapid learning with PCM-based in-memory computing through learning-to-learn"
SUMMARY = "natural e-prop: one on-chip (PCM) weight update learns a new arm movement; software vs PCM"

ROLE_TRAIN, ROLE_TEST, ROLE_INIT_TRAINEE, ROLE_INIT_LSG = 0, 1, 2, 3


@dataclass(frozen=True)
class Config:
    """Defaults: the L2L robot-arm code (250 LIF trainee, 800-neuron LSG with 30% ALIF, 249 ms, batch 90,
    100,000 Adam iterations at 1.5e-3 x0.99 every 500, rate regularisers 0.25 at 20 Hz / 10 Hz, updates on
    a 1/16 grid of the [-1, 1] device range). ``--quick`` is far smaller (see :func:`quick`)."""

    seed: int = 0
    arm: str = "scorbot"
    n_steps: int = 249
    n_clock: int = 5
    clock_every: int = 1
    coord_bits: int = 16
    window: int = 120
    delta: float | None = None  # Brownian scale; None: 1.0 planar, 0.65 Scorbot (L2L code)
    trainee_neurons: int = 250
    trainee_threshold: float = 0.6
    trainee_in_scale: float = 2.5
    trainee_out_scale: float = 10.0
    lsg_neurons: int = 800
    lsg_alif_fraction: float = 0.3
    lsg_threshold: float = 0.5
    n_refractory: int = 5
    eta: float = 0.5
    update_step: float = 1.0 / 16.0
    w_max: float = 1.0
    batch_size: int = 90
    iterations: int = 100_000
    lr: float = 1.5e-3
    lr_decay: float = 0.99
    lr_decay_every: int = 500
    reg_trainee: float = 0.25
    reg_lsg: float = 0.25
    rate_trainee_hz: float = 20.0
    rate_lsg_hz: float = 10.0
    test_tasks: int = 50
    pcm_read_s: float = 60.0
    weight_bits: int | None = None  # None: analog devices (the L2L code); updates use update_step anyway
    checkpoint_every: int = 50

    def validate(self) -> None:
        if self.arm not in ARMS:
            raise ValueError(f"arm must be one of {ARMS}, got {self.arm!r}")
        for name in (
            "n_steps", "n_clock", "clock_every", "coord_bits", "window", "trainee_neurons", "lsg_neurons",
            "batch_size", "iterations", "lr_decay_every", "test_tasks", "checkpoint_every",
        ):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.n_refractory < 0:
            raise ValueError(f"n_refractory must be >= 0, got {self.n_refractory}")
        if not 0.0 <= self.lsg_alif_fraction <= 1.0:
            raise ValueError(f"lsg_alif_fraction must be in [0, 1], got {self.lsg_alif_fraction}")
        for name in ("trainee_threshold", "trainee_in_scale", "trainee_out_scale", "lsg_threshold", "lr",
                     "update_step", "w_max", "pcm_read_s"):  # fmt: skip
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        for name in ("eta", "reg_trainee", "reg_lsg", "rate_trainee_hz", "rate_lsg_hz"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not 0 < self.lr_decay <= 1:
            raise ValueError(f"lr_decay must be in (0, 1], got {self.lr_decay}")
        if self.delta is not None and not (math.isfinite(self.delta) and self.delta > 0):
            raise ValueError(f"delta must be a number > 0 or null, got {self.delta!r}")
        if self.update_step > self.w_max:
            raise ValueError(f"update_step ({self.update_step}) must not exceed w_max ({self.w_max})")
        if self.weight_bits is not None and not 1 <= self.weight_bits <= 16:
            raise ValueError(f"weight_bits must be in 1..16 or null, got {self.weight_bits}")


def quick(cfg: Config) -> Config:
    """CPU-minutes version: planar arm, 100 ms movements, 60-neuron trainee, 120-neuron LSG, batch 16,
    600 meta-iterations, 30 unseen test movements."""
    return replace(
        cfg,
        arm="planar",
        n_steps=100,
        window=50,
        trainee_neurons=60,
        lsg_neurons=120,
        batch_size=16,
        iterations=600,
        lr=3e-3,
        lr_decay=0.5,
        lr_decay_every=300,
        test_tasks=30,
        checkpoint_every=25,
    )


def check(cfg: Config) -> None:
    """Everything that can be wrong with ``cfg`` before a run directory is made (the networks are cheap)."""
    cfg.validate()
    MetaLearner(cfg, make_arm(cfg.arm), 0)
    _device_model(cfg)


class MetaLearner(nn.Module):
    """The trainee and the learning-signal generator; ``forward`` is one meta-loss (DDP wraps this)."""

    def __init__(self, cfg: Config, arm: Arm, seed: int) -> None:
        super().__init__()
        self.cfg, self.arm = cfg, arm
        self.trainee = Trainee(
            cfg.n_clock,
            cfg.trainee_neurons,
            arm.n_joints,
            threshold=cfg.trainee_threshold,
            n_refractory=cfg.n_refractory,
            in_scale=cfg.trainee_in_scale,
            out_scale=cfg.trainee_out_scale,
            generator=seeded_generator(seed, ROLE_INIT_TRAINEE),
        )
        n_alif = int(round(cfg.lsg_alif_fraction * cfg.lsg_neurons))
        self.lsg = LearningSignalGenerator(
            cfg.n_clock + arm.n_cartesian * cfg.coord_bits,
            cfg.lsg_neurons - n_alif,
            n_alif,
            cfg.trainee_neurons,
            threshold=cfg.lsg_threshold,
            n_refractory=cfg.n_refractory,
            generator=seeded_generator(seed, ROLE_INIT_LSG),
        )
        self.register_buffer("clock", clock_input(cfg.n_steps, cfg.n_clock, every=cfg.clock_every))
        self.clip_()

    def lsg_input(self, target: Trajectories) -> torch.Tensor:
        code = encode_positions(target.positions, self.cfg.coord_bits)
        clock = self.clock.unsqueeze(1).expand(-1, code.shape[1], -1)
        return torch.cat([clock, code], dim=-1)

    def forward(self, target: Trajectories) -> MetaLoss:
        cfg = self.cfg
        return meta_loss(
            self.trainee,
            self.lsg,
            self.clock,
            self.lsg_input(target),
            target,
            self.arm,
            eta=cfg.eta,
            update_step=cfg.update_step,
            reg_trainee=cfg.reg_trainee,
            reg_lsg=cfg.reg_lsg,
            rate_trainee_hz=cfg.rate_trainee_hz,
            rate_lsg_hz=cfg.rate_lsg_hz,
            w_max=cfg.w_max,
        )

    @torch.no_grad()
    def clip_(self) -> None:
        """Keep the trainee's PCM-held weights inside the device range (the L2L code clips to [-1, 1])."""
        for w in (self.trainee.rsnn.w_in, self.trainee.rsnn.w_rec):
            w.clamp_(-self.cfg.w_max, self.cfg.w_max)


def _delta(cfg: Config, arm: Arm) -> float:
    if cfg.delta is not None:
        return cfg.delta
    return 1.0 if arm.name == "planar" else 0.65


def _targets(cfg: Config, arm: Arm, role: int, index: int, rank: int, batch: int) -> Trajectories:
    # Every draw is a function of (seed, role, index, rank): a resumed run sees the same movements.
    rng = np.random.default_rng([cfg.seed, role, index, rank])
    return brownian_trajectories(arm, batch, cfg.n_steps, rng, window=cfg.window, delta=_delta(cfg, arm))


def _device_model(cfg: Config) -> PCMParameters:
    return PCMParameters(w_max=cfg.w_max, weight_bits=cfg.weight_bits)


def _lr(cfg: Config, iteration: int) -> float:
    return cfg.lr * cfg.lr_decay ** (iteration // cfg.lr_decay_every)


# -- test -------------------------------------------------------------------------------------------


def _round(delta: torch.Tensor, step: float) -> torch.Tensor:
    return torch.round(delta / step) * step


@torch.no_grad()
def _one_shot_software(net: MetaLearner, target: Trajectories):
    """Before/after errors of one update in software for a batch of tasks, and the runs."""
    cfg, tr = net.cfg, net.trainee
    clock = net.clock.unsqueeze(1)
    before = trainee_run(tr, clock)
    signals, lsg_z = net.lsg(net.lsg_input(target))
    dw_in, dw_rec = natural_eprop_update(before, signals, cfg.eta, n_in=tr.rsnn.n_in)
    dw_in, dw_rec = _round(dw_in, cfg.update_step), _round(dw_rec, cfg.update_step) * tr.rsnn.rec_mask
    w_in = (tr.rsnn.w_in + dw_in).clamp(-cfg.w_max, cfg.w_max)
    w_rec = (tr.rsnn.w_rec + dw_rec).clamp(-cfg.w_max, cfg.w_max) * tr.rsnn.rec_mask
    after = trainee_run(tr, clock, w_in, w_rec)
    b = target.omega.shape[1]
    err_before = position_error(before.outputs.expand(-1, b, -1), target, net.arm)
    err_after = position_error(after.outputs, target, net.arm)
    changed = int((dw_in != 0).sum() + (dw_rec != 0).sum())
    return err_before, err_after, before, after, lsg_z, signals, changed


@torch.no_grad()
def _one_shot_pcm(net: MetaLearner, target: Trajectories, chip_seed: int):
    """One task on its own simulated chip: run, update on chip, run again. Returns (error before,
    error after, device writes, number of non-zero weight updates, omega after)."""
    cfg, arm = net.cfg, net.arm
    hw = deploy(net.trainee, _device_model(cfg), layers=["rsnn"], seed=chip_seed)
    age(hw, cfg.pcm_read_s)
    clock = net.clock.unsqueeze(1)

    def chip_run():
        # one read of every array per run (as a layer call reads its weights once)
        return trainee_run(hw, clock, hw.rsnn.w_in, hw.rsnn.w_rec * hw.rsnn.rec_mask)

    before = chip_run()
    signals, _ = net.lsg(net.lsg_input(target))
    dw_in, dw_rec = natural_eprop_update(before, signals, cfg.eta, n_in=hw.rsnn.n_in)
    # rounded to the device grid here; program_update then writes only the devices whose update is non-zero
    deltas = {
        "rsnn.w_in": _round(dw_in[0], cfg.update_step),
        "rsnn.w_rec": _round(dw_rec[0], cfg.update_step) * hw.rsnn.rec_mask,
    }
    writes = program_update(hw, deltas, rounding="nearest")
    age(hw, 2 * cfg.pcm_read_s)
    after = chip_run()
    err_before = position_error(before.outputs, target, arm)
    err_after = position_error(after.outputs, target, arm)
    updated = sum(int((d != 0).sum()) for d in deltas.values())
    return float(err_before[0]), float(err_after[0]), sum(writes.values()), updated, after.outputs[:, 0]


def _test(net: MetaLearner, cfg: Config, ctx: Context) -> dict:
    """One-shot learning of ``test_tasks`` unseen movements, in software and on PCM (rank 0 and the
    other ranks each take a share of the tasks; means are all-reduced)."""
    world, rank = ctx.dist.world_size, ctx.dist.rank
    mine = [k for k in range(cfg.test_tasks) if k % world == rank]
    sums = np.zeros(7)
    for k in mine:
        target = _targets(cfg, net.arm, ROLE_TEST, k, 0, 1)
        eb, ea, *_, changed = _one_shot_software(net, target)
        pb, pa, writes, updated, _ = _one_shot_pcm(net, target, chip_seed=cfg.seed * 100_003 + k)
        sums += [float(eb[0]), float(ea[0]), pb, pa, writes, changed, updated]
    totals = [all_reduce_mean(float(s) * world / cfg.test_tasks, ctx.dist) for s in sums]
    n_devices = 2 * (net.trainee.rsnn.w_in.numel() + net.trainee.rsnn.w_rec.numel())
    return {
        "error_before": totals[0],
        "error_after_software": totals[1],
        "error_before_pcm": totals[2],
        "error_after_pcm": totals[3],
        "device_writes": totals[4],
        "updated_weights_software": totals[5],
        "updated_weights_pcm": totals[6],
        "updatable_devices": n_devices,
    }


# -- run --------------------------------------------------------------------------------------------


def run(cfg: Config, ctx: Context) -> dict:
    cfg.validate()
    world = ctx.dist.world_size
    if cfg.batch_size % world:
        raise ValueError(
            f"batch_size ({cfg.batch_size}) must be divisible by the number of processes ({world})"
        )
    torch.set_num_threads(1)  # bit-exact resume: multi-threaded CPU kernels differ in the last digits
    local_batch = cfg.batch_size // world
    arm = make_arm(cfg.arm)
    net = MetaLearner(cfg, arm, cfg.seed).to(ctx.device)
    model = wrap_ddp(net, ctx.dist)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    ckpt = TrainingCheckpoints(ctx, net, opt)
    start, elapsed, checkpoint = ckpt.start, ckpt.elapsed, ckpt.save

    bar = progress_bar(ctx, total=cfg.iterations, initial=start, desc="meta-training")
    it = start
    while it < cfg.iterations:
        for group in opt.param_groups:
            group["lr"] = _lr(cfg, it)
        target = Trajectories(
            *(t.to(ctx.device) for t in _targets(cfg, arm, ROLE_TRAIN, it, ctx.dist.rank, local_batch))
        )
        res = model(target)
        opt.zero_grad(set_to_none=True)
        res.loss.backward()
        opt.step()
        net.clip_()
        with torch.no_grad():
            b = target.omega.shape[1]
            before = position_error(res.before.outputs.expand(-1, b, -1), target, arm).mean().item()
            after = position_error(res.after.outputs, target, arm).mean().item()
        it += 1
        metrics = {
            "loss": all_reduce_mean(res.loss.item(), ctx.dist),
            "task_loss": all_reduce_mean(res.task_loss.item(), ctx.dist),
            "error_before": all_reduce_mean(before, ctx.dist),
            "error_after": all_reduce_mean(after, ctx.dist),
            "rate_trainee_hz": all_reduce_mean(res.after.z.mean().item() * 1000.0, ctx.dist),
            "rate_lsg_hz": all_reduce_mean(res.lsg_spikes.mean().item() * 1000.0, ctx.dist),
            "updated_fraction": all_reduce_mean(
                ((res.dw_in != 0).float().mean().item() + (res.dw_rec != 0).float().mean().item()) / 2,
                ctx.dist,
            ),
        }
        ctx.run.log(it, iteration=it, lr=_lr(cfg, it - 1), **metrics)
        bar.update(1)
        bar.set_postfix(before=f"{metrics['error_before']:.4f}", after=f"{metrics['error_after']:.4f}")
        if ctx.stop.requested:
            checkpoint(it)
            bar.close()
            return {"stopped": True, "step": it}
        if it % cfg.checkpoint_every == 0:
            checkpoint(it)
    bar.close()
    train_seconds = elapsed()
    net = net.cpu()  # the test (software and the simulated chips) runs on the CPU
    test = _test(net, cfg, ctx)
    results = {
        **test,
        "ratio_after_before_software": test["error_after_software"] / test["error_before"],
        "pcm_vs_software": test["error_after_pcm"] / test["error_after_software"] - 1.0,
        "claim_update_helps": bool(test["error_after_software"] < 0.5 * test["error_before"]),
        "claim_pcm_within_20pct": bool(
            abs(test["error_after_pcm"] / test["error_after_software"] - 1.0) <= 0.2
        ),
        "iterations": it,
        "meta_training_seconds": train_seconds,
        "seconds": elapsed(),
        "arm": cfg.arm,
        "test_tasks": cfg.test_tasks,
        "batch_size": cfg.batch_size,
        "seed": cfg.seed,
        "processes": world,
        "device": str(ctx.device),
    }
    if ctx.dist.is_main:
        from safetensors.torch import save

        atomic_write_bytes(ctx.run.path("meta_learner.safetensors"), save(module_tensors("", net)))
        ctx.run.write_results(results)
        _plots(cfg, ctx, net, results)
        build_report(ctx.run.dir)
    return results


def _plots(cfg: Config, ctx: Context, net: MetaLearner, results: dict) -> None:
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    plot_curves(
        ctx.run.metrics(),
        ["error_before", "error_after"],
        ctx.run.path("meta_training.png"),
        title="Trajectory error of the training batch before / after one update",
        xlabel="meta-iteration",
        logy=True,
    )
    plot_bars(
        {
            "before": results["error_before"],
            "after (software)": results["error_after_software"],
            "after (PCM)": results["error_after_pcm"],
        },
        ctx.run.path("errors.png"),
        ylabel="end-effector MSE (m^2)",
        title=f"One-shot learning of {cfg.test_tasks} unseen movements",
    )
    target = _targets(cfg, net.arm, ROLE_TEST, 0, 0, 1)
    _, _, before, after, lsg_z, _, _ = _one_shot_software(net, target)
    *_, omega_pcm = _one_shot_pcm(net, target, chip_seed=cfg.seed * 100_003)
    paths = {
        "target": target.positions[:, 0],
        "before": net.arm.forward(integrate_velocities(before.outputs, net.arm))[:, 0],
        "after (software)": net.arm.forward(integrate_velocities(after.outputs, net.arm))[:, 0],
        "after (PCM)": net.arm.forward(integrate_velocities(omega_pcm.unsqueeze(1), net.arm))[:, 0],
    }
    fig = Figure(figsize=(5.5, 5.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, p in paths.items():
        ax.plot(p[:, 0].numpy(), p[:, 1].numpy(), label=label, lw=2.5 if label == "target" else 1.4)
    ax.plot(*paths["target"][0, :2].numpy(), "ko", label="start")
    ax.set_xlabel("x (m)")
    ax.set_ylabel("y (m)")
    ax.set_aspect("equal", adjustable="datalim")
    ax.legend(loc="best")
    ax.set_title("End-effector path of one unseen movement (x-y plane)")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(ctx.run.path("end_effector_path.png"), buf.getvalue())
    plot_raster(
        after.z[:, 0].numpy(),
        ctx.run.path("raster_trainee.png"),
        input_spikes=net.clock.numpy(),
        title="Trainee after the update: clock input and spikes",
    )
    plot_raster(
        lsg_z[:, 0].numpy(),
        ctx.run.path("raster_lsg.png"),
        input_spikes=net.lsg_input(target)[:, 0].numpy(),
        title="Learning-signal generator: clock + coded target, spikes",
    )
