"""Few-shot character classification learned to learn in software, then run on simulated PCM hardware.

Ortner, Petschenig, Vasilopoulos, Renner, Brglez, Limbacher, Pinero, Linares Barranco, Pantazi,
Legenstein, "Rapid learning with phase-change memory-based in-memory computing through
learning-to-learn", Nat. Commun. 16 (2025) (arXiv:2405.05141), the image experiment; network and
settings of IGITUGraz/RapidLearningInMemoryComputing ``few_shot_image_classification`` (papers.md 4.3).

Network: 4 x [conv 3x3, stride 2, padding 1, no bias -> ReLU -> BatchNorm without affine parameters and
with batch statistics] -> global max pool -> linear readout without bias (56 channels). Meta-training in
software, with no hardware model: readout-only MAML (ANIL), second order through 4 inner SGD steps of
lr 0.1 on the support set (N-way K-shot), Adam on the mean query loss of a batch of tasks.

Test, on ``test_tasks`` tasks of meta-test characters (alphabets never seen in meta-training):
- ``accuracy_0_steps``: the meta-learned initialisation, no update;
- ``accuracy_software``: 4 inner SGD steps on the readout, full precision;
- ``accuracy_pcm``: the model deployed on simulated PCM (every conv layer and the readout on
  differential pairs: programming noise, drift, 1/f read noise at every forward pass, global drift
  compensation; ``neuromorph.hardware``), tested ``test_time_s`` after programming; the 4 inner steps
  are on-chip updates: the gradient is computed from a forward pass on the chip, the update
  ``-lr * grad`` is written with ``program_update`` (stochastic rounding to the device grid; only
  devices whose target changes are re-programmed, each write counted). The readout is restored to its
  programmed state before every task (the devices of the meta-learned initialisation);
- ``accuracy_pcm_4bit``: the same on devices with 4-bit weights (16 levels per device).
Each entry is the mean over tasks with a 95% confidence interval (1.96 standard errors, ``ci95``).
The readout's conductance range ``w_max`` is fixed from software only (the largest |weight| of the
software-adapted readouts on ``range_tasks`` meta-train tasks), so that on-chip updates are not clipped.

Data: KanjiVG characters rendered by simulated drawers (``neuromorph.data.characters``; 20 drawers per
character, radical groups as alphabets, 90-degree rotations as extra classes in meta-training, as the
L2L code does for Omniglot), or real Omniglot from ``data.root``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import _validate
from ..data.characters import (
    OmniglotCharacters,
    RenderedCharacters,
    kanjivg_characters,
    load_omniglot,
    split_by_alphabet,
)
from ..distributed import all_reduce_mean, wrap_ddp
from ..hardware import PCMParameters, age, analog_arrays, deploy, program_update
from ..meta import FewShotTask, InnerLoop, anil_query, meta_batch, params_of, sample_task, sample_tasks
from ..report import build_report, plot_bars, plot_curves
from ._common import (
    Context,
    TrainingCheckpoints,
    module_tensors,
    progress_bar,
    seeded_generator,
)

NAME = "fewshot-pcm"
PAPER = "Ortner et al. 2025, Rapid learning with phase-change memory-based in-memory computing through L2L"
SUMMARY = "5-way 5-shot characters: readout-only MAML in software, 4 on-chip updates on simulated PCM"
DATA = ("kanjivg", "omniglot")
ENTRIES = ("accuracy_0_steps", "accuracy_software", "accuracy_pcm", "accuracy_pcm_4bit")
_ROLE_TRAIN, _ROLE_TEST, _ROLE_RANGE = 0, 1, 2


@dataclass(frozen=True)
class DataConfig:
    name: str = "kanjivg"  # "kanjivg" (embedded, rendered) or "omniglot" (from root)
    root: str | None = None  # Omniglot directory holding images_background/ and images_evaluation/
    drawers: int = 20
    max_strokes: int = 12
    test_fraction: float = 0.4
    train_characters: int | None = None  # None: every meta-train character
    rotations: bool = True


@dataclass(frozen=True)
class Config:
    """Defaults: the L2L-PCM code / README (56 channels, 4 inner steps of lr 0.1, Adam 1e-3, batch 32
    tasks, 30,000 iterations, 5-way 5-shot, 100 test tasks)."""

    seed: int = 0
    n_way: int = 5
    k_shot: int = 5
    q_query: int = 5
    channels: int = 56
    inner_steps: int = 4
    inner_lr: float = 0.1
    outer_lr: float = 1e-3
    meta_batch: int = 32
    iterations: int = 30_000
    test_tasks: int = 100
    test_time_s: float = 60.0
    weight_bits: int = 4
    range_tasks: int = 20
    checkpoint_every: int = 100
    data: DataConfig = field(default_factory=DataConfig)

    def validate(self) -> None:
        for name in ("n_way", "k_shot", "q_query", "channels", "meta_batch", "iterations", "test_tasks"):
            _validate.positive_int(name, getattr(self, name))
        for name in ("checkpoint_every", "range_tasks", "weight_bits"):
            _validate.positive_int(name, getattr(self, name))
        _validate.non_negative_int("inner_steps", self.inner_steps)
        _validate.positive("inner_lr", self.inner_lr)
        _validate.positive("outer_lr", self.outer_lr)
        _validate.positive("test_time_s", self.test_time_s)
        if self.weight_bits > 16:
            raise ValueError(f"weight_bits must be in 1..16, got {self.weight_bits}")
        d = self.data
        if d.name not in DATA:
            raise ValueError(f"data.name must be one of {DATA}, got {d.name!r}")
        if d.name == "omniglot" and not d.root:
            raise ValueError("data.name=omniglot needs data.root (the directory holding images_background/)")
        _validate.positive_int("data.drawers", d.drawers)
        _validate.positive_int("data.max_strokes", d.max_strokes)
        if d.train_characters is not None:
            _validate.positive_int("data.train_characters", d.train_characters)
        if not 0 < d.test_fraction < 1:
            raise ValueError(f"data.test_fraction must be in (0, 1), got {d.test_fraction}")


def quick(cfg: Config) -> Config:
    """CPU-minutes version: 16 tasks per meta-batch, 300 iterations, 600 meta-train characters."""
    return replace(cfg, meta_batch=16, iterations=300, data=replace(cfg.data, train_characters=600))


def check(cfg: Config) -> None:
    """Config ranges, the task sizes against the data, before a run directory is made."""
    cfg.validate()
    if cfg.data.name == "omniglot":
        for split in ("background", "evaluation"):
            load_omniglot(cfg.data.root, split)  # raises naming what is missing
    train, test = _pools(cfg)
    for pool, what in ((train, "meta-train"), (test, "meta-test")):
        if cfg.n_way > pool.n_classes:
            raise ValueError(f"n_way = {cfg.n_way} is larger than the {pool.n_classes} {what} classes")
        if cfg.k_shot + cfg.q_query > pool.samples_per_class:
            raise ValueError(
                f"k_shot + q_query = {cfg.k_shot + cfg.q_query} is larger than the {pool.samples_per_class} "
                f"examples per class of the {what} data"
            )


class FewShotCNN(nn.Module):
    """4 x (conv 3x3 stride 2, no bias -> ReLU -> BatchNorm, batch statistics, no affine) -> global max
    pool -> ``readout`` (linear, no bias). ``features(x)`` is everything before the readout."""

    def __init__(self, channels: int, n_way: int, generator: torch.Generator, layers: int = 4) -> None:
        super().__init__()
        _validate.positive_int("channels", channels)
        _validate.positive_int("n_way", n_way)
        blocks: list[nn.Module] = []
        c_in = 1
        for _ in range(layers):
            conv = nn.Conv2d(c_in, channels, 3, stride=2, padding=1, bias=False)
            nn.init.kaiming_uniform_(conv.weight, a=math.sqrt(5), generator=generator)
            blocks += [conv, nn.ReLU(), nn.BatchNorm2d(channels, affine=False, track_running_stats=False)]
            c_in = channels
        self.body = nn.Sequential(*blocks, nn.AdaptiveMaxPool2d(1), nn.Flatten())
        self.readout = nn.Linear(channels, n_way, bias=False)
        nn.init.kaiming_uniform_(self.readout.weight, a=math.sqrt(5), generator=generator)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.readout(self.body(x))


class MetaObjective(nn.Module):
    """The meta-batch loss as a module (so DDP averages its gradients): readout-only MAML per task."""

    def __init__(self, net: FewShotCNN, inner: InnerLoop) -> None:
        super().__init__()
        self.net, self.inner = net, inner

    def forward(self, tasks: FewShotTask) -> tuple[torch.Tensor, torch.Tensor]:
        result = meta_batch(
            anil_query, self.net, params_of(self.net), tasks, F.cross_entropy, self.inner, readout="readout"
        )
        return result.loss, result.output


def _pools(cfg: Config):
    d = cfg.data
    if d.name == "omniglot":
        train = load_omniglot(d.root, "background")
        test = load_omniglot(d.root, "evaluation")
        train = OmniglotCharacters(train.images, rotations=d.rotations, names=train.names)
        return train, test
    chars = kanjivg_characters(max_strokes=d.max_strokes)
    train, test = split_by_alphabet(chars, test_fraction=d.test_fraction, seed=0)
    if d.train_characters is not None:
        pick = np.random.default_rng([cfg.seed, 11]).permutation(len(train))[: d.train_characters]
        train = [train[i] for i in sorted(pick)]
    return (
        RenderedCharacters(train, drawers=d.drawers, rotations=d.rotations, seed=cfg.seed),
        RenderedCharacters(test, drawers=d.drawers, rotations=False, seed=cfg.seed + 1),
    )


def _tasks(cfg: Config, pool, role: int, index: int, rank: int, count: int) -> FewShotTask:
    rng = np.random.default_rng([cfg.seed, role, index, rank])
    return sample_tasks(pool, count, n_way=cfg.n_way, k_shot=cfg.k_shot, q_query=cfg.q_query, rng=rng)


def _test_task(cfg: Config, pool, index: int) -> FewShotTask:
    rng = np.random.default_rng([cfg.seed, _ROLE_TEST, index])
    return sample_task(pool, n_way=cfg.n_way, k_shot=cfg.k_shot, q_query=cfg.q_query, rng=rng)


def _accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(-1) == y).float().mean())


def software_accuracies(net: FewShotCNN, task: FewShotTask, inner: InnerLoop) -> list[float]:
    """Query accuracy after 0, 1, ..., ``inner.steps`` SGD steps on the readout (full precision)."""
    with torch.no_grad():
        fs, fq = net.features(task.support_x), net.features(task.query_x)
    w = net.readout.weight.detach()
    accs = []
    for s in range(inner.steps + 1):
        accs.append(_accuracy(F.linear(fq, w), task.query_y))
        if s < inner.steps:
            w = w.requires_grad_(True)
            (g,) = torch.autograd.grad(F.cross_entropy(F.linear(fs, w), task.support_y), w)
            w = (w - inner.lr * g).detach()
    return accs


def readout_range(net: FewShotCNN, cfg: Config, pool) -> float:
    """The largest |weight| of the software-adapted readout over ``range_tasks`` meta-train tasks."""
    inner = InnerLoop(cfg.inner_steps, cfg.inner_lr, first_order=True)
    top = float(net.readout.weight.detach().abs().max())
    for i in range(cfg.range_tasks):
        task = _tasks(cfg, pool, _ROLE_RANGE, i, 0, 1)
        task = FewShotTask(*(t[0] for t in task))
        with torch.no_grad():
            fs = net.features(task.support_x)
        w = net.readout.weight.detach()
        for _ in range(inner.steps):
            w = w.requires_grad_(True)
            (g,) = torch.autograd.grad(F.cross_entropy(F.linear(fs, w), task.support_y), w)
            w = (w - inner.lr * g).detach()
            top = max(top, float(w.abs().max()))
    return top


def deploy_on_pcm(net: FewShotCNN, weight_bits: int | None, w_readout: float, seed: int) -> nn.Module:
    """Convs on PCM with the per-tensor range (max|W|), the readout with the fixed range ``w_readout``."""
    convs = [n for n, m in net.named_modules() if isinstance(m, nn.Conv2d)]
    hw = deploy(net, PCMParameters(weight_bits=weight_bits), layers=convs, seed=seed)
    return deploy(
        hw, PCMParameters(weight_bits=weight_bits, w_max=w_readout), layers=["readout"], seed=seed + 1
    )


def pcm_accuracies(hw: nn.Module, task: FewShotTask, inner: InnerLoop, generator: torch.Generator):
    """Query accuracy on the chip after 0..steps on-chip updates of the readout, and the device writes."""
    accs, writes = [], 0
    for s in range(inner.steps + 1):
        with torch.no_grad():
            accs.append(_accuracy(hw(task.query_x), task.query_y))
        if s < inner.steps:
            hw.readout.weight.grad = None
            F.cross_entropy(hw(task.support_x), task.support_y).backward()
            delta = -inner.lr * hw.readout.weight.grad
            done = program_update(hw, {"readout.weight": delta}, rounding="stochastic", generator=generator)
            writes += sum(done.values())
    return accs, writes


def _ci95(values) -> float:
    v = np.asarray(values, dtype=np.float64)
    return float(1.96 * v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else math.nan


def evaluate(net: FewShotCNN, cfg: Config, test_pool, train_pool, ctx: Context | None = None) -> dict:
    """The four accuracies per test task (software and the two PCM chips), device writes per task."""
    net.eval()
    inner = InnerLoop(cfg.inner_steps, cfg.inner_lr)
    w_readout = readout_range(net, cfg, train_pool)
    chips = {}
    for key, bits in (("pcm", None), ("pcm_4bit", cfg.weight_bits)):
        hw = deploy_on_pcm(net, bits, w_readout, seed=cfg.seed * 1000 + (0 if bits is None else 10))
        hw.requires_grad_(False)
        hw.readout.weight.requires_grad_(True)
        age(hw, cfg.test_time_s)
        chips[key] = (hw, {k: v.clone() for k, v in hw.readout.state_dict().items()})
    per_task = {"software": [], "pcm": [], "pcm_4bit": []}
    writes = {"pcm": [], "pcm_4bit": []}
    generator = seeded_generator(cfg.seed, 77)
    bar = progress_bar(ctx, total=cfg.test_tasks, desc="test tasks") if ctx is not None else None
    for i in range(cfg.test_tasks):
        task = _test_task(cfg, test_pool, i)
        per_task["software"].append(software_accuracies(net, task, inner))
        for key, (hw, programmed) in chips.items():
            hw.readout.load_state_dict(programmed)  # the meta-learned readout as programmed at deployment
            accs, w = pcm_accuracies(hw, task, inner, generator)
            per_task[key].append(accs)
            writes[key].append(w)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    sw = np.array(per_task["software"])
    entries = {
        "accuracy_0_steps": sw[:, 0],
        "accuracy_software": sw[:, -1],
        "accuracy_pcm": np.array(per_task["pcm"])[:, -1],
        "accuracy_pcm_4bit": np.array(per_task["pcm_4bit"])[:, -1],
    }
    diffs = {
        "pcm_minus_software": entries["accuracy_pcm"] - entries["accuracy_software"],
        "pcm_4bit_minus_software": entries["accuracy_pcm_4bit"] - entries["accuracy_software"],
    }
    readout = analog_arrays(chips["pcm"][0])["readout.weight"]
    return {
        **{k: float(v.mean()) for k, v in entries.items()},
        **{k: float(v.mean()) for k, v in diffs.items()},
        "ci95": {k: _ci95(v) for k, v in {**entries, **diffs}.items()},
        "device_writes_per_task": {k: float(np.mean(v)) for k, v in writes.items()},
        "readout_devices": readout.devices,
        "readout_w_max": w_readout,
        "accuracy_by_step": {k: np.array(v).mean(0).tolist() for k, v in per_task.items()},
        "test_tasks": cfg.test_tasks,
    }


def run(cfg: Config, ctx: Context) -> dict:
    cfg.validate()
    world = ctx.dist.world_size
    if cfg.meta_batch % world:
        raise ValueError(
            f"meta_batch ({cfg.meta_batch}) must be divisible by the number of processes ({world})"
        )
    local = cfg.meta_batch // world
    train_pool, test_pool = _pools(cfg)
    net = FewShotCNN(cfg.channels, cfg.n_way, seeded_generator(cfg.seed, 0)).to(ctx.device)
    inner = InnerLoop(cfg.inner_steps, cfg.inner_lr)
    model = wrap_ddp(MetaObjective(net, inner), ctx.dist)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.outer_lr)
    ckpt = TrainingCheckpoints(ctx, net, opt)
    start, elapsed, checkpoint = ckpt.start, ckpt.elapsed, ckpt.save

    bar = progress_bar(ctx, total=cfg.iterations, initial=start, desc="meta-train")
    it = start
    while it < cfg.iterations:
        tasks = _tasks(cfg, train_pool, _ROLE_TRAIN, it, ctx.dist.rank, local).to(ctx.device)
        loss, out = model(tasks)
        opt.zero_grad(set_to_none=True)
        loss.mean().backward()
        opt.step()
        it += 1
        loss_v = all_reduce_mean(float(loss.detach().mean()), ctx.dist)
        acc_v = all_reduce_mean(_accuracy(out.detach(), tasks.query_y), ctx.dist)
        ctx.run.log(it, meta_loss=loss_v, query_accuracy=acc_v, iteration=it)
        bar.update(1)
        bar.set_postfix(loss=f"{loss_v:.3f}", acc=f"{acc_v:.3f}")
        if ctx.stop.requested:
            checkpoint(it)
            bar.close()
            return {"stopped": True, "step": it}
        if it % cfg.checkpoint_every == 0 or it == cfg.iterations:
            checkpoint(it)
    bar.close()
    train_seconds = elapsed()
    results = evaluate(net.cpu() if ctx.device.type != "cpu" else net, cfg, test_pool, train_pool, ctx)
    results.update(
        iterations=cfg.iterations,
        meta_batch=cfg.meta_batch,
        train_seconds=train_seconds,
        seconds=elapsed(),
        seed=cfg.seed,
        processes=world,
        device=str(ctx.device),
        data=cfg.data.name,
        n_way=cfg.n_way,
        k_shot=cfg.k_shot,
        weight_bits=cfg.weight_bits,
    )
    results["claims"] = {
        "adaptation_helps": bool(results["accuracy_software"] - results["accuracy_0_steps"] > 0.2),
        "pcm_within_3_points": bool(abs(results["pcm_minus_software"]) <= 0.03),
        "pcm_4bit_within_3_points": bool(abs(results["pcm_4bit_minus_software"]) <= 0.03),
    }
    if ctx.dist.is_main:
        from safetensors.torch import save

        from ..runs import atomic_write_bytes

        atomic_write_bytes(ctx.run.path("model.safetensors"), save(module_tensors("", net)))
        ctx.run.write_results(results)
        _plots(ctx, results)
        build_report(ctx.run.dir)
    return results


def _plots(ctx: Context, results: dict) -> None:
    plot_curves(
        ctx.run.metrics(),
        ["query_accuracy"],
        ctx.run.path("meta_training.png"),
        title="Meta-training: query accuracy after the inner loop",
        xlabel="iteration",
    )
    plot_bars(
        {k.replace("accuracy_", ""): results[k] for k in ENTRIES},
        ctx.run.path("accuracy.png"),
        ylabel="query accuracy (mean over test tasks)",
        title="Few-shot test tasks: software vs simulated PCM",
    )
    by_step = results["accuracy_by_step"]
    records = [{"step": s, **{k: v[s] for k, v in by_step.items()}} for s in range(len(by_step["software"]))]
    plot_curves(
        records,
        list(by_step),
        ctx.run.path("accuracy_by_step.png"),
        title="Query accuracy after each inner step (on-chip updates on PCM)",
        xlabel="inner step",
    )
